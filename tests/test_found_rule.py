"""One rule for found / missed pedestrians (detection.evaluation.found): the explain stage's targets and the infer
stage's recall match detections to ground truth the same way, so the report's missed count is GT - true positives."""
import numpy as np
import pytest

from detection.datasets.tables import rows_to_table
from detection.evaluation import ImageEval, recall_by
from tasks.explain import build_targets
from tasks.infer import detector_quality
from tasks.params import Params

# A crowded scene: two GT persons side by side and one detection overlapping both with IoU >= 0.5.
GT = {"a": [0.0, 0.0, 10.0, 20.0], "b": [3.0, 0.0, 13.0, 20.0]}
DETECTIONS = [([1.0, 0.0, 11.0, 20.0], 0.9),      # IoU 0.82 with a, 0.67 with b: one detection, one person
              ([2.0, 0.0, 12.0, 20.0], 0.1)]      # below conf (0.25): IoU 0.67 with a, 0.82 with b


def _params() -> Params:
    return Params.model_validate({"explain": {"min_height": 0, "jobs": [
        {"method": "occlusion", "targets": "persons"}, {"method": "occlusion", "targets": "detections"}]}})


def _tables(spec_id: str):
    images = rows_to_table([{"image_id": "img", "uri": "img.png", "split": "val", "width": 20, "height": 20,
                             "labels": None, "spurious_cue": None}], "images")
    annotations = rows_to_table([{"image_id": "img", "ann_id": k, "category": "person", "bbox": b, "iscrowd": False,
                                  "occlusion": 0.1 * i} for i, (k, b) in enumerate(GT.items())], "annotations")
    detections = rows_to_table([{"model_id": spec_id, "image_id": "img", "det_id": f"d{k}", "category": "person",
                                 "score": s, "above_conf": s >= 0.25, "bbox": b, "class_probs": [1.0]}
                                for k, (b, s) in enumerate(DETECTIONS)], "detections")
    return images, annotations, detections


def test_the_report_missed_count_is_gt_minus_true_positives_in_a_crowded_scene():
    params = _params()
    spec = params.explain_detector()
    images, annotations, detections = _tables(spec.id)
    targets = build_targets(params, images, annotations, detections, []).to_pylist()
    persons = {t["target_id"]: t for t in targets if t["kind"] == "persons"}
    # before: both found (each overlaps the 0.9 detection with IoU >= 0.5), so 0 missed against a recall of 1/2
    assert {k: t["found"] for k, t in persons.items()} == {"a": True, "b": False}
    # score: the matched detection's (b's only candidate above conf went to a; its own match scores 0.1)
    assert persons["a"]["score"] == pytest.approx(0.9) and persons["b"]["score"] == pytest.approx(0.1)
    dets = [t for t in targets if t["kind"] == "detections"]
    assert [(t["target_id"], t["found"], t["occlusion"]) for t in dets] == [("d0", True, 0.0)]

    gt = {"img": annotations.to_pylist()}
    found_dets = {"img": detections.to_pylist()}
    quality = detector_quality(images.to_pylist(), gt, found_dets, spec.conf, params.infer, with_pose=False)
    recall = quality["recall_by_size"]
    true_positives = round(recall["tiny"] * recall["tiny_count"])
    assert (recall["tiny"], recall["tiny_count"]) == (0.5, 2)
    missed = sum(not t["found"] for t in persons.values())
    assert missed == len(GT) - true_positives == 1


def test_found_is_the_one_to_one_match_above_the_score_threshold():
    from detection.evaluation import found, match

    img = ImageEval([b for b, _ in DETECTIONS], [s for _, s in DETECTIONS], list(GT.values()))
    m = match(img)
    assert m.gt_det.tolist() == [0, 1] and m.det_gt.tolist() == [0, 1]
    assert found(img, 0.25).tolist() == [True, False]
    assert found(img, 0.05).tolist() == [True, True]
    assert found(img, 0.95).tolist() == [False, False]
    # recall_by applies the same rule
    img.gt_attrs = {"h": np.array([20.0, 20.0])}
    assert recall_by([img], "h", {"all": (0, 100)}, min_score=0.25) == {"all": 0.5, "all_count": 2}
    # a detection with no GT, a GT with no detection, an empty image
    empty = ImageEval([], [], [[0, 0, 5, 5]])
    assert found(empty, 0.0).tolist() == [False] and match(empty).gt_score.tolist() == [-np.inf]
    assert found(ImageEval([[0, 0, 5, 5]], [0.9], []), 0.0).tolist() == []


def test_keypoints_are_scored_against_the_matched_detection_only():
    params = _params()
    spec = params.explain_detector()
    images, annotations, detections = _tables(spec.id)
    kp_a = np.column_stack([np.linspace(1, 9, 17), np.linspace(1, 19, 17), np.full(17, 2.0)])
    kp_b = kp_a + [5.0, 0.0, 0.0]           # b's keypoints 5 px right of a's: beyond 0.2 * 20 px = 4 px
    gt = {"img": [{**a, "keypoints": kp.ravel().tolist()}
                  for a, kp in zip(annotations.to_pylist(), (kp_a, kp_b))]}
    dets = {"img": [{**d, "keypoints": kp_a.ravel().tolist()} for d in detections.to_pylist()]}
    quality = detector_quality(images.to_pylist(), gt, dets, spec.conf, params.infer, with_pose=True)
    # before: b (missed: its only detection above conf is a's) was scored against a's keypoints too: 17 of 34
    assert (quality["pck02"], quality["pck02_keypoints"]) == (1.0, 17)


def test_a_detection_on_a_crowd_region_is_neither_a_true_nor_a_false_positive():
    params = _params()
    spec = params.explain_detector()
    images, _, _ = _tables(spec.id)
    annotations = rows_to_table([
        {"image_id": "img", "ann_id": "crowd", "category": "person", "bbox": [0.0, 0.0, 20.0, 20.0], "iscrowd": True,
         "occlusion": None}], "annotations")
    detections = rows_to_table([{"model_id": spec.id, "image_id": "img", "det_id": "d0", "category": "person",
                                 "score": 0.9, "above_conf": True, "bbox": [2.0, 2.0, 8.0, 12.0],
                                 "class_probs": [1.0]}], "detections")
    targets = build_targets(params, images, annotations, detections, []).to_pylist()
    assert [t["kind"] for t in targets] == ["detections"]               # a crowd region is never a target
    assert (targets[0]["found"], targets[0]["label_present"]) == (None, None)   # as infer's AP: ignored


def test_targets_built_in_image_batches_equal_one_batch(monkeypatch):
    """build_targets works a batch of images at a time (flat flow memory); batches of 1 or 2 images (an image with
    no persons or detections among them) give the rows, in the order, of one batch of all."""
    import pyarrow as pa

    import tasks.explain as explain

    params = _params()
    images, annotations, detections = _tables(params.explain_detector().id)
    copies = [(t, f"img{i}") for i in range(3) for t in [(images, annotations, detections)]]
    renamed = [tuple(x.set_column(x.schema.get_field_index("image_id"), "image_id",
                                  pa.array([name] * x.num_rows, pa.string())) for x in tables)
               for tables, name in copies]
    empty = rows_to_table([{"image_id": "bare", "uri": "bare.png", "split": "val", "width": 20, "height": 20,
                            "labels": None, "spurious_cue": None}], "images")
    tables = [pa.concat_tables([r[k] for r in renamed] + ([empty] if k == 0 else [])) for k in range(3)]
    whole = build_targets(params, *tables, [])
    assert set(whole["image_id"].to_pylist()) == {"img0", "img1", "img2"} and whole.num_rows > 3
    for batch in (1, 2):
        monkeypatch.setattr(explain, "TARGETS_BATCH", batch)
        assert build_targets(params, *tables, []).equals(whole)
