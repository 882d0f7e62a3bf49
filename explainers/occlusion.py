"""Occlusion (Zeiler & Fergus 2014): hide one window at a time; a pixel's relevance is the mean score drop over the
windows that cover it. With regions: hide one region at a time (leave-one-out, M + 1 forwards)."""
from __future__ import annotations

import torch

from explainers.base import Explainer, paint
from explainers.game import RegionGame, overlapping
from explainers.perturb import Compositor


def window_origins(height: int, width: int, window: tuple[int, int], n: int | None, stride: tuple[int, int],
                   device) -> torch.Tensor:
    """Top-left corners [n, 2] (y, x): a stride grid, or with a budget exactly n corners spread evenly by the
    R2 low-discrepancy sequence (so any budget gives uniform coverage)."""
    wy, wx = window
    if n is None:
        ys = torch.arange(0, max(height - wy, 0) + 1, stride[0], device=device)
        xs = torch.arange(0, max(width - wx, 0) + 1, stride[1], device=device)
        return torch.cartesian_prod(ys, xs)
    g = 1.32471795724474602596                                    # plastic number: R2 sequence
    k = torch.arange(1, n + 1, device=device, dtype=torch.float64)
    u = torch.stack([(0.5 + k / g) % 1, (0.5 + k / g ** 2) % 1], 1)
    span = torch.tensor([max(height - wy, 0) + 1, max(width - wx, 0) + 1], device=device, dtype=torch.float64)
    return (u * span).floor().long()


class Occlusion(Explainer):
    """Occlusion: Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks" (2014,
    https://arxiv.org/abs/1311.2901).

    With regions [R, H, W] (the pipeline's use: ``needs_regions``, an explain job must give them): leave-one-region-
    out, relevance [T, R] = full score - score with region r hidden, painted to saliency [T, H, W]; M + 1 forwards
    whatever the budget. Without regions (``explain()`` only): square windows slide over the image, a pixel's
    saliency [T, H, W] is the mean score drop over the windows covering it (relevance None); ``budget`` - 1 windows
    spread evenly, or a ``stride`` grid without a budget. Scores in the scorer's units; ``full_score`` [T].
    Raises BudgetError below M + 1 forwards (2 without regions).
    """

    name = "occlusion"
    needs_regions = True
    accepts_regions = True

    def __init__(self, scorer, *, window: float | int = 0.15, stride: float | int = 0.5, perturbation="mean", **kw):
        """``window``: side in pixels (int) or as a fraction of the image's shorter side (float); ``stride``:
        pixels or a fraction of the window (used when no budget is given)."""
        super().__init__(scorer, perturbation=perturbation, **kw)
        self.window, self.stride = window, stride

    def options(self):
        return {**super().options(), "window": self.window, "stride": self.stride}

    def min_budget(self, num_regions, num_targets):
        if num_regions is None:
            return 2, "the image and one window"
        return num_regions + 1, "the image and each region hidden once"

    def _explain(self, image, regions, budget, generator):
        if regions is not None:
            return self._regions(image, regions, budget)
        H, W = image.shape[-2:]
        side = self.window if isinstance(self.window, int) else max(1, round(self.window * min(H, W)))
        step = self.stride if isinstance(self.stride, int) else max(1, round(self.stride * side))
        origins = window_origins(H, W, (side, side), None if budget is None else budget - 1, (step, step),
                                 self.device)
        composite = Compositor(image, self.perturbation.baseline(image))
        full = self.score(image[None])[0]                                           # [T]
        rows = torch.arange(H, device=self.device)
        cols = torch.arange(W, device=self.device)
        drop = torch.zeros(full.shape[0], H * W, device=self.device)
        count = torch.zeros(H * W, device=self.device)
        for s in range(0, origins.shape[0], self.chunk_size):
            o = origins[s:s + self.chunk_size]
            oy, ox = o[:, 0, None, None], o[:, 1, None, None]
            in_rows = (rows.view(1, -1, 1) >= oy) & (rows.view(1, -1, 1) < oy + side)
            in_cols = (cols.view(1, 1, -1) >= ox) & (cols.view(1, 1, -1) < ox + side)
            hidden = (in_rows & in_cols).float()                                     # [n, H, W]
            scores = self.score(composite.hide(hidden))
            flat = hidden.view(hidden.shape[0], -1)
            drop += (full[None] - scores).T @ flat
            count += flat.sum(0)
        saliency = (drop / count.clamp_min(1)).view(-1, H, W)
        return saliency, None, {"full_score": full}

    def _regions(self, image, regions, budget):
        M = regions.shape[0]
        if overlapping(regions.sum(0)):                      # overlapping regions: masks clamped by the game
            game = RegionGame(self.score, image, regions, self.perturbation, self.chunk_size)
            v = game(torch.cat([torch.ones(1, M, device=self.device), 1 - torch.eye(M, device=self.device)]))
        else:                                                # disjoint: hiding region r is exactly mask 1 - f_r
            composite = Compositor(image, self.perturbation.baseline(image))
            v = torch.cat([self.score(composite.hide(regions[max(s, 0):s + self.chunk_size], image_first=s < 0))
                           for s in range(-1, M, self.chunk_size)])                 # the image leads the first chunk
        relevance = (v[0][None] - v[1:]).T                                          # [T, M]
        return paint(relevance, regions), relevance, {"full_score": v[0]}
