"""Image classifiers: torchvision or timm architectures with local weights, and TorchScript files.

Input: ``[B, 3, H, W]`` in [0, 1]; the adapter resizes (optional) and normalises. Output: class probabilities,
softmax for single-label models, sigmoid for multi-label ones.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from detection.models.base import WeightsError, load_state_dict_into, pick_device

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize(x: torch.Tensor, size: tuple[int, int], antialias: bool = True) -> torch.Tensor:
    """Resize a batch to ``size`` (H, W): an exact area average (``avg_pool2d``) when the size divides the input by
    an integer factor (antialiased and cheap), else bilinear. Training and inference share it."""
    H, W = x.shape[-2:]
    if (H, W) == tuple(size):
        return x
    if H % size[0] == 0 and W % size[1] == 0 and H // size[0] == W // size[1]:
        return F.avg_pool2d(x, H // size[0])
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=antialias)


class ImageClassifier:
    """A classifier behind the common adapter interface: :meth:`classify` gives ``[B, C]`` probabilities."""

    def __init__(self, model: torch.nn.Module, class_names: Sequence[str], *, multi_label: bool = False,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 input_size: int | tuple[int, int] | None = None, device: str | torch.device | None = "auto",
                 batch_size: int = 64, amp: bool | None = None, weights: str | None = None, antialias: bool = True):
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.class_names = list(class_names)
        self.multi_label = multi_label
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        self.normalise = bool((self.mean != 0).any() or (self.std != 1).any())  # False: the model takes [0, 1]
        self.input_size = (input_size, input_size) if isinstance(input_size, int) else input_size
        self.antialias = antialias          # antialiased downscaling (torchvision's default); off is ~3x cheaper
        self.batch_size = batch_size
        self.amp = self.device.type == "cuda" if amp is None else amp
        self.weights = weights

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @classmethod
    def from_torchvision(cls, arch: str, weights: str | Path, class_names: Sequence[str], **kw) -> ImageClassifier:
        import torchvision

        if arch not in torchvision.models.list_models(module=torchvision.models):
            raise ValueError(f"unknown torchvision classifier {arch!r}")
        model = torchvision.models.get_model(arch, weights=None, num_classes=len(class_names))
        return cls(load_state_dict_into(model, weights), class_names, weights=str(weights), **kw)

    @classmethod
    def from_timm(cls, arch: str, weights: str | Path, class_names: Sequence[str], **kw) -> ImageClassifier:
        import timm

        if not timm.is_model(arch):
            raise ValueError(f"unknown timm architecture {arch!r}")
        model = timm.create_model(arch, pretrained=False, num_classes=len(class_names))
        cfg = model.pretrained_cfg or {}
        kw.setdefault("mean", cfg.get("mean", IMAGENET_MEAN))
        kw.setdefault("std", cfg.get("std", IMAGENET_STD))
        return cls(load_state_dict_into(model, weights), class_names, weights=str(weights), **kw)

    @classmethod
    def from_torchscript(cls, path: str | Path, class_names: Sequence[str], **kw) -> ImageClassifier:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
        try:
            model = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise WeightsError(f"{path}: cannot load TorchScript ({type(exc).__name__}: {exc})") from None
        return cls(model, class_names, weights=str(path), **kw)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True).float()
        if self.input_size is not None and tuple(x.shape[-2:]) != self.input_size:
            x = resize(x, self.input_size, self.antialias)
            return x.sub_(self.mean).div_(self.std) if self.normalise else x   # a fresh tensor: in place
        return (x - self.mean) / self.std if self.normalise else x

    @torch.inference_mode()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            return self.model(self.preprocess(images)).float()

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C]`` probabilities, in fixed-size batches."""
        outs = []
        for start in range(0, images.shape[0], self.batch_size):
            z = self.logits(images[start:start + self.batch_size])
            outs.append(torch.sigmoid(z) if self.multi_label else torch.softmax(z, -1))
        return torch.cat(outs)
