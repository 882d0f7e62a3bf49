"""Shapley values of region games (body parts, superpixels, cells).

Estimators are plain functions of a game ``v(z [N, M]) -> [N, T]`` so that they run on synthetic games as well as
on images; the explainer classes wrap them with a :class:`~explainers.game.RegionGame`. Every estimator spends
exactly the forwards it reports, evaluates each coalition once for all T targets, and returns the empty and full
coalition scores so efficiency (sum phi = v(all) - v(none)) can be checked.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch

from explainers.base import BudgetError, Explainer, numpy_rng, paint
from explainers.game import Game, RegionGame
from explainers.regions import superpixels


@dataclass
class ShapleyEstimate:
    phi: torch.Tensor          # [T, M]
    empty: torch.Tensor        # [T]  v(no player)
    full: torch.Tensor         # [T]  v(all players)
    n_forward: int


def _evaluate(game: Game, coalitions: np.ndarray | torch.Tensor, device) -> torch.Tensor:
    z = torch.as_tensor(coalitions, dtype=torch.float32, device=device)
    return game(z).double().cpu()


def _ends(game: Game, M: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    v = _evaluate(game, np.stack([np.zeros(M), np.ones(M)]), device)
    return v[0], v[1]


def _single_player(game: Game, device) -> ShapleyEstimate:
    """One player: its Shapley value is v(all) - v(none), exactly, from those 2 forwards (every estimator)."""
    empty, full = _ends(game, 1, device)
    return ShapleyEstimate((full - empty)[:, None], empty, full, 2)


# ------------------------------------------------------------------------------------------------ exact
def all_coalitions(M: int) -> np.ndarray:
    """Every coalition [2^M, M] (row i holds the bits of i)."""
    return ((np.arange(2 ** M)[:, None] >> np.arange(M)[None, :]) & 1).astype(np.float32)


def exact_coefficients(M: int) -> torch.Tensor:
    """A [2^M, M] with phi = A^T v: +w(|S|-1) where i in S, -w(|S|) where not; w(s) = s!(M-1-s)!/M!."""
    Z = all_coalitions(M).astype(np.float64)
    s = Z.sum(1, keepdims=True).astype(np.int64)
    w_by_size = np.array([1.0 / (M * math.comb(M - 1, k)) for k in range(M)])
    return torch.from_numpy(np.where(Z > 0, w_by_size[np.clip(s - 1, 0, M - 1)], -w_by_size[np.clip(s, 0, M - 1)]))


def exact_shapley(game: Game, M: int, device="cpu") -> ShapleyEstimate:
    """All 2^M coalitions, one matrix product."""
    Z = all_coalitions(M)
    v = _evaluate(game, Z, device)                                    # [2^M, T]
    phi = (exact_coefficients(M).T @ v).T
    return ShapleyEstimate(phi, v[0], v[-1], len(Z))


# ------------------------------------------------------------------------------------------------ regression
def constrained_wls(Z: torch.Tensor, Y: torch.Tensor, w: torch.Tensor, empty: torch.Tensor,
                    full: torch.Tensor) -> torch.Tensor:
    """argmin_phi sum_j w_j (Y_j - empty - Z_j phi)^2 subject to sum(phi) = full - empty; all targets at once.
    The constraint eliminates the last player, the rest is an ordinary least-squares solve."""
    Z, Y, w = Z.double(), Y.double(), w.double()
    d = full - empty                                                  # [T]
    y = Y - empty - Z[:, -1:] * d                                     # [N, T]
    X = Z[:, :-1] - Z[:, -1:]                                         # [N, M-1]
    sw = w.clamp_min(0).sqrt()[:, None]
    beta = torch.linalg.lstsq(X * sw, y * sw, driver="gelsd").solution  # [M-1, T]
    return torch.cat([beta, (d - beta.sum(0))[None]]).T               # [T, M]


def kernel_size_mass(M: int) -> np.ndarray:
    """Share of the Shapley kernel's total weight on each coalition size 0..M (zero at 0 and M)."""
    k = np.arange(M + 1, dtype=np.float64)
    mass = np.zeros(M + 1)
    mass[1:M] = (M - 1) / (k[1:M] * (M - k[1:M]))
    return mass / mass.sum()


def _subsets_of_size(M: int, k: int) -> np.ndarray:
    """All C(M, k) coalitions of size k (the caller has checked that they fit the budget)."""
    members = np.array(list(itertools.combinations(range(M), k)), dtype=np.int64).reshape(-1, k)
    Z = np.zeros((members.shape[0], M), np.float32)
    np.put_along_axis(Z, members, 1.0, axis=1)
    return Z


def _paired_draws(M: int, sizes: np.ndarray, probs: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n coalitions drawn as (S, complement) pairs: size ~ probs, members uniform among the players."""
    half = (n + 1) // 2
    k = rng.choice(sizes, size=half, p=probs)
    ranks = rng.random((half, M)).argsort(1).argsort(1)
    S = (ranks < k[:, None]).astype(np.float32)
    return np.stack([S, 1 - S], 1).reshape(-1, M)[:n]


def kernel_coalitions(M: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """KernelSHAP's design (as the reference implementation builds it): whole coalition sizes, smallest and
    largest first, while the budget holds them and sampling would visit them all anyway; the remaining sizes are
    sampled in complementary pairs, duplicates merged into their weight. Returns coalitions [n', M] (n' <= n
    distinct) and regression weights summing to 1."""
    mass = kernel_size_mass(M)
    left, mass_left = n, 1.0
    Zs, ws = [], []
    free = list(range(1, M))
    for k in range(1, M // 2 + 1):
        pair = sorted({k, M - k})
        count = sum(math.comb(M, s) for s in pair)
        pair_mass = mass[pair].sum()
        if count > left or left * pair_mass / mass_left < count:
            break
        for s in pair:
            Zs.append(_subsets_of_size(M, s))
            ws.append(np.full(math.comb(M, s), mass[s] / math.comb(M, s)))
            free.remove(s)
        left -= count
        mass_left -= pair_mass
    if left > 0 and free:
        sizes = np.array(free)
        probs = mass[sizes] / mass[sizes].sum()
        space = sum(math.comb(M, s) for s in free)
        draws = _paired_draws(M, sizes, probs, 2 * left, rng)
        while True:
            uniq, first, counts = np.unique(draws, axis=0, return_index=True, return_counts=True)
            if len(uniq) >= min(left, space):
                break
            draws = np.concatenate([draws, _paired_draws(M, sizes, probs, 2 * left, rng)])
        order = np.argsort(first)[:left]
        cut = first[order].max() + 1                                  # the draws up to the last one kept
        uniq, counts = np.unique(draws[:cut], axis=0, return_counts=True)
        Zs.append(uniq.astype(np.float32))
        ws.append(counts / counts.sum() * mass_left)
    return np.concatenate(Zs), np.concatenate(ws)


MAX_INTERACTION_TERMS = 2048    # third-order terms are fitted while C(M, 3) stays below this (M <= 24 players)


def check_kernel_shap_order(order: int) -> int:
    """The fit's order, validated: 1 (classic linear KernelSHAP) or 3 (with third-order interaction terms)."""
    if order not in (1, 3):
        raise ValueError(f"KernelSHAP order must be 1 (linear) or 3 (with third-order interactions), got {order}")
    return order


def complement_pairs(Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (i, j) with Z[j] = 1 - Z[i], each pair once (i < j); rows without their complement are left out."""
    M = Z.shape[1]
    key = Z.astype(np.int64) @ (np.int64(1) << np.arange(M, dtype=np.int64))
    comp = (np.int64(1) << M) - 1 - key
    order = np.argsort(key)
    pos = np.clip(np.searchsorted(key, comp, sorter=order), 0, len(Z) - 1)
    j = order[pos]
    i = np.arange(len(Z))
    keep = (key[j] == comp) & (i < j)
    return i[keep], j[keep]


def odd_interaction_fit(Z: np.ndarray, Y: torch.Tensor, w: np.ndarray, empty: torch.Tensor, full: torch.Tensor,
                        ridge: float) -> torch.Tensor:
    """Shapley values from complementary pairs with first- and third-order terms.

    In the Fourier basis chi_S(z) = prod_{i in S} (2 z_i - 1) a game's Shapley values depend only on its odd-order
    terms (chi_S of even |S| gives every player 0; of odd |S|, 2 c_S / |S| to each member), and a pair's difference
    d(z) = v(z) - v(1 - z) = 2 sum_{|S| odd} c_S chi_S(z) holds exactly those. Classic paired KernelSHAP regresses d
    on the first-order terms alone, so third-order interactions leak into its error; here they are fitted too
    (ridge on the C(M, 3) third-order coefficients only, Shapley-kernel weights, sum phi = v(all) - v(none) as an
    exact constraint) and shared out: phi_i = g_i + sum_{S ni i, |S| = 3} g_S / 3, with g = 2c the fitted
    coefficients of d. Exact on games whose odd part is of order <= 3 once the pairs pin those terms down."""
    i, j = complement_pairs(Z)
    s = torch.from_numpy(2.0 * Z[i] - 1.0).double()                                   # [P, M]
    D = (Y[i] - Y[j]).double()                                                        # [P, T]
    wp = torch.from_numpy(w[i] + w[j]).double()
    M = Z.shape[1]
    triples = torch.combinations(torch.arange(M), 3)                                  # [C, 3]
    X = torch.cat([s, s[:, triples].prod(-1)], 1)                                     # [P, M + C]
    F = X.shape[1]
    share = torch.zeros(M, F, dtype=torch.float64)                                    # phi = share @ g
    share[:, :M] = torch.eye(M, dtype=torch.float64)
    share[triples.reshape(-1), (M + torch.arange(F - M)).repeat_interleave(3)] = 1 / 3
    total = share.sum(0)                                                              # sum_i phi_i = total @ g
    gram = X.T @ (wp[:, None] * X) + torch.diag(torch.cat([torch.zeros(M), torch.full((F - M,), ridge)]))
    b = X.T @ (wp[:, None] * D)                                                       # [F, T]
    g = constrained_solve(gram, b, total, (full - empty).double(), M if ridge > 0 else F)
    return (share @ g).T                                                              # [T, M]


def constrained_solve(gram: torch.Tensor, b: torch.Tensor, total: torch.Tensor, target: torch.Tensor,
                      unregularised: int) -> torch.Tensor:
    """g minimising g' gram g - 2 b' g subject to total' g = target (one constraint per column of b), the least-norm
    one if gram is singular. Only the first ``unregularised`` coefficients can make gram singular (the rest carry
    a ridge), so when their block is well conditioned gram is positive definite and a Cholesky solve with the
    constraint eliminated is exact (~0.5 ms for 300 terms, against ~6 ms for the eigendecomposition it falls back
    to otherwise)."""
    first = torch.linalg.eigvalsh(gram[:unregularised, :unregularised])
    if first[0] > 1e-8 * first[-1].clamp_min(1e-300):
        factor, info = torch.linalg.cholesky_ex(gram)
        if not int(info):
            solved = torch.cholesky_solve(torch.cat([b, total[:, None]], 1), factor)
            along, direction = solved[:, :-1], solved[:, -1:]                           # gram^-1 b, gram^-1 total
            multiplier = (total @ along - target) / (total @ direction)               # [T]
            return along - direction * multiplier
    F = gram.shape[0]
    kkt = torch.zeros(F + 1, F + 1, dtype=gram.dtype)
    kkt[:F, :F] = gram
    kkt[:F, F] = kkt[F, :F] = total
    return symmetric_pinv_solve(kkt, torch.cat([b, target[None]]))[:F]


def symmetric_pinv_solve(A: torch.Tensor, b: torch.Tensor, rcond: float = 1e-10) -> torch.Tensor:
    """Minimum-norm solution of A x = b for a symmetric (possibly indefinite or singular) A, by eigendecomposition.
    Sampled pairs can leave first-order terms unidentified (two players always in or out together); an LU solve then
    returns huge values along that direction; this returns the least-norm split, as an SVD lstsq would, faster."""
    evals, evecs = torch.linalg.eigh(A)
    keep = evals.abs() > rcond * evals.abs().max()
    return evecs[:, keep] @ ((evecs[:, keep].T @ b) / evals[keep, None])


def kernel_shap(game: Game, M: int, budget: int, rng: np.random.Generator, device="cpu", order: int = 3,
                ridge: float = 0.1) -> ShapleyEstimate:
    """KernelSHAP (Lundberg & Lee 2017) with the efficiency constraint; exact when the budget covers 2^M.
    ``order=1`` is the classic linear fit; ``order=3`` (default) also fits the third-order interactions that the
    paired design leaves in the linear fit's error (:func:`odd_interaction_fit`), for M up to 24 players.
    One player: v(all) - v(none) from 2 forwards. Raises BudgetError below 3 forwards (2 for one player)."""
    check_kernel_shap_order(order)
    if budget < (2 if M == 1 else 3):
        raise BudgetError(f"KernelSHAP of {M} players needs at least {2 if M == 1 else 3} forwards (empty, full"
                          f"{'' if M == 1 else ', one coalition'}), got {budget}")
    if M == 1:
        return _single_player(game, device)
    empty, full = _ends(game, M, device)
    Z, w = kernel_coalitions(M, budget - 2, rng)
    Y = _evaluate(game, Z, device)
    if order == 3 and M >= 3 and math.comb(M, 3) <= MAX_INTERACTION_TERMS:
        phi = odd_interaction_fit(Z, Y, w, empty, full, ridge)
    else:
        phi = constrained_wls(torch.from_numpy(Z), Y, torch.from_numpy(w), empty, full)
    return ShapleyEstimate(phi, empty, full, 2 + len(Z))


def continuous_coalition_shapley(game: Game, M: int, budget: int, rng: np.random.Generator, device="cpu",
                                 concentration: float = 8.0, paired: bool = True) -> ShapleyEstimate:
    """Shapley values fitted on continuous coalitions, after Guender et al. (2023, arXiv:2311.15679; their Beta
    sampling): a binary coalition is drawn as KernelSHAP samples them (size from the Shapley kernel, complementary
    pairs); then each member is shown at a value drawn from Beta(concentration, 1) (near 1) and each non-member at
    1 - Beta(concentration, 1) (near 0), i.e. parts partly visible. Shapley values are the efficiency-constrained
    least-squares fit on those continuous values (uniform weights: the kernel is already in the sampling). One
    player: v(all) - v(none) from 2 forwards. Not Kwon & Zou's Beta Shapley (a semivalue, arXiv:2110.14049): the
    Beta distribution here draws coalition values, it does not weight marginal contributions.
    Raises BudgetError below 3 forwards (2 for one player)."""
    if budget < (2 if M == 1 else 3):
        raise BudgetError(f"continuous-coalition sampling of {M} players needs at least {2 if M == 1 else 3} "
                          f"forwards, got {budget}")
    if M == 1:
        return _single_player(game, device)
    empty, full = _ends(game, M, device)
    mass = kernel_size_mass(M)
    sizes = np.arange(1, M)
    S = _paired_draws(M, sizes, mass[1:M] / mass[1:M].sum(), budget - 2, rng) if paired else \
        (rng.random((budget - 2, M)).argsort(1).argsort(1) < rng.choice(sizes, budget - 2,
                                                                        p=mass[1:M] / mass[1:M].sum())[:, None])
    hi = rng.beta(concentration, 1.0, S.shape)
    Z = np.where(S > 0, hi, 1.0 - rng.beta(concentration, 1.0, S.shape)).astype(np.float32)
    Y = _evaluate(game, Z, device)
    phi = constrained_wls(torch.from_numpy(Z), Y, torch.ones(len(Z), dtype=torch.float64), empty, full)
    return ShapleyEstimate(phi, empty, full, 2 + len(Z))


# ------------------------------------------------------------------------------------------------ permutations
def permutation_shapley(game: Game, M: int, budget: int, rng: np.random.Generator, device="cpu") -> ShapleyEstimate:
    """Permutation sampling with antithetic pairs (each permutation and its reverse): every chain from the empty to
    the full coalition gives one marginal contribution per player. Spends 2 + 2P(M-1) <= budget forwards (2 for
    one player, whose one chain is exact). Raises BudgetError below 2M forwards."""
    if budget < 2 * M:
        raise BudgetError(f"antithetic permutation sampling of {M} players needs at least {2 * M} forwards, "
                          f"got {budget}")
    if M == 1:
        return _single_player(game, device)
    pairs = (budget - 2) // (2 * (M - 1))
    empty, full = _ends(game, M, device)
    perms = rng.random((pairs, M)).argsort(1)
    perms = np.concatenate([perms, perms[:, ::-1]])                     # [2P, M]
    rank = perms.argsort(1)                                             # position of each player
    steps = np.arange(1, M)
    Z = (rank[:, None, :] < steps[None, :, None]).astype(np.float32)   # [2P, M-1, M]
    v = _evaluate(game, Z.reshape(-1, M), device).reshape(2 * pairs, M - 1, -1)
    chain = torch.cat([empty.expand(2 * pairs, 1, -1), v, full.expand(2 * pairs, 1, -1)], 1)   # [2P, M+1, T]
    marginal = chain.diff(dim=1)                                       # [2P, M, T], position k -> perms[:, k]
    phi = torch.zeros(M, chain.shape[-1], dtype=torch.float64)
    phi.index_add_(0, torch.from_numpy(perms.reshape(-1).copy()), marginal.reshape(-1, chain.shape[-1]))
    return ShapleyEstimate((phi / (2 * pairs)).T, empty, full, 2 + 2 * pairs * (M - 1))


# ------------------------------------------------------------------------------------------------ explainers
class _ShapleyExplainer(Explainer):
    """Regions are the players (superpixels when none are given); saliency paints each region's value."""

    needs_regions = True
    accepts_regions = True
    shapley_values = True

    def __init__(self, scorer, *, n_segments: int = 16, **kw):
        super().__init__(scorer, **kw)
        self.n_segments = n_segments

    def options(self):
        return {**super().options(), "n_segments": self.n_segments}

    def default_regions(self, image):
        return superpixels(image, self.n_segments).float()

    def _estimate(self, game: RegionGame, M: int, budget: int | None, rng: np.random.Generator) -> ShapleyEstimate:
        raise NotImplementedError

    def _explain(self, image, regions, budget, generator):
        game = RegionGame(self.score, image, regions, self.perturbation, self.chunk_size)
        est = self._estimate(game, regions.shape[0], budget, numpy_rng(generator))
        phi = est.phi.float().to(self.device)
        return paint(phi, regions), phi, {"full_score": est.full, "empty_score": est.empty}


class ExactShapley(_ShapleyExplainer):
    """Exact Shapley values by enumerating all 2^M coalitions (64 forwards for a 6-part pedestrian): the ground
    truth the estimators are measured against. Shapley, "A Value for n-Person Games" (1953,
    https://doi.org/10.1515/9781400881970-018).

    Players: the M non-empty regions (``n_segments`` superpixels when none are given). Returns relevance [T, R] (score
    units; sum = full - empty score), saliency [T, H, W] painted from it, ``full_score`` / ``empty_score`` [T].
    Spends exactly 2^M forwards whatever the budget. Raises BudgetError for a budget below 2^M.
    """

    name = "exact_shapley"

    def min_budget(self, num_regions, num_targets):
        return 2 ** num_regions, f"all 2^{num_regions} = {2 ** num_regions} coalitions"

    def _estimate(self, game, M, budget, rng):
        return exact_shapley(game, M, self.device)


class KernelShap(_ShapleyExplainer):
    """KernelSHAP with third-order interaction terms (``order=1``: the classic linear fit); exact enumeration
    whenever 2^M fits the budget. Lundberg & Lee, "A Unified Approach to Interpreting Model Predictions" (2017,
    https://arxiv.org/abs/1705.07874); the interaction terms: :func:`odd_interaction_fit` (this project).

    ``order``: 1 or 3; ``ridge``: penalty on the third-order terms (>= 0). Players, outputs and units as
    :class:`ExactShapley`; spends at most ``budget`` forwards (distinct coalitions). Raises ValueError for another
    order, BudgetError for a budget below min(2^M, 3).
    """

    name = "kernel_shap"
    default_budget = 512

    def __init__(self, scorer, *, order: int = 3, ridge: float = 0.1, **kw):
        super().__init__(scorer, **kw)
        self.order, self.ridge = check_kernel_shap_order(order), ridge

    def options(self):
        return {**super().options(), "order": self.order, "ridge": self.ridge}

    def min_budget(self, num_regions, num_targets):
        if 2 ** num_regions <= 3:
            return 2 ** num_regions, f"all 2^{num_regions} coalitions"
        return 3, "the empty and full coalitions and one more"

    def _estimate(self, game, M, budget, rng):
        if 2 ** M <= budget:
            return exact_shapley(game, M, self.device)
        return kernel_shap(game, M, budget, rng, self.device, self.order, self.ridge)


class PermutationShapley(_ShapleyExplainer):
    """Monte-Carlo Shapley values from antithetic permutation pairs (each permutation and its reverse): Castro,
    Gómez & Tejada, "Polynomial calculation of the Shapley value based on sampling" (2009,
    https://doi.org/10.1016/j.cor.2008.04.004); antithetic pairs as in Mitchell et al., "Sampling Permutations for
    Shapley Value Estimation" (2022, https://arxiv.org/abs/2104.12199).

    Players, outputs and units as :class:`ExactShapley`; spends 2 + 2P(M - 1) <= budget forwards (P pairs).
    Raises BudgetError for a budget below 2M.
    """

    name = "permutation_shapley"
    default_budget = 512

    def min_budget(self, num_regions, num_targets):
        return 2 * num_regions, ("the empty and full coalitions" if num_regions == 1 else
                                 "the empty and full coalitions and one antithetic pair of permutations")

    def _estimate(self, game, M, budget, rng):
        return permutation_shapley(game, M, budget, rng, self.device)


class ContinuousCoalitionShapley(_ShapleyExplainer):
    """Shapley values fitted on continuous, Beta-distributed coalitions (parts partly visible), after the body-part
    relevance of Günder, Banerjee, Sifa & Bauckhage, "Model-agnostic Body Part Relevance Assessment for Pedestrian
    Detection" (2023, https://arxiv.org/abs/2311.15679): see :func:`continuous_coalition_shapley`.

    Named for what it is: not Kwon & Zou's "Beta Shapley" (2022, https://arxiv.org/abs/2110.14049), a semivalue
    that weights marginal contributions by a Beta distribution; here Beta draws how visible each part is. Kept for
    comparison with the pedestrian paper; ``bayes_shapley`` is more accurate per forward (benchmarks/README.md).
    The old method name ``beta_shapley`` is an error pointing here (``explainers.registry.RENAMED``).

    ``concentration``: a of Beta(a, 1) (> 0; higher: closer to binary coalitions). Budget: forwards, >= 3 (2 for one
    region), all spent. Returns relevance [T, R] and its painted saliency [T, H, W], in score units.
    Raises BudgetError below that minimum.
    """

    name = "continuous_coalition_shapley"
    default_budget = 512

    def __init__(self, scorer, *, concentration: float = 8.0, **kw):
        super().__init__(scorer, **kw)
        self.concentration = concentration

    def options(self):
        return {**super().options(), "concentration": self.concentration}

    def min_budget(self, num_regions, num_targets):
        if num_regions == 1:
            return 2, "the empty and full coalitions"
        return 3, "the empty and full coalitions and one more"

    def _estimate(self, game, M, budget, rng):
        return continuous_coalition_shapley(game, M, budget, rng, self.device, self.concentration)
