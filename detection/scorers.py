"""Scorers: the black box every explainer queries, ``scorer(images [B, 3, H, W]) -> scores [B, T]``.

T targets are fixed when the scorer is built: classes of a classifier (their probabilities), or reference
detections of a detector (D-RISE similarity to the best-matching candidate on each perturbed image). Images are
pushed through the model in fixed-size chunks; everything else is vectorised over images × targets × candidates.

On CUDA the adapters run in float16 autocast; the first call compares it with float32 on the first chunk and
falls back to float32 (with a warning) if any score moves by more than ``amp_tolerance``.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F

from detection.models.base import Candidates, Detections, box_iou
from detection.scorers_grad import cam_layers, classifier_logits, detector_candidates, gradients_unavailable

DEFAULT_AMP_TOLERANCE = 1e-2


class Scorer(Protocol):
    num_targets: int
    device: torch.device

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


class _ChunkedScorer:
    """Fixed-size chunks through ``_score_chunk``, with the one-time mixed-precision check."""

    def __init__(self, model, chunk_size: int | None, amp_tolerance: float):
        self.model = model
        self.device = model.device
        self.chunk_size = chunk_size or getattr(model, "batch_size", 32)
        self.amp_tolerance = amp_tolerance
        self._amp_checked = not getattr(model, "amp", False)

    def _score_chunk(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _check_amp(self, chunk: torch.Tensor) -> None:
        self._amp_checked = True
        with_amp = self._score_chunk(chunk)
        self.model.amp = False
        exact = self._score_chunk(chunk)
        drift = (with_amp - exact).abs().max()
        if drift <= self.amp_tolerance:
            self.model.amp = True
        else:
            warnings.warn(f"mixed precision changes scores by {float(drift):.3g} > {self.amp_tolerance}: "
                          f"scoring in float32", stacklevel=3)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"scorer expects images [B, 3, H, W], got {tuple(images.shape)}")
        if not self._amp_checked:
            self._check_amp(images[:self.chunk_size])
        return torch.cat([self._score_chunk(images[s:s + self.chunk_size])
                          for s in range(0, images.shape[0], self.chunk_size)])


class ClassifierScorer(_ChunkedScorer):
    """Probability of each target class (softmax or sigmoid, as the classifier defines)."""

    def __init__(self, classifier, targets: Sequence[int] | None = None, *, chunk_size: int | None = None,
                 amp_tolerance: float = DEFAULT_AMP_TOLERANCE):
        super().__init__(classifier, chunk_size, amp_tolerance)
        targets = range(classifier.num_classes) if targets is None else targets
        self.targets = torch.as_tensor(list(targets), dtype=torch.long, device=self.device)
        self.num_targets = len(self.targets)

    def _score_chunk(self, images: torch.Tensor) -> torch.Tensor:
        z = self.model.logits(images)
        probs = torch.sigmoid(z) if self.model.multi_label else torch.softmax(z, -1)
        return probs[:, self.targets]

    # the differentiable path (white-box explainers; detection.scorers_grad): same scores, autograd graph kept
    def gradients_unavailable(self) -> str | None:
        """Why the classifier has no gradients (a black box), or None."""
        return gradients_unavailable(self.model)

    def differentiable(self, images: torch.Tensor, network: torch.nn.Module | None = None) -> torch.Tensor:
        """Scores [B, T] as ``__call__`` (float32, one pass) with the autograd graph; ``network``: the eager copy
        :meth:`cam_layers` returned. Raises NoGradientsError (a ValueError) for a black box."""
        z = classifier_logits(self.model, images, network)
        probs = torch.sigmoid(z) if self.model.multi_label else torch.softmax(z, -1)
        return probs[:, self.targets]

    def cam_layers(self, height: int, width: int, layer: str | None = None):
        """Grad-CAM's (layers, network, to_image) for [H, W] images (:func:`detection.scorers_grad.cam_layers`)."""
        return cam_layers(self.model, height, width, layer, classifier=True)


def drise_similarities(target_boxes: torch.Tensor, target_probs: torch.Tensor, cand: Candidates) -> torch.Tensor:
    """D-RISE's similarity of every target to every candidate, ``IoU(box_t, box_k) · objectness_k · cos(p_t, p_k)``
    (0 for an invalid candidate) -> [B, T, K]."""
    iou = box_iou(target_boxes.unsqueeze(0), cand.boxes)                          # [B, T, K]
    cos = torch.einsum("tc,bkc->btk", F.normalize(target_probs, dim=-1), F.normalize(cand.class_probs, dim=-1))
    return iou * cos * (cand.objectness * cand.valid).unsqueeze(1)


def drise_similarity(target_boxes: torch.Tensor, target_probs: torch.Tensor, cand: Candidates) -> torch.Tensor:
    """D-RISE: ``max_k IoU(box_t, box_k) · objectness_k · cos(p_t, p_k)`` for every image and target -> [B, T]."""
    sim = drise_similarities(target_boxes, target_probs, cand)
    return sim.amax(-1) if sim.shape[-1] else sim.new_zeros(sim.shape[:2])


class DRiseScorer(_ChunkedScorer):
    """D-RISE similarity of fixed reference detections to each perturbed image's candidates."""

    def __init__(self, detector, target_boxes: torch.Tensor, target_probs: torch.Tensor, *,
                 chunk_size: int | None = None, amp_tolerance: float = DEFAULT_AMP_TOLERANCE):
        super().__init__(detector, chunk_size, amp_tolerance)
        self.target_boxes = torch.as_tensor(target_boxes, dtype=torch.float32, device=self.device).reshape(-1, 4)
        self.target_probs = torch.as_tensor(target_probs, dtype=torch.float32, device=self.device)
        if self.target_probs.shape != (self.target_boxes.shape[0], detector.num_classes):
            raise ValueError(f"target_probs must be [T={self.target_boxes.shape[0]}, C={detector.num_classes}], "
                             f"got {tuple(self.target_probs.shape)}")
        self.num_targets = self.target_boxes.shape[0]

    @classmethod
    def for_detections(cls, detector, detections: Detections, index: Sequence[int] | None = None,
                       **kw) -> DRiseScorer:
        """Targets = (a subset of) one image's final detections, with their full class vectors."""
        idx = slice(None) if index is None else torch.as_tensor(list(index), dtype=torch.long)
        probs = detections.class_probs
        if probs is None:
            probs = F.one_hot(detections.labels, detector.num_classes).float() * detections.scores[:, None]
        return cls(detector, detections.boxes[idx], probs[idx], **kw)

    def _score_chunk(self, images: torch.Tensor) -> torch.Tensor:
        return drise_similarity(self.target_boxes, self.target_probs, self.model.candidates(images))

    def similarities(self, cand: Candidates) -> torch.Tensor:
        """Every target's D-RISE similarity to every candidate [B, T, K] (its max over K is the score)."""
        return drise_similarities(self.target_boxes, self.target_probs, cand)

    # the differentiable path (white-box explainers; detection.scorers_grad): same scores, autograd graph kept
    def gradients_unavailable(self) -> str | None:
        """Why the detector has no gradients (a black box: CallableDetector, ONNX), or None."""
        return gradients_unavailable(self.model)

    def differentiable(self, images: torch.Tensor, network: torch.nn.Module | None = None) -> torch.Tensor:
        """D-RISE similarity [B, T] as ``__call__`` (float32, one pass) with the autograd graph (the max over
        candidates passes the gradient of the best match). Raises NoGradientsError (a ValueError) for a black box."""
        return drise_similarity(self.target_boxes, self.target_probs, detector_candidates(self.model, images))

    def cam_layers(self, height: int, width: int, layer: str | None = None):
        """Grad-CAM's (layers, network, to_image) for [H, W] images (:func:`detection.scorers_grad.cam_layers`)."""
        return cam_layers(self.model, height, width, layer)
