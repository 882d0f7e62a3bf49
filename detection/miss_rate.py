"""Log-average miss rate (MR⁻²) over false positives per image, on the Caltech / CityPersons subsets.

The pedestrian-detection metric (Dollár et al., "Pedestrian Detection: An Evaluation of the State of the Art",
TPAMI 2012; CityPersons, Zhang et al., CVPR 2017, https://github.com/cvgroup-njust/CityPersons): sweep the score
threshold, plot miss rate against false positives per image (FPPI), read the miss rate at nine FPPI values spaced
evenly in log space over [10⁻², 10⁰] and take their geometric mean. At each reference FPPI the curve's last point
with FPPI <= it is used; before the first point the miss rate is 1 (the Caltech toolbox's ``bbGt('compRoc')``:
``xs1 = [-inf; xs]; ys1 = [0; ys]``), and miss rates are clamped at 1e-10 before the log as there.

Subsets follow CityPersons' ``eval_MR_multisetup.py``: a person outside a subset's height / visibility range is an
ignore region (matched by intersection over the detection's area, as :func:`detection.evaluation.match` does), and
an unmatched detection whose height lies outside the range widened by ``exp_filter`` = 1.25 is ignored. Heights are
box heights in pixels; CityPersons' ranges are for 2048 x 1024 images (pass a ``scale`` for other sizes).

Matching is :func:`detection.evaluation.match` (greedy, real persons before ignore regions). Plain NumPy.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from detection.evaluation import MATCH_IOU, ImageEval, match

FPPI_POINTS = np.logspace(-2.0, 0.0, 9)      # 0.0100, 0.0178, 0.0316, 0.0562, 0.1000, 0.1778, 0.3162, 0.5623, 1
# where a miss-rate-vs-FPPI curve is read for a compact copy (plots, JSON): 8 points a decade over [1e-3, 1e1], the
# MR⁻² references (every second point from 1e-2 to 1e0) among them
CURVE_FPPI = np.logspace(-3.0, 1.0, 33)


@dataclass(frozen=True)
class Subset:
    """Persons counted: box height in [height[0], height[1]) px and visibility (1 - occlusion) in
    [visibility[0], visibility[1]]; everyone else is an ignore region."""

    height: tuple[float, float]
    visibility: tuple[float, float]


# CityPersons' setups (eval_MR_multisetup.py: HtRng / VisRng with SetupLbl Reasonable, Reasonable_small,
# Reasonable_occ=heavy, All)
CITYPERSONS_SUBSETS: dict[str, Subset] = {
    "reasonable": Subset((50.0, np.inf), (0.65, np.inf)),
    "small": Subset((50.0, 75.0), (0.65, np.inf)),
    "heavy_occlusion": Subset((50.0, np.inf), (0.20, 0.65)),
    "all": Subset((20.0, np.inf), (0.20, np.inf)),
}


def restrict(img: ImageEval, subset: Subset, scale: float = 1.0) -> ImageEval:
    """``img`` with the persons outside ``subset`` (heights scaled by ``scale``) turned into ignore regions.
    Needs ``img.gt_attrs['visibility']`` [G] (NaN: unknown, treated as fully visible); heights come from the
    boxes. The detections' height filter is applied by :func:`image_counts`."""
    if "visibility" not in img.gt_attrs:
        raise KeyError("ImageEval.gt_attrs lacks 'visibility' (1 - occlusion per ground-truth box)")
    h = img.gt_boxes[:, 3] - img.gt_boxes[:, 1]
    vis = np.nan_to_num(np.asarray(img.gt_attrs["visibility"], float), nan=1.0)
    # both bounds inclusive: CityPersons ignores a person only when h < lo or h > hi
    lo, hi = subset.height[0] * scale, subset.height[1] * scale
    inside = (h >= lo) & (h <= hi) & (vis >= subset.visibility[0]) & (vis <= subset.visibility[1])
    return ImageEval(img.det_boxes, img.det_scores, img.gt_boxes, img.gt_ignore | ~inside, dict(img.gt_attrs))


@dataclass
class _Counts:
    scores: np.ndarray     # [N] every counted detection of every image
    tp: np.ndarray         # [N] bool
    image: np.ndarray      # [N] int: its image
    positives: np.ndarray  # [I] persons counted per image


def image_counts(images: Sequence[ImageEval], iou_thr: float = MATCH_IOU,
                 det_height: tuple[float, float] | None = None, exp_filter: float = 1.25) -> _Counts:
    """Per detection (ignored ones dropped): score, true positive, image; per image: persons counted. With
    ``det_height`` (px), unmatched detections whose box height is outside [lo / exp_filter, hi * exp_filter] are
    ignored (CityPersons)."""
    scores, tps, owners, positives = [], [], [], []
    for i, img in enumerate(images):
        m = match(img, iou_thr)
        keep = ~m.det_ignored
        if det_height is not None:
            h = img.det_boxes[:, 3] - img.det_boxes[:, 1]
            outside = (h < det_height[0] / exp_filter) | (h > det_height[1] * exp_filter)
            keep &= ~((m.det_gt < 0) & outside)
        scores.append(img.det_scores[keep])
        tps.append(m.det_tp[keep])
        owners.append(np.full(int(keep.sum()), i))
        positives.append(int((~img.gt_ignore).sum()))
    cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)  # noqa: E731
    return _Counts(cat(scores, float), cat(tps, bool), cat(owners, int), np.asarray(positives, float))


def _curves(counts: _Counts, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPPI [B, N], recall [B, N]) along the detections in score order, for image weights [B, I] (bootstrap
    multiplicities; ones for the data as given)."""
    order = np.argsort(-counts.scores, kind="mergesort")       # mergesort: as the Caltech / CityPersons code
    w = weights[:, counts.image[order]]                        # [B, N]
    tp = counts.tp[order]
    n_images = weights.sum(1, keepdims=True)
    positives = np.maximum((weights * counts.positives[None]).sum(1, keepdims=True), 1e-12)
    return np.cumsum(w * ~tp, 1) / n_images, np.cumsum(w * tp, 1) / positives


def recall_at(fppi: np.ndarray, recall: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Recall [B, P] of curves ``fppi`` / ``recall`` [B, N] (FPPI non-decreasing along N) at the reference FPPI
    ``points`` [P]: the curve's last point with FPPI <= the reference, and recall 0 (miss rate 1) before its first
    point, as the Caltech toolbox's ``bbGt('compRoc')`` (``xs1 = [-inf; xs]; ys1 = [0; ys]``). CityPersons'
    ``eval_MR_multisetup.py`` (``searchsorted(fppi, refs, side='right') - 1``) agrees from the first point on but not
    before it: there its index -1 reads ``recall[-1]``, the curve's final recall; this function follows Caltech."""
    fppi, recall = np.atleast_2d(fppi), np.atleast_2d(recall)
    points = np.asarray(points, float)
    if fppi.shape[1] == 0:
        return np.zeros((fppi.shape[0], len(points)))
    idx = (fppi[:, :, None] <= points[None, None, :]).sum(1) - 1            # [B, P]: last point with FPPI <= ref
    return np.where(idx >= 0, np.take_along_axis(recall, np.maximum(idx, 0), axis=1), 0.0)


def _lamr(fppi: np.ndarray, recall: np.ndarray, points: np.ndarray) -> np.ndarray:
    """[B] log-average miss rate of curves [B, N] at ``points``."""
    return np.exp(np.mean(np.log(np.maximum(1e-10, 1.0 - recall_at(fppi, recall, points))), axis=1))


def log_average_miss_rate(images: Sequence[ImageEval], iou_thr: float = MATCH_IOU,
                          points: np.ndarray = FPPI_POINTS, det_height: tuple[float, float] | None = None) -> float:
    """MR⁻² of ``images`` (every detection, any score; persons with ``gt_ignore`` not counted). NaN when no person
    is counted. For a CityPersons subset pass ``[restrict(i, s) for i in images]`` and ``det_height=s.height``
    (or use :func:`subset_miss_rates`)."""
    counts = image_counts(images, iou_thr, det_height)
    return lamr_from_matches(counts.scores, counts.tp, len(images), int(counts.positives.sum()), points)


def lamr_from_matches(scores: np.ndarray, tps: np.ndarray, n_images: int, n_gt: int,
                      points: np.ndarray = FPPI_POINTS) -> float:
    """:func:`log_average_miss_rate` from the matching's result: the scores [D] and true-positive flags [D] of the
    counted (non-ignored) detections of ``n_images`` images and the ``n_gt`` persons counted in them (NaN without
    persons); detections in score order, ties in the given order (stable, as the Caltech / CityPersons code). Lets a
    caller accumulate the matches image batch by image batch (:class:`detection.miss_types.ErrorTally`)."""
    if n_gt == 0:
        return float("nan")
    tp = np.asarray(tps, bool)[np.argsort(-np.asarray(scores, float), kind="mergesort")]
    fppi = np.cumsum(~tp, dtype=float) / n_images
    recall = np.cumsum(tp, dtype=float) / n_gt
    return float(_lamr(fppi[None], recall[None], np.asarray(points, float))[0])


def miss_rate_curve(images: Sequence[ImageEval], iou_thr: float = MATCH_IOU,
                    det_height: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FPPI [N], miss rate [N], score threshold [N]) along the detections in score order: the miss-rate-vs-FPPI
    curve the MR⁻² is read from."""
    counts = image_counts(images, iou_thr, det_height)
    fppi, recall = _curves(counts, np.ones((1, len(images))))
    return fppi[0], 1.0 - recall[0], np.sort(counts.scores)[::-1]


@dataclass(frozen=True)
class MissRateCurve:
    """A miss-rate-vs-FPPI curve read at reference FPPI values (compact enough for JSON and a log-log plot).

    ``fppi`` [P] ascending: the references the curve reaches (<= its largest FPPI), then the curve's own last point
    when that is not a reference; ``miss_rate`` [P]: 1 - recall there, read as the MR⁻² reads it
    (:func:`recall_at`: the last curve point with FPPI <= the reference; 1 before the first point). Empty when no
    person is counted or there is no detection."""

    fppi: np.ndarray
    miss_rate: np.ndarray

    def to_lists(self, digits: int = 4) -> dict[str, list[float]]:
        """``{"fppi": [...], "miss_rate": [...]}`` rounded to ``digits`` significant digits."""
        r = lambda a: [float(f"{v:.{digits}g}") for v in a]  # noqa: E731
        return {"fppi": r(self.fppi), "miss_rate": r(self.miss_rate)}


def read_curve(fppi: np.ndarray, miss_rate: np.ndarray, points: np.ndarray = CURVE_FPPI) -> MissRateCurve:
    """The full curve (FPPI [N] non-decreasing, miss rate [N], as :func:`miss_rate_curve` gives) read at
    ``points`` [P] up to its largest FPPI, plus that last point (see :class:`MissRateCurve`)."""
    fppi, miss_rate = np.asarray(fppi, float), np.asarray(miss_rate, float)
    if fppi.shape != miss_rate.shape or fppi.ndim != 1:
        raise ValueError(f"fppi {fppi.shape} and miss_rate {miss_rate.shape} must be 1-D of one length")
    if not len(fppi):
        return MissRateCurve(np.zeros(0), np.zeros(0))
    points = np.asarray(points, float)
    points = points[points <= fppi[-1]]
    miss = 1.0 - recall_at(fppi, 1.0 - miss_rate, points)[0]
    if not len(points) or points[-1] < fppi[-1]:
        points, miss = np.append(points, fppi[-1]), np.append(miss, miss_rate[-1])
    return MissRateCurve(points, miss)


BOOT_CHUNK_ELEMENTS = 1 << 20
"""Elements of one bootstrap chunk's [resamples, detections] arrays (8 MiB of float64 each): the resamples of a
chunk shrink as the dataset grows, so the interval's memory stays flat (at 100 resamples a chunk it grew ~4 KB per
detection: ~2.5 GB at 120k detections)."""


def boot_chunk(width: int, most: int = 100) -> int:
    """Bootstrap resamples computed together for arrays ``width`` wide: at most ``most``, at least 1, and at most
    :data:`BOOT_CHUNK_ELEMENTS` elements per array. The draws do not depend on it (``Generator.multinomial``
    draws its rows in order, so chunks of any size give the same resamples)."""
    return max(1, min(most, BOOT_CHUNK_ELEMENTS // max(1, width)))


def log_average_miss_rate_interval(images: Sequence[ImageEval], iou_thr: float = MATCH_IOU,
                                   det_height: tuple[float, float] | None = None, n_boot: int = 1000,
                                   confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of MR⁻² resampling images (their persons and detections together)."""
    return _counts_interval(image_counts(images, iou_thr, det_height), n_boot, confidence, seed)


def _counts_interval(counts: _Counts, n_boot: int = 1000, confidence: float = 0.95,
                     seed: int = 0) -> tuple[float, float]:
    """:func:`log_average_miss_rate_interval` from the images' :class:`_Counts`."""
    n = len(counts.positives)
    if counts.positives.sum() == 0 or not n:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    chunk = boot_chunk(len(counts.scores) + n)
    values = []
    for start in range(0, n_boot, chunk):
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=min(chunk, n_boot - start)).astype(float)
        fppi, recall = _curves(counts, w)
        values.append(_lamr(fppi, recall, FPPI_POINTS))
    values = np.concatenate(values)
    tail = (1 - confidence) / 2
    return float(np.quantile(values, tail)), float(np.quantile(values, 1 - tail))


def subset_counts(images: Sequence[ImageEval], subsets: dict[str, Subset] | None = None, scale: float = 1.0,
                  iou_thr: float = MATCH_IOU) -> dict[str, _Counts]:
    """Per subset (default :data:`CITYPERSONS_SUBSETS`) the matching's counts of ``images`` restricted to it (what
    :func:`subset_miss_rates` reads): per counted detection its score, true-positive flag and image; per image its
    persons. A dataset's images can be counted batch by batch and the batches joined with :func:`join_counts`."""
    out = {}
    for name, subset in (subsets or CITYPERSONS_SUBSETS).items():
        height = (subset.height[0] * scale, subset.height[1] * scale)
        out[name] = image_counts([restrict(i, subset, scale) for i in images], iou_thr, height)
    return out


def join_counts(batches: Sequence[_Counts]) -> _Counts:
    """The :class:`_Counts` of consecutive image batches as one (image indices offset by the images before)."""
    offsets = np.cumsum([0] + [len(c.positives) for c in batches[:-1]])
    cat = lambda xs, dt: np.concatenate(xs).astype(dt) if len(xs) else np.zeros(0, dt)  # noqa: E731
    return _Counts(cat([c.scores for c in batches], float), cat([c.tp for c in batches], bool),
                   cat([c.image + o for c, o in zip(batches, offsets)], int),
                   cat([c.positives for c in batches], float))


def subset_miss_rates(images: Sequence[ImageEval], subsets: dict[str, Subset] | None = None, scale: float = 1.0,
                      iou_thr: float = MATCH_IOU, n_boot: int = 0, seed: int = 0,
                      curve_points: np.ndarray | None = None) -> dict[str, dict]:
    """Per subset (default :data:`CITYPERSONS_SUBSETS`): ``mr2`` (MR⁻²), ``persons`` counted and, with ``n_boot``,
    ``low`` / ``high`` of its bootstrap interval; with ``curve_points`` (e.g. :data:`CURVE_FPPI`) also ``curve``,
    the subset's :class:`MissRateCurve` read there (empty when no person is counted). ``images`` need
    ``gt_attrs['visibility']``. For a dataset too large to hold as ImageEval objects, count it batch by batch
    (:func:`subset_counts`, :func:`join_counts`) and call :func:`counted_miss_rates`."""
    return counted_miss_rates(subset_counts(images, subsets, scale, iou_thr), n_boot, seed, curve_points)


def counted_miss_rates(counts: dict[str, _Counts], n_boot: int = 0, seed: int = 0,
                       curve_points: np.ndarray | None = None) -> dict[str, dict]:
    """:func:`subset_miss_rates` from each subset's :class:`_Counts` (:func:`subset_counts`)."""
    out = {}
    for name, c in counts.items():
        persons = int(c.positives.sum())
        fppi, recall = _curves(c, np.ones((1, len(c.positives))))
        row: dict = {"mr2": float(_lamr(fppi, recall, FPPI_POINTS)[0]) if persons else float("nan"),
                     "persons": persons}
        if n_boot:
            row["low"], row["high"] = _counts_interval(c, n_boot, seed=seed)
        if curve_points is not None:
            row["curve"] = (read_curve(fppi[0], 1.0 - recall[0], curve_points) if persons
                            else MissRateCurve(np.zeros(0), np.zeros(0)))
        out[name] = row
    return out
