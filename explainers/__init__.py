"""Black-box explainers for image models, pure PyTorch (no Prefect, no DVC).

    from explainers import BayesShapley
    explanation = BayesShapley(scorer).explain(image, regions=part_masks, budget=256, seed=0)
    explanation.relevance      # [targets, regions]

Every method has the same ``explain(image, regions=None, *, budget=None, seed=0) -> Explanation``.
"""
from explainers.base import BudgetError, Explainer, Explanation
from explainers.bayesian_shapley import BayesShapley, bayes_shapley
from explainers.decam import DeCam
from explainers.game import RegionGame
from explainers.lime import Lime
from explainers.metrics import (box_masks, deletion_insertion, energy_pointing_game, pointing_game, relative_error)
from explainers.occlusion import Occlusion
from explainers.perturb import Blur, Constant, Mean, Noise, Perturbation
from explainers.regions import grid_regions, superpixels
from explainers.rise import DRise, Rise
from explainers.shapley import (BetaShapley, ExactShapley, KernelShap, PermutationShapley, beta_shapley,
                                exact_shapley, kernel_shap, permutation_shapley)

METHODS = {cls.name: cls for cls in (Occlusion, Rise, DRise, Lime, BayesShapley, KernelShap, ExactShapley,
                                     PermutationShapley, BetaShapley, DeCam)}

__all__ = ["BayesShapley", "BetaShapley", "Blur", "BudgetError", "Constant", "DRise", "DeCam", "ExactShapley",
           "Explainer", "Explanation", "KernelShap", "Lime", "METHODS", "Mean", "Noise", "Occlusion", "Perturbation",
           "PermutationShapley", "RegionGame", "Rise", "bayes_shapley", "beta_shapley", "box_masks",
           "deletion_insertion", "energy_pointing_game", "exact_shapley", "grid_regions", "kernel_shap",
           "permutation_shapley", "pointing_game", "relative_error", "superpixels"]
