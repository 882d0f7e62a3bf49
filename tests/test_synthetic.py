"""The synthetic pedestrian scenes: ground truth must be exact, since every later stage is checked against it."""
import numpy as np
import pytest

from detection.body import BODY_PARTS, KP, PART_KEYPOINTS
from detection.datasets.synthetic import SpuriousCue, SyntheticConfig, render_scene, scene_rows
from detection.masks import rle_decode

CFG = SyntheticConfig(persons_per_image=(2, 6), p_occluder=0.5, p_truncated=0.3)


def _persons(n=30, cfg=CFG, seed=0):
    for i in range(n):
        scene = render_scene(cfg, seed, i)
        for obj in scene.objects:
            if obj.category == "person" and obj.bbox is not None:
                yield scene, obj


def _segment_distance(points, a, b):
    ab = b - a
    t = np.clip(((points - a) @ ab) / max(ab @ ab, 1e-9), 0, 1)
    return np.linalg.norm(points - (a + t[:, None] * ab), axis=1)


def test_same_seed_same_scene_any_order():
    a = render_scene(CFG, 7, 5)
    for i in range(5):                      # rendering other scenes first changes nothing
        render_scene(CFG, 7, i)
    b = render_scene(CFG, 7, 5)
    assert np.array_equal(a.image, b.image)
    assert scene_rows(a, "x")[0] == scene_rows(b, "x")[0]
    assert not np.array_equal(a.image, render_scene(CFG, 8, 5).image)


def test_part_masks_lie_between_their_keypoints():
    checked = 0
    for scene, person in _persons():
        H, W = scene.image.shape[:2]
        kp, h = person.keypoints, person.height_px
        for part, (first, *rest) in PART_KEYPOINTS.items():
            mask = person.part_masks[part]
            names = (first, *rest)
            idx = [KP[n] for n in names]
            if not mask.any() or (kp[idx, 2] == 0).any():
                continue                     # keypoints outside the image: nothing to compare against
            ys, xs = np.nonzero(mask)
            pix = np.stack([xs + 0.5, ys + 0.5], axis=1)
            for k in idx:                    # every keypoint lies on its part (to the pixel: tiny heads are 2 px)
                assert np.linalg.norm(pix - kp[k, :2], axis=1).min() <= 1.0, (part, names[idx.index(k)], h)
            if part == "head":
                centre = kp[idx, :2].mean(axis=0)
                assert np.linalg.norm(pix - centre, axis=1).max() <= 0.09 * h + 1.5
            elif part == "torso":
                lo, hi = kp[idx, :2].min(axis=0), kp[idx, :2].max(axis=0)
                margin = 0.08 * h + 1.5
                assert (pix >= lo - margin).all() and (pix <= hi + margin).all()
            else:                            # limbs: a capsule around the segment between the two joints
                assert _segment_distance(pix, kp[idx[0], :2], kp[idx[1], :2]).max() <= 0.05 * h + 1.5, part
            checked += 1
    assert checked > 500


def test_visibility_is_consistent():
    for scene, person in _persons(15):
        H, W = scene.image.shape[:2]
        vis_total = np.zeros((H, W), int)
        for part in BODY_PARTS:
            amodal, visible = person.part_masks[part], person.visible_part_masks[part]
            assert not (visible & ~amodal).any()            # visible pixels are part of the amodal part
            vis_total += visible
        assert vis_total.max() <= 1                        # parts of one person never claim a pixel twice
        assert vis_total.sum() == person.visible_area
        union = np.logical_or.reduce(list(person.part_masks.values()))
        assert person.occlusion == pytest.approx(1 - person.visible_area / union.sum())
        ys, xs = np.nonzero(union)                         # the box is the tight box of the in-image body
        assert person.bbox == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        for k, (x, y, v) in enumerate(person.keypoints):
            if v == 2:                                     # a visible keypoint is on a visible part of it
                parts = [p for p, kps in PART_KEYPOINTS.items() if k in [KP[n] for n in kps]]
                assert any(person.visible_part_masks[p][int(y), int(x)] for p in parts)


def test_people_never_share_visible_pixels():
    for i in range(10):
        scene = render_scene(CFG, 1, i)
        owners = sum(m.astype(int) for o in scene.objects for m in o.visible_part_masks.values())
        if isinstance(owners, np.ndarray):
            assert owners.max() <= 1


def test_dataset_covers_sizes_occlusion_truncation():
    cfg = SyntheticConfig()
    people = [(s.image.shape[0], p) for s, p in _persons(80, cfg)]
    heights = [p.height_px / H for H, p in people]
    assert min(heights) < 0.12 and max(heights) > 0.7
    assert sum(p.occlusion > 0.3 for _, p in people) >= 10
    assert sum(p.truncation > 0.1 for _, p in people) >= 5
    assert sum((p.keypoints[:, 2] == 1).any() for _, p in people) >= 10   # occluded keypoints are marked


def test_labels_match_annotations_and_spurious_cue_is_correlated():
    cue = SpuriousCue(label="bicycle", correlation=0.9)
    cfg = SyntheticConfig(spurious=cue)
    with_label, without_label = [], []
    for i in range(200):
        scene = render_scene(cfg, 3, i)
        annotations, _ = scene_rows(scene, f"s{i}")
        assert set(scene.labels) == {a["category"] for a in annotations}
        (with_label if "bicycle" in scene.labels else without_label).append(scene.spurious_cue)
    assert len(with_label) > 30 and len(without_label) > 30
    assert np.mean(with_label) > 0.8 and np.mean(without_label) < 0.2
    assert not any(render_scene(SyntheticConfig(spurious=None), 3, i).spurious_cue for i in range(20))


def test_rows_encode_the_masks():
    scene = render_scene(CFG, 0, 2)
    annotations, parts = scene_rows(scene, "img")
    persons = [a for a in annotations if a["category"] == "person"]
    assert len(parts) == 10 * len(persons)
    H, W = scene.image.shape[:2]
    obj = next(o for o in scene.objects if o.category == "person" and o.visible_area >= 10)
    row = next(p for p in parts if p["part"] == "torso")
    assert np.array_equal(rle_decode(row["rle"], H, W), obj.part_masks["torso"])
    assert row["visible_area"] == obj.visible_part_masks["torso"].sum()


def test_config_rejects_bad_ranges():
    with pytest.raises(ValueError, match="persons_per_image"):
        SyntheticConfig(persons_per_image=(4, 1))
    with pytest.raises(ValueError, match="not one of"):
        SpuriousCue(label="dog")
