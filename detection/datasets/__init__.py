"""Dataset sources. Each one yields the same tables (images, annotations, gt_parts, errors): see tables.py."""
from __future__ import annotations

import importlib

# public name -> the submodule that defines it; imported on first access (PEP 562), so importing one
# submodule (or this package) does not import its siblings. Project code imports from the submodule.
_LAZY = {
    "read_coco": "detection.datasets.coco",
    "tables_to_coco": "detection.datasets.coco",
    "read_folder": "detection.datasets.folder",
    "ImageError": "detection.datasets.imageio",
    "ImageLimits": "detection.datasets.imageio",
    "decode_image": "detection.datasets.imageio",
    "load_rgb": "detection.datasets.imageio",
    "AnnotationError": "detection.datasets.records",
    "ImageRecord": "detection.datasets.records",
    "SourceListing": "detection.datasets.records",
    "check_images": "detection.datasets.records",
    "SyntheticConfig": "detection.datasets.synthetic",
    "SpuriousCue": "detection.datasets.synthetic",
    "render_scene": "detection.datasets.synthetic",
    "DatasetTables": "detection.datasets.tables",
    "read_yolo": "detection.datasets.yolo",
}

__all__ = [
    "AnnotationError", "DatasetTables", "ImageError", "ImageLimits", "ImageRecord", "SourceListing",
    "SpuriousCue", "SyntheticConfig", "check_images", "decode_image", "load_rgb", "read_coco", "read_folder",
    "read_yolo", "render_scene", "tables_to_coco",
]


def __getattr__(name: str):
    """Import a public name's submodule on first access and cache the name in the package's globals.
    Raises AttributeError for a name that is not exported."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
