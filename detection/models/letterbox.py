"""Batched letterboxing: resize keeping the aspect ratio, pad to a multiple of the model's stride; and back.

Coordinates are pixel edges (a box ``[0, 0, W, H]`` is the whole image). The resize rounds each side to whole
pixels, so the factor actually applied differs per axis: a 640x427 image at imgsz 320 becomes 320x214, a factor of
0.5 in x but 214/427 = 0.50117 in y. ``F.interpolate`` samples with exactly those per-axis factors (output pixel
edge ``u`` reads input edge ``u * in / out``), so the maps here use them too and a round trip is exact.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Letterbox:
    """The transform from an original image to the model input (same for the whole batch).

    ``input = original * (scale_x, scale_y) + (pad_x, pad_y)``, in pixel-edge coordinates, where ``scale_x`` =
    resized width / original width and ``scale_y`` = resized height / original height (the sizes after rounding).
    ``scale`` is the nominal factor ``imgsz / max(H, W)`` before rounding; it is not used for mapping.
    """

    scale: float                  # nominal: imgsz / longest side
    pad_x: int
    pad_y: int
    size: tuple[int, int]         # model input (H, W), padding included
    original: tuple[int, int]     # original image (H, W)
    resized: tuple[int, int]      # the image inside the input, before padding (H, W)

    @property
    def scale_x(self) -> float:
        return self.resized[1] / self.original[1]

    @property
    def scale_y(self) -> float:
        return self.resized[0] / self.original[0]

    def _affine(self, like: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, offset) tensors of the last dimension's ``n`` = 2 (x, y) or 4 (x1, y1, x2, y2) coordinates."""
        scale = like.new_tensor([self.scale_x, self.scale_y] * (n // 2))
        offset = like.new_tensor([self.pad_x, self.pad_y] * (n // 2))
        return scale, offset

    def boxes_to_original(self, boxes: torch.Tensor) -> torch.Tensor:
        """xyxy boxes ``[..., 4]`` in model-input pixels -> original-image pixels."""
        scale, offset = self._affine(boxes, 4)
        return (boxes - offset) / scale

    def boxes_to_input(self, boxes: torch.Tensor) -> torch.Tensor:
        """xyxy boxes ``[..., 4]`` in original-image pixels -> model-input pixels."""
        scale, offset = self._affine(boxes, 4)
        return boxes * scale + offset

    def points_to_original(self, xy: torch.Tensor) -> torch.Tensor:
        """Points ``[..., 2]`` (x, y) in model-input pixels -> original-image pixels."""
        scale, offset = self._affine(xy, 2)
        return (xy - offset) / scale

    def points_to_input(self, xy: torch.Tensor) -> torch.Tensor:
        """Points ``[..., 2]`` (x, y) in original-image pixels -> model-input pixels."""
        scale, offset = self._affine(xy, 2)
        return xy * scale + offset


def letterbox_geometry(height: int, width: int, imgsz: int, stride: int = 32) -> Letterbox:
    """Where an ``height`` x ``width`` image lands in the model input of :func:`letterbox` (no pixels touched).

    Raises ``ValueError`` for a non-positive size, ``imgsz`` or ``stride``.
    """
    if min(height, width) < 1 or imgsz < 1 or stride < 1:
        raise ValueError(f"letterbox needs positive sizes, got image {height}x{width}, imgsz {imgsz}, "
                         f"stride {stride}")
    scale = imgsz / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    out_h, out_w = math.ceil(new_h / stride) * stride, math.ceil(new_w / stride) * stride
    return Letterbox(scale=scale, pad_x=(out_w - new_w) // 2, pad_y=(out_h - new_h) // 2, size=(out_h, out_w),
                     original=(height, width), resized=(new_h, new_w))


def letterbox(images: torch.Tensor, imgsz: int, stride: int = 32,
              fill: float = 114 / 255) -> tuple[torch.Tensor, Letterbox]:
    """Fit ``[B, 3, H, W]`` into a ``imgsz`` square budget (longest side), padded to ``stride`` multiples.

    Minimal padding (ultralytics' ``auto`` letterbox for rectangular batches): a 320x240 image at imgsz 320
    stays 320x256, not 320x320. Returns the padded batch ``[B, 3, *box.size]`` and the :class:`Letterbox` that maps
    coordinates between it and the original images.
    """
    B, C, H, W = images.shape
    box = letterbox_geometry(H, W, imgsz, stride)
    (new_h, new_w), (out_h, out_w) = box.resized, box.size
    if (new_h, new_w) != (H, W):
        images = F.interpolate(images, size=(new_h, new_w), mode="bilinear", align_corners=False,
                               antialias=box.scale < 1)
    if (out_h, out_w) != (new_h, new_w):
        images = F.pad(images, (box.pad_x, out_w - new_w - box.pad_x, box.pad_y, out_h - new_h - box.pad_y),
                       value=fill)
    return images, box
