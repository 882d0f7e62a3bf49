"""Models for tests/test_single_parts.py, built through ``kind: callable``: a detector whose score is the brightness
of a small window where a standing person's head is (so the head is the part that matters), a pose model that places
the template's keypoints in the same box (with a chosen number of them confident), and a classifier."""
from __future__ import annotations

import torch

from detection.models.blackbox import CallableDetector
from detection.models.classifier import ImageClassifier
from detection.parts import Keypoints

H, W = 96, 64
BOX = [16.0, 8.0, 48.0, 88.0]           # the one person: 80 px tall; the template puts its head around (32, 13)
HEAD = (slice(10, 17), slice(29, 36))   # rows, cols of the window the detector looks at
DISC = (32, 13, 3)                      # the bright disc drawn there: centre x, y and radius (px)


def head_detector() -> CallableDetector:
    """One person detection in BOX per image, score 0.05 + 0.9 x the mean brightness of the HEAD window."""
    def fn(images: torch.Tensor) -> list[dict]:
        score = 0.05 + 0.9 * images[:, :, HEAD[0], HEAD[1]].mean((1, 2, 3))
        return [{"boxes": torch.tensor([BOX]), "scores": s[None], "labels": torch.zeros(1, dtype=torch.long)}
                for s in score]
    return CallableDetector(fn, ["person"])


def template_pose(confident: int = 17) -> CallableDetector:
    """A pose model finding the person in BOX with the template's keypoints; the first ``confident`` of them have
    confidence 0.9, the others 0.1."""
    kps = torch.tensor(Keypoints.template(BOX).xy, dtype=torch.float32)
    conf = torch.where(torch.arange(17) < confident, 0.9, 0.1)
    keypoints = torch.cat([kps, conf[:, None]], 1)[None]           # [1, 17, 3]

    def fn(images: torch.Tensor) -> list[dict]:
        return [{"boxes": torch.tensor([BOX]), "scores": torch.tensor([0.9]),
                 "labels": torch.zeros(1, dtype=torch.long), "keypoints": keypoints} for _ in images]
    return CallableDetector(fn, ["person"])


class _Mean(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean((1, 2, 3))
        return torch.stack([m, -m], -1)


def mean_classifier(device: str = "cpu") -> ImageClassifier:
    return ImageClassifier(_Mean(), ["bright", "dark"], mean=(0, 0, 0), std=(1, 1, 1), device=device)
