"""BayesShapley (explainers/bayesian_shapley.py): its covariances against explicit Fourier sums, the paired design
against sampled pairs, the candidate pool for many players, a prior estimate fused by its stated error."""
import itertools

import numpy as np
import pytest
import torch

from explainers import bayes_shapley, kernel_shap, relative_error
from explainers.bayesian_shapley import (
    ShapleyPrior,
    pair_covariance,
    pair_design,
    shapley_covariance,
    shapley_prior_covariance,
)
from tests.games import CLOSED_FORM, A, B, M, interacting


def test_bayes_covariances_equal_sums_over_the_odd_fourier_terms():
    """The closed forms (by number of agreeing players) against the explicit sums over every odd subset S:
    Cov(d(a), d(b)) = sum_S v_|S| chi_S(a) chi_S(b), Cov(phi_i, d(a)) = sum_{S ni i} v_|S| / |S| chi_S(a)."""
    n, decay = 6, 0.2
    a = torch.from_numpy(2.0 * np.random.default_rng(0).integers(0, 2, (9, n)) - 1)
    subsets = [S for k in range(1, n + 1, 2) for S in itertools.combinations(range(n), k)]
    chi = torch.stack([a[:, list(S)].prod(1) for S in subsets], 1)                          # [9, subsets]
    var = torch.tensor([decay ** ((len(S) - 1) / 2) for S in subsets], dtype=torch.float64)
    member = torch.tensor([[i in S for S in subsets] for i in range(n)], dtype=torch.float64)
    size = torch.tensor([len(S) for S in subsets], dtype=torch.float64)
    assert torch.allclose(pair_covariance(a, a, decay), (chi * var) @ chi.T)
    assert torch.allclose(shapley_covariance(a, decay), (chi * var / size) @ member.T)
    assert torch.allclose(shapley_prior_covariance(n, decay), (member * var / size ** 2) @ member.T)


def test_bayes_design_spends_the_budget_on_distinct_pairs_and_beats_sampled_pairs():
    Z = pair_design(M, 40)
    assert Z.shape == (40, M) and len(np.unique(Z, axis=0)) == 40
    assert (Z[:, -1] == 0).all() and (Z.sum(1) > 0).all()      # one side of each pair, never (none, all)

    def median_error(estimator, budget):
        return np.median([relative_error(estimator(interacting, M, budget, np.random.default_rng(s)).phi[0],
                                         CLOSED_FORM).item() for s in range(5)])
    for budget in (128, 256):                           # same forwards, under half of KernelSHAP's error
        assert median_error(bayes_shapley, budget) < 0.5 * median_error(kernel_shap, budget), budget
    assert median_error(bayes_shapley, 300) < 1e-3       # the game's odd part has order <= 3: pinned down
    assert torch.allclose(bayes_shapley(interacting, M, 2 ** M, np.random.default_rng(0)).phi[0], CLOSED_FORM,
                          atol=1e-6)


def test_bayes_shapley_for_many_players_designs_from_a_pool_that_favours_no_player():
    """Above 13 players the pairs come from a fixed pool; a pool cut after sorting once left player 0 in almost no
    candidate, and additive games of 19 and 20 players came out 36 % and 42 % wrong."""
    n = 20
    a = torch.tensor(np.random.default_rng(0).normal(size=n))
    est = bayes_shapley(lambda z: (z.double() @ a)[:, None], n, 256, np.random.default_rng(1))
    assert relative_error(est.phi[0], a) < 0.01
    assert 0.3 < pair_design(n, 100)[:, :-1].mean(0).min()      # every player in a fair share of the chosen pairs


def _errors(prior_of, budget, seeds=range(5)):
    return np.array([relative_error(bayes_shapley(interacting, M, budget, np.random.default_rng(s),
                                                  prior=prior_of(s)).phi[0], CLOSED_FORM).item() for s in seeds])


def test_an_accurate_prior_replaces_pairs_and_a_poor_one_costs_little():
    """A prior near the exact values, said to be near, beats plain BayesShapley at a small budget by far; a prior as
    wrong as the uniform split, said to be that wrong, leaves the error within 10 % of plain's at every budget."""
    plain = {b: _errors(lambda s: None, b) for b in (8, 16, 32)}
    noise = torch.from_numpy(np.random.default_rng(1).normal(size=M)) * 0.02 * CLOSED_FORM.norm() / M ** 0.5
    close = (CLOSED_FORM + noise)[None]
    good = _errors(lambda s: (lambda e, f: ShapleyPrior(close, 0.02)), 8)
    assert np.median(good) < 0.2 * np.median(plain[8]), (good, plain[8])
    for budget, base in plain.items():
        rng = np.random.default_rng(budget)
        wrong = [CLOSED_FORM + torch.from_numpy(rng.normal(size=M)) * CLOSED_FORM.norm() / M ** 0.5 for _ in range(5)]
        stated = [relative_error(w, CLOSED_FORM).item() for w in wrong]
        poor = _errors(lambda s, wrong=wrong, stated=stated: (lambda e, f: ShapleyPrior(wrong[s][None], stated[s])),
                       budget)
        assert poor.mean() <= 1.1 * base.mean(), (budget, poor, base)
    trusting = _errors(lambda s: (lambda e, f: ShapleyPrior(wrong[s][None], 1e-3)), 8)
    assert trusting.mean() > 1.25 * plain[8].mean()         # the error it is told matters


def test_a_prior_shrunk_towards_zero_is_not_trusted_for_being_small():
    """The stated error is relative to the exact values: a prior at a tenth of them (error 0.9, stated) must not be
    trusted more because its own norm is small. Weighting by the prior's own norm cost 5x plain's error at 32
    forwards here; by the larger of its and the pairs' estimate's norm ~1.5x (a bias the noise model, which takes
    the prior's error as independent of the values, cannot see) and nothing at 16."""
    centred = A - A.mean()

    def game(z):
        z = z.double()
        return (z @ centred + ((z @ B) * z).sum(1))[:, None]
    exact = centred + 0.5 * (B + B.T).sum(1)

    def errors(budget, prior):
        return np.mean([relative_error(bayes_shapley(game, M, budget, np.random.default_rng(s), prior=prior).phi[0],
                                       exact).item() for s in range(5)])
    shrunk = lambda e, f: ShapleyPrior(0.1 * exact[None], 0.9)          # noqa: E731
    assert errors(16, shrunk) <= 1.1 * errors(16, None)
    assert errors(32, shrunk) <= 2.0 * errors(32, None)


def test_prior_is_checked_and_unused_by_enumeration():
    def prior(empty, full):
        return ShapleyPrior(torch.ones(1, M), 0.5)
    exact = bayes_shapley(interacting, M, 2 ** M, np.random.default_rng(0), prior=prior)    # enumeration: unused
    assert torch.allclose(exact.phi[0], CLOSED_FORM, atol=1e-6)
    with pytest.raises(ValueError, match=r"\[targets, players\] = \[1, 10\]"):
        bayes_shapley(interacting, M, 12, np.random.default_rng(0),
                      prior=lambda e, f: ShapleyPrior(torch.ones(1, M - 1), 0.5))

    def two_targets(z):
        return torch.cat([interacting(z), -interacting(z)], 1)
    with pytest.raises(ValueError, match=r"\[targets, players\] = \[2, 10\]"):          # never broadcast
        bayes_shapley(two_targets, M, 12, np.random.default_rng(0), prior=prior)
    both = bayes_shapley(two_targets, M, 12, np.random.default_rng(0),
                         prior=lambda e, f: ShapleyPrior(torch.stack([CLOSED_FORM, -CLOSED_FORM]), 1e-3))
    assert torch.allclose(both.phi, torch.stack([CLOSED_FORM, -CLOSED_FORM]), atol=1e-2)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="relative_error"):
            ShapleyPrior(torch.ones(1, M), bad)
    with pytest.raises(ValueError, match="finite"):
        ShapleyPrior(torch.full((1, M), float("nan")), 0.5)


def test_prior_on_awkward_games():
    """A constant game (no signal: the amplitude is 0) gives plain's answer, finite; with 1 or 2 players the budget
    covers every coalition and the prior is never asked for."""
    def constant(z):
        return torch.full((z.shape[0], 1), 0.7, dtype=torch.float64)
    prior = lambda e, f: ShapleyPrior(torch.ones(1, M), 0.5)              # noqa: E731
    flat = bayes_shapley(constant, M, 12, np.random.default_rng(0), prior=prior)
    assert torch.equal(flat.phi, bayes_shapley(constant, M, 12, np.random.default_rng(0)).phi)
    assert bool(torch.isfinite(flat.phi).all()) and float(flat.phi.abs().max()) == 0.0

    def never(e, f):
        raise AssertionError("the prior of an enumerated game was asked for")
    for players in (1, 2):
        weights = torch.arange(1.0, players + 1, dtype=torch.float64)
        est = bayes_shapley(lambda z, w=weights: (z.double() @ w)[:, None], players, 4, np.random.default_rng(0),
                            prior=never)
        assert torch.allclose(est.phi[0], weights) and est.n_forward == 2 ** players
