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
