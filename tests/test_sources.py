"""COCO, YOLO and folder sources on small data made here, including the broken-annotation errors."""
import json

import pytest

from detection.datasets.coco import read_coco, tables_to_coco
from detection.datasets.folder import read_folder
from detection.datasets.imageio import ImageLimits
from detection.datasets.records import AnnotationError, check_images
from detection.datasets.synthetic import SyntheticConfig, generate_images
from detection.datasets.tables import DatasetTables
from detection.datasets.yolo import label_path, read_yolo
from tests.helpers import person_keypoints, write_coco, write_image


def test_coco_with_keypoints(tmp_path):
    ann, img_dir = write_coco(tmp_path)
    listing = read_coco(ann, img_dir, split="val")
    assert [r.image_id for r in listing.images] == ["100", "101", "102"]
    assert listing.images[0].expected_size == (64, 48)
    person = listing.annotations[0]
    assert person["category"] == "person" and person["bbox"] == [1, 2, 11, 28]     # xywh -> xyxy
    assert person["keypoints"] == pytest.approx(person_keypoints(1, 2)) and person["num_keypoints"] == 16
    car = listing.annotations[1]
    assert car["category"] == "car" and car["keypoints"] is None


@pytest.mark.parametrize("broken, where, why", [
    ({"index": 3, "set": {"bbox": [1, 2, 3]}}, r"annotations\[3\] \(id=4\)", "bbox must be 4"),
    ({"index": 2, "set": {"image_id": 999}}, r"annotations\[2\] \(id=3\)", "image_id 999"),
    ({"index": 0, "set": {"keypoints": [1, 2, 2]}}, r"annotations\[0\] \(id=1\)", "keypoints must be 51"),
    ({"index": 1, "set": {"category_id": 7}}, r"annotations\[1\] \(id=2\)", "category_id 7"),
    ({"index": 1, "set": {"bbox": [0, 0, float("nan"), 1]}}, r"annotations\[1\]", "finite"),
])
def test_coco_broken_entry_is_named(tmp_path, broken, where, why):
    ann, img_dir = write_coco(tmp_path, broken=broken)
    with pytest.raises(AnnotationError, match=where) as info:
        read_coco(ann, img_dir)
    assert str(ann) in str(info.value) and why in str(info.value)


def test_coco_invalid_json_names_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{\n "images": [\n  {"id": 1,, "file_name": "a.jpg"}\n ]\n}')
    with pytest.raises(AnnotationError, match=r"bad\.json: line 3 column"):
        read_coco(bad, tmp_path)


def test_coco_duplicate_image_ids(tmp_path):
    ann, img_dir = write_coco(tmp_path)
    doc = json.loads(ann.read_text())
    doc["images"][1]["id"] = 100
    ann.write_text(json.dumps(doc))
    with pytest.raises(AnnotationError, match=r"images\[1\] \(id=100\): duplicate image id"):
        read_coco(ann, img_dir)


def test_synthetic_tables_round_trip_through_coco_json(tmp_path):
    images, anns, _ = generate_images(SyntheticConfig(n_images=3), 0, range(3), str(tmp_path / "images"))
    tables = DatasetTables.from_rows(images=images, annotations=anns)
    doc = tables_to_coco(tables.images, tables.annotations)
    (tmp_path / "coco.json").write_text(json.dumps(doc))
    back = read_coco(tmp_path / "coco.json", tmp_path / "images")
    assert len(back.annotations) == len(anns) > 0
    for ours, theirs in zip(anns, back.annotations):
        assert theirs["category"] == ours["category"]
        assert theirs["bbox"] == pytest.approx(ours["bbox"], abs=1e-4)
        assert (theirs["keypoints"] is None) == (ours["keypoints"] is None)
        if ours["keypoints"] is not None:
            assert theirs["keypoints"] == pytest.approx(ours["keypoints"], abs=1e-4)
        assert theirs["occlusion"] == pytest.approx(ours["occlusion"])
    rows, errors = check_images(back.images, ImageLimits())
    assert not errors and [r["width"] for r in rows] == [320] * 3


def _yolo_dataset(root, pose=False):
    for split, n in (("train", 2), ("val", 1)):
        for i in range(n):
            img = write_image(root / "images" / split / f"{split}{i}.png", size=(100, 50), seed=i)
            kp = " ".join(["0.1 0.2 2"] * 17) if pose else ""
            label_path(img).parent.mkdir(parents=True, exist_ok=True)
            label_path(img).write_text(f"0 0.5 0.5 0.2 0.4 {kp}\n1 0.25 0.25 0.1 0.1 {kp}\n")
    write_image(root / "images" / "val" / "background.png", size=(100, 50))
    data = root / "data.yaml"
    data.write_text("path: .\ntrain: images/train\nval: images/val\nnames: [person, car]\n"
                    + ("kpt_shape: [17, 3]\n" if pose else ""))
    return data


@pytest.mark.parametrize("pose", [False, True])
def test_yolo_dataset(tmp_path, pose):
    listing = read_yolo(_yolo_dataset(tmp_path, pose))
    assert sorted(r.image_id for r in listing.images) == [
        "images/train/train0.png", "images/train/train1.png", "images/val/background.png", "images/val/val0.png"]
    assert {r.split for r in listing.images if "train" in r.image_id} == {"train"}
    assert len(listing.annotations) == 6                 # 2 per labelled image, none for the background
    person = listing.annotations[0]
    assert person["category"] == "person"
    assert person["bbox"] == pytest.approx([40, 15, 60, 35])     # normalised cx cy w h -> pixel xyxy
    if pose:
        assert person["keypoints"][:3] == pytest.approx([10, 10, 2]) and person["num_keypoints"] == 17
    else:
        assert person["keypoints"] is None


def test_yolo_malformed_line_names_file_and_line(tmp_path):
    data = _yolo_dataset(tmp_path)
    bad = tmp_path / "labels" / "train" / "train1.txt"
    bad.write_text("0 0.5 0.5 0.2 0.4\n0 0.5 oops 0.2 0.4\n")
    with pytest.raises(AnnotationError, match=r"train1\.txt: line 2: non-numeric"):
        read_yolo(data)
    bad.write_text("5 0.5 0.5 0.2 0.4\n")
    with pytest.raises(AnnotationError, match=r"train1\.txt: line 1: class 5 is not in"):
        read_yolo(data)


def test_folder_lists_images_and_rejects_other_files(tmp_path):
    write_image(tmp_path / "a.jpg")
    write_image(tmp_path / "sub" / "b.png", mode="L")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "fake.png").write_text("not a png")
    listing = read_folder(tmp_path)
    assert [r.image_id for r in listing.images] == ["a.jpg", "fake.png", "sub/b.png"]
    assert [(e["image_id"], e["error_type"]) for e in listing.errors] == [("notes.txt", "unsupported_extension")]
    rows, errors = check_images(listing.images, ImageLimits())
    assert [r["image_id"] for r in rows] == ["a.jpg", "sub/b.png"]
    assert rows[1]["mode"] == "L"
    assert [(e["image_id"], e["error_type"]) for e in errors] == [("fake.png", "not_an_image")]


def test_size_mismatch_with_annotation_is_an_error(tmp_path):
    ann, img_dir = write_coco(tmp_path, images=1)
    write_image(img_dir / "im0.jpg", size=(32, 32))
    rows, errors = check_images(read_coco(ann, img_dir).images, ImageLimits())
    assert not rows and errors[0]["error_type"] == "size_mismatch" and "64x48" in errors[0]["message"]


def test_yolo_export_refuses_duplicate_image_ids(tmp_path):
    from detection.datasets.yolo_export import write_yolo_dataset

    images, anns, _ = generate_images(SyntheticConfig(n_images=2), 0, range(2), str(tmp_path / "a"))
    tables = DatasetTables.from_rows(images=images + images, annotations=anns)
    with pytest.raises(ValueError, match="duplicated: \\['syn-000000', 'syn-000001'\\]"):
        write_yolo_dataset(tables.images, tables.annotations, tmp_path / "yolo", ["person"])
    prefixed, _, _ = generate_images(SyntheticConfig(n_images=1, id_prefix="train"), 0, range(1), str(tmp_path / "b"))
    assert prefixed[0]["image_id"] == "train-000000"
