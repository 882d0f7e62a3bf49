"""The registry of explainer methods: ``METHODS[name] -> class``, the ``name`` an explain job's ``method`` gives.

Adding a method is its module (a subclass of :class:`~explainers.base.Explainer` with its ``name`` and capability
attributes: ``needs_regions``, ``needs_detections``, ...) plus its line here; params validation, the CLI and the
report read the attributes.

Importing it imports every explainer module (that is its job); code that needs one method imports that method's
module instead, so its DVC stage does not depend on the others.
"""
from __future__ import annotations

from explainers.base import Explainer
from explainers.bayesian_shapley import BayesShapley
from explainers.decam import DeCam
from explainers.fastshap import FastShapBayesShapley, FastShapParts
from explainers.fastshap_grid import FastShapGrid, FastShapGridBayesShapley
from explainers.fastshap_grid_detector import FastShapGridDetector
from explainers.gradients import GradCam, InputXGradient, IntegratedGradients
from explainers.igos import IGosPP
from explainers.lime import Lime
from explainers.occlusion import Occlusion
from explainers.rexl import Rexl
from explainers.rise import DRise, Rise
from explainers.sag import Sag
from explainers.shapley import ContinuousCoalitionShapley, ExactShapley, KernelShap, PermutationShapley

METHODS: dict[str, type[Explainer]] = {
    cls.name: cls for cls in (Occlusion, Rise, DRise, Lime, BayesShapley, KernelShap, ExactShapley,
                              PermutationShapley, ContinuousCoalitionShapley, DeCam, IntegratedGradients,
                              InputXGradient, GradCam, IGosPP, Sag, Rexl, FastShapParts,
                              FastShapBayesShapley, FastShapGrid, FastShapGridBayesShapley, FastShapGridDetector)}

# old method name -> (new name, why): an error naming the new one, never a silent alias
RENAMED: dict[str, tuple[str, str]] = {
    "beta_shapley": ("continuous_coalition_shapley", "it is not Kwon & Zou's Beta Shapley (2022), it fits Shapley "
                                                     "values on Beta-distributed continuous coalitions"),
}


def unknown_method(name: str) -> str:
    """Why ``name`` is no method: renamed (naming the new name and why), or not in :data:`METHODS` (listing them)."""
    if name in RENAMED:
        new, why = RENAMED[name]
        return f"{name!r} was renamed {new!r} ({why})"
    return f"not an explainer of explainers.registry.METHODS {sorted(METHODS)} (got {name!r})"


def method_names(**capabilities: bool) -> list[str]:
    """Names of the methods whose capability attributes have the given values, in registry order, e.g.
    ``method_names(needs_regions=True)``. Raises AttributeError for an attribute :class:`Explainer` does not have."""
    for key in capabilities:
        getattr(Explainer, key)
    return [n for n, cls in METHODS.items() if all(getattr(cls, k) == v for k, v in capabilities.items())]


def without_detections(name: str) -> str | None:
    """The method to run for ``name`` on a scorer that is no detection scorer (a classifier's): ``name`` itself, or
    for a method that ``needs_detections`` the nearest registered base class that does not (drise -> rise); None
    where there is none."""
    for cls in METHODS[name].__mro__:
        if issubclass(cls, Explainer) and not cls.needs_detections and METHODS.get(cls.name) is cls:
            return cls.name
    return None


__all__ = ["METHODS", "RENAMED", "method_names", "unknown_method", "without_detections"]
