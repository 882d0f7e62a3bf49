"""Per-pedestrian attributes: the synthetic generator's export (without touching its images or tables), the
attributes computed from boxes and pixels, and joining a user's table."""
import hashlib
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from detection.attributes import (
    AttributeTableError,
    attribute_frame,
    colour_name,
    computed_attributes,
    facing_name,
    join_user_attributes,
)
from detection.datasets.synthetic import (
    SyntheticConfig,
    generate_images,
    generate_images_with_attributes,
    render_scene,
    scene_rows,
)
from detection.datasets.tables import rows_to_table

CFG = SyntheticConfig(n_images=8, width=160, height=120, persons_per_image=(2, 6), p_occluder=0.5, p_truncated=0.3)
# Computed with the generator at commit 0f2bc23 (before it exported attributes): images rows (with each PNG's
# SHA-256), annotations and gt_parts of scenes 0..7 of seed 11, as sorted JSON.
REFERENCE = {
    "images": "23bbf897f5df3576071d4344fd60bf142c95764a4de7b11c2d904d3d2a131bb7",
    "annotations": "839a0325f6ddab69eb7ec6be04dfa32e72ea89068e7b5cb601e47f84941c0619",
    "gt_parts": "d74984bc133ea6bcd8333c62ca4fbdb7c065d6bdbe7090b156fe209106aeca99",
}


def _digest(rows):
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=lambda o: np.asarray(o).tolist())
                          .encode()).hexdigest()


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    return generate_images_with_attributes(CFG, 11, range(8), str(out), uri_prefix="x")


def test_exporting_attributes_changes_no_image_or_table(generated, tmp_path):
    images, anns, parts, _ = generated
    assert {"images": _digest(images), "annotations": _digest(anns), "gt_parts": _digest(parts)} == REFERENCE
    plain = generate_images(CFG, 11, range(8), str(tmp_path), uri_prefix="x")
    assert [_digest(rows) for rows in plain] == [_digest(images), _digest(anns), _digest(parts)]


def test_one_attribute_row_per_annotated_person(generated):
    _, anns, _, attrs = generated
    persons = [(a["image_id"], a["ann_id"]) for a in anns if a["category"] == "person"]
    assert [(r["image_id"], r["ann_id"]) for r in attrs] == persons
    table = rows_to_table(attrs, "attributes").to_pandas()
    assert table.notna().all().all()                      # every column filled for every person
    assert set(table["facing"]) <= {"front", "back", "left", "right"}
    assert (table["facing"] == facing_name(table["yaw_deg"].to_numpy())).all()
    assert set(table["occluder"]) <= {"none", "car", "bicycle"} and set(table["truncation_side"]) <= {
        "none", "left", "right", "bottom"}
    occlusion = pd.DataFrame(anns).set_index("ann_id").loc[table["ann_id"], "occlusion"].to_numpy()
    np.testing.assert_allclose(table["person_overlap"] + table["object_overlap"], occlusion, atol=1e-5)
    assert ((table["lighting"] > 0.85) & (table["lighting"] < 1.15)).all()


def test_drawn_attributes_are_what_was_rendered():
    cfg = SyntheticConfig(width=160, height=120, persons_per_image=(3, 3), p_occluder=1.0, p_truncated=1.0,
                          distractors_per_image=(0, 0), spurious=None)
    checked = 0
    for index in range(10):
        scene = render_scene(cfg, 2, index)
        for obj in scene.objects:
            if obj.category != "person" or obj.bbox is None:
                continue
            a = obj.attributes
            assert a["occluder"] in ("car", "bicycle")     # p_occluder = 1: everyone has one in front
            assert a["truncation_side"] in ("left", "right", "bottom")
            x0, y0, x1, y1 = obj.bbox
            if a["truncation_side"] == "left" and obj.truncation > 0.2:
                assert x0 == 0
            if a["truncation_side"] == "bottom" and obj.truncation > 0.2:
                assert y1 == 120
            assert abs(a["height_px"] - obj.height_px) < 1e-6
            checked += 1
    assert checked > 10


def test_colour_and_facing_names():
    assert colour_name([230, 20, 20]) == "red" and colour_name([20, 40, 220]) == "blue"
    assert colour_name([10, 10, 10]) == "black" and colour_name([240, 240, 240]) == "white"
    assert colour_name([128, 128, 128]) == "gray" and colour_name([30, 200, 40]) == "green"
    assert list(colour_name(np.array([[230, 20, 20], [20, 40, 220]]))) == ["red", "blue"]
    assert list(facing_name(np.array([0, 30, 90, 180, 270, 350]))) == [
        "front", "front", "right", "back", "left", "front"]


def _images_and_boxes():
    images = pd.DataFrame({"image_id": ["a", "b"], "uri": ["a.png", "missing.png"], "width": [100, 50],
                           "height": [80, 40]})
    anns = pd.DataFrame({
        "image_id": ["a", "a", "a", "a", "b"], "ann_id": ["a0", "a1", "a2", "a3", "b0"],
        "category": ["person", "person", "person", "car", "person"],
        "bbox": [[0, 10, 20, 50], [10, 10, 30, 50], [60, 40, 80, 80], [0, 0, 100, 80], [5, 5, 15, 25]],
        "iscrowd": [False, False, False, False, False],
        "occlusion": [0.0, 0.5, None, None, None], "truncation": [0.1, 0.0, None, None, None]})
    return images, anns


def test_computed_attributes_from_boxes_and_pixels():
    images, anns = _images_and_boxes()
    pixels = np.zeros((80, 100, 3), np.uint8)
    pixels[40:80, 60:80] = 255                             # a2's box white, the rest black

    def load(path):
        if path != "a.png":
            raise FileNotFoundError(path)
        return pixels

    table = computed_attributes(images, anns, load_image=load).to_pandas().set_index("ann_id")
    assert list(table.index) == ["a0", "a1", "a2", "b0"]    # persons only
    np.testing.assert_allclose(table["box_height"], [40, 40, 40, 20])
    np.testing.assert_allclose(table["aspect_ratio"], [0.5, 0.5, 0.5, 0.5])
    assert table["truncated_left"].tolist() == [True, False, False, False]
    assert table["truncated_bottom"].tolist() == [False, False, True, False]
    assert table["truncated_right"].tolist() == [False, False, False, False]
    iou = 10 * 40 / (2 * 800 - 10 * 40)                     # a0 and a1 overlap by half their width
    np.testing.assert_allclose(table["crowd_iou"], [iou, iou, 0.0, 0.0])
    assert table["crowd_neighbours"].tolist() == [1, 1, 0, 0]
    np.testing.assert_allclose(table.loc[["a0", "a2"], "brightness"], [0.0, 1.0], atol=1e-4)
    np.testing.assert_allclose(table.loc[["a0", "a2"], "box_contrast"], [0.0, 1.0], atol=1e-4)
    assert np.isnan(table.loc["b0", "brightness"])           # unreadable image: null, not a made-up value


def test_user_table_joins_and_bad_tables_are_named(tmp_path):
    images, anns = _images_and_boxes()
    frame = attribute_frame(anns)
    assert list(frame["ann_id"]) == ["a0", "a1", "a2", "b0"]
    good = tmp_path / "mine.csv"
    pd.DataFrame({"image_id": ["a", "b"], "ann_id": ["a1", "b0"], "backpack": [True, False]}).to_csv(good,
                                                                                                     index=False)
    joined = join_user_attributes(frame, good)
    assert pd.isna(joined.set_index("ann_id").loc["a0", "backpack"])
    assert joined.set_index("ann_id").loc["a1", "backpack"] == True  # noqa: E712
    pq.write_table(pa.table({"image_id": ["a"], "ann_id": ["a2"], "weather": ["rain"]}), tmp_path / "w.parquet")
    both = attribute_frame(anns, user_tables=[good, tmp_path / "w.parquet"])
    assert both.set_index("ann_id").loc["a2", "weather"] == "rain"

    no_key = tmp_path / "nokey.csv"
    pd.DataFrame({"image_id": ["a"], "object": ["a1"], "x": [1]}).to_csv(no_key, index=False)
    with pytest.raises(AttributeTableError, match=r"nokey\.csv.*ann_id"):
        join_user_attributes(frame, no_key)
    stray = tmp_path / "stray.csv"
    pd.DataFrame({"image_id": ["a", "a", "z"], "ann_id": ["a1", "zz", "z0"], "x": [1, 2, 3]}).to_csv(stray,
                                                                                                    index=False)
    with pytest.raises(AttributeTableError, match=r"stray\.csv: 2 of 3 rows match no annotation"):
        join_user_attributes(frame, stray)
    assert join_user_attributes(frame, stray, allow_unmatched=True)["x"].notna().sum() == 1
    with pytest.raises(AttributeTableError, match=r"gone\.csv.*not found"):
        join_user_attributes(frame, tmp_path / "gone.csv")
    clash = tmp_path / "clash.csv"
    pd.DataFrame({"image_id": ["a"], "ann_id": ["a1"], "occlusion": [0.3]}).to_csv(clash, index=False)
    with pytest.raises(AttributeTableError, match=r"clash\.csv.*occlusion"):
        join_user_attributes(frame, clash)


def test_scene_rows_unchanged_by_attribute_export():
    scene = render_scene(CFG, 11, 3)
    anns, _ = scene_rows(scene, "x")
    assert all("facing" not in a for a in anns)            # the annotations table is not widened
