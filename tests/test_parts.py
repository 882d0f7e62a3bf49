"""Body-part masks: geometry on hand-built keypoints, keypoint sources and fallback, bad input, quality."""
import numpy as np
import pytest

from detection.body import BODY_PARTS, KP, PART_KEYPOINTS
from detection.datasets.synthetic import SyntheticConfig, render_scene, scene_rows
from detection.masks import rle_decode, rle_encode, rle_encode_at
from detection.parts import TEMPLATE_KEYPOINTS, Keypoints, PartsError, body_parts, mask_iou, paint_disjoint
from tasks.params import PartsParams
from tasks.parts import choose_keypoints, parts_shard

H, W = 240, 320
BOX = (100.0, 40.0, 160.0, 220.0)            # a 180 px tall person


def coco(xy: np.ndarray, v) -> list[float]:
    v = np.broadcast_to(np.asarray(v, float), (17,))
    return np.column_stack([xy, v]).reshape(-1).tolist()


def standing(box=BOX, v=2) -> list[float]:
    """COCO keypoints of the standing template in ``box``."""
    return coco(Keypoints.template(box).xy, v)


def test_rle_of_a_placed_crop_equals_rle_of_the_full_mask():
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = rng.integers(1, 12, 2)
        top, left = rng.integers(0, 20 - h + 1), rng.integers(0, 16 - w + 1)
        crop = rng.random((h, w)) < rng.choice([0.0, 0.3, 1.0])
        full = np.zeros((20, 16), bool)
        full[top:top + h, left:left + w] = crop
        assert rle_encode_at(crop, top, left, 20, 16).tolist() == rle_encode(full).tolist()
    with pytest.raises(ValueError, match="does not fit"):
        rle_encode_at(np.ones((3, 3), bool), 18, 0, 20, 16)


def test_parts_contain_their_keypoints_are_disjoint_and_stay_in_box_and_image():
    kps = Keypoints.from_coco(standing())
    person = body_parts(kps, BOX, (H, W), "gt")
    masks = person.full()
    assert masks.shape == (10, H, W) and person.names == BODY_PARTS
    assert masks.sum(0).max() == 1                                   # disjoint by construction
    x1, y1, x2, y2 = map(int, BOX)
    outside = masks.any(0).copy()
    outside[y1:y2, x1:x2] = False
    assert not outside.any()
    for part, mask in zip(BODY_PARTS, masks):
        idx = [KP[k] for k in PART_KEYPOINTS[part]]
        centre = kps.xy[idx].mean(0)                                 # segment midpoint / face / torso centre
        assert mask[int(centre[1]), int(centre[0])], part
        assert mask.sum() > 20, part
    assert person.visible.all()
    # Part sizes follow the person: a twice-as-tall person has ~4x the area.
    big_box = (60.0, 0.0, 180.0, 360.0)
    big = body_parts(Keypoints.from_coco(standing(big_box)), big_box, (400, 400), "gt")
    ratio = big.areas.sum() / person.areas.sum()
    assert 3.3 < ratio < 4.7


def test_rles_decode_to_the_masks():
    person = body_parts(Keypoints.from_coco(standing()), BOX, (H, W), "gt")
    for rle, mask, area in zip(person.rles(), person.full(), person.areas):
        assert np.array_equal(rle_decode(rle, H, W), mask) and area == mask.sum()


def test_person_cut_by_the_image_border_is_clipped():
    box = (280.0, 150.0, 340.0, 330.0)                               # right and bottom outside a 320x240 image
    person = body_parts(Keypoints.from_coco(standing(box)), box, (H, W), "gt")
    assert person.full().shape == (10, H, W)
    full = body_parts(Keypoints.from_coco(standing(box)), box, (400, 400), "gt")
    assert 0 < person.areas.sum() < full.areas.sum()


def test_occluded_keypoints_keep_the_mask_and_mark_it_not_visible():
    v = np.full(17, 2.0)
    v[[KP["left_knee"], KP["left_ankle"]]] = 1                       # occluded but placed
    v[[KP["right_wrist"]]] = 0                                       # not placed at all
    person = body_parts(Keypoints.from_coco(coco(Keypoints.template(BOX).xy, v)), BOX, (H, W), "gt")
    by = dict(zip(BODY_PARTS, zip(person.visible, person.areas)))
    assert by["left_lower_leg"][0] is np.False_ and by["left_lower_leg"][1] > 0
    assert by["left_upper_leg"][0] is np.False_                      # its knee is occluded
    assert by["right_lower_arm"] == (False, 0)                       # no wrist: no guess
    assert by["right_upper_arm"][0] and by["head"][0] and by["torso"][0]


def test_truncated_person_keeps_a_torso_down_to_the_image_edge():
    v = np.full(17, 2.0)
    v[KP["left_hip"]:] = 0                                           # hips, knees, ankles below the image
    box = (80.0, 150.0, 180.0, 240.0)                               # a 250 px person, cut at the chest
    kps = Keypoints.from_coco(coco(Keypoints.template((80.0, 150.0, 180.0, 400.0)).xy, v))
    assert (kps.xy[KP["left_hip"]:, 1] > H).all()
    person = body_parts(kps, box, (H, W), "gt")
    by = dict(zip(BODY_PARTS, person.full()))
    assert by["torso"].sum() > 300 and by["torso"][-1].any()        # reaches the bottom row
    assert all(by[p].sum() == 0 for p in BODY_PARTS if "leg" in p)


def test_grouping_and_context():
    person = body_parts(Keypoints.from_coco(standing()), BOX, (H, W), "gt")
    coarse = person.grouped("parts4", context=True)
    assert coarse.names == ("head", "torso", "arms", "legs", "context")
    masks = coarse.full()
    assert masks.sum(0).max() == 1
    x1, y1, x2, y2 = map(int, BOX)
    assert masks[:, y1:y2, x1:x2].any(0).all()                      # body + context tile the box
    assert masks[3].sum() == person.full()[[6, 7, 8, 9]].sum()
    with pytest.raises(ValueError, match="unknown part grouping"):
        person.grouped("parts3")


@pytest.mark.parametrize("box, kind", [((10, 10, 10.5, 50), "degenerate_box"), ((400, 10, 450, 90), "outside_image"),
                                       ((10, 10, float("nan"), 50), "bad_box")])
def test_bad_boxes(box, kind):
    with pytest.raises(PartsError) as err:
        body_parts(Keypoints.template((0, 0, 10, 10)), box, (H, W), "template")
    assert err.value.error_type == kind


def test_nan_keypoints():
    flat = standing()
    flat[3 * KP["nose"]] = float("nan")
    with pytest.raises(PartsError, match="NaN") as err:
        Keypoints.from_coco(flat)
    assert err.value.error_type == "bad_keypoints"


def _item(persons=(), pose=(), detections=()):
    return {"image": {"image_id": "img", "uri": "img.png", "height": H, "width": W}, "persons": list(persons),
            "pose": list(pose), "detections": list(detections), "gt_parts": []}


def test_keypoint_sources_in_order_of_preference():
    cfg = PartsParams()
    gt_person = {"ann_id": "a0", "bbox": list(BOX), "keypoints": standing(), "iscrowd": False, "occlusion": 0.0}
    pose_kps = coco(Keypoints.template(BOX).xy + 2, 0.9)
    pose_det = {"det_id": "p0", "bbox": [101, 41, 161, 221], "keypoints": pose_kps}
    shifted = [102, 42, 162, 222]
    # A GT person uses its own keypoints; a detection borrows those of the GT person it overlaps.
    assert choose_keypoints(BOX, gt_person, _item([gt_person], [pose_det]), cfg)[1] == "gt"
    assert choose_keypoints(shifted, None, _item([gt_person], [pose_det]), cfg)[1] == "gt"
    # No GT keypoints (or too few): the pose model's matching detection.
    kps, source = choose_keypoints(shifted, None, _item([], [pose_det]), cfg)
    assert source == "pose" and np.allclose(kps.xy, Keypoints.template(BOX).xy + 2)
    few = {**gt_person, "keypoints": coco(Keypoints.template(BOX).xy, [2, 2] + [0] * 15)}
    assert choose_keypoints(BOX, few, _item([few], [pose_det]), cfg)[1] == "pose"
    # Unconfident pose keypoints, or no pose box overlapping: the template.
    weak = {**pose_det, "keypoints": coco(Keypoints.template(BOX).xy, 0.1)}
    assert choose_keypoints(shifted, None, _item([], [weak]), cfg)[1] == "template"
    far = {**pose_det, "bbox": [0, 0, 30, 60]}
    kps, source = choose_keypoints(shifted, None, _item([], [far]), cfg)
    assert source == "template" and kps.located.all()


def test_shard_records_bad_detections_and_completes_the_rest(tmp_path):
    import pyarrow.parquet as pq

    gt_person = {"ann_id": "a0", "bbox": list(BOX), "keypoints": standing(), "iscrowd": False, "occlusion": 0.0}
    dets = [{"det_id": "d-ok", "model_id": "m", "bbox": [102, 42, 162, 222]},
            {"det_id": "d-flat", "model_id": "m", "bbox": [50, 50, 50, 90]},
            {"det_id": "d-out", "model_id": "m", "bbox": [-90, 10, -20, 90]}]
    nan_pose = {"det_id": "p0", "bbox": [200, 40, 260, 220], "keypoints": [float("nan")] * 51}
    dets.append({"det_id": "d-nan", "model_id": "m", "bbox": [200, 40, 260, 220]})
    out = parts_shard.fn([_item([gt_person], [nan_pose], dets)], PartsParams(), str(tmp_path / "s"))
    parts = pq.read_table(f"{out}/parts.parquet")
    errors = pq.read_table(f"{out}/errors.parquet").to_pylist()
    assert sorted(set(parts["det_id"].to_pylist())) == ["a0", "d-ok"]
    assert parts.num_rows == 2 * 11                                  # 10 parts + context each
    assert {e["error_type"] for e in errors} == {"degenerate_box", "outside_image", "bad_keypoints"}
    assert all(e["stage"] == "parts" and e["image_id"] == "img" for e in errors)
    assert any("d-flat" in e["message"] for e in errors) and any("d-nan" in e["message"] for e in errors)


def test_masks_from_ground_truth_keypoints_match_the_synthetic_part_masks():
    cfg = SyntheticConfig(persons_per_image=(3, 5), person_height=(0.3, 0.9), p_occluder=0.0)
    ious = []
    for index in range(4):
        scene = render_scene(cfg, seed=3, index=index)
        anns, gt_parts = scene_rows(scene, f"s{index}")
        for ann in anns:
            if ann["category"] != "person":
                continue
            gt = np.stack([rle_decode(g["rle"], cfg.height, cfg.width) for g in gt_parts
                           if g["ann_id"] == ann["ann_id"]])
            person = body_parts(Keypoints.from_coco(ann["keypoints"]), ann["bbox"], (cfg.height, cfg.width), "gt")
            iou = mask_iou(person.full(), paint_disjoint(gt))
            ious.extend(iou[~np.isnan(iou)])
            template = body_parts(Keypoints.template(ann["bbox"]), ann["bbox"], (cfg.height, cfg.width), "template")
            assert np.nanmean(mask_iou(template.full(), paint_disjoint(gt))) < np.nanmean(iou)
    assert len(ious) > 50 and np.mean(ious) > 0.8


def test_template_is_a_standing_person():
    assert TEMPLATE_KEYPOINTS[:, 1].min() > 0 and TEMPLATE_KEYPOINTS[:, 1].max() < 1
    kps = Keypoints.template(BOX)
    assert kps.xy[KP["left_shoulder"], 0] > kps.xy[KP["right_shoulder"], 0]      # faces the camera
    assert kps.xy[KP["nose"], 1] < kps.xy[KP["left_hip"], 1] < kps.xy[KP["left_ankle"], 1]
