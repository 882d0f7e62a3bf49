"""Detection / keypoint / multi-label metrics on hand-computed examples."""
import numpy as np
import pytest

from detection.evaluation import (
    ImageEval,
    average_precision,
    coco_ap,
    ioa_matrix,
    iou_matrix,
    multilabel_f1,
    pck,
    recall_by,
)


def test_iou_matrix():
    iou = iou_matrix([[0, 0, 10, 10]], [[0, 0, 10, 5], [20, 20, 30, 30], [5, 0, 15, 10]])
    assert np.allclose(iou, [[0.5, 0.0, 50 / 150]])


def test_average_precision_hand_computed():
    img = ImageEval(det_boxes=[[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]], det_scores=[0.9, 0.8, 0.7],
                    gt_boxes=[[0, 0, 10, 10], [20, 20, 30, 30]])
    # ranked: TP (P=1, R=.5), FP (P=.5), TP (P=2/3, R=1) -> interpolated 1.0 up to R=.5, 2/3 above: 101-point mean
    assert average_precision([img]) == pytest.approx((51 * 1.0 + 50 * 2 / 3) / 101)
    assert average_precision([ImageEval([], [], [[0, 0, 1, 1]])]) == 0.0
    perfect = ImageEval([[0, 0, 10, 10]], [0.5], [[0, 0, 10, 10]])
    assert coco_ap([perfect]) == pytest.approx(1.0)


def test_ignored_ground_truth_neither_missed_nor_false_positive():
    img = ImageEval(det_boxes=[[0, 0, 10, 10], [20, 20, 30, 30]], det_scores=[0.9, 0.95],
                    gt_boxes=[[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]],
                    gt_ignore=np.array([False, True, True]))
    assert average_precision([img]) == pytest.approx(1.0)


def test_recall_by_bucket():
    img = ImageEval(det_boxes=[[0, 0, 10, 20]], det_scores=[0.6],
                    gt_boxes=[[0, 0, 10, 20], [30, 0, 40, 100]], gt_attrs={"height": np.array([20, 100])})
    rec = recall_by([img], "height", {"short": (0, 50), "tall": (50, 1000)})
    assert rec == {"short": 1.0, "short_count": 1, "tall": 0.0, "tall_count": 1}
    assert recall_by([img], "height", {"short": (0, 50)}, min_score=0.7)["short"] == 0.0


def test_pck_and_f1():
    gt = np.zeros((1, 17, 3))
    gt[0, :, 2] = 2
    gt[0, 16, 2] = 1                                      # occluded: not counted
    pred = gt.copy()
    pred[0, :4, 0] += 30                                  # 4 keypoints 30 px off; threshold 0.2 * 100 = 20 px
    assert pck(pred, gt, [[0, 0, 50, 100]]) == (12, 16)
    f1 = multilabel_f1(np.array([[0.9, 0.2], [0.8, 0.7], [0.1, 0.6]]), np.array([[1, 0], [0, 1], [0, 0]]))
    assert np.allclose(f1, [2 / 3, 2 / 3])


# COCO AP on a small dataset with every kind of detection: (gt boxes, gt ignored, det boxes, det scores) per image.
COCO_CASE = [
    ([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 60, 20]], [False, False, True],
     [[0, 0, 10, 10],                # 0.95: G1, IoU 1 -> TP at every threshold
      [0, 0, 10, 10],                # 0.90: G1 again -> a duplicate: FP
      [40, 0, 60, 20],               # 0.85: on the ignore region -> neither TP nor FP
      [20, 0, 30, 7.2]],             # 0.80: G2 at IoU 0.72 -> TP up to IoU 0.70, FP from 0.75
     [0.95, 0.9, 0.85, 0.8]),
    ([[0, 0, 10, 10]], [False], [[50, 50, 60, 60]], [0.7]),   # G3 missed; 0.70: FP
    ([], [], [[0, 0, 5, 5]], [0.6]),                          # an image without persons; 0.60: FP
]
# Ranked (ignored one dropped): TP FP TP|FP FP FP over 3 GT.
# IoU <= 0.70: precision 1, 1/2, 2/3, 1/2, 2/5 at recall 1/3, 1/3, 2/3, 2/3, 2/3 -> interpolated 1 for the 34 recall
#   points 0..0.33, 2/3 for the 33 points 0.34..0.66, 0 above: AP = (34 + 33 * 2/3) / 101 = 56/101.
# IoU >= 0.75: only the first TP: AP = 34/101. Over 0.50:0.95 (5 thresholds each): (56 + 34) / 2 / 101 = 45/101.
# A det that fits a real GT (IoU 0.83) and an ignore region (IoU 0.6) is matched to the GT: TP up to IoU 0.80.
PREFERS_REAL_GT = [([[0, 0, 10, 10], [0, 0, 10, 20]], [False, True], [[0, 0, 10, 12], [0, 10, 10, 20]], [0.75, 0.7])]


def _evals(case) -> list[ImageEval]:
    return [ImageEval(d, s, g, np.array(ig, bool).reshape(-1)) for g, ig, d, s in case]


def _pycocotools_ap(case) -> list[float]:
    """AP@[.5:.95], AP50, AP75 of pycocotools (ignored GT as iscrowd) on the same case."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "person"}]}
    dt = []
    for i, (g, ig, d, s) in enumerate(case, 1):
        gt["images"].append({"id": i, "width": 100, "height": 100})
        for b, crowd in zip(g, ig):
            w, h = b[2] - b[0], b[3] - b[1]
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i, "category_id": 1,
                                      "bbox": [b[0], b[1], w, h], "area": w * h, "iscrowd": int(crowd)})
        dt += [{"image_id": i, "category_id": 1, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": sc}
               for b, sc in zip(d, s)]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(dt), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats[:3]]


def test_coco_ap_with_false_positives_duplicates_and_ignore_regions_hand_computed():
    images = _evals(COCO_CASE)
    assert average_precision(images, 0.5) == pytest.approx(56 / 101)
    assert average_precision(images, 0.7) == pytest.approx(56 / 101)
    assert average_precision(images, 0.75) == pytest.approx(34 / 101)
    assert coco_ap(images) == pytest.approx(45 / 101)
    assert coco_ap(_evals(PREFERS_REAL_GT)) == pytest.approx(0.7)          # 7 of 10 thresholds at AP 1, then 0
    assert average_precision(_evals(PREFERS_REAL_GT), 0.5) == pytest.approx(1.0)


def test_coco_ap_equals_pycocotools():
    pytest.importorskip("pycocotools")     # not a dependency; the values above were cross-checked with 2.0.11
    for case in (COCO_CASE, PREFERS_REAL_GT):
        images = _evals(case)
        ours = [coco_ap(images), average_precision(images, 0.5), average_precision(images, 0.75)]
        assert ours == pytest.approx(_pycocotools_ap(case), abs=1e-9)


def test_a_detection_inside_a_large_ignore_region_is_ignored():
    # The small box inside the crowd region overlaps it by IoU 0.04 but by 1.0 of its own area: ignored, not a
    # false positive ranked first (which would give AP 0.5).
    case = [([[0, 0, 50, 50], [60, 60, 70, 70]], [True, False], [[10, 10, 20, 20], [60, 60, 70, 70]], [0.9, 0.8])]
    assert coco_ap(_evals(case)) == pytest.approx(1.0)
    assert ioa_matrix([[10, 10, 20, 20]], [[0, 0, 50, 50]])[0, 0] == pytest.approx(1.0)


def _random_case(rng: np.random.Generator, n_images: int) -> list:
    """Images with 0-5 GT boxes (about one in four a crowd region, some large), detections near GT boxes, jittered
    duplicates, boxes inside crowd regions and strays; scores distinct."""
    case = []
    for _ in range(n_images):
        n_gt = int(rng.integers(0, 6))
        xy = rng.uniform(0, 70, (n_gt, 2))
        wh = rng.uniform(8, 30, (n_gt, 2))
        crowd = rng.random(n_gt) < 0.25
        wh[crowd] *= 2
        gt = np.concatenate([xy, xy + wh], 1)
        dets = [g + rng.normal(0, 3, 4) for g in gt if rng.random() < 0.8]
        dets += [g + rng.normal(0, 6, 4) for g in gt if rng.random() < 0.3]
        dets += [np.r_[g[:2] + 2, g[:2] + 12] for g, c in zip(gt, crowd) if c]
        dets += [np.r_[p, p + rng.uniform(5, 25, 2)] for p in rng.uniform(0, 70, (int(rng.integers(0, 3)), 2))]
        dets = np.array(dets, float).reshape(-1, 4)
        dets[:, 2:] = np.maximum(dets[:, 2:], dets[:, :2] + 1)
        case.append((gt.tolist(), crowd.tolist(), dets.tolist(), rng.permutation(len(dets)) / max(len(dets), 1) + 0.01))
    return case


def test_coco_ap_equals_pycocotools_on_random_crowded_images():
    pytest.importorskip("pycocotools")
    rng = np.random.default_rng(7)
    for trial in range(5):
        case = _random_case(rng, 12)
        images = _evals(case)
        ours = [coco_ap(images), average_precision(images, 0.5), average_precision(images, 0.75)]
        assert ours == pytest.approx(_pycocotools_ap(case), abs=1e-9), f"trial {trial}"
