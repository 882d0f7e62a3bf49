"""Shapley estimators on games with known values (explainers/shapley.py): exact enumeration, convergence and efficiency
of every sampling estimator, KernelSHAP's third-order fit, the paired solve on degenerate and near-singular designs."""
import numpy as np
import pytest
import torch

from explainers import (
    bayes_shapley,
    continuous_coalition_shapley,
    exact_shapley,
    kernel_shap,
    permutation_shapley,
    relative_error,
)
from explainers.shapley import complement_pairs, constrained_solve, odd_interaction_fit, symmetric_pinv_solve
from tests.games import CLOSED_FORM, A, M, additive, interacting


def test_exact_enumeration_matches_closed_forms():
    assert torch.allclose(exact_shapley(additive, M).phi[0], A, atol=1e-6)
    est = exact_shapley(interacting, M)
    assert torch.allclose(est.phi[0], CLOSED_FORM, atol=1e-6)
    assert est.n_forward == 2 ** M


@pytest.mark.parametrize("estimator", [bayes_shapley, kernel_shap, permutation_shapley, continuous_coalition_shapley])
def test_estimators_converge_and_keep_efficiency(estimator):
    errors = []
    for budget in (64, 256, 1000):
        runs = [estimator(interacting, M, budget, np.random.default_rng(s)) for s in range(5)]
        errors.append(np.median([relative_error(r.phi[0], CLOSED_FORM).item() for r in runs]))
        for r in runs:
            assert r.n_forward <= budget
            assert torch.allclose(r.phi.sum(1), r.full - r.empty, atol=1e-6)       # efficiency
    assert errors[2] < errors[0] and errors[2] < 0.1, errors
    on_additive = estimator(additive, M, 64, np.random.default_rng(0)).phi[0]
    if estimator in (kernel_shap, permutation_shapley):     # exact on additive games
        assert torch.allclose(on_additive, A, atol=1e-6)
    elif estimator is bayes_shapley:                 # its prior lends third-order terms a little of the main effects
        assert relative_error(on_additive, A) < 0.01


def test_third_order_terms_remove_the_error_three_way_interactions_leave_in_linear_kernel_shap():
    """The AND of players 0-2 is a third-order term: the classic (order 1) paired fit cannot place it, order 3 can."""
    def median_error(order, budget):
        return np.median([relative_error(kernel_shap(interacting, M, budget, np.random.default_rng(s), order=order)
                                         .phi[0], CLOSED_FORM).item() for s in range(5)])
    assert median_error(3, 256) < 0.6 * median_error(1, 256)
    assert median_error(3, 512) < 0.3 * median_error(1, 512)
    assert median_error(3, 512) < 0.01


def test_complement_pairs_finds_each_pair_once():
    Z = np.array([[0, 1, 1], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    i, j = complement_pairs(Z)
    assert sorted(zip(i.tolist(), j.tolist())) == [(0, 1), (2, 4)]


def test_players_the_sampled_pairs_cannot_tell_apart_get_an_even_finite_split():
    """Players 0 and 1 are in or out together in every sampled pair: their own terms are not identified, and the
    solve must return the least-norm split (an LU solve returned +-3e11 on such a pedestrian once)."""
    rows = [[1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 1], [1, 1, 1, 0, 0]]
    Z = np.array([r for r in rows for r in (r, [1 - x for x in r])], np.float32)
    Y = torch.from_numpy(Z @ np.array([0.3, 0.1, 0.2, -0.1, 0.05]))[:, None].double()
    phi = odd_interaction_fit(Z, Y, np.full(len(Z), 1 / len(Z)), torch.zeros(1, dtype=torch.float64),
                              torch.tensor([0.55], dtype=torch.float64), ridge=0.1)[0]
    assert torch.isfinite(phi).all() and phi.abs().max() < 1
    assert phi[0] == pytest.approx(phi[1]) and phi[0] + phi[1] == pytest.approx(0.4)
    assert phi.sum() == pytest.approx(0.55)


def test_constrained_solve_takes_the_cholesky_path_only_where_it_equals_the_least_norm_solve():
    g = torch.Generator().manual_seed(3)
    X = torch.randn(12, 9, generator=g, dtype=torch.float64)
    ridge = torch.diag(torch.cat([torch.zeros(4), torch.full((5,), 0.1)])).double()
    b, total, target = (torch.randn(9, 2, generator=g, dtype=torch.float64),
                        torch.rand(9, generator=g, dtype=torch.float64), torch.tensor([0.3, -1.0]).double())

    def least_norm(gram):
        kkt = torch.zeros(10, 10, dtype=torch.float64)
        kkt[:9, :9], kkt[:9, 9], kkt[9, :9] = gram, total, total
        return symmetric_pinv_solve(kkt, torch.cat([b, target[None]]))[:9]
    near = X.clone()
    near[:, 1] = X[:, 0] + 1e-7 * X[:, 1]         # players 0 and 1 all but indistinguishable: least-norm split
    for gram in (X.T @ X + ridge, near.T @ near + ridge):   # positive definite (the Cholesky path); near-singular
        solution = constrained_solve(gram, b, total, target, 4)
        torch.testing.assert_close(solution, least_norm(gram), rtol=1e-7, atol=1e-9)
        torch.testing.assert_close(total @ solution, target)


def test_kernel_shap_is_exact_when_the_budget_covers_every_coalition():
    est = kernel_shap(interacting, M, 2 ** M, np.random.default_rng(0))
    assert torch.allclose(est.phi[0], CLOSED_FORM, atol=1e-6)
