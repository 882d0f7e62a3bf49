"""The registry of explainer methods: ``METHODS[name] -> class``, the ``name`` an explain job's ``method`` gives.

Importing it imports every explainer module (that is its job); code that needs one method imports that method's
module instead, so its DVC stage does not depend on the others.
"""
from __future__ import annotations

from explainers.base import Explainer
from explainers.bayesian_shapley import BayesShapley
from explainers.decam import DeCam
from explainers.lime import Lime
from explainers.occlusion import Occlusion
from explainers.rise import DRise, Rise
from explainers.shapley import BetaShapley, ExactShapley, KernelShap, PermutationShapley

METHODS: dict[str, type[Explainer]] = {
    cls.name: cls for cls in (Occlusion, Rise, DRise, Lime, BayesShapley, KernelShap, ExactShapley,
                              PermutationShapley, BetaShapley, DeCam)}

__all__ = ["METHODS"]
