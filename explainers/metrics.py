"""Explanation metrics, batched over targets: deletion / insertion AUC (RISE), pointing game, energy pointing
game, and the relative error of an estimate against exact Shapley values."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from explainers.perturb import Compositor, Perturbation, make_perturbation


@dataclass
class CurveResult:
    auc: torch.Tensor          # [T]
    curves: torch.Tensor       # [T, steps + 1] the target's score after each step
    substrate: str             # what removed / not yet inserted pixels are replaced with: always report it
    n_forward: int


def _ranked_masks(saliency: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """[T, S, H, W]: mask of the top ``fraction`` most salient pixels of each target (ties broken by index)."""
    T, H, W = saliency.shape
    order = saliency.reshape(T, -1).argsort(1, descending=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(H * W, device=order.device).expand(T, -1))
    cut = (fractions * H * W).round().long()
    return (rank[:, None, :] < cut[None, :, None]).view(T, -1, H, W)


def deletion_insertion(scorer, image: torch.Tensor, saliency: torch.Tensor, *, mode: str = "deletion",
                       substrate: str | Perturbation | None = None, steps: int = 50,
                       chunk_size: int | None = None) -> CurveResult:
    """RISE's causal metrics. Deletion replaces the most salient pixels first with the substrate (default: mean
    colour) - lower AUC is better; insertion starts from the substrate (default: blur, kernel 11, sigma 5) and
    restores the most salient pixels first - higher is better. Target t is read from column t of the scorer.
    Costs T * (steps + 1) forwards in fixed-size chunks."""
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    sub = make_perturbation(substrate or ("mean" if mode == "deletion" else "blur"))
    device = torch.device(getattr(scorer, "device", "cpu"))
    image, saliency = image.to(device, torch.float32), saliency.to(device, torch.float32)
    T, H, W = saliency.shape
    fractions = torch.linspace(0, 1, steps + 1, device=device)
    top = _ranked_masks(saliency, fractions).float().view(T * (steps + 1), H, W)
    keep = 1 - top if mode == "deletion" else top
    composite = Compositor(image, sub.baseline(image))
    target = torch.arange(T, device=device).repeat_interleave(steps + 1)
    chunk = int(chunk_size or getattr(scorer, "chunk_size", 32))
    scores = []
    with torch.inference_mode():
        for s in range(0, keep.shape[0], chunk):
            out = scorer(composite(keep[s:s + chunk])).float()
            scores.append(out.gather(1, target[s:s + chunk, None])[:, 0])
    curves = torch.cat(scores).view(T, steps + 1)
    auc = torch.trapezoid(curves, fractions, dim=1)
    return CurveResult(auc.cpu(), curves.cpu(), sub.describe(), T * (steps + 1))


def pointing_game(saliency: torch.Tensor, masks: torch.Tensor, tolerance: float = 15.0) -> torch.Tensor:
    """Hit [T] bool: the saliency maximum lies within ``tolerance`` px of the target's region (box or part mask)."""
    T, H, W = saliency.shape
    masks = masks.to(saliency.device).bool()
    peak = saliency.reshape(T, -1).argmax(1)
    py, px = torch.div(peak, W, rounding_mode="floor"), peak % W
    ys = torch.arange(H, device=saliency.device).view(1, -1, 1)
    xs = torch.arange(W, device=saliency.device).view(1, 1, -1)
    d2 = (ys - py.view(-1, 1, 1)) ** 2 + (xs - px.view(-1, 1, 1)) ** 2
    d2 = torch.where(masks, d2, torch.full_like(d2, torch.iinfo(d2.dtype).max))
    return d2.reshape(T, -1).amin(1) <= tolerance ** 2


def energy_pointing_game(saliency: torch.Tensor, masks: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """[T] share of the positive saliency inside each target's region; 0 when there is no positive saliency."""
    pos = saliency.clamp_min(0).reshape(saliency.shape[0], -1)
    inside = (pos * masks.to(pos.device).reshape(pos.shape[0], -1).float()).sum(1)
    total = pos.sum(1)
    return torch.where(total > eps, inside / total.clamp_min(eps), torch.zeros_like(total))


def box_masks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """xyxy boxes [T, 4] (pixel edges) -> bool masks [T, H, W] of the pixels whose centres fall inside."""
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    ys = torch.arange(height, dtype=torch.float32).view(1, -1, 1) + 0.5
    xs = torch.arange(width, dtype=torch.float32).view(1, 1, -1) + 0.5
    b = boxes.view(-1, 4, 1, 1)
    return (ys >= b[:, 1]) & (ys < b[:, 3]) & (xs >= b[:, 0]) & (xs < b[:, 2])


def relative_error(estimate: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """||estimate - exact||_2 / ||exact||_2 per target ([T, M] -> [T])."""
    estimate, exact = torch.as_tensor(estimate, dtype=torch.float64), torch.as_tensor(exact, dtype=torch.float64)
    return (estimate - exact).norm(dim=-1) / exact.norm(dim=-1).clamp_min(1e-12)


def downsample(saliency: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Saliency [T, H, W] area-averaged to a fixed grid (how the pipeline stores it)."""
    return F.adaptive_avg_pool2d(saliency[:, None].float(), size)[:, 0]
