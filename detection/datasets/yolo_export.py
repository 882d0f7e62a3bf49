"""Write pulled tables as an ultralytics dataset (detect or pose) so YOLO models can be trained on them."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import yaml

from detection.body import COCO_KEYPOINTS, NUM_KEYPOINTS
from detection.datasets.records import fit_to_image

# Left/right swap of the COCO keypoints, for ultralytics' horizontal-flip augmentation.
COCO_FLIP_INDEX = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]


def write_yolo_dataset(images: pa.Table, annotations: pa.Table, out_dir: str | Path, classes: list[str],
                       pose: bool = False, root: str | Path = ".") -> Path:
    """Symlink each image into ``out_dir/images/<split>/`` and write its labels; returns the data yaml path.

    Boxes are normalised ``cx cy w h``; with ``pose`` each line also holds the 17 keypoints ``x y v`` (COCO's
    visibility: 0 unlabelled, 1 occluded, 2 visible; unlabelled ones as ``0 0 0``), normalised by the image's
    own width and height. Crowd boxes and categories not in ``classes`` are left out.

    Every coordinate written lies in [0, 1] (ultralytics drops a whole image whose labels have one above 1.01):
    a box or labelled keypoint more than ``records.EDGE_TOLERANCE`` px outside its image, or a box without area,
    raises ``ValueError`` naming the image and annotation (the pull stage's readers clip them and record it).
    """
    ids = images["image_id"].to_pylist()
    if len(ids) != len(set(ids)):
        dupes = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"image ids must be unique across the exported images, duplicated: {dupes}")
    out = Path(out_dir)
    class_index = {c: i for i, c in enumerate(classes)}
    by_image: dict[str, list[dict]] = {}
    for ann in annotations.to_pylist():
        if ann["category"] in class_index and not ann["iscrowd"]:
            by_image.setdefault(ann["image_id"], []).append(ann)
    splits = set()
    for img in images.to_pylist():
        split = img["split"]
        splits.add(split)
        src = (Path(root) / img["uri"]).absolute()
        name = img["image_id"].replace("/", "__")
        link = out / "images" / split / f"{name}{src.suffix}"
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(src, link)
        W, H = img["width"], img["height"]
        lines = []
        for ann in by_image.get(img["image_id"], []):
            if pose and ann["keypoints"] is None:
                continue
            fit = fit_to_image(ann["bbox"], ann["keypoints"] if pose else None, W, H)
            where = f"image {img['image_id']!r} annotation {ann['ann_id']!r}"
            if fit.bbox is None or fit.clipped:
                raise ValueError(f"{where}: box {list(ann['bbox'])} (xyxy) does not lie in the {W}x{H} image")
            if fit.outside_keypoints:
                raise ValueError(f"{where}: labelled keypoints {fit.outside_keypoints} lie outside the {W}x{H} image")
            x1, y1, x2, y2 = fit.bbox
            fields = [class_index[ann["category"]], (x1 + x2) / 2 / W, (y1 + y2) / 2 / H, (x2 - x1) / W, (y2 - y1) / H]
            if pose:
                kp = np.asarray(fit.keypoints, dtype=np.float64).reshape(NUM_KEYPOINTS, 3)
                kp[:, 0] /= W
                kp[:, 1] /= H
                fields += kp.reshape(-1).tolist()
            lines.append(" ".join(f"{v:.6g}" for v in fields))
        label = out / "labels" / split / f"{name}.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("\n".join(lines) + ("\n" if lines else ""))
    data = {"path": str(out.absolute()), "names": dict(enumerate(classes)),
            **{s: f"images/{s}" for s in sorted(splits)}}
    if pose:
        data.update(kpt_shape=[NUM_KEYPOINTS, 3], flip_idx=COCO_FLIP_INDEX, kpt_names={0: list(COCO_KEYPOINTS)})
    path = out / "data.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
