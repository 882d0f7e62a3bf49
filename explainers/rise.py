"""RISE (Petsiuk et al. 2018) and D-RISE (Petsiuk et al. 2021): random low-resolution masks, saliency = the
score-weighted mean of the masks, accumulated chunk by chunk with one matrix product."""
from __future__ import annotations

import math

import torch

from explainers.base import Explainer, region_means
from explainers.perturb import Compositor


def _interp_rows(length: int, grid: int, cell: int, device: torch.device) -> torch.Tensor:
    """Bilinear weights [cell, length, grid]: row o of the grid x grid cells upsampled to (grid + 1) * cell
    (align_corners=False, as ``F.interpolate``) and read from offset s, for every offset s in [0, cell)."""
    size = (grid + 1) * cell
    o = torch.arange(cell, device=device).view(-1, 1) + torch.arange(length, device=device).view(1, -1)
    src = ((o.double() + 0.5) * grid / size - 0.5).clamp_min(0)
    i0 = src.floor().long().clamp_max(grid - 1)
    i1 = (i0 + 1).clamp_max(grid - 1)
    w1 = (src - i0).clamp(0, 1)
    weights = torch.zeros(cell, length, grid, dtype=torch.float64, device=device)
    weights.scatter_add_(2, i0.unsqueeze(-1), (1 - w1).unsqueeze(-1))
    weights.scatter_add_(2, i1.unsqueeze(-1), w1.unsqueeze(-1))
    return weights.float()


_WEIGHTS: dict[tuple, torch.Tensor] = {}


def _cached_rows(length: int, grid: int, cell: int, device: torch.device) -> torch.Tensor:
    key = (length, grid, cell, str(device))
    if key not in _WEIGHTS:
        _WEIGHTS[key] = _interp_rows(length, grid, cell, device)
    return _WEIGHTS[key]


def rise_masks(n: int, grid: int, p: float, height: int, width: int, generator: torch.Generator,
               device: torch.device) -> torch.Tensor:
    """n masks [n, H, W]: Bernoulli(p) grid x grid cells, bilinearly upsampled to (grid + 1) cells, each shifted by
    a random offset within one cell (so the cell edges do not line up across masks). Bilinear upsampling is
    separable, so each shifted crop is rows[dy] @ cells @ cols[dx]^T: two batched matrix products instead of
    upsampling the whole (grid + 1)-cell image and gathering the crop."""
    ch, cw = math.ceil(height / grid), math.ceil(width / grid)
    cells = (torch.rand(n, 1, grid, grid, generator=generator, device=device) < p).float()[:, 0]
    dy = torch.randint(0, ch, (n,), generator=generator, device=device)
    dx = torch.randint(0, cw, (n,), generator=generator, device=device)
    rows = _cached_rows(height, grid, ch, device)[dy]                     # [n, H, grid]
    cols = _cached_rows(width, grid, cw, device)[dx]                      # [n, W, grid]
    return torch.bmm(torch.bmm(rows, cells), cols.transpose(1, 2))


class Rise(Explainer):
    """Saliency = sum_i score_i * M_i / (N * p). With regions, relevance is the mean saliency inside each one.

    ``center=True`` subtracts the mean score of the masks first, so a pixel's saliency is how much keeping it
    raises the score above average (positive only where it helps): energy-based metrics then measure where the
    evidence is rather than the constant E[score] that every pixel of plain RISE carries."""

    name = "rise"
    default_budget = 4000

    def __init__(self, scorer, *, grid: int = 8, p: float = 0.5, center: bool = False, perturbation="mean", **kw):
        super().__init__(scorer, perturbation=perturbation, **kw)
        if not 0 < p < 1:
            raise ValueError(f"keep probability p must be in (0, 1), got {p}")
        self.grid, self.p, self.center = int(grid), float(p), bool(center)

    def options(self):
        return {**super().options(), "grid": self.grid, "p": self.p, "center": self.center}

    def _explain(self, image, regions, budget, generator):
        H, W = image.shape[-2:]
        composite = Compositor(image, self.perturbation.baseline(image))
        saliency, coverage, total = None, None, None
        for start in range(0, budget, self.chunk_size):
            n = min(self.chunk_size, budget - start)
            masks = rise_masks(n, self.grid, self.p, H, W, generator, self.device)
            scores = self.score(composite(masks))                                    # [n, T]
            part = scores.T @ masks.view(n, H * W)                                   # [T, HW]
            saliency = part if saliency is None else saliency.add_(part)
            if self.center:
                m, s = masks.view(n, H * W).sum(0), scores.sum(0)
                coverage = m if coverage is None else coverage.add_(m)
                total = s if total is None else total.add_(s)
        if self.center:       # sum_i (score_i - mean score) M_i = sum_i score_i M_i - mean score * sum_i M_i
            saliency = saliency - (total / budget)[:, None] * coverage[None, :]
        saliency = (saliency / (budget * self.p)).view(-1, H, W)
        return saliency, None if regions is None else region_means(saliency, regions), {}


class DRise(Rise):
    """D-RISE: RISE masks scored by a detector's D-RISE similarity (use a ``DRiseScorer``); published settings
    grid 16, p 0.5, about 5000 masks."""

    name = "drise"
    default_budget = 5000

    def __init__(self, scorer, *, grid: int = 16, p: float = 0.5, center: bool = False, **kw):
        super().__init__(scorer, grid=grid, p=p, center=center, **kw)
