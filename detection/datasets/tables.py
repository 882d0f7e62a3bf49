"""The dataset tables every source produces (images, annotations, gt_parts, errors) and their Parquet I/O.

Schemas are fixed here so that every source, every stage and every test agrees on names and types.
Boxes are pixel-edge xyxy (x2, y2 exclusive); keypoints are COCO's flat [x1, y1, v1, ..., x17, y17, v17].
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, fields
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

IMAGES_SCHEMA = pa.schema([
    ("image_id", pa.string()),
    ("uri", pa.string()),              # path relative to the project root when inside it, else absolute
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("split", pa.string()),
    ("source", pa.string()),
    ("sha256", pa.string()),           # of the file's bytes
    ("mode", pa.string()),             # PIL mode of the file before conversion to RGB (e.g. 'CMYK', 'I;16')
    ("labels", pa.list_(pa.string())),  # scene-level multi-label set, null where the source has none
    ("spurious_cue", pa.bool_()),      # synthetic only: whether the injected spurious cue is present
])

ANNOTATIONS_SCHEMA = pa.schema([
    ("image_id", pa.string()),
    ("ann_id", pa.string()),
    ("category", pa.string()),
    ("bbox", pa.list_(pa.float32(), 4)),       # xyxy, pixels
    ("area", pa.float32()),                    # visible (segmentation) area where known, else box area
    ("iscrowd", pa.bool_()),
    ("keypoints", pa.list_(pa.float32(), 51)),  # null for non-person objects or sources without keypoints
    ("num_keypoints", pa.int16()),             # keypoints with v > 0
    ("occlusion", pa.float32()),               # fraction of the in-image body hidden by others; null if unknown
    ("truncation", pa.float32()),              # fraction of the body outside the image; null if unknown
])

GT_PARTS_SCHEMA = pa.schema([
    ("image_id", pa.string()),
    ("ann_id", pa.string()),
    ("part", pa.string()),
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("rle", pa.list_(pa.int32())),          # amodal part mask (whole part, clipped to the image), COCO RLE
    ("area", pa.int32()),
    ("visible_rle", pa.list_(pa.int32())),  # the part's pixels actually seen in the image
    ("visible_area", pa.int32()),
])

ERRORS_SCHEMA = pa.schema([
    ("stage", pa.string()),
    ("image_id", pa.string()),
    ("uri", pa.string()),
    ("error_type", pa.string()),
    ("message", pa.string()),
])

DETECTIONS_SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("model_id", pa.string()),
    ("weights_sha256", pa.string()),
    ("image_id", pa.string()),
    ("det_id", pa.string()),
    ("category", pa.string()),
    ("score", pa.float32()),
    ("above_conf", pa.bool_()),                 # score >= the model's configured confidence threshold
    ("bbox", pa.list_(pa.float32(), 4)),        # xyxy, pixels of the original image
    ("class_probs", pa.list_(pa.float32())),    # the box's full class-score vector (D-RISE targets)
    ("keypoints", pa.list_(pa.float32(), 51)),  # pose models: 17 x (x, y, confidence)
])

PREDICTIONS_SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("model_id", pa.string()),
    ("weights_sha256", pa.string()),
    ("image_id", pa.string()),
    ("category", pa.string()),
    ("score", pa.float32()),                    # class probability (sigmoid for multi-label models)
])

PARTS_SCHEMA = pa.schema([
    ("image_id", pa.string()),
    ("det_id", pa.string()),                   # a detection's det_id, or a ground-truth person's ann_id
    ("model_id", pa.string()),                 # the detector, or 'gt' for ground-truth persons
    ("part", pa.string()),                     # a body part (or group of parts), or 'context' (box minus body)
    ("height", pa.int32()),                    # image size, so the RLE decodes on its own
    ("width", pa.int32()),
    ("rle", pa.list_(pa.int32())),             # COCO RLE of the part's mask; parts of one person are disjoint
    ("area", pa.int32()),
    ("visible", pa.bool_()),                   # false when the part's keypoints are occluded or it is empty
    ("source", pa.string()),                   # keypoints used: gt | pose | template
    ("person_height", pa.float32()),           # estimated standing height, px (sets the part sizes)
])

PART_IOU_SCHEMA = pa.schema([                  # quality of the part masks against the synthetic ground truth
    ("image_id", pa.string()),
    ("ann_id", pa.string()),
    ("source", pa.string()),                   # the keypoints the masks were built from, for the same GT person
    ("part", pa.string()),
    ("iou", pa.float32()),                     # vs the GT part masks made disjoint in the same paint order
    ("iou_amodal", pa.float32()),              # vs the raw (overlapping) amodal GT part masks
    ("box_height", pa.float32()),
    ("occlusion", pa.float32()),
])

SCHEMAS: dict[str, pa.Schema] = {
    "images": IMAGES_SCHEMA,
    "annotations": ANNOTATIONS_SCHEMA,
    "gt_parts": GT_PARTS_SCHEMA,
    "errors": ERRORS_SCHEMA,
    "detections": DETECTIONS_SCHEMA,
    "predictions": PREDICTIONS_SCHEMA,
    "parts": PARTS_SCHEMA,
    "part_iou": PART_IOU_SCHEMA,
}


def write_table_atomic(table: pa.Table, path: str | os.PathLike) -> Path:
    """Write a Parquet file via temp file + rename so readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"     # created by the writer: the umask applies
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def rows_to_table(rows: list[dict], name: str) -> pa.Table:
    """Rows (dicts keyed by column) to a table with the named schema; missing columns become null."""
    return pa.Table.from_pylist(rows, schema=SCHEMAS[name])


@dataclass
class DatasetTables:
    """The four tables of one pulled dataset."""

    images: pa.Table
    annotations: pa.Table
    gt_parts: pa.Table
    errors: pa.Table

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_rows(cls, **rows: list[dict]) -> "DatasetTables":
        return cls(**{f.name: rows_to_table(rows.get(f.name, []), f.name) for f in fields(cls)})

    def write(self, directory: str | os.PathLike) -> None:
        for f in fields(self):
            write_table_atomic(getattr(self, f.name), Path(directory) / f"{f.name}.parquet")

    @classmethod
    def read(cls, directory: str | os.PathLike) -> "DatasetTables":
        return cls(**{
            f.name: pq.read_table(Path(directory) / f"{f.name}.parquet", schema=SCHEMAS[f.name])
            for f in fields(cls)
        })
