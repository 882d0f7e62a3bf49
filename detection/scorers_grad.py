"""The differentiable path of the scorers (white-box explainers: Integrated Gradients, Input×Gradient, Grad-CAM,
iGOS++): the same scores as :mod:`detection.scorers`, computed with autograd through the in-process PyTorch network.

The adapters' own ``raw`` / ``logits`` / ``candidates`` run under ``torch.inference_mode`` (no graph, less memory);
the functions here run the same network, letterbox, decoding and D-RISE similarity with the graph kept, in float32
(no autocast). A model that is no in-process PyTorch network (a ``CallableDetector``, an ONNX Runtime graph, a
``kind: callable`` classifier) has no gradients: :func:`gradients_unavailable` says why, and the functions raise
:class:`NoGradientsError` (a ValueError) with that reason.

``cam_layers`` names the feature maps Grad-CAM weighs (Selvaraju et al. 2017, https://arxiv.org/abs/1610.02391): the
three maps YOLO's Detect head reads, a torchvision detector's last backbone stage, a classifier's last spatial
feature map (found by one probe forward), or a module named by its dotted path; ``to_image`` maps a layer's grid
back onto the original image (undoing the letterbox / resize)."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from detection.models.base import Candidates
from detection.models.letterbox import letterbox, letterbox_geometry


class NoGradientsError(ValueError):
    """The model behind a scorer is a black box (no autograd path to its input); the message names it and why."""


def _module(model) -> torch.nn.Module | None:
    net = getattr(model, "model", None)
    return net if isinstance(net, torch.nn.Module) else None


def gradients_unavailable(model) -> str | None:
    """Why ``model`` (a detector or classifier adapter) has no gradients, or None when it has them: an in-process
    ``torch.nn.Module`` network (YOLO, torchvision, a torchvision / timm / TorchScript / demo classifier)."""
    name = type(model).__name__
    if name.startswith("Onnx") or getattr(model, "graph", None) is not None:
        return f"{name} runs an ONNX Runtime graph (no autograd)"
    net = _module(model)
    if net is None:
        return f"{name} is a black box (no torch.nn.Module network: a callable / remote / non-PyTorch model)"
    if name == "ImageClassifier" and type(net).__module__.startswith("detection.models.onnx"):
        return f"{name} wraps an ONNX Runtime graph (no autograd)"
    return None


def _require(model) -> torch.nn.Module:
    reason = gradients_unavailable(model)
    if reason is not None:
        raise NoGradientsError(f"needs gradients: {reason}; gradient methods need an in-process PyTorch model "
                               f"(kind yolo / torchvision detectors; saved / torchscript / torchvision / timm "
                               f"classifiers)")
    return _module(model)


def classifier_logits(clf, images: torch.Tensor, network: torch.nn.Module | None = None) -> torch.Tensor:
    """Logits [B, C] of an :class:`~detection.models.classifier.ImageClassifier` with the autograd graph (float32,
    the adapter's resize and normalisation); ``network``: an eager copy of its module to run instead (Grad-CAM's
    hooks, :func:`eager_copy`). Raises :class:`NoGradientsError` for a black box."""
    net = _require(clf) if network is None else network
    x = images.to(clf.device).float()
    if clf.input_size is not None and tuple(x.shape[-2:]) != tuple(clf.input_size):
        from detection.models.classifier import resize

        x = resize(x, clf.input_size, clf.antialias)
    if clf.normalise:
        x = (x - clf.mean) / clf.std
    return net(x).float()


def _grad_safe_anchors(net: torch.nn.Module) -> None:
    """Make an ultralytics Detect head rebuild its anchor grid when the cached one is an inference tensor.

    The head caches its anchors and strides per input shape; a grid first built under ``torch.inference_mode`` (the
    adapter's ``detect`` / ``candidates``, every black-box explainer's forwards) cannot be saved for backward, so the
    gradient path's forward of the same shape failed with "Inference tensors cannot be saved for backward". Clearing
    the cached shape rebuilds the grid here, outside inference mode, where it serves both paths."""
    head = net.model[-1] if hasattr(net, "model") and len(getattr(net, "model", ())) else None
    anchors = getattr(head, "anchors", None)
    if isinstance(anchors, torch.Tensor) and anchors.is_inference():
        head.shape = None


def detector_candidates(detector, images: torch.Tensor) -> Candidates:
    """The detector's candidates (as its ``candidates``: YOLO's every anchor before NMS, Faster R-CNN's proposals
    after the box head, other torchvision detectors' final boxes) with the autograd graph. Raises
    :class:`NoGradientsError` for a black box, TypeError for an adapter this module does not know."""
    _require(detector)
    images = images.to(detector.device).float()
    kind = type(detector).__name__
    if kind == "YoloDetector":
        x, box = letterbox(images, detector.imgsz, detector.stride)
        _grad_safe_anchors(detector.model)
        out = detector.model(x)
        out = (out[0] if isinstance(out, (list, tuple)) else out).float().transpose(1, 2)
        boxes, scores, _ = detector._split(out, box)
        valid = torch.ones(scores.shape[:2], dtype=torch.bool, device=scores.device)
        return Candidates(boxes=boxes, objectness=scores.amax(-1), class_probs=scores, valid=valid)
    if kind == "TorchvisionDetector":
        from torchvision.models.detection import FasterRCNN

        from detection.models.base import pad_candidates

        if isinstance(detector.model, FasterRCNN):
            return detector._rcnn_candidates(images)
        dets = detector.model(list(images))
        probs = [F.one_hot(r["labels"], detector.num_classes).float() * r["scores"][:, None] for r in dets]
        return pad_candidates([r["boxes"] for r in dets], [r["scores"] for r in dets], probs, detector.num_classes)
    raise TypeError(f"no differentiable candidates for a {kind} (known: YoloDetector, TorchvisionDetector)")


# ------------------------------------------------------------------------------------------------ Grad-CAM layers
def named_module(net: torch.nn.Module, path: str) -> torch.nn.Module:
    """The submodule at dotted ``path`` (``features.4``, ``model.21``). Raises KeyError listing the top level."""
    try:
        return net.get_submodule(path)
    except AttributeError:
        top = [n for n, _ in net.named_children()]
        raise KeyError(f"no module {path!r} in {type(net).__name__} (its children: {top})") from None


def last_feature_map(net: torch.nn.Module, probe: torch.Tensor) -> torch.nn.Module:
    """The module whose output is the last spatial feature map [B, C, h, w] (h·w > 1) of a forward of ``probe``:
    for a CNN classifier its final convolutional stage (the layer Grad-CAM uses). Raises ValueError when there is
    none; NoGradientsError when the network cannot be hooked (a loaded TorchScript module)."""
    seen: list[torch.nn.Module] = []

    def hook(module, _inputs, output):
        if isinstance(output, torch.Tensor) and output.ndim == 4 and output.shape[-1] * output.shape[-2] > 1:
            seen.append(module)

    modules = [m for m in net.modules() if m is not net]
    try:
        handles = [m.register_forward_hook(hook) for m in modules]
    except (NotImplementedError, RuntimeError) as e:
        raise NoGradientsError(f"grad_cam: cannot hook the layers of {type(net).__name__} ({e}): a loaded "
                               f"TorchScript module has no forward hooks") from None
    try:
        with torch.no_grad():
            net(probe)
    finally:
        for h in handles:
            h.remove()
    if not seen:
        raise ValueError(f"grad_cam: {type(net).__name__} has no layer with a spatial feature map [B, C, h, w]")
    return seen[-1]


def eager_copy(net: torch.nn.Module) -> torch.nn.Module:
    """A loaded TorchScript module cannot be hooked; the demo classifier (``SceneNet``) is rebuilt as its eager
    module with the same weights. Other modules are returned as they are."""
    if isinstance(net, torch.jit.ScriptModule) and getattr(net, "original_name", "") == "SceneNet":
        from detection.models.scene_classifier import SceneNet

        state = net.state_dict()
        eager = SceneNet(num_classes=state["head.weight"].shape[0], width=state["head.weight"].shape[1] // 8)
        eager.load_state_dict(state)
        return eager.to(state["head.weight"].device).eval().requires_grad_(False)
    return net


def _resize_to(cam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def yolo_to_image(detector, height: int, width: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Maps a layer grid [T, h, w] over YOLO's letterboxed input onto the original image [T, H, W]."""
    box = letterbox_geometry(height, width, detector.imgsz, detector.stride)

    def to_image(cam: torch.Tensor) -> torch.Tensor:
        full = _resize_to(cam, box.size)
        (rh, rw) = box.resized
        return _resize_to(full[:, box.pad_y:box.pad_y + rh, box.pad_x:box.pad_x + rw], (height, width))
    return to_image


def rcnn_to_image(detector, height: int, width: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Maps a layer grid over torchvision's resized, bottom/right-padded batch onto the original image."""
    t = detector.model.transform
    scale = min(float(t.min_size[-1]) / min(height, width), float(t.max_size) / max(height, width))
    rh, rw = math.floor(height * scale), math.floor(width * scale)
    div = t.size_divisible
    ph, pw = math.ceil(rh / div) * div, math.ceil(rw / div) * div

    def to_image(cam: torch.Tensor) -> torch.Tensor:
        return _resize_to(_resize_to(cam, (ph, pw))[:, :rh, :rw], (height, width))
    return to_image


@dataclass
class CamLayers:
    """What Grad-CAM weighs: ``layers`` (modules of ``network``), the ``network`` to run (the model's own, or the
    eager copy of a TorchScript demo classifier), ``to_image`` (a layer grid [T, h, w] -> the image [T, H, W]) and
    the ``probes`` (forwards) spent finding the default layer."""

    layers: list[torch.nn.Module]
    network: torch.nn.Module
    to_image: Callable[[torch.Tensor], torch.Tensor]
    probes: int = 0


def cam_layers(model, height: int, width: int, layer: str | None = None, *, classifier: bool = False) -> CamLayers:
    """The :class:`CamLayers` of ``model`` for [H, W] images: ``layer`` (a dotted module path) or the default:
    YOLO, the maps its Detect head reads (``model.15/18/21`` in yolov8n); torchvision detectors, the backbone's last
    stage; classifiers, the last spatial feature map (one probe forward). Raises NoGradientsError / KeyError /
    ValueError / TypeError (an adapter without known layers)."""
    net = _require(model)
    if classifier:
        net = eager_copy(net)
        if layer:
            return CamLayers([named_module(net, layer)], net, lambda cam: _resize_to(cam, (height, width)))
        probe = torch.zeros(1, 3, *(model.input_size or (height, width)), device=model.device)
        return CamLayers([last_feature_map(net, probe)], net, lambda cam: _resize_to(cam, (height, width)), 1)
    kind = type(model).__name__
    if kind == "YoloDetector":
        head = net.model[-1]
        layers = [named_module(net, layer)] if layer else [net.model[i] for i in head.f]
        return CamLayers(layers, net, yolo_to_image(model, height, width))
    if kind == "TorchvisionDetector":
        layers = [named_module(net, layer)] if layer else [list(net.backbone.body.children())[-1]]
        return CamLayers(layers, net, rcnn_to_image(model, height, width))
    raise TypeError(f"grad_cam: no layers known for a {kind}")


__all__ = ["CamLayers", "NoGradientsError", "cam_layers", "classifier_logits", "detector_candidates", "eager_copy",
           "gradients_unavailable", "last_feature_map", "named_module"]
