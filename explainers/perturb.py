"""Perturbations: what hidden content is replaced with. A perturbation gives a baseline image; masks in [0, 1]
blend image and baseline (1 keeps the pixel), so continuous coalition values are partial visibility."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


class Perturbation:
    """What hidden content becomes: ``baseline(image [3, H, W]) -> [3, H, W]`` in the image's units (the model's
    input values); masks in [0, 1] blend image and baseline. ``describe()`` names it in every Explanation's options.
    Subclasses: :class:`Blur`, :class:`Mean`, :class:`Constant`, :class:`Noise` (``make_perturbation`` by name)."""

    name = "perturbation"

    def baseline(self, image: torch.Tensor) -> torch.Tensor:
        """The fully hidden version of ``image`` [3, H, W]."""
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


@dataclass
class Blur(Perturbation):
    """Gaussian blur, separable, replicate padding: ``sigma`` and ``kernel`` in pixels (RISE's insertion substrate,
    kernel 11, sigma 5: Petsiuk et al. 2018, https://arxiv.org/abs/1806.07421)."""

    sigma: float = 5.0
    kernel: int = 11
    name = "blur"

    def baseline(self, image: torch.Tensor) -> torch.Tensor:
        x = torch.arange(self.kernel, device=image.device, dtype=image.dtype) - (self.kernel - 1) / 2
        k = torch.exp(-x ** 2 / (2 * self.sigma ** 2))
        k = (k / k.sum()).view(1, 1, 1, -1).expand(3, 1, 1, -1)
        pad = self.kernel // 2
        out = F.conv2d(F.pad(image[None], (pad, pad, 0, 0), mode="replicate"), k, groups=3)
        out = F.conv2d(F.pad(out, (0, 0, pad, pad), mode="replicate"), k.transpose(-1, -2), groups=3)
        return out[0]

    def describe(self) -> str:
        return f"blur(sigma={self.sigma},kernel={self.kernel})"


@dataclass
class Mean(Perturbation):
    """The image's per-channel mean colour (LIME's and RISE's deletion substrate)."""

    name = "mean"

    def baseline(self, image: torch.Tensor) -> torch.Tensor:
        return image.mean((1, 2), keepdim=True).expand_as(image).clone()


@dataclass
class Constant(Perturbation):
    """A fixed value, e.g. 0 (black) or a dataset mean per channel."""

    value: tuple[float, float, float] | float = 0.0
    name = "constant"

    def baseline(self, image: torch.Tensor) -> torch.Tensor:
        v = torch.as_tensor(self.value, dtype=image.dtype, device=image.device).reshape(-1, 1, 1)
        return v.expand_as(image).clone()

    def describe(self) -> str:
        return f"constant({self.value})"


@dataclass
class Noise(Perturbation):
    """Gaussian noise around the image mean, fixed by its own seed so that every coalition sees the same noise."""

    std: float = 0.2
    seed: int = 0
    name = "noise"

    def baseline(self, image: torch.Tensor) -> torch.Tensor:
        g = torch.Generator(device=image.device).manual_seed(self.seed)
        noise = torch.randn(image.shape, generator=g, device=image.device, dtype=image.dtype)
        scale = self.std * (image.max() - image.min()).clamp_min(1e-6)
        return image.mean((1, 2), keepdim=True) + scale * noise

    def describe(self) -> str:
        return f"noise(std={self.std},seed={self.seed})"


PERTURBATIONS = {"blur": Blur, "mean": Mean, "constant": Constant, "noise": Noise}


def make_perturbation(spec: str | Perturbation) -> Perturbation:
    """A perturbation by name (with its defaults) or as given. Raises ValueError for an unknown name."""
    if isinstance(spec, Perturbation):
        return spec
    if spec not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {spec!r}; expected one of {sorted(PERTURBATIONS)} or a Perturbation")
    return PERTURBATIONS[spec]()


class ChunkBuffer:
    """One tensor reused chunk after chunk (grown when a chunk is larger) instead of a fresh one per chunk: no
    allocating, and on the CPU no page-faulting, of a full batch every time. A view is valid until the next call."""

    def __init__(self, *shape: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        self.shape, self.dtype, self.device = shape, dtype, device
        self._tensor: torch.Tensor | None = None

    def __call__(self, n: int) -> torch.Tensor:
        """A [n, *shape] view of the buffer (contents undefined)."""
        if self._tensor is None or self._tensor.shape[0] < n:
            self._tensor = torch.empty((n, *self.shape), dtype=self.dtype, device=self.device)
        return self._tensor[:n]


class Compositor:
    """Images [N, 3, H, W] = baseline + masks [N, H, W] * (image - baseline), for chunk after chunk of one image: the
    difference image is computed once, and chunks are written into one reused buffer instead of a fresh tensor each
    (15 MB per 16 images at 320x240: 0.96 -> 0.74 ms a chunk on the 2-core CPU). The returned batch is valid until
    the next call: score it before calling again."""

    def __init__(self, image: torch.Tensor, baseline: torch.Tensor):
        self.image = image.unsqueeze(0)
        self.baseline = baseline.unsqueeze(0)
        self.diff = (image - baseline).unsqueeze(0)
        self.buffer = ChunkBuffer(*image.shape, dtype=image.dtype, device=image.device)

    def __call__(self, masks: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.baseline, masks.unsqueeze(1), self.diff, out=self.buffer(masks.shape[0]))

    def hide(self, masks: torch.Tensor, *, image_first: bool = False) -> torch.Tensor:
        """Images with ``masks`` [N, H, W] *hidden* (the composites of 1 - masks) = image - masks * (image - baseline):
        one pass, without forming 1 - masks. ``image_first``: the image itself leads the batch (N + 1 images)."""
        lead = int(image_first)
        out = self.buffer(masks.shape[0] + lead)
        if image_first:
            out[0] = self.image[0]
        torch.addcmul(self.image, masks.unsqueeze(1), self.diff, value=-1, out=out[lead:])
        return out
