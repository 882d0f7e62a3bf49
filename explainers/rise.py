"""RISE (Petsiuk et al. 2018) and D-RISE (Petsiuk et al. 2021): random low-resolution masks, saliency = the
score-weighted mean of the masks, accumulated chunk by chunk with one matrix product."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from explainers.base import Explainer, region_means
from explainers.perturb import blend


def rise_masks(n: int, grid: int, p: float, height: int, width: int, generator: torch.Generator,
               device: torch.device) -> torch.Tensor:
    """n masks [n, H, W]: Bernoulli(p) grid x grid cells, bilinearly upsampled to (grid + 1) cells, each shifted by
    a random offset within one cell (so the cell edges do not line up across masks)."""
    ch, cw = math.ceil(height / grid), math.ceil(width / grid)
    cells = (torch.rand(n, 1, grid, grid, generator=generator, device=device) < p).float()
    big = F.interpolate(cells, size=((grid + 1) * ch, (grid + 1) * cw), mode="bilinear", align_corners=False)[:, 0]
    dy = torch.randint(0, ch, (n, 1, 1), generator=generator, device=device)
    dx = torch.randint(0, cw, (n, 1, 1), generator=generator, device=device)
    rows = dy + torch.arange(height, device=device).view(1, -1, 1)
    cols = dx + torch.arange(width, device=device).view(1, 1, -1)
    return big[torch.arange(n, device=device).view(-1, 1, 1), rows, cols]


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
        baseline = self.perturbation.baseline(image)
        saliency, coverage, total = None, None, None
        for start in range(0, budget, self.chunk_size):
            n = min(self.chunk_size, budget - start)
            masks = rise_masks(n, self.grid, self.p, H, W, generator, self.device)
            scores = self.score(blend(image, baseline, masks))                      # [n, T]
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
