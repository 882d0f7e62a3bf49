"""LIME (Ribeiro et al. 2016) for images: Bernoulli(0.5) coalitions of superpixels (or the given regions), hidden
ones replaced by the mean colour, an exponential kernel on the cosine distance to the full image (width 0.25),
weighted ridge regression; the coefficients are the regions' relevance."""
from __future__ import annotations

import numpy as np
import torch

from explainers.base import Explainer, numpy_rng, paint
from explainers.game import RegionGame
from explainers.regions import superpixels


def weighted_ridge(Z: torch.Tensor, Y: torch.Tensor, w: torch.Tensor, alpha: float) -> torch.Tensor:
    """Coefficients [T, M] of a ridge fit with an unpenalised intercept, all targets at once."""
    Z, Y, w = Z.double(), Y.double(), w.double()
    wn = w / w.sum()
    zm, ym = wn @ Z, wn @ Y
    Zc, Yc = Z - zm, Y - ym
    A = Zc.T @ (Zc * w[:, None]) + alpha * torch.eye(Z.shape[1], dtype=torch.float64)
    return torch.linalg.solve(A, Zc.T @ (Yc * w[:, None])).T


class Lime(Explainer):
    """LIME: Ribeiro, Singh & Guestrin, "'Why Should I Trust You?': Explaining the Predictions of Any Classifier"
    (2016, https://arxiv.org/abs/1602.04938).

    Players: the M non-empty regions (``n_segments`` superpixels when none are given). ``budget`` coalitions
    (the first the full image), kernel width ``kernel_width`` on the cosine distance, ridge ``alpha``. Returns
    relevance [T, R] (ridge coefficients, score units per region shown; not Shapley values: no efficiency), painted
    saliency [T, H, W], ``full_score`` [T]; spends exactly ``budget`` forwards. Raises BudgetError below 2.
    """

    name = "lime"
    needs_regions = True
    accepts_regions = True
    default_budget = 1000

    def __init__(self, scorer, *, n_segments: int = 50, kernel_width: float = 0.25, alpha: float = 1.0,
                 perturbation="mean", **kw):
        super().__init__(scorer, perturbation=perturbation, **kw)
        self.n_segments, self.kernel_width, self.alpha = n_segments, kernel_width, alpha

    def options(self):
        return {**super().options(), "n_segments": self.n_segments, "kernel_width": self.kernel_width,
                "alpha": self.alpha}

    def default_regions(self, image):
        return superpixels(image, self.n_segments).float()

    def min_budget(self, num_regions, num_targets):
        return 2, "the image and one coalition"

    def _explain(self, image, regions, budget, generator):
        M = regions.shape[0]
        Z = numpy_rng(generator).integers(0, 2, (budget, M)).astype(np.float32)
        Z[0] = 1                                                          # the original image, as LIME does
        Z = torch.from_numpy(Z)
        Y = RegionGame(self.score, image, regions, self.perturbation, self.chunk_size)(Z.to(self.device)).cpu()
        cos = Z.sum(1) / (Z.norm(dim=1).clamp_min(1e-12) * M ** 0.5)        # cosine similarity to all-ones
        w = torch.exp(-((1 - cos) ** 2) / self.kernel_width ** 2)
        relevance = weighted_ridge(Z, Y, w, self.alpha).float().to(self.device)
        return paint(relevance, regions), relevance, {"full_score": Y[0]}
