"""Black-box explainers for image models, pure PyTorch (no Prefect, no DVC).

    from explainers import BayesShapley
    explanation = BayesShapley(scorer).explain(image, regions=part_masks, budget=256, seed=0)
    explanation.relevance      # [targets, regions]

Every method has the same ``explain(image, regions=None, *, budget=None, seed=0) -> Explanation``.
"""
from __future__ import annotations

import importlib

# public name -> the submodule that defines it; imported on first access (PEP 562), so importing one
# submodule (or this package) does not import its siblings. Project code imports from the submodule.
_LAZY = {
    "GradCam": "explainers.gradients",
    "IGosPP": "explainers.igos",
    "InputXGradient": "explainers.gradients",
    "IntegratedGradients": "explainers.gradients",
    "NeedsGradientsError": "explainers.gradients",
    "cascading_randomisation": "explainers.sanity",
    "structured_attention_graph": "explainers.sag",
    "exact_minimal_sufficient": "explainers.sag",
    "BayesShapley": "explainers.bayesian_shapley",
    "Blur": "explainers.perturb",
    "BudgetError": "explainers.base",
    "Constant": "explainers.perturb",
    "ContinuousCoalitionShapley": "explainers.shapley",
    "DRise": "explainers.rise",
    "DeCam": "explainers.decam",
    "ExactShapley": "explainers.shapley",
    "Explainer": "explainers.base",
    "Explanation": "explainers.base",
    "KernelShap": "explainers.shapley",
    "Lime": "explainers.lime",
    "METHODS": "explainers.registry",
    "Mean": "explainers.perturb",
    "Noise": "explainers.perturb",
    "Occlusion": "explainers.occlusion",
    "PermutationShapley": "explainers.shapley",
    "Perturbation": "explainers.perturb",
    "RegionGame": "explainers.game",
    "Rexl": "explainers.rexl",
    "Rise": "explainers.rise",
    "Scorer": "explainers.base",
    "ScorerError": "explainers.base",
    "bayes_shapley": "explainers.bayesian_shapley",
    "box_masks": "explainers.metrics",
    "continuous_coalition_shapley": "explainers.shapley",
    "deletion_insertion": "explainers.metrics",
    "energy_pointing_game": "explainers.metrics",
    "exact_shapley": "explainers.shapley",
    "grid_regions": "explainers.regions",
    "kernel_shap": "explainers.shapley",
    "permutation_shapley": "explainers.shapley",
    "pointing_game": "explainers.metrics",
    "relative_error": "explainers.metrics",
    "superpixels": "explainers.regions",
}

__all__ = [*sorted(["GradCam", "IGosPP", "InputXGradient", "IntegratedGradients", "NeedsGradientsError",
                    "cascading_randomisation", "structured_attention_graph", "exact_minimal_sufficient"]),
           "BayesShapley", "Blur", "BudgetError", "Constant", "ContinuousCoalitionShapley", "DRise", "DeCam",
           "ExactShapley", "Explainer", "Explanation", "KernelShap", "Lime", "METHODS", "Mean", "Noise", "Occlusion",
           "Perturbation", "PermutationShapley", "RegionGame", "Rexl", "Rise", "Scorer", "ScorerError", "bayes_shapley",
           "box_masks", "continuous_coalition_shapley", "deletion_insertion", "energy_pointing_game",
           "exact_shapley", "grid_regions", "kernel_shap", "permutation_shapley", "pointing_game", "relative_error",
           "superpixels"]


def __getattr__(name: str):
    """Import a public name's submodule on first access and cache the name in the package's globals.
    Raises AttributeError for a name that is not exported."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
