"""The dataset tables every source produces (images, annotations, gt_parts, errors) and their Parquet I/O.

Schemas are fixed here so that every source, every stage and every test agrees on names and types.
Boxes are pixel-edge xyxy (x2, y2 exclusive); keypoints are COCO's flat [x1, y1, v1, ..., x17, y17, v17].
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
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

ATTRIBUTES_SCHEMA = pa.schema([              # synthetic source: what the generator drew per annotated person
    ("image_id", pa.string()),
    ("ann_id", pa.string()),                   # the annotations table's ann_id
    ("yaw_deg", pa.float32()),                 # body yaw, degrees in [0, 360); 0 faces the camera
    ("facing", pa.string()),                   # front | back | left | right (profile: where the nose points)
    ("walking_phase", pa.float32()),           # gait phase, radians in [0, 2 pi)
    ("stride", pa.float32()),                  # leg swing amplitude, radians
    ("arm_pose", pa.string()),                 # swinging | waving_left | waving_right
    ("skin_tone", pa.int8()),                  # index into the generator's six skin tones (0 lightest)
    ("shirt_rgb", pa.list_(pa.float32(), 3)),
    ("shirt_colour", pa.string()),             # named hue (detection.attributes.colour_name)
    ("pants_rgb", pa.list_(pa.float32(), 3)),
    ("pants_colour", pa.string()),
    ("hair_colour", pa.string()),
    ("short_sleeves", pa.bool_()),
    ("bare_shins", pa.bool_()),
    ("height_px", pa.float32()),               # full standing height, px (unclipped)
    ("horizon_distance", pa.float32()),        # feet below the horizon, fraction of image height (small = far)
    ("truncation_side", pa.string()),          # none | left | right | bottom: the border it was placed across
    ("occluder", pa.string()),                 # none | car | bicycle: the object placed in front of it
    ("occluded_by", pa.string()),              # none | person | car | bicycle | pole: who hides most of it
    ("person_overlap", pa.float32()),          # fraction of its in-image body hidden by other persons
    ("object_overlap", pa.float32()),          # ... hidden by other objects
    ("contrast", pa.float32()),                # mean |luma(person) - luma(background behind it)| / 255
    ("shirt_contrast", pa.float32()),          # RGB distance shirt vs background behind the torso, / (255 sqrt 3)
    ("lighting", pa.float32()),                # mean global lighting gain over its box (1 = neutral)
])

COMPUTED_ATTRIBUTES_SCHEMA = pa.schema([     # every source: attributes computed from boxes and pixels
    ("image_id", pa.string()),
    ("ann_id", pa.string()),
    ("box_height", pa.float32()),              # px
    ("box_width", pa.float32()),
    ("aspect_ratio", pa.float32()),            # width / height
    ("truncated_left", pa.bool_()),            # the box touches that image border (within 1 px)
    ("truncated_right", pa.bool_()),
    ("truncated_top", pa.bool_()),
    ("truncated_bottom", pa.bool_()),
    ("crowd_iou", pa.float32()),               # max IoU with another person box of the image (0 if alone)
    ("crowd_neighbours", pa.int16()),          # other person boxes overlapping it (IoU > 0.1)
    ("brightness", pa.float32()),              # mean luma in the box / 255; null when the image is unreadable
    ("box_contrast", pa.float32()),            # |mean luma in the box - in the ring around it| / 255
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

TARGETS_SCHEMA = pa.schema([                   # what the explain stage explains, with the report's breakdowns
    ("image_id", pa.string()),
    ("split", pa.string()),
    ("target_id", pa.string()),                # a GT person's ann_id, a detection's det_id, or 'class:<name>'
    ("kind", pa.string()),                     # persons | detections | classes
    ("model_id", pa.string()),                 # the model whose score is explained
    ("category", pa.string()),
    ("bbox", pa.list_(pa.float32(), 4)),       # null for classes
    ("class_probs", pa.list_(pa.float32())),   # detections: the D-RISE target's class vector
    ("height", pa.float32()),                  # box height, px
    ("occlusion", pa.float32()),               # GT occlusion (persons; detections matched to a GT person)
    ("found", pa.bool_()),                     # persons / detections: matched one-to-one (detection.evaluation.match)
    ("score", pa.float32()),                   # persons: their matched detection's score (0 if none); detections
    ("label_present", pa.bool_()),             # classes: the image has this label
    ("spurious_cue", pa.bool_()),
    ("parts_id", pa.string()),                 # the parts table's (model_id, det_id) holding the body parts
    ("parts_model", pa.string()),
])

EXPLANATIONS_SCHEMA = pa.schema([
    ("image_id", pa.string()),
    ("target_id", pa.string()),
    ("kind", pa.string()),
    ("job", pa.string()),                      # the job's name: label or method, @regions (explain.jobs)
    ("method", pa.string()),
    ("regions", pa.string()),                  # parts | superpixels | grid | none
    ("saliency", pa.list_(pa.float16())),      # row-major grid of explain.saliency_size, area-averaged
    ("saliency_height", pa.int16()),
    ("saliency_width", pa.int16()),
    ("region_names", pa.list_(pa.string())),   # body-part names (or r000...); relevance is aligned with them
    ("relevance", pa.list_(pa.float32())),
    ("full_score", pa.float32()),
    ("empty_score", pa.float32()),
    ("n_forward", pa.int32()),                 # forwards of the explain call (shared by `shared_by` targets)
    ("shared_by", pa.int16()),
    ("device", pa.string()),                   # cpu / cuda (which cuda:<i> took the shard: _timings, tasks/timings.py)
    ("seed", pa.int64()),
    ("options_hash", pa.string()),
    ("options", pa.string()),                  # the method's settings as JSON
])

SAG_SCHEMA = pa.schema([                       # explain: structured attention graphs (explainers.sag, job method sag)
    ("image_id", pa.string()),
    ("target_id", pa.string()),
    ("kind", pa.string()),                     # the target's: persons | detections | classes
    ("job", pa.string()),
    ("element", pa.string()),                  # target (one per explained target) | root | edge
    ("parts", pa.list_(pa.string())),          # target: every region; root: the set; edge: the parent set
    ("size", pa.int16()),                      # len(parts)
    ("score", pa.float32()),                   # v(parts), the scorer's units (target: the full score)
    ("share", pa.float32()),                   # score / full_score
    ("diverse", pa.bool_()),                   # root: kept among the diverse roots (the graph grows from those)
    ("child", pa.list_(pa.string())),          # edge: parts minus `removed`
    ("removed", pa.string()),
    ("child_score", pa.float32()),
    ("child_share", pa.float32()),
    ("drop", pa.float32()),                    # edge: score - child_score
    ("drop_share", pa.float32()),              # drop / full_score
    ("full_score", pa.float32()),
    ("empty_score", pa.float32()),
    ("threshold", pa.float32()),               # a root keeps >= threshold x full_score (0.9)
    ("keep", pa.float32()),                    # the graph descends while >= keep x full_score (0.4)
    ("status", pa.string()),                   # complete | budget (ran out: partial) | flat (full <= empty score)
    ("n_forward", pa.int32()),                 # the target's search + graph forwards, beyond the heuristic's
    ("search_forward", pa.int32()),            # ... of which the search and pruning
])

METRICS_SCHEMA = pa.schema([                   # evaluate stage: one row per (target, job, metric)
    ("image_id", pa.string()),
    ("target_id", pa.string()),
    ("kind", pa.string()),
    ("job", pa.string()),
    ("metric", pa.string()),
    ("value", pa.float32()),
])

SANITY_SCHEMA = pa.schema([                    # evaluate: cascading randomisation of every job (tasks.sanity)
    ("job", pa.string()),
    ("method", pa.string()),
    ("model", pa.string()),                    # detector | classifier
    ("stage", pa.int16()),                     # 0: the trained model
    ("randomised", pa.int16()),                # top parameterised layers randomised
    ("layers", pa.int16()),                    # parameterised layers of the network
    ("top_layer", pa.string()),                # the lowest layer randomised so far (null at stage 0)
    ("image_id", pa.string()),
    ("target_id", pa.string()),
    ("spearman", pa.float64()),                # rank correlation with the trained model's map (signed)
    ("spearman_abs", pa.float64()),            # ... of the absolute maps
])

SLICES_SCHEMA = pa.schema([                    # evaluate: slices of ground-truth pedestrians (detection.slices)
    ("outcome", pa.string()),                  # missed | share:<part> | share:context (relevance share, `job`)
    ("job", pa.string()),                      # the explain job the shares come from; null for missed
    ("rank", pa.int16()),                      # 1 = best SliceLine score among this outcome's slices
    ("slice", pa.string()),                    # in words: 'facing = back and box_height in [17, 42)'
    ("predicates", pa.string()),               # JSON object column -> bin label
    ("level", pa.int8()),
    ("direction", pa.string()),                # higher | lower than the rest
    ("score", pa.float32()),                   # SliceLine's
    ("size", pa.int32()),                      # pedestrians in the slice
    ("mean", pa.float32()),                    # the outcome's mean in the slice, bootstrap 95 % interval
    ("ci_low", pa.float32()),
    ("ci_high", pa.float32()),
    ("rest_mean", pa.float32()),
    ("diff", pa.float32()),
    ("diff_low", pa.float32()),
    ("diff_high", pa.float32()),
    ("p_value", pa.float64()),
    ("q_value", pa.float64()),                 # Benjamini-Hochberg over the n_hypotheses slices of the lattice
    ("significant", pa.bool_()),
    ("n_hypotheses", pa.int32()),
    ("context_share", pa.float32()),           # mean context share of the slice's explained pedestrians (`job`)
    ("context_share_rest", pa.float32()),      # ... of the other explained pedestrians
])

MISSES_SCHEMA = pa.schema([                    # evaluate: why each ground-truth pedestrian was missed
    ("image_id", pa.string()),
    ("ann_id", pa.string()),
    ("miss_type", pa.string()),                # detection.miss_types.MISS_TYPES
    ("best_iou", pa.float32()),                # the candidate that decided the type: IoU with the box, its score
    ("best_score", pa.float32()),
    ("height", pa.float32()),                  # box height, px
    ("occlusion", pa.float32()),
])

SCHEMAS: dict[str, pa.Schema] = {
    "images": IMAGES_SCHEMA,
    "annotations": ANNOTATIONS_SCHEMA,
    "gt_parts": GT_PARTS_SCHEMA,
    "errors": ERRORS_SCHEMA,
    "attributes": ATTRIBUTES_SCHEMA,
    "computed_attributes": COMPUTED_ATTRIBUTES_SCHEMA,
    "detections": DETECTIONS_SCHEMA,
    "predictions": PREDICTIONS_SCHEMA,
    "parts": PARTS_SCHEMA,
    "part_iou": PART_IOU_SCHEMA,
    "targets": TARGETS_SCHEMA,
    "explanations": EXPLANATIONS_SCHEMA,
    "sag": SAG_SCHEMA,
    "metrics": METRICS_SCHEMA,
    "slices": SLICES_SCHEMA,
    "misses": MISSES_SCHEMA,
    "sanity": SANITY_SCHEMA,
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
    """Rows (dicts keyed by column) to a table with the named schema; missing columns become null. float16 list
    columns take NumPy arrays (Arrow cannot convert Python floats to float16)."""
    schema = SCHEMAS[name]
    half = [f.name for f in schema if pa.types.is_list(f.type) and pa.types.is_float16(f.type.value_type)]
    if not half:
        return pa.Table.from_pylist(rows, schema=schema)
    plain = pa.Table.from_pylist([{k: v for k, v in r.items() if k not in half} for r in rows],
                                 schema=pa.schema([f for f in schema if f.name not in half]))
    for name_ in half:
        arrays = [np.asarray(r[name_], np.float16).ravel() for r in rows]
        offsets = np.concatenate([[0], np.cumsum([len(a) for a in arrays])]).astype(np.int32)
        values = np.concatenate(arrays) if arrays else np.zeros(0, np.float16)
        column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.float16()))
        plain = plain.append_column(pa.field(name_, schema.field(name_).type), column)
    return plain.select(schema.names).cast(schema)


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
    def from_rows(cls, **rows: list[dict]) -> DatasetTables:
        return cls(**{f.name: rows_to_table(rows.get(f.name, []), f.name) for f in fields(cls)})

    def write(self, directory: str | os.PathLike) -> None:
        for f in fields(self):
            write_table_atomic(getattr(self, f.name), Path(directory) / f"{f.name}.parquet")

    @classmethod
    def read(cls, directory: str | os.PathLike) -> DatasetTables:
        return cls(**{
            f.name: pq.read_table(Path(directory) / f"{f.name}.parquet", schema=SCHEMAS[f.name])
            for f in fields(cls)
        })
