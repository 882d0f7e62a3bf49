"""Guided fine-tuning of the demo scene classifier (Rao et al., ICCV 2023, https://arxiv.org/abs/2303.11932;
reference code https://github.com/sukrutrao/Model-Guidance): BCE + λ · L_loc, where L_loc
(:mod:`explainers.guidance`) is computed on the attribution of one sampled ground-truth class per image that has
boxes, against the union of that class's boxes. Boxes are used for a seeded ``fraction`` of the training images (the
reference's ``annotated_fraction``: a uniform subset of ``int(fraction · N)`` images, at least one); the other images
get the task loss only.

Starts from a trained :class:`~detection.models.scene_classifier.SceneNet` (the shipped TorchScript file is rebuilt
as an eager SceneNet from its state dict, so layers can be hooked); its input normalisation is already folded into the
stem, so the network takes [0, 1] images. BatchNorm keeps its running statistics (eval mode) while the weights train:
per-image attributions stay per image (train-mode BatchNorm mixes the batch into every logit) and a short fine-tune
does not re-estimate statistics from small batches. Horizontal flips as in :func:`train_scene_classifier` (boxes
flipped with the image). CPU-first, seeded, one tqdm progress bar. Nothing here reads Prefect or DVC.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from detection.models.classifier import ImageClassifier
from detection.models.scene_classifier import SceneNet
from explainers.guidance import ATTRIBUTIONS, LOSSES, attribution, class_box_masks, localisation_loss, sample_classes


@dataclass
class GuidanceTraining:
    """Recipe of a guided fine-tune. ``lam``: λ of ``BCE + λ · Σ_images L_loc`` (the reference sums the localisation
    loss over the batch's annotated images); ``layer``: the attribution's layer (``None``: the input, ``ixg`` only);
    ``fraction``: share of training images whose boxes are used (0 < fraction <= 1)."""

    loss: str = "energy"
    attribution: str = "ixg"
    layer: str | None = "features.2"
    lam: float = 1.0
    fraction: float = 0.1
    epochs: int = 4
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    max_grad_norm: float | None = None         # clip the gradient norm (double back-propagation can spike)
    classes: tuple[int, ...] | None = None     # guide only these class indices (None: every class, the paper's)
    time_limit_s: float | None = None          # stop after the epoch that crosses it
    progress: bool = True

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"guidance loss must be one of {LOSSES}, got {self.loss!r}")
        if self.attribution not in ATTRIBUTIONS:
            raise ValueError(f"guidance attribution must be one of {ATTRIBUTIONS}, got {self.attribution!r}")
        if self.attribution == "grad_cam" and self.layer is None:
            raise ValueError("guidance attribution 'grad_cam' needs a layer (e.g. 'features.2')")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"guidance fraction must be in (0, 1], got {self.fraction}")
        if self.lam < 0 or self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"guidance: lam >= 0, epochs >= 1, batch_size >= 1, lr > 0 needed, got {asdict(self)}")


@dataclass
class GuidanceHistory:
    """Per epoch: mean BCE, mean localisation loss per annotated image, annotated images seen; wall seconds."""

    bce: list[float] = field(default_factory=list)
    loc: list[float] = field(default_factory=list)
    annotated: list[int] = field(default_factory=list)
    seconds: float = 0.0
    annotated_images: int = 0


def scene_net_from(clf: ImageClassifier) -> SceneNet:
    """An eager :class:`SceneNet` with the weights of ``clf``'s network (TorchScript or eager; normalisation folded,
    takes [0, 1] images). Raises ValueError when the state dict is not a SceneNet's."""
    state = {k: v.detach().cpu().clone() for k, v in clf.model.state_dict().items()}
    if "head.weight" not in state:
        raise ValueError(f"not a SceneNet state dict (no head.weight): {list(state)[:6]}")
    classes, channels = state["head.weight"].shape
    net = SceneNet(classes, channels // 8)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"classifier weights do not fit a SceneNet of width {channels // 8}: {exc}") from None
    return net


def annotated_subset(n: int, fraction: float, seed: int) -> np.ndarray:
    """bool [n]: the images whose boxes the guidance uses, ``max(1, int(fraction · n))`` of them, uniformly drawn with
    ``seed`` (the same subset for the same n, fraction and seed)."""
    k = n if fraction >= 1 else max(1, int(fraction * n))
    chosen = np.random.default_rng([seed, 22]).choice(n, size=k, replace=False)
    out = np.zeros(n, bool)
    out[chosen] = True
    return out


def _guided_classes(cfg: GuidanceTraining, num_classes: int) -> torch.Tensor:
    """bool [C]: the classes whose attributions are guided (``cfg.classes``, else all). Raises ValueError for an index
    out of range."""
    if cfg.classes is None:
        return torch.ones(num_classes, dtype=torch.bool)
    if any(not 0 <= c < num_classes for c in cfg.classes):
        raise ValueError(f"guided_finetune: classes {cfg.classes} out of range for {num_classes} classes")
    out = torch.zeros(num_classes, dtype=torch.bool)
    out[list(cfg.classes)] = True
    return out


def _flip_boxes(boxes: torch.Tensor, width: int) -> torch.Tensor:
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)


def guided_finetune(clf: ImageClassifier, images: torch.Tensor, labels: torch.Tensor,
                    boxes: list[tuple[np.ndarray, np.ndarray]], cfg: GuidanceTraining, seed: int = 0
                    ) -> tuple[ImageClassifier, GuidanceHistory]:
    """Fine-tune ``clf`` (a SceneNet classifier, e.g. from ``load_classifier``) with BCE + λ · L_loc.

    ``images``: uint8 ``[N, 3, H, W]`` at the classifier's input size; ``labels``: bool ``[N, C]`` in
    ``clf.class_names`` order; ``boxes[n]``: ``(class index [K] int, xyxy boxes [K, 4])`` of image n's objects (any
    number, empty arrays for none). Returns a new classifier on the CPU (the input is untouched) and the history.
    Raises ValueError on mismatched sizes."""
    N = len(images)
    if images.dtype != torch.uint8 or images.dim() != 4 or labels.shape != (N, clf.num_classes) or len(boxes) != N:
        raise ValueError(f"guided_finetune: uint8 images [N, 3, H, W], labels [N, {clf.num_classes}] and N box "
                         f"entries needed, got {tuple(images.shape)} {images.dtype}, {tuple(labels.shape)}, "
                         f"{len(boxes)}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = scene_net_from(clf)
    net.eval()                                            # frozen BatchNorm statistics (module docstring)
    for p in net.parameters():
        p.requires_grad_(True)
    H, W = images.shape[-2:]
    annotated = torch.from_numpy(annotated_subset(N, cfg.fraction, seed))
    box_cls = [torch.as_tensor(c, dtype=torch.long).reshape(-1) for c, _ in boxes]
    box_xyxy = [torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4) for _, b in boxes]
    y_all = labels.float()
    guided = _guided_classes(cfg, labels.shape[1])
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * -(-N // cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    hist = GuidanceHistory(annotated_images=int(annotated.sum()))
    start = time.perf_counter()
    bar = _progress(steps, cfg.progress)
    for _ in range(cfg.epochs):
        order = torch.randperm(N, generator=gen)
        bces, locs, seen = [], [], 0
        for s in range(0, N, cfg.batch_size):
            idx = order[s:s + cfg.batch_size]
            x = images[idx].float().div_(255)
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            loss = bce = F.binary_cross_entropy_with_logits(net(x), y_all[idx])
            chosen = sample_classes(labels[idx] & guided, gen)
            sub = torch.nonzero(annotated[idx] & (chosen >= 0)).flatten()
            sel_boxes, sel_image = [], []
            for j, b in enumerate(sub.tolist()):
                n = int(idx[b])
                keep = box_cls[n] == chosen[b]
                bx = box_xyxy[n][keep]
                sel_boxes.append(_flip_boxes(bx, W) if flip[b] else bx)
                sel_image.append(torch.full((len(bx),), j))
            if len(sub) and cfg.lam > 0:
                masks = class_box_masks(torch.cat(sel_boxes), torch.cat(sel_image), len(sub), H, W)
                has_box = masks.flatten(1).any(1)          # a label without a box of its class: no loss
                if bool(has_box.any()):
                    keep = torch.nonzero(has_box).flatten()
                    attr = attribution(net, x[sub[keep]], chosen[sub[keep]], method=cfg.attribution,
                                       layer=cfg.layer)
                    loc = localisation_loss(cfg.loss, attr, masks[keep])
                    loss = bce + cfg.lam * loc.sum()
                    locs.append(loc.detach().sum())
                    seen += len(keep)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.max_grad_norm)
            opt.step()
            sched.step()
            bces.append(bce.detach())
            bar.update(1)
        hist.bce.append(float(torch.stack(bces).mean()))
        hist.loc.append(float(torch.stack(locs).sum()) / seen if seen else float("nan"))
        hist.annotated.append(seen)
        bar.set_postfix(bce=f"{hist.bce[-1]:.4f}", loc=f"{hist.loc[-1]:.3f}")
        if cfg.time_limit_s is not None and time.perf_counter() - start > cfg.time_limit_s:
            break
    bar.close()
    hist.seconds = time.perf_counter() - start
    return classifier_like(net, clf), hist


def classifier_like(net: SceneNet, clf: ImageClassifier) -> ImageClassifier:
    """``net`` (normalisation folded: [0, 1] images) frozen in eval mode as a CPU classifier with ``clf``'s classes,
    input size and resize: what a fine-tune of ``clf`` returns."""
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return ImageClassifier(net, clf.class_names, multi_label=True, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                           input_size=clf.input_size, device="cpu", antialias=clf.antialias)


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="guide", unit="batch", disable=not enabled, leave=False)


__all__ = ["GuidanceHistory", "GuidanceTraining", "annotated_subset", "classifier_like", "guided_finetune",
           "scene_net_from"]
