"""The contract every explainer shares: ``Method(scorer, **options).explain(image, regions, budget=, seed=)`` returns
an :class:`Explanation`. Budgets are counted in forward passes (images through the model)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from explainers.perturb import Perturbation, make_perturbation


@dataclass
class Explanation:
    """One image's explanation for T targets. ``relevance`` is per region when regions were given."""

    saliency: torch.Tensor                    # [T, H, W] float32, on the CPU
    relevance: torch.Tensor | None            # [T, R] float32, or None
    n_forward: int                            # model evaluations spent
    seconds: float
    method: str
    options: dict[str, Any] = field(default_factory=dict)
    full_score: torch.Tensor | None = None    # [T] score of the unperturbed image, where the method computed it
    empty_score: torch.Tensor | None = None   # [T] score with every region hidden, where computed


class BudgetError(ValueError):
    """A method cannot run within the forward-pass budget it was given."""


class Explainer:
    """Base class: device placement, the seeded generator, forward counting, timing.

    Subclasses implement ``_explain(image, regions, budget, generator) -> (saliency, relevance, extras)`` and
    call ``self.score(images)`` for every model evaluation, so that ``n_forward`` is exact.
    """

    name = "explainer"
    default_budget: int | None = None

    def __init__(self, scorer, *, perturbation: str | Perturbation = "blur", chunk_size: int | None = None):
        self.scorer = scorer
        self.device = torch.device(getattr(scorer, "device", "cpu"))
        self.perturbation = make_perturbation(perturbation)
        self.chunk_size = int(chunk_size or getattr(scorer, "chunk_size", 32))
        self._forwards = 0

    # --------------------------------------------------------------------------------------------- helpers
    def score(self, images: torch.Tensor) -> torch.Tensor:
        """Scores [B, T] of a batch already sized by the caller (one model call per chunk)."""
        self._forwards += images.shape[0]
        with torch.inference_mode():
            return self.scorer(images).float()

    def options(self) -> dict[str, Any]:
        """The method's settings, recorded in every Explanation (and hashed by the pipeline)."""
        return {"perturbation": self.perturbation.describe()}

    # --------------------------------------------------------------------------------------------- contract
    def explain(self, image: torch.Tensor, regions: torch.Tensor | None = None, *, budget: int | None = None,
                seed: int = 0) -> Explanation:
        """Explain ``image`` [3, H, W] (values as the scorer expects) for all of the scorer's targets."""
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"image must be [3, H, W], got {tuple(image.shape)}")
        image = image.to(self.device, torch.float32)
        if regions is not None:
            regions = as_region_masks(regions, image.shape[-2:]).to(self.device)
        budget = self.default_budget if budget is None else int(budget)
        if budget is not None and budget < 1:
            raise BudgetError(f"budget must be a positive number of forward passes, got {budget}")
        generator = torch.Generator(device=self.device).manual_seed(int(seed))
        self._forwards = 0
        start = time.perf_counter()
        saliency, relevance, extras = self._explain(image, regions, budget, generator)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        if budget is not None and self._forwards > budget:        # a bug in a method, never a user error
            raise AssertionError(f"{self.name} spent {self._forwards} forwards, budget {budget}")
        return Explanation(saliency=saliency.float().cpu(), relevance=None if relevance is None else
                           relevance.float().cpu(), n_forward=self._forwards, seconds=seconds, method=self.name,
                           options={**self.options(), "budget": budget, "seed": int(seed)},
                           **{k: v.float().cpu() for k, v in extras.items()})

    def _explain(self, image, regions, budget, generator):
        raise NotImplementedError


def numpy_rng(generator: torch.Generator) -> np.random.Generator:
    """A NumPy generator seeded from the explainer's torch generator (coalitions are drawn on the CPU)."""
    return np.random.default_rng(int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=generator.device)))


def as_region_masks(regions: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Regions as a float stack [R, H, W]: accepts a boolean/float stack or an integer label map [H, W]
    (labels 0..R-1; negative labels are pixels outside every region)."""
    regions = torch.as_tensor(regions)
    if regions.ndim == 2 and not regions.dtype.is_floating_point and regions.dtype != torch.bool:
        labels = regions.long()
        n = int(labels.max()) + 1
        regions = labels.unsqueeze(0) == torch.arange(n, device=labels.device).view(-1, 1, 1)
    if regions.ndim != 3 or tuple(regions.shape[-2:]) != tuple(size):
        raise ValueError(f"regions must be [R, H, W] masks or an [H, W] label map matching the image {tuple(size)}, "
                         f"got {tuple(regions.shape)}")
    if regions.shape[0] == 0:
        raise ValueError("regions: at least one region is needed")
    return regions.float()


def paint(relevance: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Region relevance [T, R] onto pixels -> [T, H, W] with one matrix product."""
    R, H, W = regions.shape
    return (relevance @ regions.reshape(R, H * W)).reshape(-1, H, W)


def region_means(saliency: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Mean saliency inside each region: [T, H, W] x [R, H, W] -> [T, R] (0 for empty regions)."""
    R = regions.shape[0]
    flat = regions.reshape(R, -1)
    return (saliency.reshape(saliency.shape[0], -1) @ flat.T) / flat.sum(1).clamp_min(1)
