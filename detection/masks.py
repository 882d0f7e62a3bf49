"""Binary mask run-length encoding, COCO's uncompressed convention (column-major, runs start with zeros)."""
from __future__ import annotations

import numpy as np


def rle_encode(mask: np.ndarray) -> np.ndarray:
    """Encode a boolean [H, W] mask as int32 run lengths; pycocotools reads them as {'size': [H, W], 'counts': ...}."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return np.zeros(0, dtype=np.int32)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    counts = np.diff(bounds)
    if flat[0]:
        counts = np.concatenate(([0], counts))
    return counts.astype(np.int32)


def rle_decode(counts: np.ndarray, height: int, width: int) -> np.ndarray:
    """Inverse of :func:`rle_encode`: a boolean [H, W] mask."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.sum() != height * width:
        raise ValueError(f"RLE covers {int(counts.sum())} pixels, mask {height}x{width} has {height * width}")
    values = (np.arange(counts.size) % 2).astype(bool)
    return np.repeat(values, counts).reshape(width, height).T


def rle_area(counts: np.ndarray) -> int:
    """Foreground pixel count of an RLE without decoding it."""
    return int(np.asarray(counts)[1::2].sum())


def rle_encode_at(crop: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
    """RLE of an [H, W] mask that is zero outside ``crop`` placed at (top, left): cost grows with the crop's
    foreground only, not with the image (a pedestrian's parts in a large image stay cheap)."""
    crop = np.asarray(crop, dtype=bool)
    h, w = crop.shape
    if top < 0 or left < 0 or top + h > height or left + w > width:
        raise ValueError(f"crop {h}x{w} at ({top}, {left}) does not fit a {height}x{width} mask")
    cols, rows = np.nonzero(crop.T)                      # column-major order, as the flat RLE index runs
    if cols.size == 0:
        return np.array([height * width], dtype=np.int32)
    flat = (cols.astype(np.int64) + left) * height + rows + top
    breaks = np.flatnonzero(np.diff(flat) != 1) + 1
    starts = flat[np.concatenate(([0], breaks))]
    ends = flat[np.concatenate((breaks - 1, [flat.size - 1]))] + 1
    counts = np.empty(2 * starts.size + 1, dtype=np.int64)
    counts[0] = starts[0]
    counts[1::2] = ends - starts
    counts[2:-1:2] = starts[1:] - ends[:-1]
    counts[-1] = height * width - ends[-1]
    return (counts if counts[-1] else counts[:-1]).astype(np.int32)
