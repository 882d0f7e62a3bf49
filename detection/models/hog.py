"""OpenCV's HOG people detector (Dalal & Triggs 2005) as a black-box detector: the worked example of auditing a model
that is not PyTorch, through ``kind: callable`` in params.yaml::

    infer:
      detectors:
        - {id: hog, kind: callable, entrypoint: "detection.models.hog:people_detector", conf: 0.5,
           kwargs: {win_stride: [8, 8], padding: [32, 32], scale: 1.05, max_side: 640}}

The detector is ``cv2.HOGDescriptor()`` (64x128 window) with ``cv2.HOGDescriptor_getDefaultPeopleDetector()``, the
linear SVM OpenCV ships (trained on INRIA Person: upright, whole, roughly 100-400 px tall pedestrians), run by
``HOGDescriptor.detectMultiScale`` with OpenCV's own grouping of overlapping windows
(https://docs.opencv.org/4.x/d5/d33/structcv_1_1HOGDescriptor.html). It finds upright full-body people; it does not
find upper bodies (``zidane.jpg``), sitting or strongly truncated people.

**Scores.** ``detectMultiScale`` returns, per grouped box, the largest SVM margin w·x + b of the windows it merged
into the box (OpenCV's ``HOGDescriptor::groupRectangles``; checked: the grouped weight equals the maximum of the
ungrouped windows' weights). A margin is unbounded and uncalibrated, so it is squashed by a logistic with a stated
centre and scale: ``score = 1 / (1 + exp(-(margin - score_center) / score_scale))`` (defaults 0.5 and 0.25:
margin 0 -> 0.12, 0.5 -> 0.50, 1.0 -> 0.88, 1.5 -> 0.98). The map is strictly increasing, so the ranking of
detections, AP and every threshold on the margin carry over unchanged; the value is *not* a probability.

**A black box for D-RISE.** The detector's candidates (what ``DRiseScorer`` compares a reference box with on each
masked image) are its post-grouping outputs (:class:`detection.models.blackbox.CallableDetector`): OpenCV hides the
window-level scores behind its grouping. A masked image whose windows no longer reach ``hit_threshold`` or the
grouping's minimum count gives *no* candidate, so the D-RISE score of a target jumps to 0 instead of falling
smoothly: saliency from few masks is noisy and partly all-zero (``constant_saliency`` in the evaluation). Region
methods on body parts (Shapley values, occlusion) are affected the same way; more forwards, or
``group_threshold: 0`` (every window a candidate, no grouping), make the scores vary more smoothly.

Input: the ``[B, H, W, 3]`` uint8 RGB batch a numpy ``CallableDetector`` passes. HOG takes, per pixel, the gradient of
the channel with the largest magnitude, so RGB and BGR give the same detections.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from detection.models.blackbox import CallableDetector

CLASS_NAMES = ("person",)


def _pair(name: str, value: int | Sequence[int]) -> tuple[int, int]:
    """(x, y) of an int or a 2-sequence of ints (YAML gives lists); raises ValueError naming the argument."""
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 0 for v in pair):
        raise ValueError(f"{name} must be a non-negative int or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def margin_to_score(margin: np.ndarray, center: float = 0.5, scale: float = 0.25) -> np.ndarray:
    """SVM margins (any shape) -> scores in (0, 1): ``1 / (1 + exp(-(margin - center) / scale))``, strictly
    increasing in the margin. Raises ValueError for a scale that is not > 0."""
    if not scale > 0:
        raise ValueError(f"score_scale must be > 0, got {scale!r}")
    z = (np.asarray(margin, np.float64) - center) / scale
    return 0.5 * (1.0 + np.tanh(0.5 * z))          # the logistic, without overflow for large |z|


class HogPeople:
    """``fn(images uint8 [B, H, W, 3]) -> [{"boxes" [N, 4] xyxy px, "scores" [N], "labels" [N], "margins" [N]}]``:
    ``detectMultiScale`` on each image (after an optional downscale to ``max_side``), boxes in the input's pixels,
    clipped to the image (OpenCV's ``padding`` lets a window extend past the border), highest margin first."""

    def __init__(self, win_stride=(8, 8), padding=(32, 32), scale: float = 1.05, hit_threshold: float = 0.0,
                 group_threshold: int = 2, max_side: int | None = None, score_center: float = 0.5,
                 score_scale: float = 0.25):
        self.win_stride, self.padding = _pair("win_stride", win_stride), _pair("padding", padding)
        if min(self.win_stride) == 0:
            raise ValueError(f"win_stride must be positive, got {win_stride!r}")
        if not scale > 1.0:
            raise ValueError(f"scale (pyramid step) must be > 1, got {scale!r}")
        if not (isinstance(group_threshold, (int, np.integer)) and group_threshold >= 0):
            raise ValueError(f"group_threshold must be an int >= 0, got {group_threshold!r}")
        if max_side is not None and not (isinstance(max_side, (int, np.integer)) and max_side >= 128):
            raise ValueError(f"max_side must be null or an int >= 128 (the HOG window's height), got {max_side!r}")
        margin_to_score(np.zeros(1), score_center, score_scale)       # checks score_scale
        self.scale, self.hit_threshold = float(scale), float(hit_threshold)
        self.group_threshold, self.max_side = int(group_threshold), max_side
        self.score_center, self.score_scale = float(score_center), float(score_scale)
        self.hog = cv2.HOGDescriptor()
        self.hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())

    def detect_one(self, image: np.ndarray) -> dict:
        """One ``[H, W, 3]`` uint8 image -> its detections (see the class docstring)."""
        H, W = image.shape[:2]
        factor = 1.0 if self.max_side is None else min(1.0, self.max_side / max(H, W))
        small = image if factor == 1.0 else cv2.resize(
            image, (max(1, round(W * factor)), max(1, round(H * factor))), interpolation=cv2.INTER_AREA)
        rects, weights = self.hog.detectMultiScale(
            np.ascontiguousarray(small), hitThreshold=self.hit_threshold, winStride=self.win_stride,
            padding=self.padding, scale=self.scale, groupThreshold=self.group_threshold)
        xywh = np.asarray(rects, np.float64).reshape(-1, 4) / factor
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
        boxes = np.clip(boxes, 0, [W, H, W, H]).astype(np.float32)
        margins = np.asarray(weights, np.float64).reshape(-1)
        # OpenCV's parallel window scan returns the grouped boxes in a run-dependent order: sort them (margin
        # descending, then the box) so that detection ids are reproducible
        order = np.lexsort((*boxes.T[::-1], -margins))
        order = order[(boxes[order, 2] > boxes[order, 0]) & (boxes[order, 3] > boxes[order, 1])]
        scores = margin_to_score(margins, self.score_center, self.score_scale).astype(np.float32)
        return {"boxes": boxes[order], "scores": scores[order], "labels": np.zeros(len(order), np.int64),
                "margins": margins[order]}

    def __call__(self, images: np.ndarray) -> list[dict]:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"HOG people detector: expected uint8 images [B, H, W, 3], got {images.dtype} "
                             f"{list(images.shape)}")
        return [self.detect_one(im) for im in images]


def people_detector(win_stride=(8, 8), padding=(32, 32), scale: float = 1.05, hit_threshold: float = 0.0,
                    group_threshold: int = 2, max_side: int | None = None, score_center: float = 0.5,
                    score_scale: float = 0.25, batch_size: int = 16) -> CallableDetector:
    """OpenCV's HOG + linear SVM people detector as a :class:`CallableDetector` (class ``person``, numpy input);
    the ``kind: callable`` factory ``detection.models.hog:people_detector``.

    Args (``kwargs`` of the spec): ``win_stride`` (px), ``padding`` (px around the image the windows
    may reach into), ``scale`` (> 1, the pyramid step), ``hit_threshold`` (minimum SVM margin of a window),
    ``group_threshold`` (OpenCV's grouping: a box needs more than this many overlapping windows; 0: no grouping) -
    those of ``cv2.HOGDescriptor.detectMultiScale``; ``max_side`` (downscale images whose longer side exceeds it
    before detection, for speed; boxes are mapped back; null: full size); ``score_center`` / ``score_scale``: the
    logistic turning the margin into a score (module docstring); ``batch_size``: images per call.

    Raises ValueError for an argument OpenCV would reject or misread, naming it.
    """
    fn = HogPeople(win_stride, padding, scale, hit_threshold, group_threshold, max_side, score_center, score_scale)
    return CallableDetector(fn, CLASS_NAMES, input_format="numpy", batch_size=batch_size)


__all__ = ["HogPeople", "margin_to_score", "people_detector"]
