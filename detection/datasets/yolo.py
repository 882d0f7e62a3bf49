"""Ultralytics-format datasets: a data yaml, images/ and labels/ (boxes; pose keypoints when kpt_shape is 17)."""
from __future__ import annotations

import math
from pathlib import Path

import yaml

from detection.body import NUM_KEYPOINTS
from detection.datasets.imageio import IMAGE_EXTENSIONS, header_size
from detection.datasets.records import AnnotationError, ImageRecord, SourceListing, display_path, list_files


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


def read_yolo(data: str | Path, splits: tuple[str, ...] = ("train", "val")) -> SourceListing:
    """Images and boxes (and keypoints for 17-keypoint pose datasets) of the given splits of a YOLO data yaml."""
    data_path = Path(data)
    if not data_path.is_file():
        raise FileNotFoundError(f"YOLO data yaml not found: {data_path}")
    try:
        cfg = yaml.safe_load(data_path.read_text())
    except yaml.YAMLError as exc:
        raise AnnotationError(data_path, "yaml", f"invalid YAML ({exc})") from None
    if not isinstance(cfg, dict) or "names" not in cfg:
        raise AnnotationError(data_path, "names", "missing class names")
    names = cfg["names"]
    names = dict(enumerate(names)) if isinstance(names, list) else {int(k): v for k, v in names.items()}
    kpt_shape = cfg.get("kpt_shape")
    n_kpt, kpt_dim = (kpt_shape[0], kpt_shape[1]) if kpt_shape else (0, 0)
    if kpt_shape and (n_kpt != NUM_KEYPOINTS or kpt_dim not in (2, 3)):
        raise AnnotationError(data_path, "kpt_shape", f"{kpt_shape}: only [17, 2] or [17, 3] is supported")
    root = Path(cfg.get("path") or data_path.parent)
    if not root.is_absolute():
        root = (data_path.parent / root)
    source = f"yolo:{display_path(data_path)}"

    listing = SourceListing(images=[])
    for split in splits:
        if split not in cfg or cfg[split] is None:
            continue
        for img in _image_paths(root, cfg[split], data_path, split):
            image_id = img.relative_to(root).as_posix() if img.is_relative_to(root) else img.as_posix()
            listing.images.append(ImageRecord(image_id, img, split, source))
            labels = label_path(img)
            size = header_size(img)
            if not labels.is_file() or size is None:
                continue      # background image, or a broken image that the image check will report
            listing.annotations.extend(_parse_labels(labels, image_id, size, names, n_kpt, kpt_dim))
    return listing


def _parse_labels(path: Path, image_id: str, size: tuple[int, int], names: dict[int, str], n_kpt: int,
                  kpt_dim: int) -> list[dict]:
    width, height = size
    expected = 5 + n_kpt * kpt_dim
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            values = [float(v) for v in fields]
        except ValueError:
            raise AnnotationError(path, f"line {n}", f"non-numeric value in {line!r}") from None
        if len(values) != expected or not all(math.isfinite(v) for v in values):
            raise AnnotationError(path, f"line {n}", f"expected {expected} finite numbers "
                                                     f"(class cx cy w h{' + keypoints' if n_kpt else ''}), "
                                                     f"got {len(values)}: {line!r}")
        cls = values[0]
        if cls != int(cls) or int(cls) not in names:
            raise AnnotationError(path, f"line {n}", f"class {fields[0]} is not in the data yaml's names")
        cx, cy, w, h = values[1:5]
        if w < 0 or h < 0:
            raise AnnotationError(path, f"line {n}", f"negative box size in {line!r}")
        keypoints = None
        if n_kpt:
            kp = []
            for k in range(n_kpt):
                x, y = values[5 + k * kpt_dim], values[6 + k * kpt_dim]
                v = values[7 + k * kpt_dim] if kpt_dim == 3 else 2.0
                kp += [x * width, y * height, 2.0] if v > 0 else [0.0, 0.0, 0.0]
            keypoints = kp
        rows.append({
            "image_id": image_id, "ann_id": f"{image_id}#{len(rows)}", "category": names[int(cls)],
            "bbox": [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height],
            "area": w * width * h * height, "iscrowd": False, "keypoints": keypoints,
            "num_keypoints": sum(1 for v in (keypoints or [])[2::3] if v > 0), "occlusion": None,
            "truncation": None,
        })
    return rows
