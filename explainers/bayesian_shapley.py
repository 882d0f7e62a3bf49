"""Bayesian Shapley values from designed complementary pairs: a Gaussian-process posterior mean whose coalitions
are chosen, before any forward, to minimise the posterior variance of the Shapley values.

Why it works: in the Fourier basis chi_S(z) = prod_{i in S} (2 z_i - 1) a game's Shapley values depend only on its
odd-order terms (chi_S with |S| odd gives 2 c_S / |S| to each member), and the difference of a complementary pair,
d(z) = v(z) - v(1 - z) = sum_{|S| odd} g_S chi_S(z) with g = 2c, holds exactly those. Giving each g_S an
independent Gaussian prior whose variance falls with the order (``decay`` per two orders: main effects 1,
third-order terms ``decay``, fifth ``decay^2``, ...) makes d a Gaussian process over coalitions, and phi_i =
sum_{S ni i} g_S / |S| a linear functional of it. Its covariances depend only on how many players two coalitions
agree on, so they come in closed form (elementary symmetric polynomials of +-1 vectors) for any M, without the
2^M-term basis. The posterior variance of phi does not depend on the scores, so the pairs can be chosen first:
greedily, each the one that removes the most total variance given those already chosen (A-optimal design), from all
2^(M-1) - 1 pairs (or a pool of them for large M). The design is cached per (M, pairs, decay) and the players are
relabelled by a seeded permutation, so the seed still varies the coalitions. Efficiency, sum phi = v(all) -
v(none), is an observation of the same process (the pair (all, none)) and holds exactly.

A prior estimate (:class:`ShapleyPrior`, e.g. an amortised explainer's one-forward answer, ``explainers.fastshap``)
enters as one more observation: phi_i + noise, the noise's variance set by the estimate's *measured* relative L2
error (``relative_error``, stored with a trained explainer's weights) times the larger of the prior's and the pairs'
own squared norm, in the units of the process's amplitude (its maximum-likelihood value given the pairs). A poor
estimate whose error is independent of the values, stated honestly, gets little weight, so the result stays close to
plain BayesShapley; an accurate one replaces pairs the budget could not buy. An error that follows the values (a
prior shrunk towards zero or the even split) is not what the noise model assumes: such a prior, stated honestly,
can still cost up to ~1.5x plain's error once the pairs alone are accurate (tests/test_bayesian_shapley.py).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from explainers.base import BudgetError
from explainers.game import Game
from explainers.shapley import (
    ShapleyEstimate,
    _ends,
    _evaluate,
    _ShapleyExplainer,
    exact_shapley,
    kernel_size_mass,
    symmetric_pinv_solve,
)

DEFAULT_DECAY = 1e-3        # prior variance ratio per two Fourier orders (chosen on synthetic and real games)
MAX_CANDIDATE_PAIRS = 4096  # all pairs are candidates up to M = 13 players; beyond, a fixed pool of this size


@functools.lru_cache(maxsize=64)
def _symmetric_sums(L: int) -> np.ndarray:
    """E[k, p] = e_k(t) for t in {-1, +1}^L with p entries +1: the sum over all k-subsets of the product of t."""
    E = np.zeros((L + 1, L + 1))
    for k in range(L + 1):
        for p in range(L + 1):
            E[k, p] = sum((-1) ** j * math.comb(L - p, j) * math.comb(p, k - j) for j in range(k + 1))
    return E


def check_decay(decay: float) -> float:
    """The prior's decay per two Fourier orders, validated: strictly between 0 and 1."""
    if not 0 < decay < 1:
        raise ValueError(f"decay must lie in (0, 1), got {decay}")
    return float(decay)


def stated_error(heldout: dict, key: str, what: str, how_to_train: str) -> float:
    """The relative error a learned estimate's weights file states for itself (``heldout[key]``: its held-out check),
    validated as a :class:`ShapleyPrior`'s ``relative_error``. Raises ValueError naming ``what`` (the explainer and
    its file), the key, the value and ``how_to_train`` when it is not a positive finite number (no check: nothing
    to weight the estimate by)."""
    error = heldout.get(key)
    if isinstance(error, bool) or not isinstance(error, (int, float)) or not math.isfinite(error) or error <= 0:
        raise ValueError(f"{what} has no held-out check (heldout.{key} = {error!r}), so its estimate cannot be "
                         f"weighted: {how_to_train}")
    return float(error)


def _order_variances(M: int, decay: float) -> np.ndarray:
    """Prior variance of each Fourier coefficient by its order 0..M: decay^((k - 1) / 2) for odd k, 0 for even."""
    k = np.arange(M + 1)
    return np.where(k % 2 == 1, decay ** ((k - 1) / 2.0), 0.0)


def pair_covariance(a: torch.Tensor, b: torch.Tensor, decay: float) -> torch.Tensor:
    """Prior covariance of the pair differences d(a), d(b) for +-1 coalitions a [A, M], b [B, M] -> [A, B]."""
    M = a.shape[1]
    kernel = torch.from_numpy(_order_variances(M, decay) @ _symmetric_sums(M))       # by number of agreements
    agree = ((a @ b.T + M) / 2).round().long()
    return kernel[agree]


def shapley_covariance(a: torch.Tensor, decay: float) -> torch.Tensor:
    """Prior covariance of each player's Shapley value with the pair difference d(a): [A, M]."""
    M = a.shape[1]
    v = _order_variances(M, decay)
    k = np.arange(1, M + 1)
    # sum over odd k of v_k / k * e_{k-1}(the other players' signs), indexed by how many of them are +1
    by_plus = torch.from_numpy((v[1:] / k) @ _symmetric_sums(M - 1)[:M])           # [M] over p = 0..M-1
    plus_others = (a > 0).sum(1, keepdim=True) - (a > 0).long()
    return a * by_plus[plus_others]


def _candidate_pairs(M: int) -> np.ndarray:
    """One coalition of each complementary pair (the one without the last player), the (none, all) pair excluded;
    for large M a fixed pool drawn with the Shapley kernel's size distribution."""
    if 2 ** (M - 1) - 1 <= MAX_CANDIDATE_PAIRS:
        codes = np.arange(1, 2 ** (M - 1))
        return ((codes[:, None] >> np.arange(M)) & 1).astype(np.float64)
    rng = np.random.default_rng(0)
    mass = kernel_size_mass(M)[1:M]
    sizes = rng.choice(np.arange(1, M), size=4 * MAX_CANDIDATE_PAIRS, p=mass / mass.sum())
    drawn = (rng.random((sizes.size, M)).argsort(1).argsort(1) < sizes[:, None]).astype(np.float64)
    Z = np.concatenate([np.eye(M), drawn])                                       # every single player, then draws
    Z = np.where(Z[:, -1:] > 0, 1 - Z, Z)                                        # canonical side of the pair
    _, first = np.unique(Z, axis=0, return_index=True)
    return Z[np.sort(first)[:MAX_CANDIDATE_PAIRS]]                               # in draw order: no sort bias


@functools.lru_cache(maxsize=64)
def pair_design(M: int, n_pairs: int, decay: float = DEFAULT_DECAY) -> np.ndarray:
    """n_pairs coalitions [n, M] (0/1), each standing for itself and its complement, chosen greedily to minimise the
    summed posterior variance of the M Shapley values, after the (none, all) pair."""
    Z = _candidate_pairs(M)
    n_pairs = min(n_pairs, len(Z))
    s = torch.from_numpy(2 * Z - 1)
    ones = torch.ones(1, M, dtype=torch.float64)
    var = pair_covariance(s[:1], s[:1], decay)[0, 0].expand(len(Z)).clone()         # posterior Var d(candidate)
    cov = shapley_covariance(s, decay)                                              # posterior Cov(phi, d) [C, M]
    factors = torch.zeros(len(Z), n_pairs + 1, dtype=torch.float64)                 # Cholesky columns so far
    free = torch.ones(len(Z), dtype=torch.bool)

    def condition(column: torch.Tensor, point_var: torch.Tensor, point_cov: torch.Tensor, t: int) -> None:
        u = column / point_var.sqrt()
        factors[:, t] = u
        var.sub_(u ** 2)
        cov.sub_(u[:, None] * (point_cov / point_var.sqrt())[None])

    all_var = pair_covariance(ones, ones, decay)[0, 0]
    condition(pair_covariance(s, ones, decay)[:, 0], all_var, shapley_covariance(ones, decay)[0], 0)
    chosen = []
    for t in range(1, n_pairs + 1):
        gain = (cov ** 2).sum(1) / var.clamp_min(1e-300)
        gain[~free | (var <= 1e-12 * all_var)] = -1.0
        c = int(gain.argmax())
        if gain[c] < 0:                                  # every remaining pair is already determined
            break
        chosen.append(c)
        column = pair_covariance(s, s[c:c + 1], decay)[:, 0] - factors[:, :t] @ factors[c, :t]
        condition(column, var[c].clone(), cov[c].clone(), t)
        free[c] = False
    return Z[chosen].astype(np.float32)


@dataclass(frozen=True)
class ShapleyPrior:
    """An estimate of the Shapley values from elsewhere and how wrong such estimates were measured to be.

    ``mean``: [T, M] (score units, one row per target, players in the game's order); ``relative_error``: its
    typical relative L2 error against exact values, > 0 (e.g. the median of a held-out check). Raises ValueError
    for a non-finite mean or a relative error that is not a positive finite number."""

    mean: torch.Tensor
    relative_error: float

    def __post_init__(self):
        if not (math.isfinite(self.relative_error) and self.relative_error > 0):
            raise ValueError(f"ShapleyPrior: relative_error must be a positive finite number, got "
                             f"{self.relative_error}")
        if self.mean.ndim != 2 or not bool(torch.isfinite(self.mean).all()):
            raise ValueError(f"ShapleyPrior: mean must be a finite [T, M] tensor, got shape {tuple(self.mean.shape)}")


def shapley_prior_covariance(M: int, decay: float) -> torch.Tensor:
    """Prior covariance of the M Shapley values [M, M]: Cov(phi_i, phi_j) = sum over odd orders k of the order's
    variance / k^2 times the number of k-subsets holding both (C(M - 1, k - 1) on the diagonal, C(M - 2, k - 2)
    off it)."""
    v = _order_variances(M, decay)
    diag = sum(v[k] / k ** 2 * math.comb(M - 1, k - 1) for k in range(1, M + 1))
    off = sum(v[k] / k ** 2 * math.comb(M - 2, k - 2) for k in range(2, M + 1))
    return torch.full((M, M), off, dtype=torch.float64) + (diag - off) * torch.eye(M, dtype=torch.float64)


def posterior_shapley(Zp: np.ndarray, D: torch.Tensor, d_all: torch.Tensor, decay: float,
                      prior: ShapleyPrior | None = None) -> torch.Tensor:
    """Posterior mean of phi [T, M] given pair differences D [n, T] at coalitions Zp [n, M] and d(all) = v(all) -
    v(none) [T]; with ``prior``, also given its mean [T, M] as a noisy observation of phi (module docstring).
    Efficiency is restored exactly (the solve leaves it only to rounding). Raises ValueError for a prior of another
    shape."""
    M = Zp.shape[1]
    s = torch.cat([torch.from_numpy(2.0 * Zp - 1.0).double(), torch.ones(1, M, dtype=torch.float64)])
    Y = torch.cat([D.double(), d_all.double()[None]])                                # [n + 1, T]
    K = pair_covariance(s, s, decay)
    C = shapley_covariance(s, decay)                                                 # Cov(d, phi) [n + 1, M]
    weights = symmetric_pinv_solve(K, Y, rcond=1e-12)                                # [n + 1, T]
    phi = (C.T @ weights).T                                                          # [T, M]
    if prior is not None:
        phi = _with_prior(K, C, Y, weights, phi, prior, decay)
    return phi + (d_all.double() - phi.sum(1))[:, None] / M


def _with_prior(K: torch.Tensor, C: torch.Tensor, Y: torch.Tensor, weights: torch.Tensor, plain: torch.Tensor,
                prior: ShapleyPrior, decay: float) -> torch.Tensor:
    """Posterior mean of phi [T, M] given the pairs and the prior's mean as phi + noise (module docstring)."""
    T, M = plain.shape
    mean = prior.mean.double().cpu()
    if mean.shape != (T, M):
        raise ValueError(f"ShapleyPrior: mean has shape {tuple(mean.shape)}, the game's Shapley values are "
                         f"[targets, players] = [{T}, {M}]")
    n = K.shape[0]
    amplitude = (Y * weights).sum(0) / n                                             # [T] ML scale of the process
    # the error is relative to the exact values' norm: estimated by the larger of the prior's and the pairs' own
    # estimate, so a prior shrunk towards zero (or the even split) is not trusted more for being small
    scale = torch.maximum((mean ** 2).sum(1), (plain ** 2).sum(1))
    noise = prior.relative_error ** 2 * scale / M / amplitude.clamp_min(1e-300)      # [T] in prior units
    informative = (amplitude > 0) & (scale > 0)
    phi_cov = shapley_prior_covariance(M, decay)
    J = torch.zeros(T, n + M, n + M, dtype=torch.float64)
    J[:, :n, :n], J[:, :n, n:], J[:, n:, :n] = K, C, C.T
    J[:, n:, n:] = phi_cov + noise[:, None, None] * torch.eye(M, dtype=torch.float64)
    evals, evecs = torch.linalg.eigh(J)
    keep = evals.abs() > 1e-12 * evals.abs().amax(1, keepdim=True)
    inverse = torch.where(keep, 1.0 / torch.where(keep, evals, torch.ones_like(evals)), torch.zeros_like(evals))
    observed = torch.cat([Y.T, mean], 1)                                             # [T, n + M]
    solved = evecs @ (inverse * (evecs.transpose(1, 2) @ observed[..., None])[..., 0])[..., None]
    cross = torch.cat([C, phi_cov])                                                  # Cov([d; prior], phi)
    fused = (cross.T @ solved[..., 0].T).T
    return torch.where(informative[:, None], fused, plain)


def bayes_shapley(game: Game, M: int, budget: int, rng: np.random.Generator, device="cpu",
                  decay: float = DEFAULT_DECAY,
                  prior: Callable[[torch.Tensor, torch.Tensor], ShapleyPrior] | None = None) -> ShapleyEstimate:
    """Shapley values from (budget - 2) // 2 designed complementary pairs plus the empty and full coalitions;
    exact enumeration when the budget covers all 2^M coalitions (``prior`` unused). ``prior(empty, full)`` (both
    [T]) returns a :class:`ShapleyPrior` fused with the pairs (module docstring); its mean is shifted equally per
    player to sum to full - empty first. Raises BudgetError below min(2^M, 4) forwards."""
    decay = check_decay(decay)
    if budget >= 2 ** M:
        return exact_shapley(game, M, device)
    if budget < 4:
        raise BudgetError(f"Bayesian Shapley of {M} players needs at least 4 forwards (empty, full, one pair), "
                          f"got {budget}")
    empty, full = _ends(game, M, device)
    Zp = pair_design(M, (budget - 2) // 2, decay)[:, rng.permutation(M)]
    Y = _evaluate(game, np.stack([Zp, 1 - Zp], 1).reshape(-1, M), device)            # S, complement, S, ...
    belief = None
    if prior is not None:
        belief = prior(empty, full)
        mean = belief.mean.double().cpu()
        if mean.shape != (len(full), M):
            raise ValueError(f"ShapleyPrior: mean has shape {tuple(mean.shape)}, the game's Shapley values are "
                             f"[targets, players] = [{len(full)}, {M}]")
        belief = ShapleyPrior(mean + (full - empty - mean.sum(1))[:, None] / M, belief.relative_error)
    phi = posterior_shapley(Zp, Y[0::2] - Y[1::2], full - empty, decay, belief)
    return ShapleyEstimate(phi, empty, full, 2 + 2 * len(Zp))


class BayesShapley(_ShapleyExplainer):
    """Shapley values as a Gaussian-process posterior mean from A-optimally designed complementary pairs; exact
    enumeration whenever 2^M fits the budget. The default body-part estimator (lowest error per forward measured,
    benchmarks/README.md). This project's estimator (no paper; the argument is in this module's docstring).
    It is not BayesSHAP (Slack et al., "Reliable Post hoc Explanations", 2021, https://arxiv.org/abs/2008.05030),
    a Bayesian linear surrogate with credible intervals over randomly sampled coalitions.

    ``decay``: prior variance ratio per two Fourier orders, in (0, 1). Players, outputs and units as
    :class:`~explainers.shapley.ExactShapley` (efficiency exact); spends at most 2 + 2 floor((budget - 2) / 2)
    forwards, or 2^M. Raises ValueError for a decay outside (0, 1), BudgetError for a budget below min(2^M, 4).
    """

    name = "bayes_shapley"
    default_budget = 512

    def __init__(self, scorer, *, decay: float = DEFAULT_DECAY, **kw):
        super().__init__(scorer, **kw)
        self.decay = check_decay(decay)

    def options(self):
        return {**super().options(), "decay": self.decay}

    def min_budget(self, num_regions, num_targets):
        if 2 ** num_regions <= 4:
            return 2 ** num_regions, f"all 2^{num_regions} coalitions"
        return 4, "the empty and full coalitions and one complementary pair"

    def _estimate(self, game, M, budget, rng):
        return bayes_shapley(game, M, budget, rng, self.device, self.decay)
