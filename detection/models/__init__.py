"""Model adapters behind one interface: ``detect(images) -> list[Detections]`` / ``candidates(images)`` for
detectors, ``classify(images) -> [B, C]`` for classifiers. Images: float [B, 3, H, W] in [0, 1], RGB."""
from detection.models.base import Candidates, Detections, WeightsError, box_iou, pick_device
from detection.models.blackbox import CallableDetector
from detection.models.classifier import ImageClassifier
from detection.models.torchvision_detector import TorchvisionDetector
from detection.models.yolo import YoloDetector

__all__ = ["CallableDetector", "Candidates", "Detections", "ImageClassifier", "TorchvisionDetector",
           "WeightsError", "YoloDetector", "box_iou", "pick_device"]
