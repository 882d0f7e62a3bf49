"""Model quality against ground truth: detection AP (COCO-style, with ignore regions), recall by person size and
occlusion, keypoint PCK, and multi-label F1. Plain NumPy; one call per dataset."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SIZE_BUCKETS = {"tiny": (0, 32), "small": (32, 64), "medium": (64, 128), "large": (128, np.inf)}   # box height px
OCCLUSION_BUCKETS = {"none": (0.0, 0.1), "partial": (0.1, 0.5), "heavy": (0.5, 1.01)}
COCO_IOUS = np.round(np.arange(0.5, 0.96, 0.05), 2)
MATCH_IOU = 0.5          # a detection finds a GT box it overlaps this much (one-to-one: see match / found)


def _intersections(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(intersection areas [N, M], areas of a [N], areas of b [M]) of xyxy boxes a [N, 4] and b [M, 4]."""
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: np.clip(x[:, 2:] - x[:, :2], 0, None).prod(-1)  # noqa: E731
    return inter, area(a), area(b)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xyxy boxes a [N, 4] against b [M, 4] -> [N, M]."""
    inter, area_a, area_b = _intersections(a, b)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def ioa_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over the area of ``a``: xyxy boxes a [N, 4] against b [M, 4] -> [N, M]. How COCO (``iscrowd``
    regions, pycocotools' ``maskUtils.iou`` with ``iscrowd=1``) and the Caltech / CityPersons protocol measure a
    detection's overlap with an ignore region: a small box inside a large crowd region overlaps it fully."""
    inter, area_a, _ = _intersections(a, b)
    return inter / np.maximum(area_a[:, None], 1e-9)


@dataclass
class ImageEval:
    """One image: detections (boxes, scores) against ground truth (boxes, ignore flags, attributes)."""

    det_boxes: np.ndarray
    det_scores: np.ndarray
    gt_boxes: np.ndarray
    gt_ignore: np.ndarray = None          # GT that neither counts as missed nor makes its match a false positive
    gt_attrs: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self):
        self.det_boxes = np.asarray(self.det_boxes, float).reshape(-1, 4)
        self.det_scores = np.asarray(self.det_scores, float).reshape(-1)
        self.gt_boxes = np.asarray(self.gt_boxes, float).reshape(-1, 4)
        if self.gt_ignore is None:
            self.gt_ignore = np.zeros(len(self.gt_boxes), bool)


@dataclass
class Matching:
    """One-to-one matching of an image's detections to its ground truth (:func:`match`)."""

    det_gt: np.ndarray          # [D] int: the GT box each detection is matched to (an ignore region too); -1: none
    det_tp: np.ndarray          # [D] bool: matched to a real (not ignored) GT
    det_ignored: np.ndarray     # [D] bool: matched to an ignore region: neither a true nor a false positive
    gt_det: np.ndarray          # [G] int: the detection matched to each real GT; -1: none
    gt_score: np.ndarray        # [G] float: that detection's score; -inf: none

    def found(self, min_score: float) -> np.ndarray:
        """[G] bool, the one rule for a found / missed ground-truth box (infer's recall, explain's found
        pedestrians, hence the report): matched to a detection scoring >= ``min_score``. In a crowd one detection
        finds one person, however many it overlaps. Ignore regions are never found (nor missed)."""
        return self.gt_score >= min_score


def match(img: ImageEval, iou_thr: float = MATCH_IOU) -> Matching:
    """COCO's greedy matching: detections in order of score (ties: input order) each take the unmatched real GT
    they overlap most at IoU >= ``iou_thr``, else the ignore region they overlap most (which any number of
    detections may share; overlap with an ignore region is intersection over the detection's area, as COCO's
    ``iscrowd`` and Caltech / CityPersons' ignore regions). Every detection scoring at or above a threshold is
    matched before any below it, so detections under a threshold never change which GT the ones above it take."""
    order = np.argsort(-img.det_scores, kind="stable")
    boxes = img.det_boxes[order]
    ious = np.where(img.gt_ignore[None, :], ioa_matrix(boxes, img.gt_boxes), iou_matrix(boxes, img.gt_boxes))
    det_gt = np.full(len(order), -1)
    gt_det = np.full(len(img.gt_boxes), -1)
    taken = np.zeros(len(img.gt_boxes), bool)
    # Real GT first, then ignore regions: a detection only falls back to an ignore region if no real GT fits.
    for d in range(len(order)):
        for use_ignored in (False, True):
            cand = np.where((img.gt_ignore == use_ignored) & ~(taken & ~img.gt_ignore) & (ious[d] >= iou_thr))[0]
            if len(cand):
                best = cand[np.argmax(ious[d, cand])]
                det_gt[order[d]] = best
                if not img.gt_ignore[best]:
                    taken[best], gt_det[best] = True, order[d]
                break
    matched = det_gt >= 0
    ignored = np.zeros(len(order), bool)
    ignored[matched] = img.gt_ignore[det_gt[matched]]
    gt_score = np.full(len(img.gt_boxes), -np.inf)
    gt_score[gt_det >= 0] = img.det_scores[gt_det[gt_det >= 0]]
    return Matching(det_gt, matched & ~ignored, ignored, gt_det, gt_score)


def found(img: ImageEval, min_score: float, iou_thr: float = MATCH_IOU) -> np.ndarray:
    """[G] bool: :meth:`Matching.found` of :func:`match` - found when the one-to-one matching at ``iou_thr`` pairs
    the GT box with a detection scoring >= ``min_score``."""
    return match(img, iou_thr).found(min_score)


def _match(img: ImageEval, iou_thr: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(per detection tp and ignored flags, per GT the matched detection's score) of :func:`match`."""
    m = match(img, iou_thr)
    return m.det_tp, m.det_ignored, m.gt_score


def average_precision(images: list[ImageEval], iou_thr: float = 0.5) -> float:
    """Area under the interpolated precision-recall curve (COCO's 101-point rule) at one IoU threshold."""
    scores, tps = [], []
    n_gt = 0
    for img in images:
        tp, ignored, _ = _match(img, iou_thr)
        scores.append(img.det_scores[~ignored])
        tps.append(tp[~ignored])
        n_gt += int((~img.gt_ignore).sum())
    return ap_from_matches(np.concatenate(scores), np.concatenate(tps), n_gt)


def ap_from_matches(scores: np.ndarray, tps: np.ndarray, n_gt: int) -> float:
    """:func:`average_precision` from the matching's result: the scores [D] and true-positive flags [D] of the
    non-ignored detections and the non-ignored GT count (NaN without GT, 0 without detections)."""
    if n_gt == 0:
        return float("nan")
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    tp_cum = np.cumsum(tps[order])
    recall = tp_cum / n_gt
    precision = tp_cum / np.arange(1, len(order) + 1)
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    grid = np.linspace(0, 1, 101)
    idx = np.searchsorted(recall, grid, side="left")
    return float(np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0).mean())


def coco_ap(images: list[ImageEval]) -> float:
    """Mean AP over IoU 0.50:0.95."""
    return float(np.mean([average_precision(images, t) for t in COCO_IOUS]))


def recall_by(images: list[ImageEval], attr: str, buckets: dict[str, tuple[float, float]],
              iou_thr: float = MATCH_IOU, min_score: float = 0.0) -> dict[str, float]:
    """Share of (non-ignored) GT :func:`found` at ``iou_thr`` by a detection scoring >= ``min_score``, per bucket
    of ``gt_attrs[attr]`` ([lo, hi)); NaN for an empty bucket, and ``<bucket>_count`` GT in it."""
    hits, values = [], []
    for img in images:
        keep = ~img.gt_ignore
        hits.append(found(img, min_score, iou_thr)[keep])
        values.append(np.asarray(img.gt_attrs[attr], float)[keep])
    return recall_from_hits(np.concatenate(hits), np.concatenate(values), buckets)


def recall_from_hits(hits: np.ndarray, values: np.ndarray, buckets: dict[str, tuple[float, float]]) -> dict:
    """:func:`recall_by` from the found flags [G] and attribute values [G] of the non-ignored GT."""
    out = {}
    for name, (lo, hi) in buckets.items():
        sel = (values >= lo) & (values < hi)
        out[name] = float(hits[sel].mean()) if sel.any() else float("nan")
        out[f"{name}_count"] = int(sel.sum())
    return out


def pck(pred: np.ndarray, gt: np.ndarray, gt_boxes: np.ndarray, alpha: float = 0.2) -> tuple[int, int]:
    """Correct and counted keypoints: a visible (v = 2) GT keypoint is correct within alpha · max(box w, h).

    pred, gt: [N, 17, 3] of matched pairs. Returns (correct, total) so that datasets can be summed.
    """
    pred, gt = np.asarray(pred, float).reshape(-1, 17, 3), np.asarray(gt, float).reshape(-1, 17, 3)
    boxes = np.asarray(gt_boxes, float).reshape(-1, 4)
    scale = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])[:, None]
    visible = gt[..., 2] == 2
    close = np.linalg.norm(pred[..., :2] - gt[..., :2], axis=-1) <= alpha * scale
    return int((close & visible).sum()), int(visible.sum())


def multilabel_f1(probs: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Per-class F1 of thresholded probabilities [N, C] against boolean truth [N, C]."""
    pred = np.asarray(probs) >= threshold
    truth = np.asarray(truth, bool)
    tp = (pred & truth).sum(0)
    fp = (pred & ~truth).sum(0)
    fn = (~pred & truth).sum(0)
    return 2 * tp / np.maximum(2 * tp + fp + fn, 1)
