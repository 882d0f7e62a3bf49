"""Gradient baselines (white-box): Integrated Gradients, Input×Gradient and Grad-CAM through Captum
(https://captum.ai), for in-process PyTorch models: classifiers on their class probabilities, detectors on the
D-RISE similarity to each target detection (``detection.scorers``' differentiable path, ``scorer.differentiable``).

A scorer offers gradients by a method ``differentiable(images [B, 3, H, W]) -> scores [B, T]`` that keeps the autograd
graph (and ``gradients_unavailable() -> str | None``, why not, for a black box); a plain callable scorer written in
torch ops is differentiated directly. A black box (``CallableDetector``, ONNX Runtime) raises
:class:`NeedsGradientsError` when ``explain`` runs (and the explain jobs' check refuses it before any work).

Cost is counted in forward-equivalents: a forward of B images counts B, its backward 2·B (the usual rule of thumb
that a backward costs about two forwards), so ``n_forward`` = 3 × (images differentiated) + (forwards without
graph). With T targets every image is differentiated once per target.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from explainers.base import BudgetError, Explainer, region_means

BACKWARD_COST = 2          # forward-equivalents of one image's backward pass


class NeedsGradientsError(ValueError):
    """A white-box method was given a scorer without gradients (a black-box model); names the method and why."""


def gradient_function(scorer, method: str) -> Callable[..., torch.Tensor]:
    """The scorer's differentiable path: ``scorer.differentiable`` where it has one, else the scorer itself (a
    callable in torch ops). Raises :class:`NeedsGradientsError` naming ``method`` and the reason the scorer gives."""
    why = getattr(scorer, "gradients_unavailable", None)
    reason = why() if callable(why) else None
    if reason:
        raise NeedsGradientsError(f"{method} needs gradients: {reason}")
    return getattr(scorer, "differentiable", None) or scorer


class GradientExplainer(Explainer):
    """Base of the white-box methods: ``self.forward(images)`` gives scores [B, T] with the autograd graph and counts
    them (B forwards now, 2·B more for the backward pass the caller is about to take, when the scores have a graph).

    Without regions the result is a pixel map; with regions relevance [T, R] is the mean saliency in each
    (``accepts_regions`` False). ``perturbation``: the baseline of the methods that need one (default: the image's
    mean colour)."""

    needs_gradients = True
    default_budget = None

    def __init__(self, scorer, *, perturbation="mean", **kw):
        super().__init__(scorer, perturbation=perturbation, **kw)
        self._network = None

    def _gradient_setup(self) -> Callable[..., torch.Tensor]:
        return gradient_function(self.scorer, self.name)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Scores [B, T] of ``images`` with the graph, counted (see the class). Raises NeedsGradientsError when the
        scores come back without a graph although the images required one (a scorer that is a black box)."""
        fn = self._fn
        B = images.shape[0]
        out = fn(images) if self._network is None else fn(images, network=self._network)
        if self._targets is None:
            self._targets = self._check_scores(images, out)
        if torch.is_grad_enabled() and images.requires_grad and not out.requires_grad:
            raise NeedsGradientsError(f"{self.name} needs gradients: scorer {type(self.scorer).__name__} returned "
                                      f"scores without an autograd graph (a black box, or inference_mode inside)")
        graph = torch.is_grad_enabled() and out.requires_grad       # the caller back-propagates through it
        self._forwards += B * (1 + BACKWARD_COST if graph else 1)
        return out.float()

    def _explain(self, image, regions, budget, generator):
        self._fn, self._network = self._gradient_setup(), None
        saliency = self._saliency(image, budget, generator)
        return saliency, None if regions is None else region_means(saliency, regions), {}

    def _saliency(self, image, budget, generator) -> torch.Tensor:
        raise NotImplementedError

    def _num_targets(self, image: torch.Tensor) -> int:
        T = getattr(self.scorer, "num_targets", None)
        if T is None:                                  # read it from one forward without graph
            with torch.no_grad():
                T = self.forward(image[None]).shape[1]
        return int(T)

    def _targets_batch(self, image: torch.Tensor, T: int) -> tuple[torch.Tensor, list[int]]:
        return image.unsqueeze(0).expand(T, *image.shape).contiguous(), list(range(T))


class IntegratedGradients(GradientExplainer):
    """Integrated Gradients (Sundararajan, Taly & Yan 2017, https://arxiv.org/abs/1703.01365) by Captum:
    attribution = (x − x') · ∫ ∂f(x' + α(x − x'))/∂x dα along the straight path from the baseline x' (the
    ``perturbation``'s, default the mean colour) to the image, ``steps`` Gauss-Legendre points; saliency [T, H, W]
    is the attribution summed over colour channels, in score units: it sums to f(x) − f(x') up to the integration
    error (completeness). Spends 3 · steps · T forward-equivalents; a ``budget`` sets steps = budget // (3 T)
    instead. Raises BudgetError below 2 steps, NeedsGradientsError for a black box."""

    name = "integrated_gradients"

    def __init__(self, scorer, *, steps: int = 32, **kw):
        super().__init__(scorer, **kw)
        if steps < 2:
            raise ValueError(f"integrated_gradients: steps must be >= 2, got {steps}")
        self.steps = int(steps)

    def options(self):
        return {**super().options(), "steps": self.steps}

    def min_budget(self, num_regions, num_targets):
        return 3 * 2 * (num_targets or 1), "2 integration steps per target, forward + backward"

    def _saliency(self, image, budget, generator):
        from captum.attr import IntegratedGradients as CaptumIG

        T = self._num_targets(image)
        steps = self.steps if budget is None else budget // (3 * T)
        if steps < 2:
            raise BudgetError(f"{self.name} with {T} targets needs at least {6 * T} forwards, got budget {budget}")
        x, targets = self._targets_batch(image, T)
        baseline = self.perturbation.baseline(image).unsqueeze(0).expand_as(x)
        attr = CaptumIG(self.forward).attribute(x, baseline, target=targets, n_steps=steps,
                                                internal_batch_size=max(self.chunk_size, T))
        return attr.sum(1).detach()


class InputXGradient(GradientExplainer):
    """Input × Gradient (Shrikumar et al. 2016, https://arxiv.org/abs/1605.01713) by Captum: x · ∂f/∂x, summed over
    colour channels -> saliency [T, H, W] (score units). Spends 3 · T forward-equivalents. Raises
    NeedsGradientsError for a black box."""

    name = "input_x_gradient"

    def min_budget(self, num_regions, num_targets):
        return 3 * (num_targets or 1), "one forward + backward per target"

    def _saliency(self, image, budget, generator):
        from captum.attr import InputXGradient as CaptumIxG

        T = self._num_targets(image)
        x, targets = self._targets_batch(image, T)
        x.requires_grad_()
        attr = torch.cat([CaptumIxG(self.forward).attribute(x[s:s + self.chunk_size],
                                                            target=targets[s:s + self.chunk_size])
                          for s in range(0, T, self.chunk_size)])
        return attr.sum(1).detach()


class GradCam(GradientExplainer):
    """Grad-CAM (Selvaraju et al. 2017, https://arxiv.org/abs/1610.02391) by Captum's ``LayerGradCam``: a layer's
    feature maps weighted by their spatially averaged gradients, ReLU, upsampled onto the image (the letterbox or
    resize undone). ``layer``: a dotted module path in the network; default, per model: YOLO the three maps its
    Detect head reads, torchvision detectors the backbone's last stage, classifiers the last spatial feature map.
    With several layers each map is divided by its maximum and the maps are averaged (as pytorch-grad-cam
    aggregates layers), so saliency [T, H, W] is unitless in [0, 1]; with one layer it is in Captum's units (score
    per activation). Spends 3 · T · layers forward-equivalents (+1 to find a classifier's default layer). A scorer
    without ``cam_layers`` (a plain callable in torch ops, not the pipeline's detector / classifier scorers) has no
    layers to hook: Grad-CAM then weighs the input's colour channels by their mean gradient (``layer`` 'input')."""

    name = "grad_cam"

    def __init__(self, scorer, *, layer: str | None = None, **kw):
        super().__init__(scorer, **kw)
        self.layer = layer

    def options(self):
        return {**super().options(), "layer": self.layer}

    def min_budget(self, num_regions, num_targets):
        return 3 * (num_targets or 1), "one forward + backward per target and layer"

    def _saliency(self, image, budget, generator):
        from captum.attr import LayerGradCam

        H, W = image.shape[-2:]
        cam_layers = getattr(self.scorer, "cam_layers", None)
        if cam_layers is None:                  # a plain callable scorer: Grad-CAM of the input itself
            if self.layer not in (None, "input"):
                raise NeedsGradientsError(f"{self.name}: scorer {type(self.scorer).__name__} has no cam_layers to "
                                          f"find layer {self.layer!r} in (only 'input')")
            wrapper = _InputLayer(self.forward)
            layers, forward, to_image = [wrapper.input], wrapper, (lambda cam: cam)
        else:
            found = cam_layers(H, W, self.layer)
            layers, self._network, to_image = found.layers, found.network, found.to_image
            forward = self.forward
            self._forwards += found.probes
        T = self._num_targets(image)
        need = self._forwards + 3 * T * len(layers)
        if budget is not None and need > budget:
            raise BudgetError(f"{self.name} with {T} targets and {len(layers)} layers needs {need} forwards, got "
                              f"budget {budget}")
        x, targets = self._targets_batch(image, T)
        maps = []
        for layer in layers:
            cam = torch.cat([LayerGradCam(forward, layer).attribute(x[s:s + self.chunk_size],
                                                                    target=targets[s:s + self.chunk_size],
                                                                    relu_attributions=True)
                             for s in range(0, T, self.chunk_size)])
            cam = to_image(cam[:, 0].detach().float())
            if len(layers) > 1:
                cam = cam / cam.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
            maps.append(cam)
        return torch.stack(maps).mean(0)


class _InputLayer(torch.nn.Module):
    """A scorer as a module whose first layer (an identity) is its input: Grad-CAM at the input for plain scorers."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.input = torch.nn.Identity()
        self._forward = forward

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._forward(self.input(images))


__all__ = ["GradCam", "GradientExplainer", "InputXGradient", "IntegratedGradients", "NeedsGradientsError",
           "gradient_function"]
