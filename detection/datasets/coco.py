"""COCO-format datasets: strict reading (every broken entry is named) and export of our tables to COCO JSON."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa

from detection.body import COCO_KEYPOINTS, COCO_SKELETON, NUM_KEYPOINTS
from detection.datasets.records import AnnotationError, ImageRecord, SourceListing, display_path


def _entry(kind: str, index: int, item: object) -> str:
    ident = item.get("id") if isinstance(item, dict) else None
    return f"{kind}[{index}]" + (f" (id={ident!r})" if ident is not None else "")


def _number_list(value: object, length: int | None) -> list[float] | None:
    if not isinstance(value, list) or (length is not None and len(value) != length):
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        return None
    return [float(v) for v in value]


def read_coco(annotations: str | Path, images_dir: str | Path, split: str = "val") -> SourceListing:
    """Images and annotations of a COCO file (boxes; 17 person keypoints where present)."""
    path = Path(annotations)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AnnotationError(path, f"line {exc.lineno} column {exc.colno}", f"invalid JSON ({exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise AnnotationError(path, f"byte {exc.start}", "not UTF-8 text") from None
    if not isinstance(doc, dict):
        raise AnnotationError(path, "top level", "must be a JSON object with 'images' and 'annotations'")
    for key in ("images", "categories"):
        if not isinstance(doc.get(key), list):
            raise AnnotationError(path, key, "missing or not a list")
    if not isinstance(doc.get("annotations", []), list):
        raise AnnotationError(path, "annotations", "not a list")

    categories: dict[object, str] = {}
    for i, cat in enumerate(doc["categories"]):
        if not isinstance(cat, dict) or "id" not in cat or not isinstance(cat.get("name"), str):
            raise AnnotationError(path, _entry("categories", i, cat), "needs 'id' and a string 'name'")
        kps = cat.get("keypoints")
        if kps is not None and len(kps) not in (0, NUM_KEYPOINTS):
            raise AnnotationError(path, _entry("categories", i, cat),
                                  f"has {len(kps)} keypoints; only the 17 COCO person keypoints are supported")
        categories[cat["id"]] = cat["name"]

    root = Path(images_dir)
    source = f"coco:{display_path(path)}"
    records: dict[object, ImageRecord] = {}
    for i, img in enumerate(doc["images"]):
        if not isinstance(img, dict) or "id" not in img or not isinstance(img.get("file_name"), str):
            raise AnnotationError(path, _entry("images", i, img), "needs 'id' and a string 'file_name'")
        if img["id"] in records:
            raise AnnotationError(path, _entry("images", i, img), "duplicate image id")
        size = None
        if "width" in img and "height" in img:
            if not all(isinstance(img[k], int) and img[k] > 0 for k in ("width", "height")):
                raise AnnotationError(path, _entry("images", i, img), "width/height must be positive integers")
            size = (img["width"], img["height"])
        records[img["id"]] = ImageRecord(str(img["id"]), root / img["file_name"], split, source, size)

    rows = []
    for i, ann in enumerate(doc.get("annotations", [])):
        where = _entry("annotations", i, ann)
        if not isinstance(ann, dict):
            raise AnnotationError(path, where, "not an object")
        if ann.get("image_id") not in records:
            raise AnnotationError(path, where, f"image_id {ann.get('image_id')!r} is not in 'images'")
        if ann.get("category_id") not in categories:
            raise AnnotationError(path, where, f"category_id {ann.get('category_id')!r} is not in 'categories'")
        box = _number_list(ann.get("bbox"), 4)
        if box is None or box[2] < 0 or box[3] < 0:
            raise AnnotationError(path, where, f"bbox must be 4 finite numbers [x, y, w, h] with w, h >= 0, "
                                               f"got {ann.get('bbox')!r}")
        keypoints = None
        if ann.get("keypoints") is not None and ann.get("keypoints") != []:
            keypoints = _number_list(ann["keypoints"], 3 * NUM_KEYPOINTS)
            if keypoints is None:
                raise AnnotationError(path, where, f"keypoints must be {3 * NUM_KEYPOINTS} finite numbers "
                                                   f"(17 x [x, y, v])")
        x, y, w, h = box
        area = ann.get("area", w * h)
        rows.append({
            "image_id": str(ann["image_id"]), "ann_id": str(ann.get("id", i)),
            "category": categories[ann["category_id"]], "bbox": [x, y, x + w, y + h], "area": float(area),
            "iscrowd": bool(ann.get("iscrowd", 0)), "keypoints": keypoints,
            "num_keypoints": int(sum(1 for v in keypoints[2::3] if v > 0)) if keypoints else 0,
            "occlusion": ann.get("occlusion"), "truncation": ann.get("truncation"),
        })
    return SourceListing(images=list(records.values()), annotations=rows)


def tables_to_coco(images: pa.Table, annotations: pa.Table, categories: list[str] | None = None) -> dict:
    """A COCO document for our ``images`` and ``annotations`` tables (ids become integers, in row order)."""
    img_rows = images.to_pylist()
    ann_rows = annotations.to_pylist()
    names = categories or sorted({a["category"] for a in ann_rows})
    cat_ids = {name: i + 1 for i, name in enumerate(names)}
    img_ids = {r["image_id"]: i + 1 for i, r in enumerate(img_rows)}
    doc = {
        "info": {"description": "exported by xai-audit"},
        "images": [{"id": img_ids[r["image_id"]], "file_name": Path(r["uri"]).name, "width": r["width"],
                    "height": r["height"], "xai_audit_image_id": r["image_id"]} for r in img_rows],
        "categories": [{"id": cat_ids[n], "name": n, **({"keypoints": list(COCO_KEYPOINTS),
                                                         "skeleton": [list(p) for p in COCO_SKELETON]}
                                                        if n == "person" else {})} for n in names],
        "annotations": [],
    }
    for i, a in enumerate(ann_rows):
        x1, y1, x2, y2 = a["bbox"]
        entry = {"id": i + 1, "image_id": img_ids[a["image_id"]], "category_id": cat_ids[a["category"]],
                 "bbox": [x1, y1, x2 - x1, y2 - y1], "area": a["area"], "iscrowd": int(a["iscrowd"]),
                 "xai_audit_ann_id": a["ann_id"]}
        if a["keypoints"] is not None:
            entry["keypoints"] = [float(v) for v in np.asarray(a["keypoints"])]
            entry["num_keypoints"] = a["num_keypoints"]
        for extra in ("occlusion", "truncation"):
            if a[extra] is not None:
                entry[extra] = a[extra]
        doc["annotations"].append(entry)
    return doc
