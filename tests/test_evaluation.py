"""Detection / keypoint / multi-label metrics on hand-computed examples."""
import numpy as np
import pytest

from detection.evaluation import (ImageEval, average_precision, coco_ap, iou_matrix, multilabel_f1, pck,
                                  recall_by)


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
