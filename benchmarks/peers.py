"""Public Shapley-value approximators run on the same games and budgets as ours (``bench_shapley.py``).

Every peer is a function ``(game, M, budget, seed, **config) -> phi [M]`` where ``game`` maps coalitions
[N, M] (0/1) to values [N, 1] and counts its calls; ``CONFIGS`` lists the configurations tried for each peer on
the tuning split (the best one per cell is then used on the held-out split). A peer must not spend more than the
budget: the caller checks the count.

Peers (versions recorded by :func:`versions`):
  Captum      KernelShap, ShapleyValueSampling (permutations; n_samples = (budget - 1) // M)
  SHAP        KernelExplainer (one all-zeros background row, nsamples = budget - 2: + background and x itself),
              PermutationExplainer (antithetic permutations, max_evals = budget)
  shapiq      KernelSHAP, kADDSHAP (k-additive KernelSHAP), SVARM, UnbiasedKernelSHAP, PermutationSamplingSV,
              StratifiedSamplingSV, OwenSamplingSV (shapiq evaluates the empty and full coalitions within the budget)
"""
from __future__ import annotations

import warnings

import numpy as np
import torch


def _np_game(game, M: int):
    def f(X) -> np.ndarray:
        return game(torch.from_numpy(np.asarray(X, dtype=np.float64).reshape(-1, M)))[:, 0].numpy()
    return f


def captum_kernel_shap(game, M, budget, seed):
    from captum.attr import KernelShap

    torch.manual_seed(seed)
    phi = KernelShap(lambda z: game(z.double())[:, 0]).attribute(
        torch.ones(1, M, dtype=torch.float64), baselines=torch.zeros(1, M, dtype=torch.float64),
        n_samples=budget, perturbations_per_eval=64)
    return phi[0].numpy()


def captum_shapley_sampling(game, M, budget, seed):
    from captum.attr import ShapleyValueSampling

    torch.manual_seed(seed)
    n = (budget - 1) // M
    if n < 1:
        raise ValueError("budget below one permutation")
    phi = ShapleyValueSampling(lambda z: game(z.double())[:, 0]).attribute(
        torch.ones(1, M, dtype=torch.float64), baselines=torch.zeros(1, M, dtype=torch.float64),
        n_samples=n, perturbations_per_eval=64)
    return phi[0].numpy()


def shap_kernel(game, M, budget, seed, l1_reg="num_features(10)"):
    import shap

    np.random.seed(seed)
    explainer = shap.KernelExplainer(_np_game(game, M), np.zeros((1, M)))
    phi = explainer.shap_values(np.ones((1, M)), nsamples=budget - 2, silent=True, l1_reg=l1_reg)
    return np.asarray(phi, dtype=np.float64).reshape(-1)


def shap_permutation(game, M, budget, seed):
    import shap

    masker = shap.maskers.Independent(np.zeros((1, M)), max_samples=1)
    explainer = shap.PermutationExplainer(_np_game(game, M), masker, seed=seed)
    return np.asarray(explainer(np.ones((1, M)), max_evals=budget, silent=True).values[0], dtype=np.float64)


def _shapiq(cls_name: str):
    def run(game, M, budget, seed, **config):
        import shapiq

        approximator = getattr(shapiq, cls_name)(M, random_state=seed, **config)
        values = approximator.approximate(budget, _np_game(game, M))
        return np.array([values[(i,)] for i in range(M)], dtype=np.float64)
    run.__name__ = f"shapiq_{cls_name}"
    return run


PEERS = {
    "captum_kernel_shap": captum_kernel_shap,
    "captum_shapley_sampling": captum_shapley_sampling,
    "shap_kernel": shap_kernel,
    "shap_permutation": shap_permutation,
    "shapiq_kernel_shap": _shapiq("KernelSHAP"),
    "shapiq_kadd_shap": _shapiq("kADDSHAP"),
    "shapiq_svarm": _shapiq("SVARM"),
    "shapiq_unbiased_kernel_shap": _shapiq("UnbiasedKernelSHAP"),
    "shapiq_permutation": _shapiq("PermutationSamplingSV"),
    "shapiq_stratified": _shapiq("StratifiedSamplingSV"),
    "shapiq_owen": _shapiq("OwenSamplingSV"),
}

# Configurations tried on the tuning split; the first is the library's default.
CONFIGS: dict[str, list[dict]] = {
    "captum_kernel_shap": [{}],
    "captum_shapley_sampling": [{}],
    "shap_kernel": [{"l1_reg": "num_features(10)"}, {"l1_reg": False}, {"l1_reg": "auto"}],
    "shap_permutation": [{}],
    "shapiq_kernel_shap": [{"pairing_trick": False}, {"pairing_trick": True}],
    "shapiq_kadd_shap": [{"max_order": 2, "pairing_trick": False}, {"max_order": 2, "pairing_trick": True},
                         {"max_order": 3, "pairing_trick": True}],
    "shapiq_svarm": [{"pairing_trick": False}, {"pairing_trick": True}],
    "shapiq_unbiased_kernel_shap": [{"pairing_trick": False}, {"pairing_trick": True}],
    "shapiq_permutation": [{}],
    "shapiq_stratified": [{}],
    "shapiq_owen": [{"n_anchor_points": 10}, {"n_anchor_points": 2}],
}


def config_key(config: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(config.items())) or "default"


def run_peer(name: str, game, M: int, budget: int, seed: int, config: dict) -> np.ndarray:
    """phi [M] from peer ``name`` in ``config``; raises if it spent more than ``budget`` forwards."""
    start = game.calls
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        phi = PEERS[name](game, M, budget, seed, **config)
    spent = game.calls - start
    if spent > budget:
        raise RuntimeError(f"{name} ({config_key(config)}) spent {spent} forwards, budget {budget}")
    return phi


def warm_up(game_cls) -> None:
    """Run every peer once on a small game: imports and SHAP's numba compilation (~20-30 s) stay out of the
    per-run times."""
    values = torch.arange(16, dtype=torch.float64)[:, None].sqrt()
    for name, configs in CONFIGS.items():
        try:
            run_peer(name, game_cls(values), 4, 14, 0, configs[0])
        except Exception:
            pass


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {p: version(p) for p in ("captum", "shap", "shapiq")}
