"""Ultralytics-format datasets: a data yaml, images/ and labels/ (boxes; pose keypoints when kpt_shape is 17)."""
from __future__ import annotations

import math
from pathlib import Path

import yaml

from detection.body import COCO_KEYPOINTS, NUM_KEYPOINTS
from detection.datasets.imageio import IMAGE_EXTENSIONS, header_size
from detection.datasets.records import (
    AnnotationError,
    ImageRecord,
    SourceListing,
    display_path,
    error_row,
    fit_row,
    list_files,
)


def _image_paths(root: Path, entry: str | list, data_path: Path, key: str) -> list[Path]:
    entries = entry if isinstance(entry, list) else [entry]
    out: list[Path] = []
    for e in entries:
        p = Path(e) if Path(e).is_absolute() else root / e
        if p.is_dir():
            out.extend(f for f in list_files(p) if f.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.suffix == ".txt" and p.is_file():
            for line in p.read_text().splitlines():
                if line.strip():
                    q = Path(line.strip())
                    out.append(q if q.is_absolute() else (p.parent / q).resolve())
        else:
            raise AnnotationError(data_path, key, f"{display_path(p)} is neither a folder nor an image list (.txt)")
    return out


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the last '/images/' in the path becomes '/labels/', the suffix '.txt'."""
    parts = list(image.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _names(cfg: dict, data_path: Path) -> dict[int, str]:
    names = cfg["names"]
    if isinstance(names, list):
        names = dict(enumerate(names))
    if not isinstance(names, dict):
        raise AnnotationError(data_path, "names", f"must be a list or a mapping of class ids to names, got {names!r}")
    out: dict[int, str] = {}
    for key, name in names.items():
        try:
            cls = int(key)
        except (TypeError, ValueError):
            cls = None
        if cls is None or cls != key and str(cls) != str(key).strip() or cls < 0:
            raise AnnotationError(data_path, f"names[{key!r}]", "class ids must be non-negative integers")
        if not isinstance(name, str) or not name:
            raise AnnotationError(data_path, f"names[{key!r}]", f"class name must be a non-empty string, got {name!r}")
        out[cls] = name
    dupes = sorted({n for n in out.values() if list(out.values()).count(n) > 1})
    if dupes:
        raise AnnotationError(data_path, "names", f"duplicate class names {dupes}: our tables name categories")
    return out


def _kpt_shape(cfg: dict, data_path: Path) -> tuple[int, int]:
    kpt_shape = cfg.get("kpt_shape")
    if kpt_shape is None:
        return 0, 0
    if (not isinstance(kpt_shape, list) or len(kpt_shape) != 2 or kpt_shape[0] != NUM_KEYPOINTS
            or kpt_shape[1] not in (2, 3)):
        raise AnnotationError(data_path, "kpt_shape", f"{kpt_shape}: only [17, 2] or [17, 3] is supported")
    return NUM_KEYPOINTS, int(kpt_shape[1])


def read_yolo(data: str | Path, splits: tuple[str, ...] = ("train", "val")) -> SourceListing:
    """Images and boxes (and keypoints for 17-keypoint pose datasets) of the given splits of a YOLO data yaml.

    Label lines: ``class cx cy w h`` (normalised), a polygon ``class x1 y1 ... xn yn`` (n >= 3; its bounding box,
    as ultralytics reads segment labels for detection), or with ``kpt_shape`` the box and 17 keypoints ``x y v``
    (``[17, 3]``: v read as written, 0 unlabelled, 1 labelled but occluded, 2 visible) or ``x y`` (``[17, 2]``:
    labelled unless a coordinate is negative or the point is (0, 0), the way unlabelled points are written).
    Malformed lines raise :class:`AnnotationError` naming the label file and line. Boxes are clipped to the image,
    labelled keypoints outside it become unlabelled, exact duplicate lines and images listed twice are left out;
    each is a row of ``listing.errors`` (see ``records.ANNOTATION_ERROR_TYPES``).
    """
    data_path = Path(data)
    if not data_path.is_file():
        raise FileNotFoundError(f"YOLO data yaml not found: {data_path}")
    try:
        cfg = yaml.safe_load(data_path.read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as exc:
        raise AnnotationError(data_path, "yaml", f"invalid YAML ({exc})") from None
    except UnicodeDecodeError as exc:
        raise AnnotationError(data_path, f"byte {exc.start}", "not UTF-8 text") from None
    if not isinstance(cfg, dict) or "names" not in cfg:
        raise AnnotationError(data_path, "names", "missing class names")
    names = _names(cfg, data_path)
    n_kpt, kpt_dim = _kpt_shape(cfg, data_path)
    root = Path(cfg.get("path") or data_path.parent)
    if not root.is_absolute():
        root = (data_path.parent / root)
    source = f"yolo:{display_path(data_path)}"

    listing = SourceListing(images=[])
    seen: dict[str, str] = {}
    for split in splits:
        if split not in cfg or cfg[split] is None:
            continue
        for img in _image_paths(root, cfg[split], data_path, split):
            image_id = img.relative_to(root).as_posix() if img.is_relative_to(root) else img.as_posix()
            if image_id in seen:
                listing.errors.append(error_row(
                    "pull", display_path(img), "duplicate_image",
                    f"{display_path(data_path)}: {split}: {image_id} is listed again (first in {seen[image_id]}); "
                    f"kept once, in {seen[image_id]}", image_id))
                continue
            seen[image_id] = split
            listing.images.append(ImageRecord(image_id, img, split, source))
            labels = label_path(img)
            size = header_size(img)
            if not labels.is_file() or size is None:
                continue      # background image, or a broken image that the image check will report
            listing.annotations.extend(_parse_labels(labels, image_id, size, names, n_kpt, kpt_dim,
                                                     listing.errors))
    return listing


def _parse_line(path: Path, n: int, line: str, names: dict[int, str], n_kpt: int,
                kpt_dim: int) -> tuple[int, list[float], list[float] | None]:
    """One label line -> (class, normalised xyxy, normalised flat keypoints [x, y, v] x 17 or None)."""
    fields = line.split()
    try:
        values = [float(v) for v in fields]
    except ValueError:
        raise AnnotationError(path, f"line {n}", f"non-numeric value in {line!r}") from None
    expected = 5 + n_kpt * kpt_dim
    polygon = not n_kpt and len(values) >= 7 and len(values) % 2 == 1
    if not polygon and len(values) != expected or not all(math.isfinite(v) for v in values):
        what = ("class cx cy w h + 17 keypoints" if n_kpt else
                "class cx cy w h, or class x1 y1 ... xn yn (a polygon, n >= 3)")
        count = f"{expected}" if n_kpt else "5 or an odd number >= 7"
        raise AnnotationError(path, f"line {n}", f"expected {count} finite numbers ({what}), "
                                                 f"got {len(values)}: {line!r}")
    cls = values[0]
    if cls != int(cls) or int(cls) not in names:
        known = f"ids {min(names)}..{max(names)}" if names else "no classes"
        raise AnnotationError(path, f"line {n}", f"class {fields[0]} is not in the data yaml's names ({known})")
    if polygon:
        xs, ys = values[1::2], values[2::2]
        return int(cls), [min(xs), min(ys), max(xs), max(ys)], None
    cx, cy, w, h = values[1:5]
    if w < 0 or h < 0:
        raise AnnotationError(path, f"line {n}", f"negative box size in {line!r}")
    box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
    if not n_kpt:
        return int(cls), box, None
    kp = []
    for k in range(n_kpt):
        x, y = values[5 + k * kpt_dim], values[6 + k * kpt_dim]
        if kpt_dim == 3:
            v = values[7 + k * kpt_dim]
            if v not in (0.0, 1.0, 2.0):
                raise AnnotationError(path, f"line {n}", f"keypoint {k + 1} ({COCO_KEYPOINTS[k]}): visibility "
                                                         f"must be 0, 1 or 2, got {fields[7 + k * kpt_dim]}")
        else:
            v = 0.0 if x < 0 or y < 0 or (x == 0 and y == 0) else 2.0
        kp += [x, y, v]
    return int(cls), box, kp


def _parse_labels(path: Path, image_id: str, size: tuple[int, int], names: dict[int, str], n_kpt: int,
                  kpt_dim: int, errors: list[dict]) -> list[dict]:
    width, height = size
    uri = display_path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")         # ultralytics reads label files the same way
    except UnicodeDecodeError as exc:
        raise AnnotationError(path, f"byte {exc.start}", "not UTF-8 text") from None
    rows, lines_seen = [], {}
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        cls, box, kp = _parse_line(path, n, line, names, n_kpt, kpt_dim)
        key = (cls, *box, *(kp or ()))
        if key in lines_seen:
            errors.append(error_row("pull", uri, "duplicate_label", f"{uri}: line {n}: repeats line "
                                    f"{lines_seen[key]} exactly; left out", image_id))
            continue
        lines_seen[key] = n
        scale = [width, height, width, height]
        keypoints = None
        if kp is not None:
            keypoints = [c * (width if i % 3 == 0 else height if i % 3 == 1 else 1) for i, c in enumerate(kp)]
        row = {
            "image_id": image_id, "ann_id": f"{image_id}#{len(rows)}", "category": names[cls],
            "bbox": [c * s for c, s in zip(box, scale)], "area": None, "iscrowd": False,
            "keypoints": keypoints, "num_keypoints": sum(1 for v in (keypoints or [])[2::3] if v > 0),
            "occlusion": None, "truncation": None,
        }
        fitted = fit_row(row, size, uri, f"line {n}", errors, COCO_KEYPOINTS)
        if fitted is not None:
            rows.append(fitted)
    return rows
