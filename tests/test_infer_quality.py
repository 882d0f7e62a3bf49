"""Infer's detection quality with COCO crowd regions: ignore regions, not missed persons or false positives."""
import pytest

from tasks.infer import detector_quality
from tasks.params import InferParams


def _person(bbox, crowd=False):
    return {"bbox": bbox, "iscrowd": crowd, "occlusion": 0.0, "keypoints": None, "category": "person"}


def test_a_detection_on_a_crowd_region_is_neither_a_hit_nor_a_false_positive():
    images = [{"image_id": "a", "split": "val"}]
    gt = {"a": [_person([0, 0, 100, 200], crowd=True), _person([150, 0, 250, 200])]}
    dets = {"a": [{"bbox": [10, 10, 40, 100], "score": 0.9},          # inside the crowd (IoU 0.14, IoA 1)
                  {"bbox": [150, 0, 250, 200], "score": 0.8}]}        # the one real person
    q = detector_quality(images, gt, dets, 0.25, InferParams(), with_pose=False)
    # Counting the crowd box as a false positive ranked first would give AP50 0.5; dropping the crowd annotation
    # (as infer did) does exactly that.
    assert q["ap50"] == pytest.approx(1.0)
    assert q["ap50_reasonable"] == pytest.approx(1.0)
    assert (q["persons"], q["crowd_regions"]) == (1, 1)
    assert q["recall_by_size"]["large_count"] == 1          # the crowd region is never counted as missed
