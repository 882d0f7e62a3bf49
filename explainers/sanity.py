"""Sanity checks for saliency methods (Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim, "Sanity Checks for Saliency
Maps", NeurIPS 2018, https://arxiv.org/abs/1810.03292): cascading model-parameter randomisation.

The model's parameterised layers are randomised from the top (the output) down, in ``steps`` cumulative stages, each
on a copy of the model (the original is never touched); at every stage each method explains the same images for the
same targets and its map is compared with the trained model's by Spearman's rank correlation (of the signed map and
of its absolute value, as the paper reports both). A method whose maps stay highly correlated with the trained
model's while the model is destroyed does not depend on what the model learned (the paper's edge-detector failure).

Randomisation: every parameter of a randomised layer is redrawn from a normal distribution with the parameter
tensor's own mean and standard deviation (the scale of the activations stays that of the trained network, the
learned structure is gone); buffers (BatchNorm running statistics) are kept. Layers are the modules that own
parameters, in definition order (``named_modules``), which for the CNNs here is the forward order.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.stats import spearmanr


def parameter_layers(network: torch.nn.Module) -> list[str]:
    """Names of the modules that own parameters (directly), in definition order (input side first)."""
    return [name for name, m in network.named_modules() if any(True for _ in m.parameters(recurse=False))]


def randomise_layers(network: torch.nn.Module, names: Sequence[str], generator: torch.Generator) -> None:
    """Redraw, in place, every parameter of the named modules from N(its mean, its std) (std 0: unchanged)."""
    modules = dict(network.named_modules())
    with torch.no_grad():
        for name in names:
            for p in modules[name].parameters(recurse=False):
                flat = p.detach().float()
                std = float(flat.std()) if flat.numel() > 1 else float(flat.abs().mean())
                noise = torch.randn(p.shape, generator=generator, dtype=torch.float32).to(p.device)
                p.copy_((float(flat.mean()) + std * noise).to(p.dtype))


def cascade(num_layers: int, steps: int) -> list[int]:
    """How many top layers are randomised at each stage: 0 (trained), then ``steps`` stages up to all layers."""
    steps = max(1, min(steps, num_layers))
    return [0] + [round(num_layers * (k + 1) / steps) for k in range(steps)]


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rho between two maps (flattened); NaN when either is constant (no ranking to compare)."""
    x, y = a.detach().flatten().double().cpu().numpy(), b.detach().flatten().double().cpu().numpy()
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


@dataclass
class SanityRow:
    method: str
    stage: int                    # 0: the trained model
    randomised: int               # top layers randomised
    layers: int                   # parameterised layers in the model
    top_layer: str | None         # the lowest layer randomised so far (the cascade has reached it)
    image: int
    target: int
    spearman: float               # signed maps
    spearman_abs: float           # absolute maps


@dataclass
class RandomisedCopy:
    """One stage of the cascade: a copy of the model whose top ``randomised`` of ``layers`` parameterised layers are
    redrawn (stage 0: the trained model itself, not a copy)."""

    stage: int
    randomised: int
    layers: int
    top_layer: str | None         # the lowest layer randomised so far (None at stage 0)
    model: object


def randomised_copies(model, network_attr: str, *, steps: int = 5, seed: int = 0):
    """Yield :class:`RandomisedCopy` for stage 0 (``model`` itself) and then ``steps`` cumulative stages, each a
    fresh deep copy of ``model`` (an adapter whose network is ``getattr(model, network_attr)``) with its top layers
    randomised (output side first; :func:`randomise_layers`, generator seeded ``seed + stage``). One copy lives at a
    time. Raises ValueError when the network is not a ``torch.nn.Module`` or has no parameters."""
    network = getattr(model, network_attr, None)
    if not isinstance(network, torch.nn.Module):
        raise ValueError(f"sanity check: {type(model).__name__}.{network_attr} is not a torch.nn.Module "
                         f"(a black-box model has no parameters to randomise)")
    layers = parameter_layers(network)
    if not layers:
        raise ValueError(f"sanity check: {type(network).__name__} has no parameters to randomise")
    top_down = layers[::-1]
    for stage, k in enumerate(cascade(len(layers), steps)):
        if k == 0:
            yield RandomisedCopy(stage, 0, len(layers), None, model)
            continue
        copy_model = copy.deepcopy(model)
        randomise_layers(getattr(copy_model, network_attr), top_down[:k], torch.Generator().manual_seed(seed + stage))
        yield RandomisedCopy(stage, k, len(layers), top_down[k - 1], copy_model)


def cascading_randomisation(model, network_attr: str, scorer_for: Callable[[object], object],
                            methods: dict[str, Callable[[object], object]], images: Sequence[torch.Tensor], *,
                            steps: int = 5, seed: int = 0, budget: int | None = None) -> list[dict]:
    """Adebayo's cascading randomisation test.

    ``model``: a model adapter (e.g. an ImageClassifier or YoloDetector) whose network is ``getattr(model,
    network_attr)``; it is deep-copied per stage and the copy's top layers randomised (:func:`randomised_copies`).
    ``scorer_for(model_copy)`` builds the scorer of a copy (the same targets every time, e.g. the trained model's
    detections as D-RISE references); ``methods``: name -> factory ``(scorer) -> Explainer``; ``images``: [3, H, W]
    each. Returns one row (:class:`SanityRow` as a dict) per method, stage, image and target: the rank correlations
    of its saliency with the trained model's (stage 0 compares the trained model with itself: 1). Raises ValueError
    when the network has no parameters."""
    reference: dict[tuple[str, int], torch.Tensor] = {}
    rows = []
    for c in randomised_copies(model, network_attr, steps=steps, seed=seed):
        scorer = scorer_for(c.model)
        for name, make in methods.items():
            for i, image in enumerate(images):
                sal = make(scorer).explain(image, budget=budget, seed=seed).saliency
                if c.stage == 0:
                    reference[(name, i)] = sal
                ref = reference[(name, i)]
                for t in range(sal.shape[0]):
                    rows.append(asdict(SanityRow(name, c.stage, c.randomised, c.layers, c.top_layer, i, t,
                                                 rank_correlation(ref[t], sal[t]),
                                                 rank_correlation(ref[t].abs(), sal[t].abs()))))
    return rows


__all__ = ["RandomisedCopy", "SanityRow", "cascade", "cascading_randomisation", "parameter_layers", "randomise_layers",
           "randomised_copies", "rank_correlation"]
