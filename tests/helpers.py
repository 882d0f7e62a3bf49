"""Small datasets the tests make on the fly."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, size=(64, 48), seed=0, mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path)
    return path


def person_keypoints(x0: float, y0: float, scale: float = 1.0) -> list[float]:
    """17 COCO keypoints of an upright person at (x0, y0) (head top), all visible except the right ear."""
    layout = [(5, 2), (6, 1.5), (4, 1.5), (7, 2), (3, 2), (8, 5), (2, 5), (9, 9), (1, 9), (9, 13), (1, 13),
              (7, 13), (3, 13), (7, 19), (3, 19), (7, 25), (3, 25)]
    out = []
    for k, (x, y) in enumerate(layout):
        out += [x0 + x * scale, y0 + y * scale, 0 if k == 4 else 2]
    out[12:14] = [0, 0]                                   # invisible keypoints carry no position
    return out


def write_coco(root: Path, images=3, broken: dict | None = None) -> tuple[Path, Path]:
    """A COCO dataset: images/, annotations.json with one person (17 keypoints) and one car per image."""
    img_dir = root / "images"
    doc = {"images": [], "annotations": [], "categories": [
        {"id": 1, "name": "person", "keypoints": [f"k{i}" for i in range(17)], "skeleton": []},
        {"id": 3, "name": "car"}]}
    for i in range(images):
        write_image(img_dir / f"im{i}.jpg", seed=i)
        doc["images"].append({"id": 100 + i, "file_name": f"im{i}.jpg", "width": 64, "height": 48})
        doc["annotations"].append({"id": 2 * i + 1, "image_id": 100 + i, "category_id": 1,
                                   "bbox": [1, 2, 10, 26], "area": 200, "iscrowd": 0,
                                   "keypoints": person_keypoints(1, 2), "num_keypoints": 16})
        doc["annotations"].append({"id": 2 * i + 2, "image_id": 100 + i, "category_id": 3,
                                   "bbox": [30, 20, 20, 10], "area": 200, "iscrowd": 0})
    if broken:
        doc["annotations"][broken.get("index", 0)].update(broken["set"])
    ann = root / "annotations.json"
    ann.write_text(json.dumps(doc, indent=1))
    return ann, img_dir
