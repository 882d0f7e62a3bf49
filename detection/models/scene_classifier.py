"""The embedded demo scene classifier: a small multi-label CNN trained offline on synthetic scenes, saved as
TorchScript with a JSON sidecar so that any process can load it without this code."""
from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detection.models.classifier import ImageClassifier, resize

SCENE_MEAN = (0.5, 0.5, 0.5)
SCENE_STD = (0.25, 0.25, 0.25)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _patch_stem(cout: int, patch: int = 4) -> nn.Sequential:
    """Non-overlapping ``patch`` x ``patch`` convolution (a learned downscale that sees every pixel) + a 3x3 conv."""
    return nn.Sequential(nn.Conv2d(3, cout, patch, stride=patch, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SceneNet(nn.Module):
    """A small all-convolutional multi-label classifier (≈0.4 M parameters): a stride-4 patch stem, four stride-2
    blocks, global pool. The stem takes full-size images cheaply, so the scorer needs no resize."""

    def __init__(self, num_classes: int, width: int = 16):
        super().__init__()
        w = width
        self.features = nn.Sequential(_patch_stem(w), _block(w, 2 * w), _block(2 * w, 4 * w), _block(4 * w, 8 * w),
                                      _block(8 * w, 8 * w))
        self.head = nn.Linear(8 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


@torch.no_grad()
def fold_input_normalisation(model: SceneNet, mean: tuple[float, ...], std: tuple[float, ...]) -> SceneNet:
    """Fold ``(x - mean) / std`` into the stem (conv weights / std, the offset into BatchNorm's running mean), so the
    evaluated model takes [0, 1] images and the scorer skips a full-image pass. Exact: the stem conv has no padding."""
    conv, bn = model.features[0][0], model.features[0][1]
    if conv.padding != (0, 0) or conv.bias is not None:
        raise ValueError(f"folding the input normalisation needs an unpadded, bias-free stem conv, got {conv}")
    m = torch.tensor(mean, dtype=conv.weight.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=conv.weight.dtype).view(1, -1, 1, 1)
    conv.weight.div_(s)
    bn.running_mean.add_((conv.weight * m).sum((1, 2, 3)))
    return model


@dataclass
class ClassifierTraining:
    epochs: int = 12
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    input_size: tuple[int, int] = (240, 320)     # (H, W)
    width: int = 16
    time_limit_s: float | None = None            # stop early (whole epochs) when exceeded


def train_scene_classifier(images: torch.Tensor, labels: torch.Tensor, class_names: list[str],
                           cfg: ClassifierTraining, seed: int = 0) -> tuple[ImageClassifier, list[float]]:
    """Train :class:`SceneNet` on uint8 images [N, 3, H, W] and boolean labels [N, C]; returns the adapter and the
    mean loss of each epoch."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    # The same resize as the adapter's preprocessing at inference.
    x_all = resize(images.float() / 255, cfg.input_size, antialias=False)
    x_all = (x_all - torch.tensor(SCENE_MEAN).view(1, 3, 1, 1)) / torch.tensor(SCENE_STD).view(1, 3, 1, 1)
    y_all = labels.float()
    model = SceneNet(len(class_names), cfg.width)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * max(1, -(-len(x_all) // cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.15)
    history: list[float] = []
    start = time.perf_counter()
    model.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(x_all), generator=gen)
        losses = []
        for s in range(0, len(order), cfg.batch_size):
            idx = order[s:s + cfg.batch_size]
            x = x_all[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5          # horizontal flips keep every label
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            loss = F.binary_cross_entropy_with_logits(model(x), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.detach())
        history.append(float(torch.stack(losses).mean()))
        if cfg.time_limit_s is not None and time.perf_counter() - start > cfg.time_limit_s:
            break
    model = fold_input_normalisation(model.eval(), SCENE_MEAN, SCENE_STD)
    return ImageClassifier(model, class_names, multi_label=True, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                           input_size=cfg.input_size, device="cpu", antialias=False), history


def save_classifier(clf: ImageClassifier, path: str | Path) -> Path:
    """TorchScript file plus a ``.json`` sidecar (classes, input size, normalisation) the infer stage reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)       # torch.jit is deprecated but still the portable format
        torch.jit.script(clf.model.cpu().eval()).save(str(path))
    path.with_suffix(".json").write_text(json.dumps({
        "format": "torchscript", "classes": clf.class_names, "multi_label": clf.multi_label,
        "input_size": list(clf.input_size) if clf.input_size else None, "antialias": clf.antialias,
        "mean": clf.mean.flatten().tolist(), "std": clf.std.flatten().tolist()}, indent=2) + "\n")
    return path


def load_classifier(path: str | Path, device: str | torch.device | None = "auto") -> ImageClassifier:
    """Load a classifier saved by :func:`save_classifier`."""
    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not meta_path.is_file():
        raise FileNotFoundError(f"classifier metadata not found: {meta_path} (written beside the weights)")
    meta = json.loads(meta_path.read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return ImageClassifier.from_torchscript(path, meta["classes"], multi_label=meta["multi_label"],
                                                input_size=tuple(meta["input_size"]) if meta["input_size"] else None,
                                                mean=meta["mean"], std=meta["std"], device=device,
                                                antialias=meta.get("antialias", True))


def scene_labels(labels: list[list[str]], class_names: list[str]) -> np.ndarray:
    """Boolean [N, C] matrix from per-image label lists."""
    index = {c: i for i, c in enumerate(class_names)}
    out = np.zeros((len(labels), len(class_names)), bool)
    for n, labs in enumerate(labels):
        for lab in labs or []:
            out[n, index[lab]] = True
    return out
