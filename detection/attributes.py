"""Per-pedestrian attributes: the columns slice discovery (:mod:`detection.slices`) groups ground-truth persons by.

Three kinds, all keyed by ``(image_id, ann_id)`` of the ``annotations`` table:

* drawn: what the synthetic generator drew (``attributes`` table, :data:`~detection.datasets.tables.ATTRIBUTES_SCHEMA`);
* computed: what any source's boxes and pixels give (:func:`computed_attributes`: box size, aspect ratio, border
  truncation, crowd overlap, brightness and contrast under the box);
* the user's own: a Parquet or CSV file with ``image_id`` and ``ann_id`` columns (:func:`join_user_attributes`).

Plain NumPy / pandas / pyarrow.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from detection.datasets.synthetic import colour_name, facing_name
from detection.datasets.tables import COMPUTED_ATTRIBUTES_SCHEMA
from detection.evaluation import iou_matrix

__all__ = ["AttributeTableError", "attribute_frame", "colour_name", "computed_attributes", "facing_name",
           "join_user_attributes", "read_user_attributes"]
KEYS = ("image_id", "ann_id")
_LUMA = np.float32([0.299, 0.587, 0.114])                                 # Rec. 601


class AttributeTableError(ValueError):
    """A user's attribute table that cannot be joined; the message names the file and what is wrong."""


def _box_means(integral: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sums, pixel counts) of an image over integer-clipped xyxy boxes [N, 4], from its [H+1, W+1] integral."""
    H, W = integral.shape[0] - 1, integral.shape[1] - 1
    x0 = np.clip(np.floor(boxes[:, 0]), 0, W).astype(int)
    y0 = np.clip(np.floor(boxes[:, 1]), 0, H).astype(int)
    x1 = np.clip(np.ceil(boxes[:, 2]), 0, W).astype(int)
    y1 = np.clip(np.ceil(boxes[:, 3]), 0, H).astype(int)
    x1, y1 = np.maximum(x1, x0), np.maximum(y1, y0)
    sums = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return sums, (x1 - x0) * (y1 - y0)


def computed_attributes(images: pa.Table | pd.DataFrame, annotations: pa.Table | pd.DataFrame,
                        load_image: Callable[[str], np.ndarray] | None = None, category: str = "person",
                        root: str | Path | None = None) -> pa.Table:
    """The attributes any source has, for every non-crowd ``category`` annotation (rows in annotation order).

    ``images`` needs ``image_id, uri, width, height``; ``annotations`` ``image_id, ann_id, category, bbox, iscrowd``
    (the dataset tables). Box height / width / aspect ratio (w / h) and border truncation (the box within 1 px of
    an image border) come from the boxes; ``crowd_iou`` is the largest IoU with another ``category`` box of the
    same image and ``crowd_neighbours`` the count above IoU 0.1; ``brightness`` is the mean Rec. 601 luma in the box
    / 255 and ``box_contrast`` its difference to a ring of a quarter of the box size around it. Images are read
    with ``load_image(path)`` ([H, W, 3] uint8 RGB; default :func:`detection.datasets.imageio.load_rgb`, ``uri``
    relative to ``root``); an image that fails to load leaves null brightness / contrast rather than raising.
    Returns a table with :data:`~detection.datasets.tables.COMPUTED_ATTRIBUTES_SCHEMA`.
    """
    if load_image is None:
        from detection.datasets.imageio import load_rgb as load_image
    imgs = images.to_pandas() if isinstance(images, pa.Table) else images
    anns = annotations.to_pandas() if isinstance(annotations, pa.Table) else annotations
    for frame, name, need in ((imgs, "images", ("image_id", "uri", "width", "height")),
                              (anns, "annotations", (*KEYS, "category", "bbox", "iscrowd"))):
        missing = [c for c in need if c not in frame.columns]
        if missing:
            raise KeyError(f"{name} table lacks column(s) {missing}")
    anns = anns[(anns["category"] == category) & ~anns["iscrowd"].fillna(False).astype(bool)]
    if anns.empty:
        return COMPUTED_ATTRIBUTES_SCHEMA.empty_table()
    boxes = np.stack(anns["bbox"].map(lambda b: np.asarray(b, float)).to_list()).reshape(-1, 4)
    sizes = imgs.set_index("image_id").loc[anns["image_id"], ["width", "height", "uri"]]
    W, H = sizes["width"].to_numpy(float), sizes["height"].to_numpy(float)
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    crowd_iou = np.zeros(len(anns))
    neighbours = np.zeros(len(anns), int)
    brightness = np.full(len(anns), np.nan)
    contrast = np.full(len(anns), np.nan)
    image_ids = anns["image_id"].to_numpy()
    for image_id in pd.unique(image_ids):
        rows = np.flatnonzero(image_ids == image_id)
        iou = iou_matrix(boxes[rows], boxes[rows])
        np.fill_diagonal(iou, 0.0)
        crowd_iou[rows], neighbours[rows] = iou.max(1), (iou > 0.1).sum(1)
        uri = str(sizes["uri"].iloc[rows[0]])
        try:
            rgb = load_image(str(Path(root) / uri) if root is not None and not Path(uri).is_absolute() else uri)
        except Exception:  # noqa: BLE001 - an unreadable image is recorded by pull; here it leaves nulls
            continue
        luma = np.asarray(rgb, np.float32) @ _LUMA
        integral = cv2.integral(luma.astype(np.float64))
        inner, n_in = _box_means(integral, boxes[rows])
        pad = 0.25 * np.stack([bw[rows], bh[rows]], 1).repeat(2, 1) * np.array([-1, -1, 1, 1])
        outer, n_out = _box_means(integral, boxes[rows] + pad)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_in = np.where(n_in > 0, inner / np.maximum(n_in, 1), np.nan)
            mean_ring = np.where(n_out > n_in, (outer - inner) / np.maximum(n_out - n_in, 1), np.nan)
        brightness[rows] = mean_in / 255.0
        contrast[rows] = np.abs(mean_in - mean_ring) / 255.0
    data = {
        "image_id": image_ids, "ann_id": anns["ann_id"].to_numpy(), "box_height": bh, "box_width": bw,
        "aspect_ratio": np.where(bh > 0, bw / np.maximum(bh, 1e-9), np.nan),
        "truncated_left": boxes[:, 0] <= 1.0, "truncated_right": boxes[:, 2] >= W - 1.0,
        "truncated_top": boxes[:, 1] <= 1.0, "truncated_bottom": boxes[:, 3] >= H - 1.0,
        "crowd_iou": crowd_iou, "crowd_neighbours": neighbours,
        "brightness": brightness, "box_contrast": contrast,
    }
    return pa.Table.from_pydict({k: pa.array(v, from_pandas=True) for k, v in data.items()}).cast(
        COMPUTED_ATTRIBUTES_SCHEMA)


def read_user_attributes(path: str | Path) -> pd.DataFrame:
    """A user's per-object table (``.parquet`` / ``.pq`` or ``.csv``) with ``image_id`` and ``ann_id`` columns.

    Raises :class:`AttributeTableError` naming the file when it is missing or unreadable, has another extension,
    lacks a key column, or repeats an ``(image_id, ann_id)`` key.
    """
    path = Path(path)
    if not path.is_file():
        raise AttributeTableError(f"{path}: attribute table not found")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            frame = pq.read_table(path).to_pandas()
        elif suffix == ".csv":
            frame = pd.read_csv(path, dtype={"image_id": str, "ann_id": str})
        else:
            raise AttributeTableError(f"{path}: expected a .parquet or .csv attribute table, got {suffix!r}")
    except AttributeTableError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow / pandas raise many types for a bad file
        raise AttributeTableError(f"{path}: cannot read attribute table ({type(exc).__name__}: {exc})") from None
    missing = [k for k in KEYS if k not in frame.columns]
    if missing:
        raise AttributeTableError(f"{path}: missing key column(s) {missing}; columns are {list(frame.columns)}")
    frame = frame.astype({k: str for k in KEYS})
    dup = frame.duplicated(list(KEYS))
    if dup.any():
        first = frame.loc[dup, list(KEYS)].iloc[0].tolist()
        raise AttributeTableError(f"{path}: {int(dup.sum())} repeated (image_id, ann_id) key(s), e.g. {first}")
    return frame


def join_user_attributes(frame: pd.DataFrame, path: str | Path, *, allow_unmatched: bool = False) -> pd.DataFrame:
    """Left-join a user's attribute table (:func:`read_user_attributes`) onto ``frame`` by ``(image_id, ann_id)``.

    Objects the user's table lacks get nulls. Raises :class:`AttributeTableError` naming the file when its columns
    clash with ``frame``'s, or when some of its rows match no object of ``frame`` (a wrong id format, another
    dataset) unless ``allow_unmatched``; the message gives the count and an example key.
    """
    user = read_user_attributes(path)
    clash = sorted(set(user.columns) & set(frame.columns) - set(KEYS))
    if clash:
        raise AttributeTableError(f"{path}: column(s) {clash} already exist; rename them in the attribute table")
    keys = pd.MultiIndex.from_frame(frame[list(KEYS)].astype(str))
    theirs = pd.MultiIndex.from_frame(user[list(KEYS)])
    unmatched = ~theirs.isin(keys)
    if unmatched.any() and not allow_unmatched:
        raise AttributeTableError(
            f"{path}: {int(unmatched.sum())} of {len(user)} rows match no annotation by (image_id, ann_id), "
            f"e.g. {list(theirs[unmatched][0])}")
    return frame.astype({k: str for k in KEYS}).merge(user, on=list(KEYS), how="left", validate="one_to_one")


def non_crowd(annotations: pa.Table, category: str) -> pa.Table:
    """The rows of ``annotations`` (needs ``category``, ``iscrowd``) of ``category`` that are not crowd regions
    (a null ``iscrowd`` counts as not crowd), in table order."""
    return annotations.filter(pc.and_(pc.equal(annotations["category"], category),
                                      pc.invert(pc.fill_null(annotations["iscrowd"], False))))


def attribute_frame(annotations: pa.Table | pd.DataFrame, drawn: pa.Table | pd.DataFrame | None = None,
                    computed: pa.Table | pd.DataFrame | None = None,
                    user_tables: Sequence[str | Path] = (), category: str = "person") -> pd.DataFrame:
    """One row per non-crowd ``category`` annotation with every attribute known for it: the annotations' own
    ``occlusion`` / ``truncation``, then ``computed`` and ``drawn`` columns (left-joined; the drawn table's
    ``height_px`` etc. keep their names, computed ones are distinct), then each user table in order."""
    if isinstance(annotations, pa.Table):      # filtered and narrowed in Arrow: no Python objects for other rows
        anns = non_crowd(annotations, category).select([*KEYS, "occlusion", "truncation"]).to_pandas()
    else:
        anns = annotations[(annotations["category"] == category)
                           & ~annotations["iscrowd"].fillna(False).astype(bool)]
    frame = anns[[*KEYS, "occlusion", "truncation"]].astype({k: str for k in KEYS}).reset_index(drop=True)
    for extra in (computed, drawn):
        if extra is None:
            continue
        extra = extra.to_pandas() if isinstance(extra, pa.Table) else extra
        extra = extra.drop(columns=[c for c in extra.columns if c in frame.columns and c not in KEYS])
        frame = frame.merge(extra.astype({k: str for k in KEYS}), on=list(KEYS), how="left", validate="one_to_one")
    for path in user_tables:
        frame = join_user_attributes(frame, path)
    return frame
