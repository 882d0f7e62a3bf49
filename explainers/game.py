"""A cooperative game over image regions: v(z) = the scorer on the image with region r shown at z_r in [0, 1]
(0 hidden by the perturbation, 1 shown, in between blended). Pixels outside every region are always shown."""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from explainers.perturb import ChunkBuffer, Compositor, Perturbation


class Game(Protocol):
    """Anything that maps coalition values [N, M] in [0, 1] to scores [N, T]: a RegionGame, or a synthetic game."""

    def __call__(self, coalitions: torch.Tensor) -> torch.Tensor: ...


def overlapping(coverage: torch.Tensor) -> bool:
    """Whether regions overlap, given their coverage (the sum of the region masks per pixel): where they do not
    (coverage <= 1), hiding a set of regions is exactly the mask 1 - (their sum), with no clamping."""
    return bool(coverage.max() > 1 + 1e-6)


class RegionGame:
    """The game v(z) of an image's regions: ``game(coalitions [N, R] in [0, 1]) -> scores [N, T]`` (the scorer's
    units), each coalition composited (image where shown, ``perturbation``'s baseline where hidden, blended in
    between) and scored in chunks of ``chunk_size`` images. ``score``: the explainer's counting ``score``, or any
    ``images [B, 3, H, W] -> [B, T]``; ``image`` [3, H, W]; ``regions`` [R, H, W] float masks >= 0 (overlapping
    ones are clamped to [0, 1] per pixel). The region-game view of Shapley values: Shapley (1953,
    https://doi.org/10.1515/9781400881970-018); image regions as players as in Lundberg & Lee (2017,
    https://arxiv.org/abs/1705.07874)."""

    def __init__(self, score: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, regions: torch.Tensor,
                 perturbation: Perturbation, chunk_size: int):
        self.score, self.chunk_size = score, chunk_size
        self.composite = Compositor(image, perturbation.baseline(image))
        R, H, W = regions.shape
        self.size = (H, W)
        flat = regions.reshape(R, H * W).to(image.dtype)
        coverage = flat.sum(0)
        # [R + 1, HW]: the regions, then the pixels outside every region as one more player that is always shown,
        # so a chunk's masks are one plain matrix product (no bias broadcast to copy first).
        self.players = torch.cat([flat, (1 - coverage).clamp(0, 1).unsqueeze(0)])
        # Regions that do not overlap keep every mask in [0, 1] for coalition values in [0, 1]; overlapping ones need
        # the masks clamped.
        self.overlapping = overlapping(coverage)
        self.num_players = R
        self.buffer = ChunkBuffer(H * W, dtype=image.dtype, device=image.device)

    def masks(self, coalitions: torch.Tensor) -> torch.Tensor:
        """Pixel masks [N, H, W] of coalition values [N, R]: one matrix product, written into a reused buffer
        (valid until the next call)."""
        n = coalitions.shape[0]
        z = torch.cat([coalitions.to(self.players).clamp(0, 1), self.players.new_ones(n, 1)], 1)
        m = torch.mm(z, self.players, out=self.buffer(n))
        if self.overlapping:
            m.clamp_(0, 1)
        return m.view(-1, *self.size)

    def __call__(self, coalitions: torch.Tensor) -> torch.Tensor:
        out = [self.score(self.composite(self.masks(coalitions[s:s + self.chunk_size])))
               for s in range(0, coalitions.shape[0], self.chunk_size)]
        return torch.cat(out)
