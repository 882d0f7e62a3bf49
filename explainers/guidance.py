"""Model guidance: localisation losses on differentiable attributions (pure PyTorch, no Prefect / DVC).

Rao, Böhle, Parchami-Araghi & Schiele, "Studying How to Efficiently and Effectively Guide Models with
Explanations" (ICCV 2023, https://arxiv.org/abs/2303.11932; reference code https://github.com/sukrutrao/Model-Guidance):
a classifier is trained with ``task loss + λ · L_loc``, where ``L_loc`` is computed on the attribution map of one
sampled ground-truth class per image that has boxes, and says how much of that map lies outside the class's boxes.

Attributions (all keep the autograd graph, ``create_graph=True``, so ``L_loc`` back-propagates into the weights:
double back-propagation), on the class *logit*, as in the reference code:

- ``ixg`` at the input (``layer=None``): Input×Gradient, ``Σ_c x · ∂z/∂x`` -> ``[B, H, W]``. Written here (two lines
  of ``torch.autograd.grad``): Captum's ``InputXGradient`` calls ``torch.autograd.grad`` without ``create_graph``
  and has no option to ask for it, so its result carries no graph to the weights.
- ``ixg`` at a layer: Captum's ``LayerGradientXActivation`` (``Σ_c a · ∂z/∂a``) with
  ``grad_kwargs={"create_graph": True}``, upsampled bilinearly to the input's size (the reference's
  ``interpolate``).
- ``grad_cam`` at a layer: Captum's ``LayerGradCam`` (``ReLU(Σ_c mean_hw(∂z/∂a) · a)``), same ``grad_kwargs``,
  upsampled the same way. (pytorch-grad-cam computes its maps in NumPy after ``.backward()``: no graph.)

Losses (per image, float ``[B]``; ``masks`` bool ``[B, H, W]``: the union of the sampled class's boxes), as the
reference's ``losses.py`` defines them, with its post-processing of the attribution (``only_positive``: clamp at 0;
``binarize``: divide by the image's max |attribution|):

- ``energy`` = 1 − EPG = 1 − Σ pos(A)·M / Σ pos(A) (no post-processing; 1 − Σ pos(A)·M when Σ pos(A) < 1e-7).
- ``l1`` = mean |Â − M| with Â = pos(A) / max|A| (GRADIA's loss).
- ``rrr`` = Σ (A / max|A|)² outside the box (Right for the Right Reasons, on the signed map).
- ``ppce`` = mean over box pixels of −log Â (HAICS' pixel-wise BCE towards 1 inside the box).

The reference sums the per-image losses of a batch (not a mean); :func:`localisation_loss` returns them per image
and the caller decides (``detection.models.guided_training`` sums, as the reference does). The energy loss ignores
where attribution lies *inside* the box, so it keeps the model on the object without asking it to fill the box;
with one pixel in the box it is still defined. BatchNorm in training mode couples the images of a batch (one
image's logit depends on the others' activations): compute attributions with BatchNorm in eval mode for
per-image maps (``guided_training`` fine-tunes with frozen BatchNorm statistics).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from explainers.metrics import box_masks

LossName = Literal["energy", "l1", "rrr", "ppce"]
AttributionName = Literal["ixg", "grad_cam"]
LOSSES: tuple[str, ...] = ("energy", "l1", "rrr", "ppce")
ATTRIBUTIONS: tuple[str, ...] = ("ixg", "grad_cam")
_EPS = 1e-7


def class_box_masks(boxes: torch.Tensor, image_index: torch.Tensor, batch: int, height: int,
                    width: int) -> torch.Tensor:
    """The union of each image's boxes as a bool mask ``[batch, H, W]``.

    ``boxes``: xyxy pixel-edge boxes ``[N, 4]`` (a pixel is inside when its centre is, as
    :func:`explainers.metrics.box_masks`); ``image_index``: int ``[N]`` in ``[0, batch)``, the image of each box. An
    image with no box gets an all-False mask. Raises ValueError on mismatched lengths or an index out of range."""
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    image_index = torch.as_tensor(image_index, dtype=torch.long).reshape(-1)
    if len(boxes) != len(image_index):
        raise ValueError(f"class_box_masks: {len(boxes)} boxes but {len(image_index)} image indices")
    if len(image_index) and (int(image_index.min()) < 0 or int(image_index.max()) >= batch):
        raise ValueError(f"class_box_masks: image index out of [0, {batch}): {image_index.tolist()}")
    out = torch.zeros(batch, height * width)
    if len(boxes):
        out.index_add_(0, image_index, box_masks(boxes, height, width).reshape(len(boxes), -1).float())
    return (out > 0).reshape(batch, height, width)


def _resolve_layer(model: nn.Module, layer: str | nn.Module) -> nn.Module:
    if isinstance(layer, nn.Module):
        return layer
    try:
        return model.get_submodule(layer)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n][:12]
        raise ValueError(f"attribution layer {layer!r} is not a submodule of {type(model).__name__} "
                         f"(some names: {names})") from None


def attribution(model: nn.Module | Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                classes: torch.Tensor, *, method: AttributionName = "ixg", layer: str | nn.Module | None = None,
                create_graph: bool = True) -> torch.Tensor:
    """Differentiable attribution maps of each image's class logit: float ``[B, H, W]`` at the images' size.

    ``model``: images ``[B, 3, H, W]`` -> logits ``[B, C]`` (an ``nn.Module`` when ``layer`` is given);
    ``classes``: int ``[B]``, the class explained in each image. ``method`` ``ixg`` with ``layer=None`` is
    Input×Gradient at the input; with ``layer`` (a submodule or its dotted name, e.g. ``features.2``) ``ixg`` and
    ``grad_cam`` are computed on that layer's output by Captum and upsampled bilinearly to ``[H, W]``. The result
    keeps the autograd graph into the model's weights (``create_graph``). Raises ValueError for an unknown method,
    ``grad_cam`` without a layer, or a layer name the model does not have."""
    if method not in ATTRIBUTIONS:
        raise ValueError(f"attribution method must be one of {ATTRIBUTIONS}, got {method!r}")
    classes = torch.as_tensor(classes, dtype=torch.long, device=images.device).reshape(-1)
    if len(classes) != len(images):
        raise ValueError(f"attribution: {len(images)} images but {len(classes)} classes")
    H, W = images.shape[-2:]
    if layer is None:
        if method != "ixg":
            raise ValueError(f"attribution method {method!r} needs a layer (grad_cam works on feature maps)")
        x = images if images.requires_grad else images.detach().requires_grad_(True)
        with torch.enable_grad():
            picked = model(x).gather(1, classes[:, None]).sum()       # images are independent: one backward
            grad, = torch.autograd.grad(picked, x, create_graph=create_graph)
        return (grad * x).sum(1)
    from captum.attr import LayerGradCam, LayerGradientXActivation

    module = _resolve_layer(model, layer)
    kwargs = {"grad_kwargs": {"create_graph": create_graph}}
    with torch.enable_grad():
        if method == "grad_cam":
            attr = LayerGradCam(model, module).attribute(images, target=classes.tolist(), **kwargs)
        else:
            attr = LayerGradientXActivation(model, module).attribute(images, target=classes.tolist(), **kwargs)
            attr = attr.sum(1, keepdim=True)
    return F.interpolate(attr, size=(H, W), mode="bilinear", align_corners=False)[:, 0]


def _check(attributions: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    if attributions.dim() != 3 or attributions.shape != masks.shape:
        raise ValueError(f"attributions [B, H, W] and masks [B, H, W] must match, got {tuple(attributions.shape)} "
                         f"and {tuple(masks.shape)}")
    return masks.to(attributions.device).bool()


def _normalised(attributions: torch.Tensor, only_positive: bool) -> torch.Tensor:
    """The reference's post-processing: optionally clamp at 0, then divide by the image's max |value| (kept as is
    where that is 0)."""
    a = attributions.clamp_min(0) if only_positive else attributions
    peak = a.abs().amax((1, 2), keepdim=True)
    return torch.where(peak > 0, a / torch.where(peak > 0, peak, 1.0), a)


def energy_loss(attributions: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """1 − EPG per image, float ``[B]``: 1 − (positive attribution inside ``masks``) / (all positive attribution);
    1 − (positive attribution inside) when the total is below 1e-7 (the reference's rule). ``attributions``
    ``[B, H, W]``, ``masks`` bool ``[B, H, W]``. Raises ValueError on mismatched shapes."""
    masks = _check(attributions, masks)
    pos = attributions.clamp_min(0).flatten(1)
    inside = (pos * masks.flatten(1)).sum(1)
    total = pos.sum(1)
    return torch.where(total < _EPS, 1 - inside, 1 - inside / torch.where(total < _EPS, 1.0, total))


def l1_loss(attributions: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean |Â − M| per image (GRADIA), Â = positive attribution / its max: float ``[B]``."""
    masks = _check(attributions, masks)
    return (_normalised(attributions, True) - masks.float()).abs().flatten(1).mean(1)


def rrr_loss(attributions: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Σ (A / max|A|)² over the pixels outside the box per image (Right for the Right Reasons): float ``[B]``. A sum
    over pixels, as the reference's: its scale grows with the image (thousands at 240 × 320), so its λ is orders of
    magnitude below the other losses' (λ 1 collapsed the demo classifier)."""
    masks = _check(attributions, masks)
    return (_normalised(attributions, False).square() * (~masks).float()).flatten(1).sum(1)


def ppce_loss(attributions: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean −log Â over the box pixels per image (HAICS' pixel-wise BCE towards 1; log clamped at −100 as
    ``torch.nn.BCELoss``), Â = positive attribution / its max: float ``[B]``; 0 for an image with an empty mask."""
    masks = _check(attributions, masks)
    a = _normalised(attributions, True).flatten(1)
    m = masks.flatten(1).float()
    nll = F.binary_cross_entropy(a.clamp(0, 1), torch.ones_like(a), reduction="none")   # log clamped, finite grad
    return (nll * m).sum(1) / m.sum(1).clamp_min(1.0)


_LOSS_FUNCTIONS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "energy": energy_loss, "l1": l1_loss, "rrr": rrr_loss, "ppce": ppce_loss}


def localisation_loss(name: LossName, attributions: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The localisation loss ``name`` (one of :data:`LOSSES`) per image, float ``[B]``. Raises ValueError for an
    unknown name or mismatched shapes."""
    if name not in _LOSS_FUNCTIONS:
        raise ValueError(f"localisation loss must be one of {LOSSES}, got {name!r}")
    return _LOSS_FUNCTIONS[name](attributions, masks)


@torch.no_grad()
def energy_pointing(attributions: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """EPG per image without a graph (the metric the energy loss is 1 minus): float ``[B]``, NaN where the map has no
    positive value."""
    masks = _check(attributions, masks)
    pos = attributions.clamp_min(0).flatten(1)
    total = pos.sum(1)
    return torch.where(total > 0, (pos * masks.flatten(1)).sum(1) / total.clamp_min(1e-30), torch.nan)


def sample_classes(labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One ground-truth class per image, uniformly among its positive labels (the reference's
    ``get_random_optimization_targets``): int ``[B]`` from bool / 0-1 labels ``[B, C]``; −1 for an image with no
    positive label."""
    labels = torch.as_tensor(labels).bool()
    u = torch.rand(labels.shape, generator=generator)
    u = torch.where(labels, u, -1.0)
    picked = u.argmax(1)
    return torch.where(labels.any(1), picked, -1)


__all__ = ["ATTRIBUTIONS", "LOSSES", "attribution", "class_box_masks", "energy_loss", "energy_pointing", "l1_loss",
           "localisation_loss", "ppce_loss", "rrr_loss", "sample_classes"]
