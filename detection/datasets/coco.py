"""COCO-format datasets: strict reading (every broken entry is named) and export of our tables to COCO JSON."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa

from detection.body import COCO_KEYPOINTS, COCO_SKELETON, NUM_KEYPOINTS
from detection.datasets.imageio import header_size
from detection.datasets.records import AnnotationError, ImageRecord, SourceListing, display_path, fit_row


def _entry(kind: str, index: int, item: object) -> str:
    ident = item.get("id") if isinstance(item, dict) else None
    return f"{kind}[{index}]" + (f" (id={ident!r})" if ident is not None else "")


def _number_list(value: object, length: int | None) -> list[float] | None:
    if not isinstance(value, list) or (length is not None and len(value) != length):
        return None
    if not all(_is_number(v) for v in value):
        return None
    return [float(v) for v in value]


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_id(v: object) -> bool:
    """COCO ids are integers; strings are accepted too (never bool, float or null)."""
    return isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool))


def _optional_fraction(path: Path, where: str, ann: dict, key: str) -> float | None:
    value = ann.get(key)
    if value is None:
        return None
    if not _is_number(value) or not 0 <= value <= 1:
        raise AnnotationError(path, where, f"{key} must be a number in [0, 1] or absent, got {value!r}")
    return float(value)


def read_coco(annotations: str | Path, images_dir: str | Path, split: str = "val") -> SourceListing:
    """Images and annotations of a COCO file (boxes; 17 person keypoints where present).

    Ids may be integers or strings but must be unique as strings (our tables' ids are strings) and must match in
    type where referenced. A malformed entry raises :class:`AnnotationError` naming the file and the entry. Boxes
    are clipped to the image (its ``width``/``height``, else the file's header) and labelled keypoints outside it
    become unlabelled; each such change, and each annotation left out because its box has no area in the image,
    is a row of ``listing.errors`` (see ``records.ANNOTATION_ERROR_TYPES``).
    """
    path = Path(annotations)
    doc = _load_document(path)
    categories = _read_categories(path, doc["categories"])
    records, by_string = _read_images(path, doc["images"], Path(images_dir), split, f"coco:{display_path(path)}")
    uri = display_path(path)
    sizes: dict[object, tuple[int, int] | None] = {}
    rows, errors, ann_ids = [], [], {}
    for i, ann in enumerate(doc.get("annotations", [])):
        where = _entry("annotations", i, ann)
        image_id, row, box_area = _annotation_row(path, where, i, ann, records, by_string, categories, ann_ids)
        if image_id not in sizes:
            rec = records[image_id]
            sizes[image_id] = rec.expected_size or header_size(rec.path)
        if sizes[image_id] is None:          # no size given and the file is unreadable: the image check rejects it
            rows.append(dict(row, area=row["area"] if row["area"] is not None else box_area))
            continue
        fitted = fit_row(row, sizes[image_id], uri, where, errors, COCO_KEYPOINTS)
        if fitted is not None:
            rows.append(fitted)
    return SourceListing(images=list(records.values()), annotations=rows, errors=errors)


def _load_document(path: Path) -> dict:
    """The COCO file as a JSON object with 'images' and 'categories' lists (and 'annotations', if any, a list)."""
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
    return doc


def _read_categories(path: Path, entries: list) -> dict[object, str]:
    """Category id -> name; ids and names unique, keypoints (if any) the 17 COCO person keypoints."""
    categories: dict[object, str] = {}
    category_entry: dict[str, str] = {}
    for i, cat in enumerate(entries):
        where = _entry("categories", i, cat)
        if not isinstance(cat, dict) or not _is_id(cat.get("id")) or not isinstance(cat.get("name"), str):
            raise AnnotationError(path, where, "needs an integer or string 'id' and a string 'name'")
        if cat["id"] in categories:
            raise AnnotationError(path, where, "duplicate category id")
        if cat["name"] in category_entry:
            raise AnnotationError(path, where, f"duplicate category name {cat['name']!r} (also "
                                               f"{category_entry[cat['name']]}); our tables name categories")
        kps = cat.get("keypoints")
        if kps is not None and (not isinstance(kps, list) or len(kps) not in (0, NUM_KEYPOINTS)):
            raise AnnotationError(path, where, f"has {len(kps) if isinstance(kps, list) else repr(kps)} keypoints; "
                                               f"only the 17 COCO person keypoints are supported")
        categories[cat["id"]] = cat["name"]
        category_entry[cat["name"]] = where
    return categories


def _read_images(path: Path, entries: list, root: Path, split: str,
                 source: str) -> tuple[dict[object, ImageRecord], dict[str, object]]:
    """Image id -> record (file under ``root``, size where the entry gives one), and each id as a string -> id."""
    records: dict[object, ImageRecord] = {}
    by_string: dict[str, object] = {}
    for i, img in enumerate(entries):
        where = _entry("images", i, img)
        if not isinstance(img, dict) or not _is_id(img.get("id")) or not isinstance(img.get("file_name"), str):
            raise AnnotationError(path, where, "needs an integer or string 'id' and a string 'file_name'")
        if img["id"] in records:
            raise AnnotationError(path, where, "duplicate image id")
        if str(img["id"]) in by_string:
            raise AnnotationError(path, where, f"duplicate image id: {by_string[str(img['id'])]!r} is the same id "
                                               f"as a string")
        size = None
        if "width" in img and "height" in img:
            if not all(isinstance(img[k], int) and not isinstance(img[k], bool) and img[k] > 0
                       for k in ("width", "height")):
                raise AnnotationError(path, where, "width/height must be positive integers")
            size = (img["width"], img["height"])
        records[img["id"]] = ImageRecord(str(img["id"]), root / img["file_name"], split, source, size)
        by_string[str(img["id"])] = img["id"]
    return records, by_string


def _annotation_row(path: Path, where: str, index: int, ann: object, records: dict, by_string: dict,
                    categories: dict, ann_ids: dict[str, str]) -> tuple[object, dict, float]:
    """The image id, the table row (bbox xyxy, before fitting to the image) and the box's area w * h of one
    annotation entry; records its id in ``ann_ids`` (annotation id -> entry)."""
    if not isinstance(ann, dict):
        raise AnnotationError(path, where, "not an object")
    image_id = ann.get("image_id")
    if not _is_id(image_id) or image_id not in records:
        hint = ""
        if _is_id(image_id) and str(image_id) in by_string:
            hint = f" ('images' has {by_string[str(image_id)]!r}: ids must match in type)"
        raise AnnotationError(path, where, f"image_id {image_id!r} is not in 'images'{hint}")
    if not _is_id(ann.get("category_id")) or ann["category_id"] not in categories:
        raise AnnotationError(path, where, f"category_id {ann.get('category_id')!r} is not in 'categories'")
    if "id" in ann and not _is_id(ann["id"]):
        raise AnnotationError(path, where, f"id must be an integer or string, got {ann['id']!r}")
    ann_id = str(ann.get("id", index))
    if ann_id in ann_ids:
        raise AnnotationError(path, where, f"duplicate annotation id {ann_id!r} (also {ann_ids[ann_id]})")
    ann_ids[ann_id] = where
    box = _number_list(ann.get("bbox"), 4)
    if box is None or box[2] < 0 or box[3] < 0:
        raise AnnotationError(path, where, f"bbox must be 4 finite numbers [x, y, w, h] with w, h >= 0, "
                                           f"got {ann.get('bbox')!r}")
    keypoints = _annotation_keypoints(path, where, ann)
    crowd = ann.get("iscrowd", 0)
    if crowd not in (0, 1) or not isinstance(crowd, (int, bool)):     # 0, 1, false, true
        raise AnnotationError(path, where, f"iscrowd must be 0 or 1 (or false/true), got {crowd!r}")
    area = ann.get("area")
    if area is not None and (not _is_number(area) or area < 0):
        raise AnnotationError(path, where, f"area must be a finite number >= 0, got {area!r}")
    x, y, w, h = box
    row = {
        "image_id": str(image_id), "ann_id": ann_id,
        "category": categories[ann["category_id"]], "bbox": [x, y, x + w, y + h],
        "area": None if area is None else float(area),
        "iscrowd": bool(crowd), "keypoints": keypoints,
        "num_keypoints": int(sum(1 for v in keypoints[2::3] if v > 0)) if keypoints else 0,
        "occlusion": _optional_fraction(path, where, ann, "occlusion"),
        "truncation": _optional_fraction(path, where, ann, "truncation"),
    }
    return image_id, row, w * h


def _annotation_keypoints(path: Path, where: str, ann: dict) -> list[float] | None:
    """The entry's 17 x [x, y, v] keypoints, flat, or None where it has none."""
    if ann.get("keypoints") is None or ann.get("keypoints") == []:
        return None
    keypoints = _number_list(ann["keypoints"], 3 * NUM_KEYPOINTS)
    if keypoints is None:
        raise AnnotationError(path, where, f"keypoints must be {3 * NUM_KEYPOINTS} finite numbers "
                                           f"(17 x [x, y, v])")
    bad = [COCO_KEYPOINTS[k] for k, v in enumerate(keypoints[2::3]) if v not in (0, 1, 2)]
    if bad:
        raise AnnotationError(path, where, f"keypoint visibility must be 0, 1 or 2 (bad: {', '.join(bad)})")
    return keypoints


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
