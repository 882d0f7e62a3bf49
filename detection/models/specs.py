"""Model specifications (what params.yaml names) and the builders that turn them into adapters."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class DetectorSpec(BaseModel):
    """A detector: ``yolo`` (.pt or .yaml) or a torchvision architecture with a local weights file."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    kind: Literal["yolo", "torchvision"] = "yolo"
    weights: str
    arch: str | None = None                  # torchvision architecture name
    num_classes: int | None = None           # torchvision: classes incl. background (default 91, COCO)
    imgsz: int = Field(default=320, ge=32)
    conf: float = Field(default=0.25, ge=0.0, le=1.0)
    iou: float = Field(default=0.7, ge=0.0, le=1.0)
    person_class: str = "person"
    # A top-down keypoint model (detection.models.keypoints) that places 17 keypoints in each of this detector's
    # boxes above ``conf``, replacing the detector's own keypoints (if any).
    keypoints: str | None = None

    @model_validator(mode="after")
    def _arch_for_torchvision(self) -> DetectorSpec:
        if self.kind == "torchvision" and not self.arch:
            raise ValueError("a torchvision detector needs 'arch' (e.g. fasterrcnn_resnet50_fpn)")
        return self


class ClassifierSpec(BaseModel):
    """A classifier: ``saved`` (TorchScript + .json sidecar, as the demo), ``torchscript``, ``torchvision`` or
    ``timm``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    kind: Literal["saved", "torchscript", "torchvision", "timm"] = "saved"
    weights: str
    arch: str | None = None
    classes: list[str] | None = None         # required except for 'saved'
    multi_label: bool = True
    input_size: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _needs(self) -> ClassifierSpec:
        if self.kind != "saved" and not self.classes:
            raise ValueError(f"a {self.kind} classifier needs 'classes'")
        if self.kind in ("torchvision", "timm") and not self.arch:
            raise ValueError(f"a {self.kind} classifier needs 'arch'")
        return self


def file_sha256(path: str | Path) -> str:
    """Content hash of a weights file (built-in ``*.yaml`` names hash their name)."""
    path = Path(path)
    if not path.is_file():
        return hashlib.sha256(str(path).encode()).hexdigest()
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_detector(spec: DetectorSpec, device: str = "auto", batch_size: int = 32):
    if spec.kind == "yolo":
        from detection.models.yolo import YoloDetector

        return YoloDetector(spec.weights, imgsz=spec.imgsz, conf=spec.conf, iou=spec.iou, device=device,
                            batch_size=batch_size)
    from detection.models.torchvision_detector import TorchvisionDetector

    return TorchvisionDetector(spec.arch, spec.weights, num_classes=spec.num_classes or 91, score_thresh=spec.conf,
                               device=device, batch_size=batch_size)


def build_classifier(spec: ClassifierSpec, device: str = "auto", batch_size: int = 64):
    from detection.models.classifier import ImageClassifier

    if spec.kind == "saved":
        from detection.models.scene_classifier import load_classifier

        clf = load_classifier(spec.weights, device=device)
        clf.batch_size = batch_size
        return clf
    kw = dict(multi_label=spec.multi_label, input_size=spec.input_size, device=device, batch_size=batch_size)
    if spec.kind == "torchscript":
        return ImageClassifier.from_torchscript(spec.weights, spec.classes, **kw)
    build = ImageClassifier.from_torchvision if spec.kind == "torchvision" else ImageClassifier.from_timm
    return build(spec.arch, spec.weights, spec.classes, **kw)
