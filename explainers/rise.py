"""RISE (Petsiuk et al. 2018) and D-RISE (Petsiuk et al. 2021): random low-resolution masks, saliency = the
score-weighted mean of the masks. Each mask is rows[dy] @ (cells @ cols[dx]^T) (separable bilinear upsampling of
shifted grid cells), so the weighted sum is kept per row offset dy at grid resolution and expanded to pixels with one
matrix product at the end, instead of reading every full-size mask a second time."""
from __future__ import annotations

import math

import torch

from explainers.base import Explainer, region_means
from explainers.perturb import ChunkBuffer, Compositor


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


class RiseMasks:
    """Draws RISE masks [n, H, W]: Bernoulli(p) grid x grid cells, bilinearly upsampled to (grid + 1) cells, each
    shifted by a random offset within one cell (so the cell edges do not line up across masks). Bilinear upsampling
    is separable, so each shifted crop is rows[dy] @ cells @ cols[dx]^T: two batched matrix products. The masks of
    the last draw are written into one reused buffer (valid until the next draw)."""

    def __init__(self, grid: int, p: float, height: int, width: int, device: torch.device):
        self.grid, self.p, self.size = grid, p, (height, width)
        self.cell = (math.ceil(height / grid), math.ceil(width / grid))
        self.rows = _cached_rows(height, grid, self.cell[0], device)            # [ch, H, grid]
        self.cols_t = _cached_rows(width, grid, self.cell[1], device).transpose(1, 2)   # [cw, grid, W]
        self.device = device
        self.buffer = ChunkBuffer(height, width, device=device)

    def draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masks [n, H, W], their row offsets dy [n] and right factors cells @ cols[dx]^T [n, grid, W]."""
        g = self.grid
        cells = (torch.rand(n, 1, g, g, generator=generator, device=self.device) < self.p).float()[:, 0]
        dy = torch.randint(0, self.cell[0], (n,), generator=generator, device=self.device)
        dx = torch.randint(0, self.cell[1], (n,), generator=generator, device=self.device)
        right = torch.bmm(cells, self.cols_t[dx])                                # [n, grid, W]
        return torch.bmm(self.rows[dy], right, out=self.buffer(n)), dy, right


def rise_masks(n: int, grid: int, p: float, height: int, width: int, generator: torch.Generator,
               device: torch.device) -> torch.Tensor:
    """n RISE masks [n, H, W] (see :class:`RiseMasks`), in a fresh tensor."""
    return RiseMasks(grid, p, height, width, device).draw(n, generator)[0].clone()


class WeightedMaskSum:
    """sum_i w_i M_i for weight vectors w_i [K] of RISE masks M_i = rows[dy_i] @ right_i: the right factors are
    summed per row offset at grid resolution, [K, ch, grid, W], and turned into pixels [K, H, W] by one matrix
    product at the end (its cost does not grow with the number of masks)."""

    def __init__(self, masks: RiseMasks, k: int):
        ch, (H, W) = masks.cell[0], masks.size
        self.rows = masks.rows.permute(1, 0, 2).reshape(H, ch * masks.grid)       # [H, ch * grid]
        self.sums = torch.zeros(k, ch, masks.grid, W, device=masks.device)

    def add(self, weights: torch.Tensor, dy: torch.Tensor, right: torch.Tensor) -> None:
        """weights [n, K] of the n masks drawn with row offsets dy [n] and right factors [n, grid, W]. On CUDA,
        ``index_add_`` is bitwise reproducible under ``torch.use_deterministic_algorithms(True)``, like the network's
        own convolutions (a one-hot matrix product instead measured 3-5x slower on the CPU)."""
        self.sums.index_add_(1, dy, weights.T[:, :, None, None] * right[None])

    def total(self) -> torch.Tensor:
        k, _, _, W = self.sums.shape
        return self.rows @ self.sums.view(k, -1, W)                               # [K, H, W]


class Rise(Explainer):
    """Saliency(x) = sum_i s_i M_i(x) / sum_i M_i(x): the mean score of the masks, each weighted by how much of
    pixel x it kept (the score expected when x is shown). With regions, relevance is the mean saliency inside each.

    Petsiuk et al. divide by the *expected* coverage N p instead of the coverage the drawn masks actually had; those
    differ per pixel by about +-11 % at 500 masks (+-4 % at 2,000), so wherever the draw happened to keep pixels more
    often (an image corner, say) the map rose with it, even for a model that ignores the image. Dividing by the
    drawn coverage removes that: a scorer that ignores the image gives a flat map (its mean score). A pixel no mask
    kept at all (possible with a handful of masks) has no evidence either way and gets the mean score.

    ``center=True`` subtracts the mean score of the masks first, sum_i (s_i - mean s) M_i / (N p), so a pixel's
    saliency is how much keeping it raises the score above average (positive only where it helps): energy-based
    metrics then measure where the evidence is rather than the constant E[score] that every pixel of plain RISE
    carries. Its expectation is Cov(s, M(x)) / p, which uneven coverage does not bias (a scorer that ignores the
    image gives zero).

    Petsiuk, Das & Saenko, "RISE: Randomized Input Sampling for Explanation of Black-box Models" (BMVC 2018,
    https://arxiv.org/abs/1806.07421). Returns saliency [T, H, W] in score units (centred: score difference per
    unit of keep probability) and, with regions [R, H, W], relevance [T, R] = the mean saliency inside each (regions
    only summarise the map: ``accepts_regions`` False). Spends exactly ``budget`` masks (default 4000). Raises
    ValueError for p outside (0, 1)."""

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
        sampler = RiseMasks(self.grid, self.p, H, W, self.device)
        weighted, shift, total = None, None, None
        for start in range(0, budget, self.chunk_size):
            n = min(self.chunk_size, budget - start)
            masks, dy, right = sampler.draw(n, generator)
            scores = self.score(composite(masks))                                    # [n, T]
            # scores less the first chunk's mean (less cancellation below), and a weight row of ones: the coverage
            shift = scores.mean(0) if shift is None else shift
            scores = scores - shift
            total = scores.sum(0) if total is None else total + scores.sum(0)
            scores = torch.cat([scores, scores.new_ones(n, 1)], 1)
            if weighted is None:
                weighted = WeightedMaskSum(sampler, scores.shape[1])
            weighted.add(scores, dy, right)
        sums = weighted.total()                                                      # [T + 1, H, W]
        if self.center:       # sum_i (s_i - mean s) M_i = sum_i (s_i - shift) M_i - (mean s - shift) sum_i M_i
            saliency = sums[:-1] - (total / budget)[:, None, None] * sums[-1:]
            saliency = saliency / (budget * self.p)
        else:                 # shift + sum_i (s_i - shift) M_i / sum_i M_i; unkept pixels: the mean score
            coverage = sums[-1:]
            kept = coverage > 0
            saliency = torch.where(kept, sums[:-1] / torch.where(kept, coverage, 1.0),
                                   (total / budget)[:, None, None]) + shift[:, None, None]
        return saliency, None if regions is None else region_means(saliency, regions), {}


class DRise(Rise):
    """D-RISE: RISE masks scored by a detector's D-RISE similarity (a ``detection.scorers.DRiseScorer``: scores in
    [0, 1]); published settings grid 16, p 0.5, about 5000 masks. Petsiuk et al., "Black-box Explanation of Object
    Detectors via Saliency Maps" (CVPR 2021, https://arxiv.org/abs/2006.03204). Shapes, budget and errors as
    :class:`Rise`; ``needs_detections``: explain jobs on ``classes`` are rejected (use ``rise``)."""

    name = "drise"
    needs_detections = True
    default_budget = 5000

    def __init__(self, scorer, *, grid: int = 16, p: float = 0.5, center: bool = False, **kw):
        super().__init__(scorer, grid=grid, p=p, center=center, **kw)
