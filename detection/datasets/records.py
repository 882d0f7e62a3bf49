"""What a source hands to the pull stage before images are checked: image records and annotation rows."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

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
