"""torchvision detectors (Faster R-CNN, RetinaNet, FCOS, SSD) with weights from a local file.

Faster R-CNN exposes its candidates before NMS (every RPN proposal after the box head, with its softmax class
vector and the box of its best class), as D-RISE uses it. The single-stage models give their detections after
NMS at a low score threshold, with a one-hot class vector scaled by the score.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.transform import resize_boxes

from detection.models.base import (
    Candidates,
    Detections,
    WeightsError,
    load_state_dict_into,
    pad_candidates,
    pick_device,
)

ARCHITECTURES = ("fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2", "fasterrcnn_mobilenet_v3_large_fpn",
                 "fasterrcnn_mobilenet_v3_large_320_fpn", "retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2",
                 "fcos_resnet50_fpn", "ssd300_vgg16", "ssdlite320_mobilenet_v3_large")


def coco_category_names() -> list[str]:
    """torchvision's 91 COCO labels (index = label id; '__background__' and 'N/A' included). No download."""
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    return list(FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])


class TorchvisionDetector:
    """``TorchvisionDetector("fasterrcnn_resnet50_fpn", weights="frcnn.pth")`` or ``TorchvisionDetector(model=m)``."""

    def __init__(self, arch: str | None = None, weights: str | Path | None = None, *,
                 model: torch.nn.Module | None = None, num_classes: int = 91, class_names: list[str] | None = None,
                 score_thresh: float = 0.05, device: str | torch.device | None = "auto", batch_size: int = 8):
        if model is None:
            if arch not in ARCHITECTURES:
                raise ValueError(f"unknown torchvision detector {arch!r}; choose one of {list(ARCHITECTURES)}")
            if weights is None:
                raise WeightsError(f"{arch}: a local weights file is required (nothing is downloaded)")
            if not Path(weights).is_file():
                raise FileNotFoundError(f"weights file not found: {weights}")
            thresh = {"box_score_thresh" if arch.startswith("fasterrcnn") else "score_thresh": score_thresh}
            model = getattr(torchvision.models.detection, arch)(weights=None, weights_backbone=None,
                                                               num_classes=num_classes, **thresh)
            load_state_dict_into(model, weights)
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        if class_names is None:
            class_names = coco_category_names() if num_classes == 91 else \
                ["__background__"] + [f"class_{i}" for i in range(1, num_classes)]
        self.class_names = class_names
        self.batch_size = batch_size
        self.weights = None if weights is None else str(weights)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @torch.inference_mode()
    def detect(self, images: torch.Tensor) -> list[Detections]:
        out: list[Detections] = []
        for start in range(0, images.shape[0], self.batch_size):
            batch = images[start:start + self.batch_size].to(self.device).float()
            for r in self.model(list(batch)):
                probs = F.one_hot(r["labels"], self.num_classes).float() * r["scores"][:, None]
                out.append(Detections(boxes=r["boxes"], scores=r["scores"], labels=r["labels"], class_probs=probs))
        return out

    @torch.inference_mode()
    def candidates(self, images: torch.Tensor) -> Candidates:
        images = images.to(self.device).float()
        if isinstance(self.model, FasterRCNN):
            return self._rcnn_candidates(images)
        dets = self.detect(images)
        return pad_candidates([d.boxes for d in dets], [d.scores for d in dets], [d.class_probs for d in dets],
                              self.num_classes)

    def _rcnn_candidates(self, images: torch.Tensor) -> Candidates:
        m = self.model
        original = [tuple(img.shape[-2:]) for img in images]
        image_list, _ = m.transform(list(images))
        features = m.backbone(image_list.tensors)
        if isinstance(features, torch.Tensor):
            features = OrderedDict([("0", features)])
        proposals, _ = m.rpn(image_list, features)
        heads = m.roi_heads
        feats = heads.box_head(heads.box_roi_pool(features, proposals, image_list.image_sizes))
        logits, regression = heads.box_predictor(feats)
        decoded = heads.box_coder.decode(regression, proposals)              # [sum K, C, 4]
        probs = F.softmax(logits, -1)
        best = probs[:, 1:].argmax(1) + 1
        boxes = decoded[torch.arange(decoded.shape[0], device=decoded.device), best]
        counts = [p.shape[0] for p in proposals]
        boxes_per, probs_per = boxes.split(counts), probs.split(counts)
        boxes_per = [resize_boxes(torchvision.ops.clip_boxes_to_image(b, size), size, orig)
                     for b, size, orig in zip(boxes_per, image_list.image_sizes, original)]
        return pad_candidates(boxes_per, [1 - p[:, 0] for p in probs_per], list(probs_per), self.num_classes)
