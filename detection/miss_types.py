"""Why each pedestrian was missed and what each false positive is, from the detector's candidates before NMS.

TIDE (Bolya et al., ECCV 2020, https://arxiv.org/abs/2008.08115, https://github.com/dbolya/tide) splits a
detector's errors into types and measures the AP gained by fixing each. It only sees final detections; with the
candidates before NMS (:meth:`detection.models.yolo.YoloDetector.candidates`, the boxes D-RISE scores) a miss can
be told apart further:

* ``suppressed``: a candidate overlapping the person at IoU >= 0.5 scored above the threshold, yet no final
  detection is left for it - NMS removed it in favour of a neighbour's box (the crowd case TIDE cannot see);
* ``below_threshold``: the best candidate at IoU >= 0.5 scored under the threshold (but at least ``seen_score``);
* ``mislocalised``: no such candidate, but one scoring >= ``seen_score`` overlaps it at IoU in [0.1, 0.5);
* ``never_seen``: no candidate scoring >= ``seen_score`` overlaps it at IoU >= 0.1 (background).

False positives (final detections at or above the threshold matched to no person and no ignore region), in
TIDE's order: ``duplicate`` (IoU >= 0.5 with a person another detection already found), ``localisation`` (best
IoU with a person in [0.1, 0.5)), ``confusion`` (IoU >= 0.5 with an annotated object of another class, where
those are given: the detector called a car a person), ``background`` (the rest).

Fixing a type (TIDE's oracles, :func:`error_summary`): a missed person of the type leaves the count (with the
detections matched to it); a duplicate, confusion or background false positive is removed; a localisation error
is moved onto the person it overlaps most and becomes its true positive - unless a detection already matches
that person, then it is removed as TIDE's fix suppresses it. The gains are the AP and the MR⁻² (all persons as
annotated, :func:`detection.miss_rate.log_average_miss_rate`) after the fix minus before (MR⁻²: before minus
after, so that a positive gain is an improvement for both).

Matching is :func:`detection.evaluation.match` (COCO's greedy one-to-one, ignore regions by intersection over the
detection's area). Plain NumPy.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from detection.evaluation import MATCH_IOU, ImageEval, ap_from_matches, iou_matrix, match
from detection.miss_rate import image_counts, join_counts, lamr_from_matches

MISS_TYPES = ("suppressed", "below_threshold", "mislocalised", "never_seen")
FP_TYPES = ("duplicate", "localisation", "confusion", "background")
LOC_RANGE = (0.1, 0.5)


@dataclass
class CandidateImage:
    """One image: ground truth, final detections (after NMS, any score) and the candidates before NMS.

    Boxes are pixel xyxy: ``gt_boxes`` [G, 4] with ``gt_ignore`` [G] bool (ignore regions), ``det_boxes`` [D, 4]
    with ``det_scores`` [D], ``cand_boxes`` [K, 4] with ``cand_scores`` [K] (the person class's score of every
    candidate), ``other_boxes`` [O, 4] annotated objects of other classes (for ``confusion``; may be empty).
    """

    gt_boxes: np.ndarray
    det_boxes: np.ndarray
    det_scores: np.ndarray
    cand_boxes: np.ndarray
    cand_scores: np.ndarray
    gt_ignore: np.ndarray | None = None
    other_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))

    def __post_init__(self):
        self.gt_boxes = np.asarray(self.gt_boxes, float).reshape(-1, 4)
        self.det_boxes = np.asarray(self.det_boxes, float).reshape(-1, 4)
        self.det_scores = np.asarray(self.det_scores, float).reshape(-1)
        self.cand_boxes = np.asarray(self.cand_boxes, float).reshape(-1, 4)
        self.cand_scores = np.asarray(self.cand_scores, float).reshape(-1)
        self.other_boxes = np.asarray(self.other_boxes, float).reshape(-1, 4)
        self.gt_ignore = (np.zeros(len(self.gt_boxes), bool) if self.gt_ignore is None
                          else np.asarray(self.gt_ignore, bool).reshape(-1))
        for name, n in (("det_scores", len(self.det_boxes)), ("cand_scores", len(self.cand_boxes)),
                        ("gt_ignore", len(self.gt_boxes))):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries for {n} boxes")

    def evaluation(self) -> ImageEval:
        return ImageEval(self.det_boxes, self.det_scores, self.gt_boxes, self.gt_ignore)


@dataclass
class ErrorTypes:
    """Per ground-truth box and per final detection of one image, what it is.

    ``gt_type`` [G]: ``found``, ``ignored`` (an ignore region) or a :data:`MISS_TYPES` entry; ``gt_best_iou`` /
    ``gt_best_score`` [G]: the candidate that decided the type (IoU with the box, its score; NaN when none).
    ``det_type`` [D]: ``tp``, ``ignored`` (matched to an ignore region), ``below_threshold`` (scored under the
    threshold: neither found anything nor counts as a false positive at it) or a :data:`FP_TYPES` entry;
    ``det_gt`` [D]: for ``duplicate`` / ``localisation`` the person it overlaps most, else -1.
    """

    gt_type: np.ndarray
    gt_best_iou: np.ndarray
    gt_best_score: np.ndarray
    det_type: np.ndarray
    det_gt: np.ndarray


def classify_errors(img: CandidateImage, conf: float, iou_thr: float = MATCH_IOU,
                    loc_range: tuple[float, float] = LOC_RANGE, seen_score: float = 0.05) -> ErrorTypes:
    """Type every missed person and every false positive of one image at the score threshold ``conf`` (see the
    module docstring for the rules and their order: suppressed, below threshold, mislocalised, never seen)."""
    if not 0 <= seen_score <= conf:
        raise ValueError(f"seen_score {seen_score} must lie in [0, conf = {conf}]")
    m = match(img.evaluation(), iou_thr)
    found = m.found(conf)
    G, D = len(img.gt_boxes), len(img.det_boxes)
    gt_type = np.where(img.gt_ignore, "ignored", np.where(found, "found", "")).astype(object)
    best_iou, best_score = np.full(G, np.nan), np.full(G, np.nan)

    seen = img.cand_scores >= seen_score
    iou = iou_matrix(img.gt_boxes, img.cand_boxes[seen])                  # [G, K_seen]
    scores = img.cand_scores[seen]
    strong = iou >= iou_thr
    above = strong & (scores >= conf)[None, :]
    near = (iou >= loc_range[0]) & (iou < loc_range[1])
    for g in np.flatnonzero(gt_type == ""):
        for kind, cand in (("suppressed", above[g]), ("below_threshold", strong[g]), ("mislocalised", near[g])):
            if cand.any():
                k = np.flatnonzero(cand)[np.argmax(scores[cand])]
                gt_type[g], best_iou[g], best_score[g] = kind, iou[g, k], scores[k]
                break
        else:
            gt_type[g] = "never_seen"
            if iou.shape[1]:
                k = int(np.argmax(iou[g]))
                best_iou[g], best_score[g] = iou[g, k], scores[k]

    det_type = np.full(D, "", dtype=object)
    det_gt = np.full(D, -1)
    det_type[m.det_tp & (img.det_scores >= conf)] = "tp"
    det_type[m.det_ignored] = "ignored"
    det_type[(img.det_scores < conf) & ~m.det_ignored] = "below_threshold"
    real = ~img.gt_ignore
    d_iou = iou_matrix(img.det_boxes, img.gt_boxes)
    d_iou[:, ~real] = -1.0
    taken = found & real                                                   # found by another detection
    other = iou_matrix(img.det_boxes, img.other_boxes).max(1) if len(img.other_boxes) else np.zeros(D)
    for d in np.flatnonzero(det_type == ""):
        g = int(np.argmax(d_iou[d])) if G else -1
        best = d_iou[d, g] if G else 0.0
        if best >= iou_thr and taken[g]:
            det_type[d], det_gt[d] = "duplicate", g
        elif loc_range[0] <= best < iou_thr or (best >= iou_thr and not taken[g]):
            det_type[d], det_gt[d] = "localisation", g
        elif other[d] >= iou_thr:
            det_type[d] = "confusion"
        else:
            det_type[d] = "background"
    return ErrorTypes(gt_type, best_iou, best_score, det_type, det_gt)


def fixed_images(images: Sequence[CandidateImage], types: Sequence[ErrorTypes], iou_thr: float = MATCH_IOU,
                 drop_gt: frozenset[str] = frozenset(), fix_det: frozenset[str] = frozenset()) -> list[ImageEval]:
    """The images after TIDE's oracle fixes of the miss types ``drop_gt`` and the false-positive types ``fix_det``
    (module docstring): persons of a fixed miss type leave the count together with the detections matched to them
    (a person missed at ``conf`` is often matched below it: left alone, that detection would turn into a false
    positive and the "fix" would lower AP); ``localisation`` false positives take the box of the person in
    ``det_gt`` when no detection matches that person (else they are removed); other fixed false positives are
    removed."""
    out = []
    for img, t in zip(images, types):
        keep_gt = ~np.isin(t.gt_type, list(drop_gt))
        keep_det = ~np.isin(t.det_type, [k for k in fix_det if k != "localisation"])
        boxes = img.det_boxes.copy()
        m = match(img.evaluation(), iou_thr) if (not keep_gt.all() or "localisation" in fix_det) else None
        if not keep_gt.all():
            keep_det &= ~((m.det_gt >= 0) & ~keep_gt[np.maximum(m.det_gt, 0)])
        if "localisation" in fix_det:
            loc = np.flatnonzero(t.det_type == "localisation")
            free = m.gt_det[t.det_gt[loc]] < 0                      # the person no detection matches
            boxes[loc[free]] = img.gt_boxes[t.det_gt[loc[free]]]
            keep_det[loc[~free]] = False
            # two localisation errors moved onto one free person: the higher-scoring one takes it (TIDE marks the
            # person used after the first fix), the other is suppressed
            rematch = match(ImageEval(boxes, img.det_scores, img.gt_boxes, img.gt_ignore), iou_thr)
            keep_det[loc[free]] &= rematch.det_tp[loc[free]]
        out.append(ImageEval(boxes[keep_det], img.det_scores[keep_det], img.gt_boxes[keep_gt],
                             img.gt_ignore[keep_gt]))
    return out


FIXES: tuple[tuple[str, str], ...] = (("none", ""), *(("miss", t) for t in MISS_TYPES),
                                      *(("false_positive", t) for t in FP_TYPES))
"""The oracle fixes :func:`error_summary` measures, as (kind, type): none (the data as given), then each type."""


class ErrorTally:
    """:func:`error_summary` accumulated image batch by image batch, so that a dataset's summary needs one batch of
    :class:`CandidateImage` / :class:`ErrorTypes` in memory at a time.

    :meth:`add` applies every fix of :data:`FIXES` to the batch (:func:`fixed_images`) and keeps only what AP and
    MR⁻² read, the batch's :func:`detection.miss_rate.image_counts` (per counted detection its score, true-positive
    flag and image; per image its persons: ~17 bytes per final detection per fix), and the count of each type.
    :meth:`summary` equals :func:`error_summary` of every image added, in the order added (ties in score keep that
    order, as there).
    """

    def __init__(self, iou_thr: float = MATCH_IOU):
        self.iou_thr = iou_thr
        self._counts: dict[tuple[str, str], list] = {f: [] for f in FIXES}
        self._gt_counts = dict.fromkeys(("found", *MISS_TYPES), 0)
        self._det_counts = dict.fromkeys(FP_TYPES, 0)

    def add(self, images: Sequence[CandidateImage], types: Sequence[ErrorTypes]) -> None:
        """Tally a batch: ``images`` and their :func:`classify_errors` results ``types`` (same length, one
        ``conf`` for every batch). Raises ValueError when the lengths differ."""
        if len(images) != len(types):
            raise ValueError(f"{len(images)} images but {len(types)} error types")
        for kind, name in FIXES:
            evals = fixed_images(images, types, self.iou_thr, frozenset({name}) if kind == "miss" else frozenset(),
                                 frozenset({name}) if kind == "false_positive" else frozenset())
            self._counts[kind, name].append(image_counts(evals, self.iou_thr))
        for pool, counts in (("gt_type", self._gt_counts), ("det_type", self._det_counts)):
            if types:
                names, n = np.unique(np.concatenate([getattr(t, pool) for t in types]).astype(str),
                                     return_counts=True)
                for k, c in zip(names, n):
                    if k in counts:
                        counts[k] += int(c)

    def _metrics(self, fix: tuple[str, str]) -> tuple[float, float]:
        """(AP at ``iou_thr``, MR⁻²) of the added images after ``fix``."""
        c = join_counts(self._counts[fix])
        n_gt = int(c.positives.sum())
        return ap_from_matches(c.scores, c.tp, n_gt), lamr_from_matches(c.scores, c.tp, len(c.positives), n_gt)

    def summary(self) -> pd.DataFrame:
        """The :func:`error_summary` table of every image added."""
        n_persons = sum(self._gt_counts.values())
        n_miss = n_persons - self._gt_counts["found"]
        n_fp = sum(self._det_counts.values())
        base_ap, base_mr2 = self._metrics(FIXES[0])
        rows = []
        for kind, name in FIXES[1:]:
            count = self._gt_counts[name] if kind == "miss" else self._det_counts[name]
            total = n_miss if kind == "miss" else n_fp
            ap, mr2 = self._metrics((kind, name))
            rows.append({"kind": kind, "type": name, "count": count, "share": count / total if total else np.nan,
                         "miss_rate_gain": count / n_persons if kind == "miss" and n_persons else 0.0,
                         "ap_gain": ap - base_ap, "mr2_gain": base_mr2 - mr2})
        return pd.DataFrame(rows)


def error_summary(images: Sequence[CandidateImage], conf: float, iou_thr: float = MATCH_IOU,
                  seen_score: float = 0.05, types: Sequence[ErrorTypes] | None = None) -> pd.DataFrame:
    """Per error type over a dataset: ``kind`` (miss / false_positive), ``type``, ``count``, ``share`` (of the
    misses, or of the false positives at ``conf``), ``miss_rate_gain`` (misses of the type / persons: how much the
    miss rate at ``conf`` drops if they were found; 0 for false positives), ``ap_gain`` (AP at ``iou_thr`` after
    fixing only that type, minus AP) and ``mr2_gain`` (MR⁻² minus MR⁻² after fixing only that type; NaN without
    persons), the fixes being TIDE's oracles (module docstring). ``types``: the :func:`classify_errors` results when
    already computed. For a dataset too large to hold, feed :class:`ErrorTally` batch by batch instead."""
    types = list(types) if types is not None else [classify_errors(i, conf, iou_thr, seen_score=seen_score)
                                                   for i in images]
    tally = ErrorTally(iou_thr)
    tally.add(list(images), types)
    return tally.summary()


def person_candidates(candidates, index: int, class_index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(boxes [K, 4], scores [K]) of image ``index`` of a batch's :class:`detection.models.base.Candidates`: the
    valid candidates' boxes and their ``class_index`` class score, as NumPy (for :class:`CandidateImage`)."""
    valid = candidates.valid[index].detach().cpu().numpy().astype(bool)
    boxes = candidates.boxes[index].detach().float().cpu().numpy()[valid]
    scores = candidates.class_probs[index, :, class_index].detach().float().cpu().numpy()[valid]
    return boxes, scores
