"""Model adapters behind one interface: ``detect(images) -> list[Detections]`` / ``candidates(images)`` for
detectors, ``classify(images) -> [B, C]`` for classifiers. Images: float [B, 3, H, W] in [0, 1], RGB."""
from __future__ import annotations

import importlib

# public name -> the submodule that defines it; imported on first access (PEP 562), so importing one
# submodule (or this package) does not import its siblings. Project code imports from the submodule.
_LAZY = {
    "Candidates": "detection.models.base",
    "Detections": "detection.models.base",
    "WeightsError": "detection.models.base",
    "box_iou": "detection.models.base",
    "pick_device": "detection.models.base",
    "CallableDetector": "detection.models.blackbox",
    "ImageClassifier": "detection.models.classifier",
    "TorchvisionDetector": "detection.models.torchvision_detector",
    "YoloDetector": "detection.models.yolo",
}

__all__ = ["CallableDetector", "Candidates", "Detections", "ImageClassifier", "TorchvisionDetector",
           "WeightsError", "YoloDetector", "box_iou", "pick_device"]


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
