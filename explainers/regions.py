"""Region sets, the players of a game: grid cells, superpixels, or any stack of masks / label map."""
from __future__ import annotations

import numpy as np
import torch


def grid_labels(height: int, width: int, rows: int, cols: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The cell index [H, W] (long, row-major: 0 .. rows * cols - 1) of every pixel of a rows x cols grid: pixel row
    y lies in cell row floor(y * rows / H), pixel column x in cell column floor(x * cols / W). Raises ValueError
    unless rows, cols >= 1."""
    if rows < 1 or cols < 1:
        raise ValueError(f"grid cells: rows and cols must be >= 1, got rows={rows}, cols={cols}")
    r = torch.div(torch.arange(height, device=device) * rows, height, rounding_mode="floor")
    c = torch.div(torch.arange(width, device=device) * cols, width, rounding_mode="floor")
    return r[:, None] * cols + c[None, :]


def grid_regions(height: int, width: int, rows: int, cols: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """rows x cols cells covering the image (:func:`grid_labels`' cells), as a bool stack [rows * cols, H, W]. With
    more rows than pixel rows (or columns than pixel columns) some cells have no pixel; ``Explainer.explain`` treats
    those as dummies (relevance exactly 0, no forwards). Raises ValueError unless rows, cols >= 1."""
    labels = grid_labels(height, width, rows, cols, device)
    return labels.unsqueeze(0) == torch.arange(rows * cols, device=device).view(-1, 1, 1)


def superpixels(image: torch.Tensor, n_segments: int = 50, method: str = "slic", compactness: float = 10.0,
                seed: int = 0) -> torch.Tensor:
    """SLIC or quickshift superpixels of ``image`` [3, H, W] (values in [0, 1]) as a bool stack [R, H, W] on the
    image's device, densely numbered. Computed on the CPU by scikit-image (once per image, not per forward). SLIC
    can return fewer segments than ``n_segments`` (on a flat or tiny image, down to one): count the masks."""
    from skimage.segmentation import quickshift, slic

    rgb = image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy().astype(np.float64)
    if method == "slic":
        labels = slic(rgb, n_segments=n_segments, compactness=compactness, start_label=0, channel_axis=-1)
    elif method == "quickshift":
        labels = quickshift(rgb, kernel_size=4, max_dist=200, ratio=0.2, rng=seed, channel_axis=-1)
    else:
        raise ValueError(f"unknown superpixel method {method!r}; expected 'slic' or 'quickshift'")
    _, labels = np.unique(labels, return_inverse=True)          # dense 0..R-1
    labels = torch.from_numpy(labels.reshape(rgb.shape[:2])).to(image.device)
    return labels.unsqueeze(0) == torch.arange(int(labels.max()) + 1, device=image.device).view(-1, 1, 1)
