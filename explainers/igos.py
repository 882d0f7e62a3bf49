"""iGOS++ (Khorram, Lawson & Fuxin, "iGOS++: Integrated Gradient Optimized Saliency by Bilateral Perturbations",
CHIL 2021, https://arxiv.org/abs/2012.15783; detection variant: Nesterov steps, few iterations and IG steps, BMVC
2023), batched and CPU-first: every target's deletion and insertion terms, at every integration step, go through the
model in one stream of chunks and one backward pass per chunk (the reference code, khorrams/IGOS_pp, runs one image
at a time on CUDA).

Two low-resolution masks per target (1 = keep the image), a deletion mask M_d and an insertion mask M_i, upsampled
bilinearly to the image. With ``del(M)`` = the mean score along the straight path from the baseline to the image
masked by M, φ(x, b, α·M) for α = 1/K .. 1 (K ``ig_steps``; Gaussian noise of σ ``noise`` on every point), and
``ins(M)`` = the same along φ(b, x, α·M) (the baseline shown where M = 1), the loss is

    ½ [del(M_d) − ins(M_i) + del(M_d⊙M_i) − ins(M_d⊙M_i)] + L1·mean|1 − M_d⊙M_i| + L2·BTV(M_d⊙M_i)

(the reference's sums of per-term integrated gradients, halved, are exactly this loss's gradient), BTV the bilateral
total variation (the mask's own TV plus its TV in pixels weighted by exp(−Δimage² / σ), i.e. smaller across image
edges; ``tv_sigma``). Each iteration takes one Nesterov step (the reference's ``NAG``: θ = M − α·∇, M = θ + i/(i+3)
(θ − θ_prev), clamped to [0, 1]); the reference's line search (``LS``) costs extra forwards and is not implemented.

Saliency [T, H, W] = 1 − M_d⊙M_i upsampled, in [0, 1] (1: the pixel must stay for the score to stay). Cost in
forward-equivalents (a backward = 2 forwards): 3 · 4 · K · T per iteration; the detection setting (5 iterations ×
5 steps) spends 300 per target, the classification setting (20 × 20) 4,800. A ``budget`` sets the iterations
(budget // (12 K T)); below one iteration, one iteration of fewer IG steps (:meth:`IGosPP.schedule`).

Units: the reference works on ImageNet-normalised inputs (std ≈ 0.225); here images are the model's [0, 1] pixels,
so its noise σ 0.2 becomes ``noise`` 0.045 and its bilateral σ 0.01 (on squared differences) ``tv_sigma`` 0.0005.
Its baseline, a blur with kernel 51 and σ 50 at 224 px, is ``Blur(sigma=50, kernel=51)`` here by default.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from explainers.base import BudgetError
from explainers.gradients import GradientExplainer
from explainers.perturb import Blur

# the reference README's NAG command lines: detection (Mask R-CNN at 800 px: mask 100 cells, i.e. 8 px a cell, L1
# 0.1, L2 20, 5 IG steps, 5 iterations, alpha 10); classification (VGG-19 at 224: L1 10, L2 20, 20 IG steps, 20
# iterations, alpha 1000, a 224 x 224 mask of 1-px cells). Here both use 8-px cells (the papers' 28 x 28 mask at
# 224); a cell of 64 px gathers 64 times a 1-px cell's gradient, so the classification step is 1000 / 64.
# ``cells``: the mask size the weights were set for. The regularisers are means over cells, so on a grid of fewer
# cells each cell's share (and the gradient a step moves it by) grows: they are scaled by cells / reference cells.
SETTINGS = {"detection": {"iterations": 5, "ig_steps": 5, "l1": 0.1, "l2": 20.0, "step": 10.0, "cells": 100 * 100},
            "classification": {"iterations": 20, "ig_steps": 20, "l1": 10.0, "l2": 20.0, "step": 1000.0 / 64,
                               "cells": 224 * 224}}
CELL = 8                 # default mask cell, pixels


def upscale(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Low-resolution masks [..., s, s] -> [..., H, W], bilinear with aligned corners (the reference's
    ``UpsamplingBilinear2d``)."""
    lead = masks.shape[:-2]
    up = F.interpolate(masks.reshape(-1, 1, *masks.shape[-2:]), size=size, mode="bilinear", align_corners=True)
    return up.reshape(*lead, *size)


def bilateral_tv(image: torch.Tensor, masks: torch.Tensor, up: torch.Tensor, beta: float = 2.0,
                 sigma: float = 0.0005) -> torch.Tensor:
    """Bilateral total variation [T] of masks [T, s, s] (upsampled ``up`` [T, H, W]) on ``image`` [3, H, W]:
    ½ (TV(mask) + Σ_pixels exp(−Δimage² / σ)·|Δup|^β), means over neighbour pairs, as the reference's
    ``bilateral_tv_norm``."""
    a = (masks[:, :-1, :] - masks[:, 1:, :]).abs().pow(beta).flatten(1).mean(1)
    b = (masks[:, :, :-1] - masks[:, :, 1:]).abs().pow(beta).flatten(1).mean(1)
    wy = torch.exp(-(image[:, :-1, :] - image[:, 1:, :]).mean(0) ** 2 / sigma)
    wx = torch.exp(-((image[:, :, :-1] - image[:, :, 1:]) ** 2) / sigma).mean(0)
    bil_a = (wy * (up[:, :-1, :] - up[:, 1:, :]).abs().pow(beta)).flatten(1).mean(1)
    bil_b = (wx * (up[:, :, :-1] - up[:, :, 1:]).abs().pow(beta)).flatten(1).mean(1)
    return 0.5 * (a + b + bil_a + bil_b)


class IGosPP(GradientExplainer):
    """iGOS++ (see the module docstring). ``setting``: ``detection`` (5 iterations × 5 IG steps, ≈ 300
    forward-equivalents per target; L1 0.1, L2 20, step 10), ``classification`` (20 × 20; L1 10, L2 20, step
    1000 / 64), or ``auto`` (detection for a detection scorer, one with ``target_boxes``); the other options override
    the setting's values (None: the setting's). ``size``: mask cells along the longer side (the shorter in
    proportion; None: cells of 8 px); ``l1`` / ``l2``: the area and bilateral-TV weights; ``step``: the Nesterov step α;
    ``noise``, ``tv_sigma``: see the units note. Returns saliency [T, H, W] in [0, 1]; with regions, relevance =
    the mean saliency in each. Raises BudgetError when the budget buys no iteration, ValueError for a bad option,
    NeedsGradientsError for a black box."""

    name = "igos_pp"

    def __init__(self, scorer, *, setting: str = "auto", iterations: int | None = None, ig_steps: int | None = None,
                 size: int | None = None, l1: float | None = None, l2: float | None = None,
                 step: float | None = None, noise: float = 0.045, tv_sigma: float = 0.0005, perturbation=None, **kw):
        super().__init__(scorer, perturbation=Blur(sigma=50.0, kernel=51) if perturbation is None else perturbation,
                         **kw)
        if setting not in ("auto", *SETTINGS):
            raise ValueError(f"igos_pp: setting must be 'auto', 'detection' or 'classification', got {setting!r}")
        for key, value in (("iterations", iterations), ("ig_steps", ig_steps), ("size", size)):
            if value is not None and value < 1:
                raise ValueError(f"igos_pp: {key} must be >= 1, got {value}")
        if min(l1 or 0, l2 or 0, noise) < 0 or (step is not None and step <= 0) or tv_sigma <= 0:
            raise ValueError(f"igos_pp: l1, l2, noise must be >= 0 and step, tv_sigma > 0 (got l1 {l1}, l2 {l2}, "
                             f"noise {noise}, step {step}, tv_sigma {tv_sigma})")
        if setting == "auto":
            setting = "detection" if hasattr(scorer, "target_boxes") else "classification"
        d = SETTINGS[setting]
        self.setting = setting
        self.iterations = int(iterations or d["iterations"])
        self.ig_steps = int(ig_steps or d["ig_steps"])
        self.size = size                                                  # None: cells of CELL pixels
        self.l1 = float(d["l1"] if l1 is None else l1)
        self.l2 = float(d["l2"] if l2 is None else l2)
        self.step = float(d["step"] if step is None else step)
        self.noise, self.tv_sigma = float(noise), float(tv_sigma)

    def options(self):
        return {**super().options(), "setting": self.setting, "iterations": self.iterations,
                "ig_steps": self.ig_steps, "size": self.size, "l1": self.l1, "l2": self.l2, "step": self.step,
                "noise": self.noise, "tv_sigma": self.tv_sigma}

    def min_budget(self, num_regions, num_targets):
        return 12 * (num_targets or 1), "one iteration of one IG step: 4 terms per target, forward + backward"

    def schedule(self, budget: int | None, targets: int) -> tuple[int, int]:
        """(iterations, IG steps) for a budget: the setting's steps and as many iterations as it buys; a budget
        below one full iteration buys one iteration of as many steps as it can. Raises BudgetError below 12 T."""
        if budget is None:
            return self.iterations, self.ig_steps
        iterations = budget // (12 * self.ig_steps * targets)
        if iterations >= 1:
            return iterations, self.ig_steps
        if budget < 12 * targets:
            raise BudgetError(f"{self.name} with {targets} targets needs at least {12 * targets} forwards (one "
                              f"iteration of one IG step), got budget {budget}")
        return 1, budget // (12 * targets)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Mask cells (rows, cols) for an image: ``size`` along the longer side, or cells of the setting's pixels."""
        if self.size is None:
            return max(2, -(-height // CELL)), max(2, -(-width // CELL))
        longer = max(height, width)
        return max(2, round(self.size * height / longer)), max(2, round(self.size * width / longer))

    def _saliency(self, image, budget, generator):
        T = self._num_targets(image)
        iterations, K = self.schedule(budget, T)
        H, W = image.shape[-2:]
        baseline = self.perturbation.baseline(image)
        diff = image - baseline
        masks = torch.ones(T, 2, *self.grid(H, W), device=image.device)           # [T, (deletion, insertion)]
        theta_prev = torch.zeros_like(masks)
        for i in range(iterations):
            masks.requires_grad_(True)
            grad = self._gradient(image, baseline, diff, masks, K, (H, W), generator)
            with torch.no_grad():
                e = i / (i + 3)
                theta = masks - self.step * grad
                masks = (theta + e * (theta - theta_prev)).clamp(0, 1)
                theta_prev = theta
        final = upscale(masks[:, 0] * masks[:, 1], (H, W))
        return (1 - final).detach()

    def _gradient(self, image, baseline, diff, masks, K, size, generator) -> torch.Tensor:
        """∂loss/∂masks [T, 2, s, s]: the four path terms of every target in chunks (a backward per chunk), then the
        regularisers."""
        T = masks.shape[0]
        both = masks[:, 0] * masks[:, 1]
        up = upscale(torch.stack([masks[:, 0], masks[:, 1], both, both], 1), size)     # [T, 4, H, W]
        alphas = torch.arange(1, K + 1, device=image.device, dtype=image.dtype) / K
        # term j: deletion (start at the baseline, add α·M·diff) for j = 0, 2; insertion (start at the image,
        # subtract α·M·diff) for j = 1, 3; each term's scores enter the loss with weight ±1 / (2K)
        sign = torch.tensor([1.0, -1.0, 1.0, -1.0], device=image.device)
        n = T * 4 * K
        t_idx = torch.arange(T, device=image.device).repeat_interleave(4 * K)
        j_idx = torch.arange(4, device=image.device).repeat_interleave(K).repeat(T)
        a_idx = alphas.repeat(4 * T)
        noise = torch.randn(n, *image.shape, generator=generator, device=image.device) * self.noise
        loss_weight = sign / (2 * K)
        for s in range(0, n, self.chunk_size):
            sl = slice(s, s + self.chunk_size)
            t, j, a = t_idx[sl], j_idx[sl], a_idx[sl]
            m = up[t, j] * a.view(-1, 1, 1)                                            # [n, H, W]
            start = torch.where((j % 2 == 0).view(-1, 1, 1, 1), baseline, image)
            x = start + sign[j].view(-1, 1, 1, 1) * m.unsqueeze(1) * diff + noise[sl]
            scores = self.forward(x)                                                    # [n, T]
            own = scores.gather(1, t.view(-1, 1))[:, 0]
            torch.autograd.backward((own * loss_weight[j]).sum(), retain_graph=True)
        area = (1 - both).abs().flatten(1).mean(1)
        reg = self.l1 * area + self.l2 * bilateral_tv(image, both, up[:, 2], sigma=self.tv_sigma)
        (reg.sum() * both[0].numel() / SETTINGS[self.setting]["cells"]).backward()
        return masks.grad.detach()


__all__ = ["IGosPP", "bilateral_tv", "upscale"]
