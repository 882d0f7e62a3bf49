"""Top-down keypoints: a small heatmap network that places the 17 COCO keypoints inside a person's box.

Why: a bottom-up pose model (YOLO-pose) trained briefly on CPU localises keypoints to ~0.05 of a person's height and,
when it cannot tell whether a figure faces the camera, regresses each left/right pair to its mean (both shoulders on
the centre line). Body-part masks need ~0.02. A top-down model sees every person at one scale (the box cropped and
resized) and predicts one heatmap per joint *type*: a pair's two joints are two peaks of the same map, so an
ambiguous pair still gets its width; a side map then says which peak is the left joint.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from detection.body import NUM_KEYPOINTS
from detection.datasets.yolo_export import COCO_FLIP_INDEX
from detection.models.base import WeightsError, pick_device

# Joint types (nose, eye, ear, shoulder, ..., ankle): one heatmap each, holding both sides of a pair.
KEYPOINT_TYPE = (0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8)
NUM_TYPES = 9
NUM_PAIRS = NUM_TYPES - 1          # type t >= 1 is pair t - 1: keypoints 2t - 1 (left) and 2t (right)
MEAN, STD = 0.5, 0.25


HEATMAP_STRIDE = 2                 # crop pixels per heatmap pixel (the network's stride-2 stem)


@dataclass(frozen=True)
class CropSpec:
    """How a person box becomes the network's input: centred, ``scale`` x the box (height), ``size`` (H, W).

    Both sides of ``size`` must be even: the heatmaps are exactly half the crop, so that a heatmap pixel is 2 x 2
    crop pixels and a mirrored heatmap is the heatmap of the mirrored crop (an odd side would give a heatmap of
    ``ceil(side / 2)`` pixels, half a pixel longer than the crop). Raises ``ValueError`` otherwise.
    """

    size: tuple[int, int] = (64, 32)
    scale: float = 1.25

    def __post_init__(self):
        if len(self.size) != 2 or any(int(s) != s or s < HEATMAP_STRIDE or s % HEATMAP_STRIDE for s in self.size):
            raise ValueError(f"keypoint crop size must be two even positive integers (H, W), got {self.size!r}")
        if not self.scale > 0:
            raise ValueError(f"keypoint crop scale must be positive, got {self.scale!r}")

    @property
    def heatmap_size(self) -> tuple[int, int]:
        """(h, w) of the network's heatmaps for this crop."""
        return self.size[0] // HEATMAP_STRIDE, self.size[1] // HEATMAP_STRIDE

    def _cells(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = self.heatmap_size
        origin = windows[:, None, :2]
        return origin, (windows[:, None, 2:] - origin) / windows.new_tensor([w, h])

    def to_heatmap(self, xy: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """Points [N, K, 2] in image pixel edges -> heatmap pixel edges of the crops at ``windows`` [N, 4]."""
        origin, cell = self._cells(windows)
        return (xy - origin) / cell

    def from_heatmap(self, uv: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """Heatmap pixel edges [N, K, 2] of the crops at ``windows`` [N, 4] -> image pixel edges (the inverse)."""
        origin, cell = self._cells(windows)
        return origin + uv * cell

    def boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """Crop windows [N, 4] (xyxy) of the aspect of ``size`` around person boxes [N, 4]."""
        aspect = self.size[1] / self.size[0]
        c = (boxes[:, :2] + boxes[:, 2:]) / 2
        h = self.scale * torch.maximum(boxes[:, 3] - boxes[:, 1], (boxes[:, 2] - boxes[:, 0]) / aspect).clamp(min=1)
        half = torch.stack([h * aspect, h], 1) / 2
        return torch.cat([c - half, c + half], 1)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class KeypointNet(nn.Module):
    """A small U-Net: crop [N, 3, H, W] -> joint-type heatmap logits [N, 9, H/2, W/2] (a softmax over positions
    each; a pair's two joints are two peaks of one map), side logits [N, 8, H/2, W/2] ('the joint of this pair at
    this pixel is the left one') and 'labelled' logits [N, 17] (the keypoint lies in the image; COCO v > 0).

    ``context``: add the crop's global average (1/16 features through a 1x1 conv) to every position of the
    coarsest level before decoding. Which joint of a pair is the left one depends on where the figure faces, which
    a pixel's receptive field may not see on large crops (128 x 64: the 1/16 level's 3 x 3 convolutions see about
    half the person); the global term gives every position the whole crop (as in ParseNet's global context, Liu et
    al. 2015, https://arxiv.org/abs/1506.04579). Off by default: older weight files have no such layer."""

    def __init__(self, width: int = 16, context: bool = False):
        super().__init__()
        w = width
        self.stem = nn.Sequential(_conv(3, w, 2), _conv(w, w))                  # 1/2
        self.down1 = nn.Sequential(_conv(w, 2 * w, 2), _conv(2 * w, 2 * w))      # 1/4
        self.down2 = nn.Sequential(_conv(2 * w, 4 * w, 2), _conv(4 * w, 4 * w))  # 1/8
        self.down3 = nn.Sequential(_conv(4 * w, 6 * w, 2), _conv(6 * w, 6 * w))  # 1/16
        self.lat2, self.lat1, self.lat0 = nn.Conv2d(6 * w, 4 * w, 1), nn.Conv2d(4 * w, 2 * w, 1), nn.Conv2d(2 * w, w, 1)
        self.up2, self.up1, self.up0 = _conv(4 * w, 4 * w), _conv(2 * w, 2 * w), _conv(w, w)
        self.heatmaps = nn.Conv2d(w, NUM_TYPES + NUM_PAIRS, 1)
        self.labelled = nn.Linear(6 * w, NUM_KEYPOINTS)
        self.context = nn.Sequential(nn.Conv2d(6 * w, 6 * w, 1), nn.ReLU(inplace=True)) if context else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f0 = self.stem(x)
        f1 = self.down1(f0)
        f2 = self.down2(f1)
        f3 = self.down3(f2)
        if self.context is not None:
            f3 = f3 + self.context(f3.mean((2, 3), keepdim=True))
        y = self.up2(f2 + F.interpolate(self.lat2(f3), size=f2.shape[-2:], mode="nearest"))
        y = self.up1(f1 + F.interpolate(self.lat1(y), size=f1.shape[-2:], mode="nearest"))
        y = self.up0(f0 + F.interpolate(self.lat0(y), size=f0.shape[-2:], mode="nearest"))
        maps = self.heatmaps(y)
        return maps[:, :NUM_TYPES], maps[:, NUM_TYPES:], self.labelled(f3.mean((2, 3)))


def crop_persons(images: torch.Tensor, image_index: torch.Tensor, windows: torch.Tensor,
                 size: tuple[int, int]) -> torch.Tensor:
    """Normalised crops [N, 3, *size] of float images [B, 3, H, W] in [0, 1] at windows [N, 4] (pixel edges)."""
    rois = torch.cat([image_index.to(windows.dtype)[:, None], windows], 1)
    crops = roi_align(images, rois.to(images.dtype), size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
    return (crops - MEAN) / STD


def _refine(prob: torch.Tensor, idx: torch.Tensor, w: int) -> torch.Tensor:
    """Sub-pixel position [..., 2] (heatmap pixel edges) of peaks ``idx`` [...]: the centroid of the 3 x 3
    neighbourhood of each peak in ``prob`` [..., h*w]."""
    h = prob.shape[-1] // w
    pad = F.pad(prob.unflatten(-1, (h, w)), (1, 1, 1, 1))
    py, px = idx // w, idx % w
    dy = torch.arange(3, device=prob.device).view(3, 1)
    dx = torch.arange(3, device=prob.device).view(1, 3)
    flat_idx = ((py[..., None, None] + dy) * (w + 2) + px[..., None, None] + dx).flatten(-2)
    win = pad.flatten(-2).gather(-1, flat_idx).unflatten(-1, (3, 3))            # [..., 3, 3]
    total = win.sum((-2, -1)).clamp(min=1e-12)
    offs = torch.tensor([-1.0, 0.0, 1.0], device=prob.device)
    ox = (win.sum(-2) * offs).sum(-1) / total
    oy = (win.sum(-1) * offs).sum(-1) / total
    return torch.stack([px + 0.5 + ox, py + 0.5 + oy], -1)


def decode_heatmaps(type_logits: torch.Tensor, side_logits: torch.Tensor, radius: int = 2,
                    second_peak: float = 0.25) -> torch.Tensor:
    """Joint-type heatmaps [N, 9, h, w] and side maps [N, 8, h, w] -> 17 keypoints [N, 17, 2] (heatmap pixel-edge
    units). A pair's map gives its strongest peak and the strongest one more than ``radius`` pixels from it; when
    the second is under ``second_peak`` x the first the two joints coincide. The side maps decide which is left."""
    h, w = type_logits.shape[-2:]
    prob = type_logits.flatten(2).softmax(2)                                   # [N, 9, h*w]
    first = prob.argmax(2)
    ys, xs = torch.arange(h, device=prob.device).repeat_interleave(w), torch.arange(w, device=prob.device).repeat(h)
    near = ((ys - (first // w)[..., None]).abs() <= radius) & ((xs - (first % w)[..., None]).abs() <= radius)
    second = prob.masked_fill(near, -1.0).argmax(2)
    p1, p2 = prob.gather(2, first[..., None])[..., 0], prob.gather(2, second[..., None])[..., 0]
    second = torch.where(p2 >= second_peak * p1, second, first)
    pos1, pos2 = _refine(prob, first, w), _refine(prob, second, w)              # [N, 9, 2]
    side = side_logits.flatten(2)
    s1 = side.gather(2, first[:, 1:, None])[..., 0]
    s2 = side.gather(2, second[:, 1:, None])[..., 0]
    first_is_left = (s1 >= s2)[..., None]
    left = torch.where(first_is_left, pos1[:, 1:], pos2[:, 1:])
    right = torch.where(first_is_left, pos2[:, 1:], pos1[:, 1:])
    return torch.cat([pos1[:, :1], torch.stack([left, right], 2).flatten(1, 2)], 1)


class TopDownKeypoints:
    """Keypoints of given person boxes: crop each box, predict heatmaps, decode them (no Python loop per box)."""

    def __init__(self, net: KeypointNet, crop: CropSpec = CropSpec(), device: str | torch.device | None = "auto",
                 batch_size: int = 256, flip_test: bool = True):
        self.device = pick_device(device)
        self.net = net.to(self.device).eval()
        self.crop, self.batch_size, self.flip_test = crop, batch_size, flip_test

    def _maps(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Network output; with ``flip_test`` averaged with that of the mirrored crop (mirrored back: log-softmax
        heatmaps flipped, side logits flipped and negated, 'labelled' logits of the swapped keypoints)."""
        types, sides, labelled = self.net(crops)
        if not self.flip_test:
            return types, sides, labelled
        t2, s2, l2 = self.net(crops.flip(3))
        types = (types.flatten(2).log_softmax(2).view_as(types) + t2.flatten(2).log_softmax(2).view_as(t2).flip(3)) / 2
        return types, (sides - s2.flip(3)) / 2, (labelled + l2[:, COCO_FLIP_INDEX]) / 2

    @torch.inference_mode()
    def predict(self, images: torch.Tensor, boxes: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        """Keypoints [N, 17, 3] (x, y in image pixel edges, confidence) of boxes [N, 4] on images [B, 3, H, W]
        (uint8 or float in [0, 1]); ``image_index`` [N] says which image each box is on."""
        images = images.to(self.device)
        images = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        boxes, image_index = boxes.to(self.device, torch.float32), image_index.to(self.device)
        out = []
        for start in range(0, len(boxes), self.batch_size):
            b, i = boxes[start:start + self.batch_size], image_index[start:start + self.batch_size]
            windows = self.crop.boxes(b)
            types, sides, labelled = self._maps(crop_persons(images, i, windows, self.crop.size))
            if tuple(types.shape[-2:]) != self.crop.heatmap_size:
                raise ValueError(f"keypoint network gave {tuple(types.shape[-2:])} heatmaps for {self.crop.size} "
                                 f"crops; expected {self.crop.heatmap_size}")
            xy = self.crop.from_heatmap(decode_heatmaps(types, sides), windows)
            out.append(torch.cat([xy, labelled.sigmoid()[..., None]], 2))
        return torch.cat(out).cpu() if out else torch.zeros(0, NUM_KEYPOINTS, 3)


@dataclass
class KeypointTraining:
    epochs: int = 60
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    width: int = 16
    crop_size: tuple[int, int] = (64, 32)
    crop_scale: float = 1.25
    sigma: float = 1.0             # heatmap Gaussian, heatmap pixels
    box_jitter: float = 0.06       # training boxes shifted/scaled by up to this fraction: detector boxes are not exact
    context: bool = False          # KeypointNet's global-context term


def _gaussians(kp: torch.Tensor, hw: tuple[int, int], sigma: float) -> torch.Tensor:
    """Gaussian bumps [N, K, h*w] at keypoints [N, K, 2] in heatmap pixel-edge units."""
    h, w = hw
    ys = torch.arange(h, dtype=kp.dtype) + 0.5
    xs = torch.arange(w, dtype=kp.dtype) + 0.5
    gx = torch.exp(-((xs - kp[..., 0:1]) ** 2) / (2 * sigma ** 2))
    gy = torch.exp(-((ys - kp[..., 1:2]) ** 2) / (2 * sigma ** 2))
    return (gy[..., :, None] * gx[..., None, :]).flatten(-2)


def keypoint_loss(types: torch.Tensor, sides: torch.Tensor, labelled_logits: torch.Tensor, uv: torch.Tensor,
                  labelled: torch.Tensor, sigma: float) -> torch.Tensor:
    """Cross-entropy of each joint type's softmax against the normalised sum of its labelled joints' Gaussians,
    plus binary cross-entropies of the side maps at the labelled paired joints and of the 'labelled' logits."""
    N, T, h, w = types.shape
    bumps = _gaussians(uv, (h, w), sigma) * labelled[..., None]                # [N, 17, h*w]
    type_of = torch.tensor(KEYPOINT_TYPE)
    target = torch.zeros(N, T, h * w).index_add_(1, type_of, bumps)
    mass = target.sum(2, keepdim=True)
    has = (mass[..., 0] > 0).float()
    ce = -(target / mass.clamp(min=1e-12) * types.flatten(2).log_softmax(2)).sum(2)
    loss = (ce * has).sum() / has.sum().clamp(min=1)
    pix = (uv[:, 1:, 1].floor().clamp(0, h - 1) * w + uv[:, 1:, 0].floor().clamp(0, w - 1)).long()   # [N, 16]
    pair = (type_of[1:] - 1).expand(N, -1)
    side = sides.flatten(2)[torch.arange(N)[:, None], pair, pix]
    is_left = (torch.arange(1, NUM_KEYPOINTS) % 2 == 1).float().expand(N, -1)
    side_loss = F.binary_cross_entropy_with_logits(side, is_left, weight=labelled[:, 1:], reduction="sum")
    loss = loss + side_loss / labelled[:, 1:].sum().clamp(min=1)
    return loss + F.binary_cross_entropy_with_logits(labelled_logits, labelled)


def train_keypoint_model(images: torch.Tensor, boxes: torch.Tensor, image_index: torch.Tensor,
                         keypoints: torch.Tensor, cfg: KeypointTraining | None = None,
                         seed: int = 0) -> tuple[TopDownKeypoints, list[float]]:
    """Train on uint8 images [B, 3, H, W] and persons: boxes [N, 4], image_index [N], COCO keypoints [N, 17, 3]
    (v = 0 unlabelled). Returns the model (CPU) and the mean loss of each epoch."""
    cfg = cfg if cfg is not None else KeypointTraining()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    crop = CropSpec(tuple(cfg.crop_size), cfg.crop_scale)
    net = KeypointNet(cfg.width, cfg.context)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * math.ceil(len(boxes) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=max(steps, 1), pct_start=0.15)
    flip = torch.tensor(COCO_FLIP_INDEX)
    hw = crop.heatmap_size[1]
    pixels = images.float().div_(255)     # once: roi_align reads every batch's crops from it, no per-batch copy
    history: list[float] = []
    net.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(boxes), generator=gen)
        total = 0.0
        for s in range(0, len(order), cfg.batch_size):
            sel = order[s:s + cfg.batch_size]
            n = len(sel)
            b = boxes[sel].float()
            size = (b[:, 2:] - b[:, :2]).amax(1, keepdim=True)
            b = b + cfg.box_jitter * size * (2 * torch.rand(n, 4, generator=gen) - 1)
            windows = crop.boxes(b)
            x = crop_persons(pixels, image_index[sel], windows, crop.size)
            kp = keypoints[sel].float()
            uv = crop.to_heatmap(kp[..., :2], windows)
            labelled = (kp[..., 2] > 0).float()
            mirror = torch.rand(n, generator=gen) < 0.5                        # horizontal flip augmentation
            x = torch.where(mirror[:, None, None, None], x.flip(3), x)
            uv = torch.where(mirror[:, None, None], torch.stack([hw - uv[..., 0], uv[..., 1]], 2)[:, flip], uv)
            labelled = torch.where(mirror[:, None], labelled[:, flip], labelled)
            x = x * (1 + 0.2 * (torch.rand(n, 3, 1, 1, generator=gen) - 0.5))  # colour jitter
            loss = keypoint_loss(*net(x), uv, labelled, cfg.sigma)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * n
        history.append(total / len(boxes))
    net.eval()
    return TopDownKeypoints(net, crop, device="cpu"), history


def save_keypoint_model(model: TopDownKeypoints, path: str | Path, cfg: KeypointTraining) -> Path:
    """Weights and the settings needed to rebuild the network, in one file loadable with ``weights_only``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.cpu() for k, v in model.net.state_dict().items()}
    torch.save({"format": "xai-audit-topdown-keypoints", "width": cfg.width, "crop_size": list(cfg.crop_size),
                "crop_scale": cfg.crop_scale, "context": model.net.context is not None, "state_dict": state}, path)
    return path


def load_keypoint_model(path: str | Path, device: str | torch.device | None = "auto",
                        batch_size: int = 256) -> TopDownKeypoints:
    """Load a model saved by :func:`save_keypoint_model`; a missing or foreign file is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"keypoint model not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or blob.get("format") != "xai-audit-topdown-keypoints":
            raise ValueError("not a top-down keypoint model file")
        net = KeypointNet(int(blob["width"]), bool(blob.get("context", False)))
        net.load_state_dict(blob["state_dict"])
        crop = CropSpec(tuple(blob["crop_size"]), float(blob["crop_scale"]))
    except Exception as exc:
        raise WeightsError(f"{path}: cannot load keypoint model ({type(exc).__name__}: {exc})") from None
    return TopDownKeypoints(net, crop, device=device, batch_size=batch_size)
