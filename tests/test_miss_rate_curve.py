"""Miss rate vs FPPI curves (detection.miss_rate.read_curve / subset_miss_rates(curve_points=...)): the points of
a hand-built curve, the Caltech convention before the first point, the end point, and agreement with MR⁻²."""
import math

import numpy as np
import pytest

from detection.evaluation import ImageEval
from detection.miss_rate import (
    CITYPERSONS_SUBSETS,
    CURVE_FPPI,
    FPPI_POINTS,
    log_average_miss_rate,
    miss_rate_curve,
    read_curve,
    recall_at,
    restrict,
    subset_miss_rates,
)


def _box(x, h=100.0):
    return [x, 0.0, x + 0.4 * h, h]


def _two_images():
    # A: persons at 0 and 100; B: persons at 0 and 100. In score order: TP (A .9), FP (B .8), TP (B .7), FP (A .6),
    # TP (B .5): FPPI / miss rate after each 0 / .75, .5 / .75, .5 / .5, 1 / .5, 1 / .25
    a = ImageEval([_box(0), _box(300)], [0.9, 0.6], [_box(0), _box(100)], gt_attrs={"visibility": np.ones(2)})
    b = ImageEval([_box(500), _box(0), _box(100)], [0.8, 0.7, 0.5], [_box(0), _box(100)],
                  gt_attrs={"visibility": np.ones(2)})
    return a, b


def test_the_curve_read_at_reference_fppi_of_a_hand_built_example():
    fppi, miss, _ = miss_rate_curve(_two_images())
    curve = read_curve(fppi, miss, np.array([0.01, 0.1, 0.5, 0.7, 1.0, 2.0]))
    # 2.0 lies beyond the curve's last FPPI (1): left out; at 0.5 and 1 the *last* point of that FPPI counts
    assert curve.fppi.tolist() == [0.01, 0.1, 0.5, 0.7, 1.0]
    assert curve.miss_rate.tolist() == [0.75, 0.75, 0.5, 0.5, 0.25]
    # on the default grid the MR⁻² references are among the points and give the MR⁻² back
    full = read_curve(fppi, miss)
    at = np.isclose(full.fppi[:, None], FPPI_POINTS[None]).any(1)
    assert at.sum() == 9
    assert math.exp(np.log(full.miss_rate[at]).mean()) == pytest.approx(log_average_miss_rate(_two_images()))
    assert full.fppi[-1] == 1.0 and len(full.fppi) == int((CURVE_FPPI <= 1.0).sum())


def test_before_the_first_point_the_miss_rate_is_one_and_the_curve_ends_at_its_last_point():
    # first detection a false positive (FPPI 1 / 4 images), then the one person found: FPPI .25 / miss 1, .25 / 0;
    # then one more false positive: .5 / 0
    imgs = [ImageEval([_box(300), _box(0), _box(600)], [0.9, 0.8, 0.7], [_box(0)]),
            ImageEval([], [], []), ImageEval([], [], []), ImageEval([], [], [])]
    fppi, miss, _ = miss_rate_curve(imgs)
    assert fppi.tolist() == [0.25, 0.25, 0.5] and miss.tolist() == [1.0, 0.0, 0.0]
    curve = read_curve(fppi, miss, np.array([0.1, 0.2, 0.3, 1.0]))
    assert curve.fppi.tolist() == [0.1, 0.2, 0.3, 0.5]                 # 0.5: the curve's own end, not a reference
    assert curve.miss_rate.tolist() == [1.0, 1.0, 0.0, 0.0]
    assert read_curve(np.zeros(0), np.zeros(0)).fppi.size == 0
    with pytest.raises(ValueError, match="one length"):
        read_curve(np.zeros(3), np.zeros(2))


def test_recall_at_matches_searchsorted_row_by_row():
    rng = np.random.default_rng(0)
    fppi = np.sort(rng.uniform(0, 2, (5, 40)), axis=1)
    recall = np.sort(rng.uniform(0, 1, (5, 40)), axis=1)
    got = recall_at(fppi, recall, FPPI_POINTS)
    for b in range(5):
        idx = np.searchsorted(fppi[b], FPPI_POINTS, side="right") - 1
        assert got[b].tolist() == np.where(idx >= 0, recall[b, np.maximum(idx, 0)], 0.0).tolist()


def test_subset_curves_are_the_restricted_curves_and_compact():
    a, b = _two_images()
    small = ImageEval([_box(0, 60), _box(900, 60)], [0.95, 0.4], [_box(0, 60), _box(200, 60)],
                      gt_attrs={"visibility": np.ones(2)})
    images = [a, b, small]
    rates = subset_miss_rates(images, curve_points=CURVE_FPPI)
    for name in ("reasonable", "small"):
        s = CITYPERSONS_SUBSETS[name]
        fppi, miss, _ = miss_rate_curve([restrict(i, s) for i in images], det_height=s.height)
        expected = read_curve(fppi, miss)
        assert rates[name]["curve"].fppi.tolist() == expected.fppi.tolist()
        assert rates[name]["curve"].miss_rate.tolist() == expected.miss_rate.tolist()
    # small subset: the 100 px persons are ignore regions (their detections ignored with them), the 100 px false
    # positives lie above 75 * 1.25 px (ignored); left: .95 finds one of the two 60 px persons first -> miss rate .5
    assert rates["small"]["persons"] == 2 and rates["small"]["curve"].miss_rate[0] == 0.5
    assert rates["heavy_occlusion"]["persons"] == 0 and rates["heavy_occlusion"]["curve"].fppi.size == 0
    lists = rates["reasonable"]["curve"].to_lists()
    assert set(lists) == {"fppi", "miss_rate"} and all(isinstance(v, float) for v in lists["fppi"])
    assert lists["fppi"][0] == 0.001


def test_the_dvc_plot_csv_holds_every_subset_curve_point_and_only_a_header_without_ground_truth(tmp_path):
    from tasks.evaluate_summary import write_mr_fppi

    where = {"mr_fppi": {"small": {"fppi": [0.01, 0.1], "miss_rate": [0.5, 0.25]},
                         "reasonable": {"fppi": [0.001], "miss_rate": [1.0]}}}
    lines = write_mr_fppi(where, tmp_path).read_text().splitlines()
    assert lines == ["subset,fppi,miss_rate", "reasonable,0.001,1", "small,0.01,0.5", "small,0.1,0.25"]
    assert write_mr_fppi({"ground_truth": False}, tmp_path / "none").read_text() == "subset,fppi,miss_rate\n"
