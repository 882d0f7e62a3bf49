"""Annotation decoding on awkward input (issue 16, items 7 and 8): boxes and keypoints outside the image, YOLO-pose
visibility, id and key fields of COCO files, odd YOLO label lines. Each is handled right, or refused naming the
file and entry, or recorded in ``errors``."""
import json

import pytest

from detection.body import KP
from detection.datasets.coco import read_coco
from detection.datasets.records import AnnotationError
from detection.datasets.tables import DatasetTables
from detection.datasets.yolo import label_path, read_yolo
from detection.evaluation import ImageEval, average_precision
from tests.helpers import person_keypoints, write_image


def _coco(tmp_path, annotations, *, size=True, categories=None, images=None):
    write_image(tmp_path / "images" / "a.png", size=(64, 48))
    img = {"id": 1, "file_name": "a.png", **({"width": 64, "height": 48} if size else {})}
    doc = {"images": images if images is not None else [img],
           "categories": categories or [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
           "annotations": annotations}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(doc))
    return path, tmp_path / "images"


def _person(i, bbox, **kw):
    return {"id": i, "image_id": 1, "category_id": 1, "bbox": bbox, "iscrowd": 0, **kw}


def _types(listing):
    return sorted((e["error_type"], e["image_id"]) for e in listing.errors)


# ------------------------------------------------------------------------------------------ outside the image


@pytest.mark.parametrize("size", [True, False])          # width/height in the JSON, or read from the file
def test_coco_boxes_outside_the_image_are_clipped_or_left_out_and_recorded(tmp_path, size):
    """64x48 image: [50, 10, 30, 30] reaches x = 80, [100, 10, 10, 20] is wholly outside. A perfect detector
    returning the visible part [50, 10, 64, 40] scored AP50 0.000 against the unclipped boxes; right: 1.0."""
    ann, img_dir = _coco(tmp_path, [_person(1, [50, 10, 30, 30]), _person(2, [100, 10, 10, 20])], size=size)
    listing = read_coco(ann, img_dir)
    assert [a["bbox"] for a in listing.annotations] == [[50, 10, 64, 40]]
    assert listing.annotations[0]["area"] == pytest.approx(14 * 30)        # no 'area' given: the clipped box's
    assert _types(listing) == [("box_clipped", "1"), ("box_outside_image", "1")]
    clipped = next(e for e in listing.errors if e["error_type"] == "box_clipped")
    assert "ann.json" in clipped["uri"] and "annotations[0] (id=1)" in clipped["message"]
    assert "[50, 10, 64, 40]" in clipped["message"]
    gt = [a["bbox"] for a in listing.annotations if a["category"] == "person"]
    ap = average_precision([ImageEval(det_boxes=[[50, 10, 64, 40]], det_scores=[0.9], gt_boxes=gt)], 0.5)
    assert ap == pytest.approx(1.0)


def test_coco_given_area_is_kept_and_rounding_level_excess_is_not_recorded(tmp_path):
    ann, img_dir = _coco(tmp_path, [_person(1, [0, 0, 64.004, 48], area=100.0), _person(2, [3, 3, 0, 5])])
    listing = read_coco(ann, img_dir)
    assert [a["bbox"] for a in listing.annotations] == [[0, 0, 64, 48]]
    assert listing.annotations[0]["area"] == 100.0
    assert _types(listing) == [("box_empty", "1")]                        # zero width: left out, recorded


def test_coco_keypoints_outside_the_image_become_unlabelled_and_are_recorded(tmp_path):
    kp = person_keypoints(1, 2)
    kp[3 * KP["left_wrist"]:3 * KP["left_wrist"] + 2] = [70.0, 20.0]      # x beyond the 64 px width, v = 2
    kp[3 * KP["nose"] + 2] = 1                                              # occluded: kept as 1
    ann, img_dir = _coco(tmp_path, [_person(1, [1, 2, 10, 26], keypoints=kp)])
    row = read_coco(ann, img_dir).annotations[0]
    assert row["keypoints"][3 * KP["left_wrist"]:3 * KP["left_wrist"] + 3] == [0, 0, 0]
    assert row["keypoints"][3 * KP["nose"] + 2] == 1 and row["num_keypoints"] == 15
    listing = read_coco(ann, img_dir)
    assert _types(listing) == [("keypoints_outside_image", "1")] and "left_wrist" in listing.errors[0]["message"]


def _yolo(tmp_path, lines, *, pose=None, names="[person, car]", extra=""):
    img = write_image(tmp_path / "images" / "train" / "a.png", size=(64, 48))
    label_path(img).parent.mkdir(parents=True, exist_ok=True)
    label_path(img).write_text("\n".join(lines) + "\n")
    data = tmp_path / "data.yaml"
    data.write_text(f"path: .\ntrain: images/train\nnames: {names}\n" + (f"kpt_shape: {pose}\n" if pose else "")
                    + extra)
    return data


def test_yolo_boxes_outside_the_image_are_clipped_or_left_out_and_recorded(tmp_path):
    """Centre x 65/64 (normalised > 1): [57, 12, 73, 36] -> [57, 12, 64, 36]; a wholly outside box and a line in
    pixels instead of normalised units are left out; each is an errors row naming the label file and line."""
    data = _yolo(tmp_path, ["0 1.015625 0.5 0.25 0.5", "0 1.5 0.5 0.1 0.1", "0 32 24 10 10", "1 0.5 0.5 0.5 0.5"])
    listing = read_yolo(data, splits=("train",))
    assert [a["bbox"] for a in listing.annotations] == [pytest.approx([57, 12, 64, 36]),
                                                        pytest.approx([16, 12, 48, 36])]
    assert listing.annotations[0]["area"] == pytest.approx(7 * 24)
    assert [(e["error_type"], e["message"].split(": ")[1]) for e in listing.errors] == [
        ("box_clipped", "line 1"), ("box_outside_image", "line 2"), ("box_outside_image", "line 3")]
    assert all(e["uri"].endswith("labels/train/a.txt") and e["image_id"] == "images/train/a.png"
               for e in listing.errors)


# ------------------------------------------------------------------------------------------ YOLO-pose visibility


def _pose_line(vis, kpt_dim=3, xy=(0.25, 0.5)):
    kp = []
    for v in vis:
        kp += [*xy, v] if kpt_dim == 3 else list(xy)
    return "0 0.5 0.5 0.5 0.5 " + " ".join(f"{x:g}" for x in kp)


def test_yolo_pose_visibility_is_read_as_written(tmp_path):
    """kpt_shape [17, 3], v = 1 (labelled, occluded) for the left elbow and wrist: was read back as v = 2."""
    vis = [2] * 17
    vis[KP["left_elbow"]] = vis[KP["left_wrist"]] = 1
    vis[KP["right_ear"]] = 0
    data = _yolo(tmp_path, [_pose_line(vis)], pose="[17, 3]")
    kp = read_yolo(data, splits=("train",)).annotations[0]["keypoints"]
    assert kp[2::3] == vis
    assert kp[3 * KP["left_elbow"]:3 * KP["left_elbow"] + 2] == pytest.approx([16, 24])
    assert kp[3 * KP["right_ear"]:3 * KP["right_ear"] + 3] == [0, 0, 0]


def test_yolo_pose_two_column_keypoints_labelled_where_given(tmp_path):
    """kpt_shape [17, 2]: no flag; (0, 0) is how an unlabelled point is written, negative too; others visible."""
    line = _pose_line([0] * 17, kpt_dim=2).split()
    line[5 + 2 * KP["nose"]:5 + 2 * KP["nose"] + 2] = ["0", "0"]
    line[5 + 2 * KP["left_eye"]:5 + 2 * KP["left_eye"] + 2] = ["-1", "0.5"]
    data = _yolo(tmp_path, [" ".join(line)], pose="[17, 2]")
    row = read_yolo(data, splits=("train",)).annotations[0]
    vis = [2] * 17
    vis[KP["nose"]] = vis[KP["left_eye"]] = 0
    assert row["keypoints"][2::3] == vis and row["num_keypoints"] == 15


def test_yolo_pose_bad_visibility_and_outside_keypoints(tmp_path):
    data = _yolo(tmp_path, [_pose_line([2] * 16 + [3])], pose="[17, 3]")
    with pytest.raises(AnnotationError, match=r"a\.txt: line 1: keypoint 17 \(right_ankle\): visibility must be"):
        read_yolo(data, splits=("train",))
    line = _pose_line([2] * 17).split()
    line[5 + 3 * KP["right_wrist"]] = "1.2"                                # x = 76.8 px in a 64 px image
    data = _yolo(tmp_path, [" ".join(line)], pose="[17, 3]")
    listing = read_yolo(data, splits=("train",))
    assert listing.annotations[0]["keypoints"][3 * KP["right_wrist"] + 2] == 0
    assert [e["error_type"] for e in listing.errors] == ["keypoints_outside_image"]
    assert "right_wrist" in listing.errors[0]["message"]


def test_own_yolo_pose_export_keeps_visibility_flags(tmp_path):
    """write_yolo_dataset writes 0/1/2; reading the export back gives the same boxes, keypoints and flags."""
    from detection.datasets.yolo_export import write_yolo_dataset

    write_image(tmp_path / "src" / "a.png", size=(64, 48))
    kp = person_keypoints(1, 2)
    kp[3 * KP["left_elbow"] + 2] = kp[3 * KP["left_wrist"] + 2] = 1
    images = [{"image_id": "a", "uri": str(tmp_path / "src" / "a.png"), "width": 64, "height": 48, "split": "train"}]
    anns = [{"image_id": "a", "ann_id": "a#0", "category": "person", "bbox": [1, 2, 11, 28], "area": 200.0,
             "iscrowd": False, "keypoints": kp, "num_keypoints": 16}]
    tables = DatasetTables.from_rows(images=images, annotations=anns)
    data = write_yolo_dataset(tables.images, tables.annotations, tmp_path / "yolo", ["person"], pose=True)
    back = read_yolo(data, splits=("train",))
    assert not back.errors
    row = back.annotations[0]
    assert row["bbox"] == pytest.approx([1, 2, 11, 28], abs=1e-3)
    assert row["keypoints"] == pytest.approx(kp, abs=1e-3)
    assert row["keypoints"][3 * KP["left_wrist"] + 2] == 1


def test_yolo_export_refuses_geometry_outside_the_image(tmp_path):
    from detection.datasets.yolo_export import write_yolo_dataset

    write_image(tmp_path / "src" / "a.png", size=(64, 48))
    images = [{"image_id": "a", "uri": str(tmp_path / "src" / "a.png"), "width": 64, "height": 48, "split": "train"}]
    anns = [{"image_id": "a", "ann_id": "a#7", "category": "person", "bbox": [50, 10, 80, 40], "area": 900.0,
             "iscrowd": False}]
    tables = DatasetTables.from_rows(images=images, annotations=anns)
    with pytest.raises(ValueError, match=r"image 'a' annotation 'a#7': box .* does not lie in the 64x48 image"):
        write_yolo_dataset(tables.images, tables.annotations, tmp_path / "yolo", ["person"])


# ------------------------------------------------------------------------------------------ COCO ids and keys


def test_coco_string_ids_work(tmp_path):
    ann, img_dir = _coco(tmp_path, [dict(_person("p1", [1, 2, 10, 10]), image_id="img-a")],
                         images=[{"id": "img-a", "file_name": "a.png", "width": 64, "height": 48}],
                         categories=[{"id": "person", "name": "person"}])
    doc = json.loads(ann.read_text())
    doc["annotations"][0]["category_id"] = "person"
    ann.write_text(json.dumps(doc))
    listing = read_coco(ann, img_dir)
    assert listing.images[0].image_id == "img-a" and listing.annotations[0]["ann_id"] == "p1"


@pytest.mark.parametrize("change, where, why", [
    # an id that is the same string as another image's id would give two images one image_id in our tables
    ({"images": [{"id": 1, "file_name": "a.png"}, {"id": "1", "file_name": "a.png"}]},
     r"images\[1\] \(id='1'\)", "duplicate image id: 1 is the same id as a string"),
    ({"images": [{"id": 1.0, "file_name": "a.png"}]}, r"images\[0\] \(id=1.0\)", "integer or string 'id'"),
    ({"images": [{"id": 1, "file_name": "a.png", "width": True, "height": 48}]}, r"images\[0\]", "positive integers"),
    ({"ann": {"image_id": "1"}}, r"annotations\[0\] \(id=1\)", "image_id '1' is not in 'images' ('images' has 1"),
    ({"ann": {"category_id": 9}}, r"annotations\[0\]", "category_id 9 is not in 'categories'"),
    ({"ann": {"iscrowd": "0"}}, r"annotations\[0\]", "iscrowd must be 0 or 1"),
    ({"ann": {"iscrowd": 2}}, r"annotations\[0\]", "iscrowd must be 0 or 1"),
    ({"ann": {"area": "big"}}, r"annotations\[0\]", "area must be a finite number"),
    ({"ann": {"area": -5}}, r"annotations\[0\]", "area must be a finite number"),
    ({"ann": {"bbox": [1, 2, -3, 4]}}, r"annotations\[0\]", "w, h >= 0"),
    ({"ann": {"occlusion": "high"}}, r"annotations\[0\]", "occlusion must be a number in [0, 1]"),
    ({"ann": {"keypoints": [1, 2, 3] * 17}}, r"annotations\[0\]", "visibility must be 0, 1 or 2"),
    ({"ann": {"id": [1]}}, r"annotations\[0\]", "id must be an integer or string"),
    ({"second": {"id": 1}}, r"annotations\[1\] \(id=1\)", "duplicate annotation id '1' (also annotations[0]"),
    ({"second": {"id": "1"}}, r"annotations\[1\] \(id='1'\)", "duplicate annotation id '1'"),
    ({"categories": [{"id": 1, "name": "person"}, {"id": 1, "name": "car"}]}, r"categories\[1\] \(id=1\)",
     "duplicate category id"),
    ({"categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "person"}]}, r"categories\[1\] \(id=2\)",
     "duplicate category name 'person'"),
    ({"categories": [{"id": 1, "name": "person", "keypoints": 17}]}, r"categories\[0\]", "keypoints"),
])
def test_coco_broken_ids_and_keys_are_named(tmp_path, change, where, why):
    anns = [dict(_person(1, [1, 2, 10, 10]), **change.get("ann", {}))]
    if "second" in change:
        anns.append(dict(_person(2, [5, 5, 10, 10]), **change["second"]))
    ann, img_dir = _coco(tmp_path, anns, categories=change.get("categories"), images=change.get("images"))
    with pytest.raises(AnnotationError, match=where) as info:
        read_coco(ann, img_dir)
    assert str(ann) in str(info.value) and why in str(info.value)


def test_coco_iscrowd_as_bool_is_read(tmp_path):
    ann, img_dir = _coco(tmp_path, [_person(1, [1, 2, 10, 10], iscrowd=True), _person(2, [1, 2, 10, 10],
                                                                                     iscrowd=False)])
    assert [a["iscrowd"] for a in read_coco(ann, img_dir).annotations] == [True, False]


def test_coco_ids_given_and_defaulted_must_not_collide(tmp_path):
    """An annotation without 'id' gets its index as id; another annotation's explicit id 0 is then a duplicate."""
    second = _person(None, [5, 5, 10, 10])
    del second["id"]
    ann, img_dir = _coco(tmp_path, [_person("1", [1, 2, 10, 10]), second])
    with pytest.raises(AnnotationError, match=r"annotations\[1\]: duplicate annotation id '1'"):
        read_coco(ann, img_dir)
    ann, img_dir = _coco(tmp_path, [second, _person(0, [1, 2, 10, 10])])
    with pytest.raises(AnnotationError, match=r"annotations\[1\] \(id=0\): duplicate annotation id '0'"):
        read_coco(ann, img_dir)


# ------------------------------------------------------------------------------------------ YOLO label lines


@pytest.mark.parametrize("line, why", [
    ("2 0.5 0.5 0.2 0.2", "class 2 is not in the data yaml's names (ids 0..1)"),
    ("-1 0.5 0.5 0.2 0.2", "class -1 is not in"),
    ("0.5 0.5 0.5 0.2 0.2", "class 0.5 is not in"),
    ("0 0.5 0.5 0.2 0.2 1", "expected 5 or an odd number >= 7 finite numbers"),
    ("0 0.5 0.5 0.2", "expected 5 or an odd number >= 7"),
    ("0 0.5 0.5 -0.2 0.2", "negative box size"),
    ("0 0.5 nan 0.2 0.2", "finite"),
])
def test_yolo_malformed_lines_are_named(tmp_path, line, why):
    data = _yolo(tmp_path, ["0 0.5 0.5 0.2 0.2", line])
    with pytest.raises(AnnotationError, match=r"a\.txt: line 2: ") as info:
        read_yolo(data, splits=("train",))
    assert why in str(info.value)


def test_yolo_polygon_lines_become_their_bounding_box(tmp_path):
    """Segment labels (class x1 y1 ... xn yn), as ultralytics reads them for detection."""
    data = _yolo(tmp_path, ["1 0.25 0.25 0.75 0.25 0.5 0.75", "0 0.5 0.5 0.2 0.2"])
    rows = read_yolo(data, splits=("train",)).annotations
    assert [(r["category"], r["bbox"]) for r in rows] == [("car", pytest.approx([16, 12, 48, 36])),
                                                          ("person", pytest.approx([25.6, 19.2, 38.4, 28.8]))]


def test_yolo_duplicate_lines_and_images_are_left_out_and_recorded(tmp_path):
    """ultralytics drops repeated label lines; an image listed in two splits would get two rows with one id."""
    data = _yolo(tmp_path, ["0 0.5 0.5 0.2 0.2", "0 0.5 0.5 0.2 0.2", "0 0.5 0.5 0.2 0.3"],
                 extra="val: images/train\n")
    listing = read_yolo(data)
    assert [r.image_id for r in listing.images] == ["images/train/a.png"] and listing.images[0].split == "train"
    assert len(listing.annotations) == 2
    assert sorted(e["error_type"] for e in listing.errors) == ["duplicate_image", "duplicate_label"]
    dup = next(e for e in listing.errors if e["error_type"] == "duplicate_label")
    assert "line 2: repeats line 1" in dup["message"]


def test_yolo_label_with_byte_order_mark_and_names_mapping(tmp_path):
    data = _yolo(tmp_path, ["0 0.5 0.5 0.2 0.2"], names="{0: person, 1: car}")
    label = tmp_path / "labels" / "train" / "a.txt"
    label.write_bytes(b"\xef\xbb\xbf" + label.read_bytes())
    assert [a["category"] for a in read_yolo(data, splits=("train",)).annotations] == ["person"]


@pytest.mark.parametrize("names, why", [("{a: person}", "names['a']"), ("{0: person, 1: person}", "duplicate class"),
                                        ("7", "must be a list or a mapping")])
def test_yolo_bad_names_are_named(tmp_path, names, why):
    data = _yolo(tmp_path, ["0 0.5 0.5 0.2 0.2"], names=names)
    with pytest.raises(AnnotationError, match="data.yaml") as info:
        read_yolo(data, splits=("train",))
    assert why in str(info.value)


def test_synthetic_scenes_export_to_yolo_and_read_back_unchanged(tmp_path):
    """The project's own data (truncated people included) fits its images: nothing clipped, refused or recorded,
    and a pose export reads back with the same boxes, keypoints and 0/1/2 flags."""
    from detection.datasets.synthetic import SyntheticConfig, generate_images
    from detection.datasets.yolo_export import write_yolo_dataset

    cfg = SyntheticConfig(n_images=6, p_truncated=0.6)
    images, anns, _ = generate_images(cfg, 3, range(6), str(tmp_path / "images"))
    tables = DatasetTables.from_rows(images=images, annotations=anns)
    data = write_yolo_dataset(tables.images, tables.annotations, tmp_path / "yolo", ["person"], pose=True)
    back = read_yolo(data, splits=tuple(sorted({r["split"] for r in images})))
    assert not back.errors
    persons = [a for a in tables.annotations.to_pylist() if a["category"] == "person" and not a["iscrowd"]
               and a["keypoints"] is not None]
    assert len(back.annotations) == len(persons) > 0
    key = lambda a: (a["image_id"].split("/")[-1].split(".")[0], a["bbox"][0])   # noqa: E731
    for ours, theirs in zip(sorted(persons, key=key), sorted(back.annotations, key=key)):
        assert theirs["bbox"] == pytest.approx(ours["bbox"], abs=2e-3)
        assert theirs["keypoints"] == pytest.approx(ours["keypoints"], abs=2e-3)
    flags = {v for a in back.annotations for v in a["keypoints"][2::3]}
    assert flags == {0, 1, 2}


def test_pull_tables_carry_the_clipped_boxes_and_their_records(tmp_path):
    """What the pull stage publishes: the clipped box in ``annotations``, the records in ``errors``."""
    from detection.datasets.imageio import ImageLimits
    from tasks.pull import SHARDS_DIR, check_images_shard, merge_shards, summary

    ann, img_dir = _coco(tmp_path, [_person(1, [50, 10, 30, 30]), _person(2, [100, 10, 10, 20])])
    listing = read_coco(ann, img_dir)
    staging = tmp_path / "staging"
    check_images_shard.fn(listing.images, ImageLimits(), str(staging / SHARDS_DIR / "00000000"))
    tables = merge_shards(staging, listing)
    assert tables.annotations["bbox"].to_pylist() == [[50, 10, 64, 40]]
    assert tables.errors["error_type"].to_pylist() == ["box_clipped", "box_outside_image"]
    assert summary(tables)["errors_by_type"] == {"box_clipped": 1, "box_outside_image": 1}
