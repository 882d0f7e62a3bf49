"""What a source hands to the pull stage before images are checked: image records and annotation rows."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detection.datasets.imageio import ImageError, ImageLimits, decode_image


class AnnotationError(ValueError):
    """A broken annotation file; the message names the file and the offending entry."""

    def __init__(self, path: str | Path, entry: str, reason: str):
        super().__init__(f"{path}: {entry}: {reason}")
        self.path, self.entry, self.reason = str(path), entry, reason


@dataclass
class ImageRecord:
    """One image a source lists, before it is decoded and checked."""

    image_id: str
    path: Path
    split: str
    source: str
    expected_size: tuple[int, int] | None = None   # (width, height) the annotations claim, if any
    labels: list[str] | None = None
    spurious_cue: bool | None = None


@dataclass
class SourceListing:
    """Everything a source reader found: images to check, their annotations, and files it already rejected."""

    images: list[ImageRecord]
    annotations: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)


def display_path(path: str | Path) -> str:
    """Path relative to the working directory (the project root) when inside it, else absolute: portable URIs."""
    path = Path(path).absolute()
    try:
        return path.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return path.as_posix()


def error_row(stage: str, uri: str, error_type: str, message: str, image_id: str | None = None) -> dict:
    return {"stage": stage, "image_id": image_id, "uri": uri, "error_type": error_type, "message": message}


# Annotation rows ``errors`` gets from the readers (uri: the annotation file; image_id: the image). The first two
# are corrections (the annotation is kept, corrected), the others leave the annotation or image out.
ANNOTATION_ERROR_TYPES = {
    "box_clipped": "the box extends outside the image: kept, clipped to it",
    "keypoints_outside_image": "labelled keypoints outside the image: kept as unlabelled (v = 0)",
    "box_outside_image": "the box has no area inside the image: annotation left out",
    "box_empty": "the box has zero width or height: annotation left out",
    "duplicate_label": "a YOLO label line repeats an earlier line of the file exactly: left out",
    "duplicate_image": "an image listed again (another split or list entry): the later listing left out",
}
EDGE_TOLERANCE = 0.01     # px: coordinates this close outside the image are rounding, clamped without a record


@dataclass(frozen=True)
class FittedAnnotation:
    """An annotation's geometry made to fit its image (see :func:`fit_to_image`)."""

    bbox: list[float] | None          # xyxy inside [0, W] x [0, H]; None: no area inside the image
    keypoints: list[float] | None     # flat [x, y, v] x 17; v = 0 keypoints carry (0, 0)
    clipped: bool                     # the box was cut by more than EDGE_TOLERANCE
    outside_keypoints: list[int]      # labelled keypoints that were outside the image (now v = 0)
    empty: bool                       # the box itself had zero width or height


def fit_to_image(bbox: list[float], keypoints: list[float] | None, width: int, height: int) -> FittedAnnotation:
    """Clip an xyxy pixel-edge box to the ``width`` x ``height`` image, and mark labelled keypoints outside it
    (beyond :data:`EDGE_TOLERANCE`) unlabelled, as COCO and the synthetic generator leave such keypoints.

    Ground truth must lie in the image: detections never leave it, so a box that does cannot be matched (a perfect
    detector's [50, 10, 64, 40] against a 64x48 image's [50, 10, 80, 40] is IoU 0.47), and ultralytics refuses
    label files with coordinates outside [0, 1]. Unlabelled keypoints (v = 0) carry no position: (0, 0).
    """
    x1, y1, x2, y2 = bbox
    empty = not (x2 > x1 and y2 > y1)
    cx1, cy1 = min(max(x1, 0.0), float(width)), min(max(y1, 0.0), float(height))
    cx2, cy2 = min(max(x2, 0.0), float(width)), min(max(y2, 0.0), float(height))
    clipped = max(abs(cx1 - x1), abs(cy1 - y1), abs(cx2 - x2), abs(cy2 - y2)) > EDGE_TOLERANCE
    box = None if empty or cx2 <= cx1 or cy2 <= cy1 else [cx1, cy1, cx2, cy2]
    kps, outside = None, []
    if keypoints is not None:
        kp = np.asarray(keypoints, np.float64).reshape(-1, 3).copy()
        labelled = kp[:, 2] > 0
        tol = EDGE_TOLERANCE
        inside = (kp[:, 0] >= -tol) & (kp[:, 0] <= width + tol) & (kp[:, 1] >= -tol) & (kp[:, 1] <= height + tol)
        off = labelled & ~inside
        kp[~labelled | off] = 0.0
        kp[:, 0], kp[:, 1] = kp[:, 0].clip(0, width), kp[:, 1].clip(0, height)
        kps, outside = kp.reshape(-1).tolist(), np.flatnonzero(off).tolist()
    return FittedAnnotation(box, kps, clipped and box is not None, outside, empty)


def fit_row(row: dict, size: tuple[int, int], uri: str, where: str, errors: list[dict],
             keypoint_names: tuple[str, ...] = ()) -> dict | None:
    """:func:`fit_to_image` on one annotation row (``bbox``, ``keypoints``, ``area`` given or None), recording what
    changed in ``errors`` (``uri``: the annotation file, ``where``: the entry). Returns the fitted row, or None when
    the box has no area in the image (then it is left out)."""
    width, height = size
    fit = fit_to_image(row["bbox"], row["keypoints"], width, height)
    shown = "[" + ", ".join(f"{v:g}" for v in row["bbox"]) + "]"
    if fit.bbox is None:
        kind = "box_empty" if fit.empty else "box_outside_image"
        why = "has zero width or height" if fit.empty else f"has no area inside the {width}x{height} image"
        errors.append(error_row("pull", uri, kind, f"{uri}: {where}: box {shown} (xyxy) {why}; annotation left out",
                                row["image_id"]))
        return None
    out = dict(row, bbox=fit.bbox, keypoints=fit.keypoints)
    if out.get("area") is None:
        out["area"] = (fit.bbox[2] - fit.bbox[0]) * (fit.bbox[3] - fit.bbox[1])
    if fit.keypoints is not None:
        out["num_keypoints"] = sum(1 for v in fit.keypoints[2::3] if v > 0)
    if fit.clipped:
        errors.append(error_row("pull", uri, "box_clipped", f"{uri}: {where}: box {shown} (xyxy) extends outside "
                                f"the {width}x{height} image; clipped to "
                                f"[{', '.join(f'{v:g}' for v in fit.bbox)}]", row["image_id"]))
    if fit.outside_keypoints:
        names = ", ".join(keypoint_names[k] if k < len(keypoint_names) else str(k) for k in fit.outside_keypoints)
        errors.append(error_row("pull", uri, "keypoints_outside_image", f"{uri}: {where}: labelled keypoints outside "
                                f"the {width}x{height} image ({names}); kept as unlabelled (v = 0)", row["image_id"]))
    return out


def check_images(records: list[ImageRecord], limits: ImageLimits, stage: str = "pull") -> tuple[list[dict], list[dict]]:
    """Decode every record: rows for the ``images`` table and, for each bad file, a row for ``errors``."""
    rows, errors = [], []
    for rec in records:
        uri = display_path(rec.path)
        try:
            img = decode_image(rec.path, limits)
        except ImageError as exc:
            errors.append(error_row(stage, uri, exc.error_type, str(exc), rec.image_id))
            continue
        if rec.expected_size is not None and rec.expected_size != (img.width, img.height):
            errors.append(error_row(stage, uri, "size_mismatch",
                                    f"{uri}: annotations say {rec.expected_size[0]}x{rec.expected_size[1]}, "
                                    f"file is {img.width}x{img.height}", rec.image_id))
            continue
        rows.append({"image_id": rec.image_id, "uri": uri, "width": img.width, "height": img.height,
                     "split": rec.split, "source": rec.source, "sha256": img.sha256, "mode": img.mode,
                     "labels": rec.labels, "spurious_cue": rec.spurious_cue})
    return rows, errors


def list_files(root: Path) -> list[Path]:
    """All non-hidden regular files below ``root``, sorted, for a deterministic order."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    return out
