"""Bare images in a folder (recursive), no annotations."""
from __future__ import annotations

from pathlib import Path

from detection.datasets.imageio import IMAGE_EXTENSIONS
from detection.datasets.records import ImageRecord, SourceListing, display_path, error_row, list_files


def read_folder(images_dir: str | Path, split: str = "test") -> SourceListing:
    """Every image file below ``images_dir``; other files are listed as errors (``unsupported_extension``)."""
    root = Path(images_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"images folder not found: {root}")
    listing = SourceListing(images=[])
    for path in list_files(root):
        image_id = path.relative_to(root).as_posix()
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            listing.images.append(ImageRecord(image_id, path, split, f"folder:{display_path(root)}"))
        else:
            listing.errors.append(error_row("pull", display_path(path), "unsupported_extension",
                                            f"{display_path(path)}: not an image extension ({path.suffix or 'none'})",
                                            image_id))
    return listing
