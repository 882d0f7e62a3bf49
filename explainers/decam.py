"""DE-CAM-style differential evolution (after Karatsiolis & Kamilaris 2022), black-box: evolve a low-resolution
mask per target that keeps the target's score high while showing as little of the image as possible.

Encoding and defaults (ours; the paper's are not confirmed): a genome is a grid x grid mask in [0, 1] (or one value
per region), bilinearly upsampled; fitness = score(image blended with the baseline by the mask) - sparsity *
mean(mask); DE/rand/1/bin with F = 0.5 and CR = 0.7; populations of all targets are evaluated together in
fixed-size chunks. Saliency is the best mask of each target; the budget is spent exactly (a last generation may be
partial)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from explainers.base import Explainer
from explainers.perturb import Compositor


class DeCam(Explainer):
    """DE-CAM after Karatsiolis & Kamilaris, "A Model-agnostic Approach for Generating Saliency Maps to Explain
    Inferred Decisions of Deep Learning Models" (2022, https://arxiv.org/abs/2209.08906); encoding and defaults are
    ours (module docstring).

    Without regions a genome is a ``grid`` x ``grid`` mask; with regions [R, H, W] one value per region. Returns
    each target's best mask as saliency [T, H, W] (values in [0, 1]: how much of each pixel the mask keeps) and,
    with regions, its region values as relevance [T, R]. Spends exactly ``budget`` forwards. Raises ValueError for a
    population below 4, BudgetError for a budget below 8 per target (two generations of 4).
    """

    name = "decam"
    accepts_regions = True
    default_budget = 1000

    def __init__(self, scorer, *, grid: int = 7, population: int = 16, mutation: float = 0.5, crossover: float = 0.7,
                 sparsity: float = 0.5, perturbation="blur", **kw):
        super().__init__(scorer, perturbation=perturbation, **kw)
        if population < 4:
            raise ValueError(f"DE/rand/1 needs a population of at least 4 per target, got population={population}")
        self.grid, self.population, self.mutation, self.crossover, self.sparsity = \
            grid, population, mutation, crossover, sparsity

    def options(self):
        return {**super().options(), "grid": self.grid, "population": self.population, "mutation": self.mutation,
                "crossover": self.crossover, "sparsity": self.sparsity}

    def min_budget(self, num_regions, num_targets):
        return 8 * num_targets, f"two generations of a population of 4 for each of {num_targets} targets"

    def _explain(self, image, regions, budget, generator):
        H, W = image.shape[-2:]
        T = self.scorer.num_targets
        P = min(self.population, budget // (2 * T))                          # >= 4: budget >= min_budget
        D = regions.shape[0] if regions is not None else self.grid * self.grid
        composite = Compositor(image, self.perturbation.baseline(image))
        flat_regions = None if regions is None else regions.reshape(D, H * W)

        def pixels(genomes: torch.Tensor) -> torch.Tensor:                 # [N, D] -> [N, H, W]
            if flat_regions is not None:
                return (genomes @ flat_regions).clamp_(0, 1).view(-1, H, W)
            g = genomes.view(-1, 1, self.grid, self.grid)
            return F.interpolate(g, size=(H, W), mode="bilinear", align_corners=False)[:, 0]

        target_of = torch.arange(T, device=self.device).repeat_interleave(P)  # individual -> its target

        def fitness(genomes: torch.Tensor, who: torch.Tensor) -> torch.Tensor:
            out = []
            for s in range(0, genomes.shape[0], self.chunk_size):
                g = genomes[s:s + self.chunk_size]
                scores = self.score(composite(pixels(g)))
                out.append(scores.gather(1, who[s:s + self.chunk_size, None])[:, 0] - self.sparsity * g.mean(1))
            return torch.cat(out)

        pop = torch.rand(T * P, D, generator=generator, device=self.device)
        fit = fitness(pop, target_of)
        left = budget - T * P
        while left > 0:
            n = min(left, T * P)
            # DE/rand/1: three distinct others from the same target's population
            r = torch.rand(T * P, P, generator=generator, device=self.device)
            r[torch.arange(T * P), torch.arange(T * P) % P] = 2.0                 # never pick oneself
            pick = r.argsort(1)[:, :3] + (target_of * P)[:, None]
            mutant = (pop[pick[:, 0]] + self.mutation * (pop[pick[:, 1]] - pop[pick[:, 2]])).clamp(0, 1)
            cross = torch.rand(T * P, D, generator=generator, device=self.device) < self.crossover
            cross[torch.arange(T * P), torch.randint(0, D, (T * P,), generator=generator, device=self.device)] = True
            trial = torch.where(cross, mutant, pop)[:n]
            trial_fit = fitness(trial, target_of[:n])
            better = trial_fit > fit[:n]
            pop[:n][better] = trial[better]
            fit[:n] = torch.where(better, trial_fit, fit[:n])
            left -= n
        best = fit.view(T, P).argmax(1) + torch.arange(T, device=self.device) * P
        masks = pop[best]                                                   # [T, D]
        relevance = masks if regions is not None else None
        return pixels(masks), relevance, {}
