"""MR⁻² (log-average miss rate over FPPI 1e-2..1e0): a hand-computed example, CityPersons' own formula on random
detections, and the subsets' ignore rules."""
import math

import numpy as np
import pytest

from detection.evaluation import ImageEval, match
from detection.miss_rate import (
    CITYPERSONS_SUBSETS,
    FPPI_POINTS,
    Subset,
    log_average_miss_rate,
    log_average_miss_rate_interval,
    miss_rate_curve,
    restrict,
    subset_miss_rates,
)


def _box(x, h=100.0):
    return [x, 0.0, x + 0.4 * h, h]


def test_hand_computed_example():
    # image A: persons at 0 and 100; image B: persons at 0 and 100. In score order: TP (A), FP (B), TP (B), FP (A),
    # TP (B). FPPI / recall after each: 0 / .25, .5 / .25, .5 / .5, 1 / .5, 1 / .75.
    a = ImageEval([_box(0), _box(300)], [0.9, 0.6], [_box(0), _box(100)])
    b = ImageEval([_box(500), _box(0), _box(100)], [0.8, 0.7, 0.5], [_box(0), _box(100)])
    # references 0.01 .. 0.316 read the first point (miss .75), 0.562 the third (.5), 1.0 the last (.25)
    expected = math.exp((7 * math.log(0.75) + math.log(0.5) + math.log(0.25)) / 9)
    assert log_average_miss_rate([a, b]) == pytest.approx(expected, abs=1e-12)
    assert round(expected, 4) == 0.6346
    fppi, miss, scores = miss_rate_curve([a, b])
    assert fppi.tolist() == [0, 0.5, 0.5, 1, 1] and miss.tolist() == [0.75, 0.75, 0.5, 0.5, 0.25]
    assert scores.tolist() == [0.9, 0.8, 0.7, 0.6, 0.5]
    # first detection a false positive with 2 images: the seven references under FPPI .5 come before the curve's
    # first point (miss rate 1, Caltech's convention), the two above read recall 1 (miss rate clamped at 1e-10)
    c = ImageEval([_box(300), _box(0)], [0.9, 0.8], [_box(0)])
    assert log_average_miss_rate([c, ImageEval([], [], [])]) == pytest.approx(
        math.exp((7 * math.log(1.0) + 2 * math.log(1e-10)) / 9))


def _citypersons_mr(tps, fps, scores, n_images, n_positives):
    """CityPersons' eval_MR_multisetup.py, COCOeval.accumulate + summarize for one setup, transcribed: detections
    sorted by score with mergesort, tp / fp cumulated, recall read at p.fppiThrs with searchsorted(side='right') - 1,
    MR = exp(mean(log(1 - recall)))."""
    inds = np.argsort(-scores, kind="mergesort")
    tp_sum = np.cumsum(tps[inds]).astype(float)
    fp_sum = np.cumsum(fps[inds]).astype(float)
    fppi = fp_sum / n_images
    recall = (tp_sum / n_positives).tolist()
    q = np.zeros(9).tolist()
    for i in range(len(recall) - 1, 0, -1):
        if recall[i] < recall[i - 1]:
            recall[i - 1] = recall[i]
    idx = np.searchsorted(fppi, np.array([0.0100, 0.0178, 0.0316, 0.0562, 0.1000, 0.1778, 0.3162, 0.5623, 1.0000]),
                          side="right") - 1
    for ri, pi in enumerate(idx):
        q[ri] = recall[pi]
    mrs = 1 - np.array(q)
    return float(np.exp(np.mean(np.log(mrs))))


def _random_images(rng, n_images):
    images = []
    for _ in range(n_images):
        g = int(rng.integers(0, 4))
        gt = np.array([_box(x, h) for x, h in zip(rng.uniform(0, 800, g), rng.uniform(30, 200, g))]).reshape(-1, 4)
        jitter = gt + rng.normal(0, 6, gt.shape)
        keep = rng.random(g) < 0.7
        fp = int(rng.poisson(0.6))
        dets = np.concatenate([jitter[keep], np.array([_box(x, 80) for x in rng.uniform(0, 800, fp)]).reshape(-1, 4)])
        scores = rng.random(len(dets))
        images.append(ImageEval(dets, scores, gt, gt_attrs={"visibility": rng.uniform(0.1, 1.0, g)}))
    return images


def test_agrees_with_citypersons_formula_on_random_detections():
    rng = np.random.default_rng(0)
    for _ in range(5):
        images = _random_images(rng, 150)        # >= 100 images: FPPI 1 / I0 <= 0.01, so no index -1 in their code
        tps, fps, scores = [], [], []
        for img in images:
            m = match(img)
            tps.append(m.det_tp), fps.append(~m.det_tp & ~m.det_ignored), scores.append(img.det_scores)
        ref = _citypersons_mr(np.concatenate(tps), np.concatenate(fps), np.concatenate(scores), len(images),
                              sum(len(i.gt_boxes) for i in images))
        assert log_average_miss_rate(images) == pytest.approx(ref, abs=1e-9)
    assert np.allclose(FPPI_POINTS, [0.0100, 0.0178, 0.0316, 0.0562, 0.1000, 0.1778, 0.3162, 0.5623, 1.0], atol=1e-4)


def test_subsets_ignore_persons_and_detections_outside_them():
    gt = [_box(0, 100), _box(200, 30), _box(400, 100)]
    img = ImageEval([_box(0, 100), _box(200, 30), _box(600, 20)], [0.9, 0.8, 0.95], gt,
                    gt_attrs={"visibility": np.array([1.0, 1.0, 0.3])})
    reasonable = restrict(img, CITYPERSONS_SUBSETS["reasonable"])
    assert reasonable.gt_ignore.tolist() == [False, True, True]       # too small; too occluded
    heavy = restrict(img, CITYPERSONS_SUBSETS["heavy_occlusion"])
    assert heavy.gt_ignore.tolist() == [True, True, False]
    # reasonable: one person, found by the top detection; the 30 px box sits on an ignored person and the 20 px
    # false positive is below 50 / 1.25 px: ignored too, so no false positive at all -> miss rate 1e-10 everywhere
    assert log_average_miss_rate([reasonable], det_height=(50, np.inf)) == pytest.approx(1e-10)
    # without the height filter the 20 px box is the first detection and a false positive at FPPI 1: only the
    # last reference (FPPI 1) reads recall 1
    assert log_average_miss_rate([reasonable]) == pytest.approx(math.exp(math.log(1e-10) / 9))
    rates = subset_miss_rates([img], n_boot=50)
    assert rates["reasonable"]["persons"] == 1 and rates["heavy_occlusion"]["persons"] == 1
    assert rates["heavy_occlusion"]["mr2"] == pytest.approx(1.0)        # the occluded person is never found
    assert rates["small"]["persons"] == 0 and math.isnan(rates["small"]["mr2"])
    with pytest.raises(KeyError, match="visibility"):
        restrict(ImageEval([], [], [_box(0)]), Subset((0, np.inf), (0, np.inf)))


def test_bootstrap_interval_brackets_the_estimate():
    images = _random_images(np.random.default_rng(1), 120)
    mr = log_average_miss_rate(images)
    lo, hi = log_average_miss_rate_interval(images, n_boot=300)
    assert lo < mr < hi and hi - lo < 0.3


def test_bootstrap_interval_does_not_depend_on_its_memory_chunks(monkeypatch):
    """Large datasets compute fewer resamples at a time (flat memory); the interval must be the same numbers."""
    import detection.miss_rate as mr

    images = _random_images(np.random.default_rng(2), 80)
    whole = log_average_miss_rate_interval(images, n_boot=250, seed=3)
    monkeypatch.setattr(mr, "BOOT_CHUNK_ELEMENTS", 700)           # a few resamples per chunk at this size
    assert mr.boot_chunk(600) == 1 and 1 < mr.boot_chunk(100) < 100
    assert log_average_miss_rate_interval(images, n_boot=250, seed=3) == whole


def test_subset_height_bounds_are_inclusive_as_in_citypersons():
    from detection.evaluation import ImageEval
    from detection.miss_rate import CITYPERSONS_SUBSETS, restrict

    boxes = [[0, 0, 10, 49.9], [0, 0, 10, 50], [0, 0, 10, 75], [0, 0, 10, 75.1]]
    img = ImageEval([], [], boxes, gt_attrs={"visibility": [1.0] * 4})
    assert (~restrict(img, CITYPERSONS_SUBSETS["small"]).gt_ignore).tolist() == [False, True, True, False]
