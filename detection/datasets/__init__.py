"""Dataset sources. Each one yields the same tables (images, annotations, gt_parts, errors): see tables.py."""
from detection.datasets.coco import read_coco, tables_to_coco
from detection.datasets.folder import read_folder
from detection.datasets.imageio import ImageError, ImageLimits, decode_image, load_rgb
from detection.datasets.records import AnnotationError, ImageRecord, SourceListing, check_images
from detection.datasets.synthetic import SyntheticConfig, SpuriousCue, render_scene
from detection.datasets.tables import DatasetTables
from detection.datasets.yolo import read_yolo

__all__ = [
    "AnnotationError", "DatasetTables", "ImageError", "ImageLimits", "ImageRecord", "SourceListing",
    "SpuriousCue", "SyntheticConfig", "check_images", "decode_image", "load_rgb", "read_coco", "read_folder",
    "read_yolo", "render_scene", "tables_to_coco",
]
