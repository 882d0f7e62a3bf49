"""A cooperative game over image regions: v(z) = the scorer on the image with region r shown at z_r in [0, 1]
(0 hidden by the perturbation, 1 shown, in between blended). Pixels outside every region are always shown."""
from __future__ import annotations

from typing import Callable, Protocol

import torch

from explainers.perturb import Compositor, Perturbation


class Game(Protocol):
    """Anything that maps coalition values [N, M] in [0, 1] to scores [N, T]: a RegionGame, or a synthetic game."""

    def __call__(self, coalitions: torch.Tensor) -> torch.Tensor: ...


class RegionGame:
    def __init__(self, score: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, regions: torch.Tensor,
                 perturbation: Perturbation, chunk_size: int):
        self.score, self.chunk_size = score, chunk_size
        self.composite = Compositor(image, perturbation.baseline(image))
        R, H, W = regions.shape
        self.size = (H, W)
        self.flat = regions.reshape(R, H * W).to(image.dtype)
        self.outside = (1 - self.flat.sum(0)).clamp(0, 1)
        self.num_players = R

    def masks(self, coalitions: torch.Tensor) -> torch.Tensor:
        """Pixel masks [N, H, W] of coalition values [N, R]: one matrix product."""
        m = torch.addmm(self.outside.unsqueeze(0), coalitions.to(self.flat), self.flat)
        return m.clamp_(0, 1).view(-1, *self.size)

    def __call__(self, coalitions: torch.Tensor) -> torch.Tensor:
        out = [self.score(self.composite(self.masks(coalitions[s:s + self.chunk_size])))
               for s in range(0, coalitions.shape[0], self.chunk_size)]
        return torch.cat(out)
