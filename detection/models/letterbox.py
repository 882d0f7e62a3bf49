"""Batched letterboxing: resize keeping the aspect ratio, pad to a multiple of the model's stride; and back."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Letterbox:
    """The transform from an original image to the model input (same for the whole batch)."""

    scale: float
    pad_x: int
    pad_y: int
    size: tuple[int, int]         # model input (H, W)

    def boxes_to_original(self, boxes: torch.Tensor) -> torch.Tensor:
        offset = boxes.new_tensor([self.pad_x, self.pad_y, self.pad_x, self.pad_y])
        return (boxes - offset) / self.scale

    def points_to_original(self, xy: torch.Tensor) -> torch.Tensor:
        return (xy - xy.new_tensor([self.pad_x, self.pad_y])) / self.scale


def letterbox(images: torch.Tensor, imgsz: int, stride: int = 32,
              fill: float = 114 / 255) -> tuple[torch.Tensor, Letterbox]:
    """Fit ``[B, 3, H, W]`` into a ``imgsz`` square budget (longest side), padded to ``stride`` multiples.

    Minimal padding (ultralytics' ``auto`` letterbox for rectangular batches): a 320x240 image at imgsz 320
    stays 320x256, not 320x320.
    """
    B, C, H, W = images.shape
    scale = imgsz / max(H, W)
    new_h, new_w = max(1, round(H * scale)), max(1, round(W * scale))
    out_h, out_w = math.ceil(new_h / stride) * stride, math.ceil(new_w / stride) * stride
    if (new_h, new_w) != (H, W):
        images = F.interpolate(images, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=scale < 1)
    pad_y, pad_x = (out_h - new_h) // 2, (out_w - new_w) // 2
    if (out_h, out_w) != (new_h, new_w):
        images = F.pad(images, (pad_x, out_w - new_w - pad_x, pad_y, out_h - new_h - pad_y), value=fill)
    return images, Letterbox(scale=scale, pad_x=pad_x, pad_y=pad_y, size=(out_h, out_w))
