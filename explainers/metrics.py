"""Explanation metrics, batched over targets: deletion / insertion AUC (RISE), pointing game, energy pointing
game, rank agreement of relevance vectors, and the relative error of an estimate against exact Shapley values.

A metric that cannot mean anything on its input is *undefined*: NaN, with a reason from :data:`UNDEFINED_REASONS`
(:func:`undefined_reason` says which), never a hit, a miss or 0. Undefined are: a saliency map with a NaN / inf
value (``nonfinite_saliency``) or with one value everywhere (``constant_saliency``: uninformative, e.g. the all-zero
D-RISE map of a pedestrian the detector never finds; every ranking or peak of it is arbitrary), a region with no
pixel in the image (``empty_region``: a zero-area box, a box outside the image, an empty part mask), and for the
energy pointing game a map without a non-positive pixel (``positive_everywhere``: an offset map, whose EPG mostly
measures the region's area) or without a positive one (``no_positive_saliency``). Relevance vectors compared by
:func:`spearman` / :func:`top_match` are undefined when either is non-finite (``nonfinite_relevance``) or constant
(``constant_relevance``)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from explainers.perturb import Compositor, Perturbation, make_perturbation

# Code i of undefined_reason() is UNDEFINED_REASONS[i]; 0 = defined.
UNDEFINED_REASONS = ("", "nonfinite_saliency", "constant_saliency", "empty_region", "positive_everywhere",
                     "no_positive_saliency", "nonfinite_relevance", "constant_relevance")
DEFINED, NONFINITE, CONSTANT, EMPTY_REGION, POSITIVE_EVERYWHERE, NO_POSITIVE = range(6)
_CHECKS = {"pointing": (NONFINITE, CONSTANT, EMPTY_REGION), "causal": (NONFINITE, CONSTANT),
           "epg": (NONFINITE, CONSTANT, EMPTY_REGION, POSITIVE_EVERYWHERE, NO_POSITIVE)}


def _check_maps(saliency: torch.Tensor, masks: torch.Tensor | None = None) -> None:
    if saliency.dim() != 3:
        raise ValueError(f"saliency must be [T, H, W], got shape {tuple(saliency.shape)}")
    if masks is not None and tuple(masks.shape) != tuple(saliency.shape):
        raise ValueError(f"masks must have the saliency's shape [T, H, W]: masks {tuple(masks.shape)}, "
                         f"saliency {tuple(saliency.shape)}")


def undefined_reason(saliency: torch.Tensor, masks: torch.Tensor | None = None,
                     metric: str = "pointing") -> torch.Tensor:
    """Why ``metric`` ('pointing', 'epg' or 'causal') is undefined for each target: int64 codes [T] into
    :data:`UNDEFINED_REASONS` (0: defined; the first failing check, in the order of that tuple, wins).

    saliency: [T, H, W]; masks: bool [T, H, W] (ignored for 'causal'). Raises ValueError on other shapes or an
    unknown metric."""
    if metric not in _CHECKS:
        raise ValueError(f"metric must be one of {sorted(_CHECKS)}, got {metric!r}")
    _check_maps(saliency, masks)
    T = saliency.shape[0]
    flat = saliency.reshape(T, -1)
    finite = torch.isfinite(flat)
    hi = torch.where(finite, flat, -torch.inf).amax(1)
    lo = torch.where(finite, flat, torch.inf).amin(1)
    failing = {NONFINITE: ~finite.all(1), CONSTANT: hi == lo, POSITIVE_EVERYWHERE: lo > 0, NO_POSITIVE: hi <= 0}
    if masks is not None:
        failing[EMPTY_REGION] = ~masks.to(saliency.device).reshape(T, -1).any(1)
    code = torch.zeros(T, dtype=torch.long, device=saliency.device)
    for c in reversed(_CHECKS[metric]):
        if c in failing:
            code = torch.where(failing[c], torch.full_like(code, c), code)
    return code


def reason_names(codes: torch.Tensor) -> list[str | None]:
    """Codes of :func:`undefined_reason` -> names (None where defined)."""
    return [UNDEFINED_REASONS[c] or None for c in torch.as_tensor(codes).tolist()]


@dataclass
class CurveResult:
    auc: torch.Tensor          # [T]; NaN where undefined (see reason)
    curves: torch.Tensor       # [T, steps + 1] the target's score after each step; NaN rows where undefined
    substrate: str             # what removed / not yet inserted pixels are replaced with: always report it
    n_forward: int             # forwards spent: only on the defined targets
    reason: torch.Tensor       # [T] int64 codes into UNDEFINED_REASONS (0: defined)


def _ranked_masks(saliency: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """[T, S, H, W]: mask of the top ``fraction`` most salient pixels of each target (ties broken by index)."""
    T, H, W = saliency.shape
    order = saliency.reshape(T, -1).argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(H * W, device=order.device).expand(T, -1))
    cut = (fractions * H * W).round().long()
    return (rank[:, None, :] < cut[None, :, None]).view(T, -1, H, W)


def default_substrate(mode: str) -> str:
    """The substrate RISE's causal metrics use by default for ``mode`` (Petsiuk et al. 2018,
    https://arxiv.org/abs/1806.07421): the mean colour for deletion, a blur for insertion (a perturbation name of
    ``explainers.perturb``). The metrics here and the RExL policies (trained for a game of one mode and its
    substrate) read it; ``tasks.metric_names.SUBSTRATES`` names the same pairs for the stored metric columns without
    importing torch (a test keeps the two equal)."""
    return "mean" if mode == "deletion" else "blur"


def deletion_insertion(scorer, image: torch.Tensor, saliency: torch.Tensor, *, mode: str = "deletion",
                       substrate: str | Perturbation | None = None, steps: int = 50,
                       chunk_size: int | None = None) -> CurveResult:
    """RISE's causal metrics. Deletion replaces the most salient pixels first with the substrate (default: mean
    colour) - lower AUC is better; insertion starts from the substrate (default: blur, kernel 11, sigma 5) and
    restores the most salient pixels first - higher is better. Target t is read from column t of the scorer.
    image: [3, H, W]; saliency: [T, H, W]. Pixels of equal saliency are taken in row-major order.

    A constant map ranks no pixel above another (any order would be arbitrary) and a map with NaN / inf values
    has no ranking: their AUC and curve are NaN (``CurveResult.reason`` says which) and cost no forward. The
    others cost (steps + 1) forwards each, in fixed-size chunks. Raises ValueError on a bad mode or shape."""
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    sub = make_perturbation(substrate or default_substrate(mode))
    device = torch.device(getattr(scorer, "device", "cpu"))
    image, saliency = image.to(device, torch.float32), saliency.to(device, torch.float32)
    reason = undefined_reason(saliency, metric="causal")
    T, H, W = saliency.shape
    if tuple(image.shape[-2:]) != (H, W):
        raise ValueError(f"image {tuple(image.shape)} and saliency {tuple(saliency.shape)} differ in size")
    curves = torch.full((T, steps + 1), torch.nan)
    fractions = torch.linspace(0, 1, steps + 1, device=device)
    defined = (reason == DEFINED).nonzero()[:, 0]
    if len(defined):
        top = _ranked_masks(saliency[defined], fractions).float().view(len(defined) * (steps + 1), H, W)
        keep = 1 - top if mode == "deletion" else top
        composite = Compositor(image, sub.baseline(image))
        target = defined.repeat_interleave(steps + 1)
        chunk = int(chunk_size or getattr(scorer, "chunk_size", 32))
        scores = []
        with torch.inference_mode():
            for s in range(0, keep.shape[0], chunk):
                out = scorer(composite(keep[s:s + chunk])).float()
                scores.append(out.gather(1, target[s:s + chunk, None])[:, 0])
        curves[defined.cpu()] = torch.cat(scores).view(len(defined), steps + 1).cpu()
    auc = torch.trapezoid(curves, fractions.cpu(), dim=1)
    return CurveResult(auc, curves, sub.describe(), len(defined) * (steps + 1), reason.cpu())


def near_region(masks: torch.Tensor, tolerance: float) -> torch.Tensor:
    """bool [T, H, W]: the pixels within ``tolerance`` px (Euclidean, between pixel centres) of a pixel of each
    target's region ``masks`` [T, H, W] - the region dilated by a disk. Exact: for each row offset dy the disk is
    the horizontal run |dx| <= w(dy) = floor(sqrt(tolerance^2 - dy^2)), and whether a run holds a region pixel is
    a difference of per-row prefix counts."""
    T, H, W = masks.shape
    if tolerance ** 2 >= (H - 1) ** 2 + (W - 1) ** 2:            # the disk covers the image from any pixel
        return masks.reshape(T, -1).any(1).view(T, 1, 1).expand(T, H, W).clone()
    r = min(math.floor(tolerance), H - 1)
    dy = torch.arange(-r, r + 1, device=masks.device)
    room = tolerance ** 2 - dy.double() ** 2
    w = room.sqrt().floor().long()
    w = w + ((w + 1) ** 2 <= room).long() - (w ** 2 > room).long()            # exact integer square root
    counts = F.pad(masks.int(), (1, 0, r, r)).cumsum(2)                      # [T, H + 2r, W + 1]
    rows = counts.unfold(1, H, 1).permute(0, 1, 3, 2)                         # [T, 2r + 1, H, W + 1]: row y + dy
    x = torch.arange(W, device=masks.device)
    shape = (T, len(dy), H, W)
    hi = (x + w.view(-1, 1) + 1).clamp(max=W).view(1, -1, 1, W).expand(shape)
    lo = (x - w.view(-1, 1)).clamp(min=0).view(1, -1, 1, W).expand(shape)
    return (rows.gather(3, hi) > rows.gather(3, lo)).any(1)


def pointing_game(saliency: torch.Tensor, masks: torch.Tensor, tolerance: float = 15.0) -> torch.Tensor:
    """Per target, float [T]: 1.0 (hit) when a maximum of the saliency [T, H, W] lies within ``tolerance`` px of the
    target's region (bool masks [T, H, W], box or part), 0.0 (miss) when none does, NaN when undefined (NaN / inf
    or constant saliency, empty region: see :func:`undefined_reason`). Ties: when several pixels share the
    maximum, it is a hit if *any* of them is within tolerance, so two equal peaks in two targets' boxes are a hit
    for both. Raises ValueError on a negative tolerance or mismatched shapes."""
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0 px, got {tolerance}")
    saliency = saliency.float()
    masks = masks.to(saliency.device).bool()
    reason = undefined_reason(saliency, masks, "pointing")
    T, H, W = saliency.shape
    peak = (saliency == saliency.reshape(T, -1).amax(1).view(T, 1, 1)) & (reason == DEFINED).view(T, 1, 1)
    rows, cols = peak.any(0).any(1).nonzero()[:, 0], peak.any(0).any(0).nonzero()[:, 0]
    if not len(rows):                                  # every target undefined
        return torch.full((T,), torch.nan, device=saliency.device)
    # Only region pixels within `tolerance` of a maximum matter: the window around the maxima, grown by it.
    r = math.floor(min(tolerance, H + W))
    y0, y1 = max(int(rows[0]) - r, 0), min(int(rows[-1]) + r + 1, H)
    x0, x1 = max(int(cols[0]) - r, 0), min(int(cols[-1]) + r + 1, W)
    near = near_region(masks[:, y0:y1, x0:x1], tolerance)
    hit = (peak[:, y0:y1, x0:x1] & near).reshape(T, -1).any(1).float()
    return torch.where(reason == DEFINED, hit, torch.nan)


def energy_pointing_game(saliency: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per target, float [T]: the share of the positive saliency [T, H, W] that lies inside the target's region
    (bool masks [T, H, W]); NaN when undefined: NaN / inf or constant saliency, empty region, no positive pixel,
    or no pixel <= 0 (``positive_everywhere``: an offset map - a RISE / D-RISE map without centring - whose EPG is
    near the region's area share, :func:`region_share`, whatever it shows). Centred / signed maps and region maps
    (0 outside the regions) are defined. Raises ValueError on mismatched shapes."""
    saliency = saliency.float()
    masks = masks.to(saliency.device).bool()
    reason = undefined_reason(saliency, masks, "epg")
    T = saliency.shape[0]
    pos = torch.nan_to_num(saliency, nan=0.0, posinf=0.0).clamp_min(0).reshape(T, -1)
    inside = (pos * masks.reshape(T, -1).float()).sum(1)
    total = pos.sum(1)
    return torch.where(reason == DEFINED, inside / torch.where(total > 0, total, 1.0), torch.nan)


def region_share(masks: torch.Tensor) -> torch.Tensor:
    """float64 [T]: each region's share of the image's pixels (bool masks [T, H, W]) - the energy pointing game of
    a uniform map, i.e. its chance level: report it beside EPG."""
    masks = torch.as_tensor(masks).bool()
    return masks.reshape(masks.shape[0], -1).double().mean(1)


def box_masks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """xyxy boxes [T, 4] (pixel edges) -> bool masks [T, H, W] of the pixels whose centres fall inside."""
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    ys = torch.arange(height, dtype=torch.float32).view(1, -1, 1) + 0.5
    xs = torch.arange(width, dtype=torch.float32).view(1, 1, -1) + 0.5
    b = boxes.view(-1, 4, 1, 1)
    return (ys >= b[:, 1]) & (ys < b[:, 3]) & (xs >= b[:, 0]) & (xs < b[:, 2])


def relative_error(estimate: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """||estimate - exact||_2 / ||exact||_2 per target ([T, M] -> [T] float64); NaN where the exact values are all
    zero (no scale to be relative to) or either side has a NaN."""
    estimate, exact = torch.as_tensor(estimate, dtype=torch.float64), torch.as_tensor(exact, dtype=torch.float64)
    norm = exact.norm(dim=-1)
    return torch.where(norm > 0, (estimate - exact).norm(dim=-1) / torch.where(norm > 0, norm, 1.0), torch.nan)


# ---------------------------------------------------------------------------------------------------- agreement
def relevance_reason(a, b) -> str | None:
    """Why two relevance vectors over the same regions cannot be compared: 'nonfinite_relevance' (a NaN / inf
    value), 'constant_relevance' (either ranks no region above another); None when they can. Raises ValueError
    when their lengths differ."""
    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"relevance vectors differ in length: {len(a)} vs {len(b)}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return "nonfinite_relevance"
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return "constant_relevance"
    return None


def _ranks(x: np.ndarray) -> np.ndarray:
    """0-based ranks, ties given their mean rank."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    start = np.cumsum(counts) - counts
    return (start + (counts - 1) / 2)[inverse]


def spearman(a, b) -> float:
    """Spearman rank correlation of two relevance vectors [R] over the same regions (ties: mean ranks); NaN when
    undefined (:func:`relevance_reason`)."""
    if relevance_reason(a, b) is not None:
        return float("nan")
    return float(np.corrcoef(_ranks(np.asarray(a, float)), _ranks(np.asarray(b, float)))[0, 1])


def top_match(a, b) -> float:
    """1.0 when two relevance vectors [R] name the same most relevant region, else 0.0; NaN when undefined
    (:func:`relevance_reason`). Ties as in the pointing game: a match if any region maximal in ``a`` is maximal
    in ``b``."""
    if relevance_reason(a, b) is not None:
        return float("nan")
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(((a == a.max()) & (b == b.max())).any())


def downsample(saliency: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Saliency [T, H, W] area-averaged to a fixed grid (how the pipeline stores it)."""
    return F.adaptive_avg_pool2d(saliency[:, None].float(), size)[:, 0]
