"""Miss and false-positive types from hand-built candidates before NMS: one of each, and the TIDE-style gains."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from detection.evaluation import ImageEval, average_precision
from detection.miss_rate import log_average_miss_rate
from detection.miss_types import CandidateImage, classify_errors, error_summary, fixed_images, person_candidates
from detection.models.base import Candidates

CONF = 0.25


def _box(x, dx=0.0, dy=0.0):
    return [x + dx, dy, x + 10 + dx, 20 + dy]


def _scene():
    gt = [_box(0), _box(100), _box(104), _box(200), _box(300), _box(400), [700, 0, 800, 100]]
    ignore = [False] * 6 + [True]
    dets = [(_box(0), 0.9),            # finds gt 0
            (_box(104), 0.85),         # finds gt 2, the neighbour that took gt 1's place in NMS
            (_box(200), 0.10),         # gt 3's box, under the threshold
            (_box(300, 3, 5), 0.6),    # beside gt 4: IoU 0.36
            (_box(500), 0.7),          # nothing there
            (_box(0, 1), 0.5),         # a second box on gt 0
            ([600, 0, 620, 20], 0.5),  # on a car
            ([710, 10, 720, 30], 0.6)]  # inside the ignore region
    cands = [(b, s) for b, s in dets] + [(_box(100), 0.8),          # gt 1's own box, removed by NMS
                                         (_box(400, 30), 0.9),      # far from gt 5
                                         (_box(400), 0.01)]         # on gt 5, but below seen_score
    return CandidateImage(gt_boxes=gt, gt_ignore=ignore, det_boxes=[b for b, _ in dets],
                          det_scores=[s for _, s in dets], cand_boxes=[b for b, _ in cands],
                          cand_scores=[s for _, s in cands], other_boxes=[[600, 0, 620, 20]])


def test_one_of_each_miss_and_false_positive_type():
    t = classify_errors(_scene(), CONF)
    assert t.gt_type.tolist() == ["found", "suppressed", "found", "below_threshold", "mislocalised", "never_seen",
                                  "ignored"]
    assert t.gt_best_score[1] == pytest.approx(0.8) and t.gt_best_iou[1] == pytest.approx(1.0)
    assert t.gt_best_score[3] == pytest.approx(0.10)
    assert t.gt_best_iou[4] == pytest.approx(105 / 295) and t.gt_best_score[4] == pytest.approx(0.6)
    assert t.det_type.tolist() == ["tp", "tp", "below_threshold", "localisation", "background", "duplicate",
                                   "confusion", "ignored"]
    assert t.det_gt[3] == 4 and t.det_gt[5] == 0


def test_the_threshold_and_seen_score_move_the_types():
    img = _scene()
    low = classify_errors(img, 0.05)                     # gt 3's detection now counts: found
    assert low.gt_type[3] == "found" and low.det_type[2] == "tp"
    seen_all = classify_errors(img, CONF, seen_score=0.0)
    assert seen_all.gt_type[5] == "below_threshold"     # the 0.01 candidate on it now counts as seen
    with pytest.raises(ValueError, match="seen_score"):
        classify_errors(img, CONF, seen_score=0.5)


def test_error_summary_gains():
    img = _scene()
    summary = error_summary([img], CONF).set_index("type")
    miss = summary[summary["kind"] == "miss"]
    assert miss["count"].tolist() == [1, 1, 1, 1] and miss["share"].sum() == pytest.approx(1.0)
    assert miss["miss_rate_gain"].tolist() == pytest.approx([1 / 6] * 4)
    fp = summary[summary["kind"] == "false_positive"]
    assert fp["count"].tolist() == [1, 1, 1, 1]
    base = average_precision([ImageEval(img.det_boxes, img.det_scores, img.gt_boxes, img.gt_ignore)])
    keep = np.array([True] * 4 + [False] + [True] * 3)   # the background FP removed
    fixed = average_precision([ImageEval(img.det_boxes[keep], img.det_scores[keep], img.gt_boxes, img.gt_ignore)])
    assert summary.loc["background", "ap_gain"] == pytest.approx(fixed - base) and fixed > base
    keep_gt = np.array([True] * 5 + [False, True])       # the never-seen person leaves the count
    fixed = average_precision([ImageEval(img.det_boxes, img.det_scores, img.gt_boxes[keep_gt],
                                         img.gt_ignore[keep_gt])])
    assert summary.loc["never_seen", "ap_gain"] == pytest.approx(fixed - base) and fixed > base


def test_crowd_of_duplicates_is_labelled_suppressed():
    # five people side by side, one final box kept by NMS for the middle one; each had its own strong candidate
    gts = [_box(5 * i) for i in range(5)]            # neighbours overlap at IoU 1/3
    img = CandidateImage(gt_boxes=gts, det_boxes=[gts[2]], det_scores=[0.9], cand_boxes=gts,
                         cand_scores=[0.7, 0.8, 0.9, 0.6, 0.75])
    assert classify_errors(img, CONF).gt_type.tolist() == ["suppressed"] * 2 + ["found"] + ["suppressed"] * 2


def test_person_candidates_from_a_padded_batch():
    cands = Candidates(boxes=torch.tensor([[[0, 0, 10, 20], [5, 5, 9, 9]], [[1, 1, 2, 2], [0, 0, 0, 0]]],
                                          dtype=torch.float32),
                       objectness=torch.ones(2, 2), class_probs=torch.tensor([[[0.9, 0.1], [0.2, 0.3]],
                                                                              [[0.4, 0.6], [0.0, 0.0]]]),
                       valid=torch.tensor([[True, True], [True, False]]))
    boxes, scores = person_candidates(cands, 1, class_index=1)
    assert boxes.tolist() == [[1, 1, 2, 2]] and scores.tolist() == pytest.approx([0.6])


def test_fixing_a_below_threshold_miss_also_removes_its_low_scoring_match():
    # A found at 0.9; B matched only at 0.2 (below the threshold); S matched at 0.15 after NMS dropped its 0.8
    # candidate (suppressed). Fixing B's type removes B *and* its 0.2 detection: S's match then follows A alone.
    # Removing B alone would leave its detection as a false positive ranked before S's (AP below 0.9, not 1.0).
    a, b, s_ = _box(0), _box(100), _box(200)
    img = CandidateImage(gt_boxes=[a, b, s_], det_boxes=[a, b, s_], det_scores=[0.9, 0.2, 0.15],
                         cand_boxes=[a, b, s_, s_], cand_scores=[0.9, 0.2, 0.15, 0.8])
    assert classify_errors(img, CONF).gt_type.tolist() == ["found", "below_threshold", "suppressed"]
    summary = error_summary([img], CONF).set_index("type")
    assert summary.loc["below_threshold", "ap_gain"] == pytest.approx(1.0 - 1.0)      # AP is 1.0 before and after
    person_only = average_precision([ImageEval([a, b, s_], [0.9, 0.2, 0.15], [a, s_])])
    assert person_only < 0.9                                                            # what the old fix gave


# ---- one hand-built image per false-positive type: its type, and the AP / MR⁻² gain of TIDE's fix for it.
# AP is COCO's 101-point interpolation: recall 1/2 at precision 1, then recall 1 at precision 2/3 gives
# (51 + 50 * 2/3) / 101; an FP ranked first before the only person gives 0.5.
AP_TP_FP_TP = (51 + 50 * 2 / 3) / 101


def _fp_summary(img, fp_type):
    t = classify_errors(img, CONF)
    assert fp_type in t.det_type.tolist()
    row = error_summary([img], CONF).set_index("type").loc[fp_type]
    assert row["kind"] == "false_positive" and row["count"] == 1 and row["miss_rate_gain"] == 0.0
    return t, row


def test_duplicate_false_positive_and_its_gain():
    a, b = _box(0), _box(100)
    img = CandidateImage(gt_boxes=[a, b], det_boxes=[a, _box(0, 1), b], det_scores=[0.9, 0.8, 0.7],
                         cand_boxes=np.zeros((0, 4)), cand_scores=[])
    t, row = _fp_summary(img, "duplicate")
    assert t.det_type.tolist() == ["tp", "duplicate", "tp"] and t.det_gt[1] == 0
    assert row["ap_gain"] == pytest.approx(1.0 - AP_TP_FP_TP)
    # MR⁻² (one image): before, FPPI 0 reads miss 1/2 at the eight references under 1 and miss 0 (1e-10) at 1;
    # after removing the duplicate there is no false positive: 1e-10 everywhere
    before = math.exp((8 * math.log(0.5) + math.log(1e-10)) / 9)
    assert row["mr2_gain"] == pytest.approx(before - 1e-10)


def test_localisation_false_positive_is_moved_onto_its_person():
    a, b = _box(0), _box(100)
    img = CandidateImage(gt_boxes=[a, b], det_boxes=[a, _box(100, 3, 5)], det_scores=[0.9, 0.8],
                         cand_boxes=[a, _box(100, 3, 5)], cand_scores=[0.9, 0.8])
    t, row = _fp_summary(img, "localisation")
    assert t.det_gt[1] == 1 and t.gt_type.tolist() == ["found", "mislocalised"]
    # before: TP then FP, recall 1/2 -> AP 51/101. Fixed: the box moves onto b and finds it -> AP 1 (removing it
    # instead would leave AP at 51/101, a gain of 0)
    assert row["ap_gain"] == pytest.approx(1.0 - 51 / 101)
    assert row["mr2_gain"] == pytest.approx(0.5 - 1e-10)          # miss 1/2 at every reference -> 0


def test_localisation_fix_is_suppressed_when_its_person_is_already_matched():
    a, b = _box(0), _box(100)
    # b is matched (found) by a 0.3 detection of its own: the mislocalised 0.8 box is removed, not moved
    img = CandidateImage(gt_boxes=[a, b], det_boxes=[a, _box(100, 3, 5), b], det_scores=[0.9, 0.8, 0.3],
                         cand_boxes=np.zeros((0, 4)), cand_scores=[])
    t, row = _fp_summary(img, "localisation")
    assert t.det_type.tolist() == ["tp", "localisation", "tp"]
    assert row["ap_gain"] == pytest.approx(1.0 - AP_TP_FP_TP)
    fixed = fixed_images([img], [t], fix_det=frozenset({"localisation"}))[0]
    assert fixed.det_boxes.tolist() == [a, b]
    # two mislocalised boxes on one free person: the higher-scoring one takes it, the other is suppressed
    two = CandidateImage(gt_boxes=[b], det_boxes=[_box(100, 3, 5), _box(100, -3, 5)], det_scores=[0.8, 0.6],
                         cand_boxes=np.zeros((0, 4)), cand_scores=[])
    t2 = classify_errors(two, CONF)
    assert t2.det_type.tolist() == ["localisation", "localisation"]
    fixed = fixed_images([two], [t2], fix_det=frozenset({"localisation"}))[0]
    assert fixed.det_boxes.tolist() == [b] and fixed.det_scores.tolist() == [0.8]


def test_confusion_false_positive_needs_an_object_of_another_class():
    a, car = _box(0), [300, 0, 340, 30]
    kwargs = dict(gt_boxes=[a], det_boxes=[car, a], det_scores=[0.9, 0.8], cand_boxes=np.zeros((0, 4)),
                  cand_scores=[])
    t, row = _fp_summary(CandidateImage(**kwargs, other_boxes=[car]), "confusion")
    assert t.det_type.tolist() == ["confusion", "tp"] and t.det_gt.tolist() == [-1, -1]
    assert row["ap_gain"] == pytest.approx(1.0 - 0.5)
    # before: the first point is at FPPI 1, so the eight references under 1 read miss 1; at 1 miss 0 (1e-10)
    assert row["mr2_gain"] == pytest.approx(math.exp(math.log(1e-10) / 9) - 1e-10)
    # the same box without the car annotated (a source without other classes): background
    assert classify_errors(CandidateImage(**kwargs), CONF).det_type.tolist() == ["background", "tp"]


def test_background_false_positive_and_its_gain():
    a = _box(0)
    img = CandidateImage(gt_boxes=[a], det_boxes=[_box(500), _box(0, 7), a], det_scores=[0.9, 0.85, 0.8],
                         cand_boxes=np.zeros((0, 4)), cand_scores=[])
    t, row = _fp_summary(img, "background")
    # _box(0, 7): IoU 3/17 with a -> a localisation error, not background
    assert t.det_type.tolist() == ["background", "localisation", "tp"]
    # fixing background removes the first box only: FP (loc) then TP -> AP 1/2 before the loc fix; before: FP FP TP
    # -> precision 1/3 at recall 1
    assert row["ap_gain"] == pytest.approx(0.5 - 1 / 3)
    summary = error_summary([img], CONF).set_index("type")
    assert summary.loc["localisation", "ap_gain"] == pytest.approx(0.5 - 1 / 3)   # a is taken: the loc box goes
    assert summary.loc["duplicate", "count"] == 0 and summary.loc["duplicate", "ap_gain"] == 0.0


def test_error_tally_fed_in_batches_equals_the_summary_of_all_images():
    """ErrorTally.add batch by batch (an empty batch included) gives error_summary's table of every image,
    gains included; mismatched lengths are refused."""
    from detection.miss_types import ErrorTally

    rng = np.random.default_rng(0)

    def boxes(n):
        xy = rng.uniform(0, 200, (n, 2))
        return np.c_[xy, xy + rng.uniform(5, 60, (n, 2))]

    images = []
    for _ in range(60):
        g, d = rng.integers(0, 5), rng.integers(0, 7)
        gt = boxes(g)
        det = np.r_[gt[:min(g, d)] + rng.normal(0, 4, (min(g, d), 4)), boxes(d - min(g, d))]
        cand = np.r_[gt + rng.normal(0, 6, gt.shape), boxes(rng.integers(0, 10))]
        images.append(CandidateImage(gt, det, rng.uniform(0, 1, len(det)).round(1), cand,
                                     rng.uniform(0, 1, len(cand)), rng.uniform(0, 1, g) < 0.15, boxes(2)))
    types = [classify_errors(x, CONF) for x in images]
    whole = error_summary(images, CONF, types=types)
    tally = ErrorTally()
    for lo, hi in ((0, 7), (7, 7), (7, 30), (30, 53), (53, 60)):
        tally.add(images[lo:hi], types[lo:hi])
    pd.testing.assert_frame_equal(tally.summary(), whole)
    assert whole["count"].sum() > 20 and whole["ap_gain"].abs().sum() > 0
    # pinned to the reference metrics of the fixed images: AP and MR-2 of fixed_images(...) for every oracle fix
    base = fixed_images(images, types)
    base_ap, base_mr2 = average_precision(base), log_average_miss_rate(base)
    for _, row in whole.iterrows():
        fixed = frozenset({row["type"]})
        evals = fixed_images(images, types, drop_gt=fixed if row["kind"] == "miss" else frozenset(),
                             fix_det=fixed if row["kind"] == "false_positive" else frozenset())
        assert row["ap_gain"] == average_precision(evals) - base_ap
        assert row["mr2_gain"] == base_mr2 - log_average_miss_rate(evals)
    with pytest.raises(ValueError, match="2 images but 1"):
        tally.add(images[:2], types[:1])


def test_error_summary_of_no_images_counts_nothing_and_leaves_the_gains_undefined():
    """No images (or only empty batches): every type counted 0, its share and gains NaN (no persons, no
    detections), never a plausible 0 gain."""
    from detection.miss_types import ErrorTally

    tally = ErrorTally()
    tally.add([], [])
    for summary in (tally.summary(), error_summary([], CONF)):
        assert len(summary) == 8 and (summary["count"] == 0).all()
        assert summary[["share", "ap_gain", "mr2_gain"]].isna().all().all()
