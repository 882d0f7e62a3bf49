"""Miss types on planted crowds: are the misses that NMS causes labelled ``suppressed``? (issue 24's target: >= 90 %)

:mod:`detection.miss_types` labels every missed pedestrian from the detector's candidates before NMS. This script
plants crowds where NMS must act and checks the labels against what NMS actually did.

Plant. A *base* scene is rendered by the project's generator (:func:`detection.datasets.synthetic.render_scene`,
``params.yaml``'s ``pull.synthetic`` with one person, no occluder, no truncation, person height 30-75 % of the
image; distractors as configured) and a *donor* scene with one unoccluded person and no distractors. The donor's
person (its own pixels, the union of its visible part masks) is cut out, scaled to the base person's height x
U(0.9, 1.1) and composited *in front of* the base person (the generator's own occlusion model: nearer figures are
painted over farther ones):

* ``pairs``: at the horizontal offset whose box IoU with the base person is closest to a target drawn from
  U(0.55, 0.85), feet within +-4 % of the height; kept only when the two boxes' IoU exceeds the detector's NMS IoU
  (``infer.detectors[0].iou``, 0.5) by at least 0.02 - both persons fully inside the image;
* ``control``: the same donor crop, same base scene, at a random offset where the two boxes do not overlap at all.

Both sets therefore hold the same persons and pixels; only the overlap differs. A scene index is used only when both
placements exist.

Detection and labels. The demo detector (:func:`pedestrians.load_detector`: ``models/detector.pt``, imgsz, conf
0.25, NMS IoU 0.5 from ``params.yaml``) gives its final detections (:meth:`YoloDetector.detect`) and its candidates
before NMS (:meth:`YoloDetector.candidates`, :func:`detection.miss_types.person_candidates`) on the same batch; the
labels are :func:`detection.miss_types.classify_errors` at conf with ``seen_score = min(SEEN_SCORE, conf)``, exactly
as :func:`tasks.audit_slices.miss_types` calls it, and :func:`detection.miss_types.error_summary` gives the per-type
table (AP / MR⁻² gains).

Independent check of ``suppressed`` (not the labeller's code). For each missed person: (a) *has a candidate*:
some candidate scores >= conf with box IoU >= 0.5 (:data:`detection.evaluation.MATCH_IOU`) with it; (b) *removed by
NMS*: such a candidate is not one of the final detections, and a final detection scoring at least as high overlaps
it at IoU > the NMS IoU (the rule NMS applied); (c) *recovered*: putting that removed candidate (the highest-scoring
one that works, up to 20 tried) back among the final detections makes the person found by the evaluation's
one-to-one matching (:func:`detection.evaluation.match`) at conf. *NMS-caused* = (c). The report crosses the labels
with NMS-caused, and for a ``suppressed`` label that NMS did not cause says which case it is.

Tuned on vs reported on. Nothing in :mod:`detection.miss_types` was tuned here and nothing is tuned by this script;
the plant's settings (height range, IoU range, feet jitter) were fixed while writing it on plant seed 0 (render seeds
7000 / 7001 / 7002), the only seed looked at before the report. Reported: plant seed ``--seed`` (1: base scenes
render seed 7010, donors 7011, placements 7012), never looked at before. No other benchmark renders these seeds
(they use 0, 1 and 1000 + 97 s); the detector was trained on render seed 1.

    python benchmarks/bench_miss_types.py [--seed 1] [--scenes 1000] [--out benchmarks/results/miss_types.json]
    python benchmarks/bench_miss_types.py --seed 0 --scenes 100                    # development seed, short
"""
from __future__ import annotations

import argparse
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import flows  # noqa: F401  (environment defaults)

import cv2
import numpy as np
import torch

from bench_models import write_results
from detection.datasets.imageio import to_batch
from detection.datasets.synthetic import Scene, SyntheticConfig, render_scene
from detection.evaluation import MATCH_IOU, ImageEval, iou_matrix, match
from detection.miss_types import (
    MISS_TYPES,
    CandidateImage,
    ErrorTypes,
    classify_errors,
    error_summary,
    person_candidates,
)
from pedestrians import file_digest, load_detector, start_run
from tasks.audit_slices import SEEN_SCORE
from tasks.params import load_params

PLANT_SEED = 7000                 # plant seed s renders base scenes 7000 + 10 s, donors + 1, placements + 2
HEIGHT = (0.30, 0.75)             # person height, fraction of the image height
PAIR_IOU = (0.55, 0.85)           # target box IoU of a planted pair (drawn uniformly)
MIN_MARGIN = 0.02                 # a planted pair's box IoU exceeds the NMS IoU by at least this
SCALE = (0.9, 1.1)                # donor height / base height
FEET = 0.04                       # feet offset, fraction of the height
SAME_BOX_PX = 1e-3                # a candidate within this (px, every coordinate) of a final detection is that one
MAX_TRIES = 20                    # removed candidates tried to recover a miss
IOU_BINS = ((0.0, 0.5), (0.5, 0.6), (0.6, 0.7), (0.7, 1.01))


@dataclass
class Planted:
    """One composited scene: ``image`` [H, W, 3] uint8, ``gt`` [2, 4] xyxy px (row 0: the base person, behind;
    row 1: the pasted person, in front), ``other`` [O, 4] boxes of the base scene's distractors, ``pair_iou`` the
    two boxes' IoU, ``back_occlusion`` the base person's hidden fraction of its amodal area after the paste."""

    image_id: str
    image: np.ndarray
    gt: np.ndarray
    other: np.ndarray
    pair_iou: float
    back_occlusion: float


@dataclass
class PersonOutcome:
    """One person of a set: its role, label and the independent NMS check (module docstring)."""

    image_id: str
    role: str                     # back (base person) | front (pasted)
    pair_iou: float
    height: float
    back_occlusion: float
    label: str                    # found | a MISS_TYPES entry
    best_iou: float
    best_score: float
    has_candidate: bool = False   # (a)
    removed_by_nms: bool = False  # (b)
    recovered: bool = False       # (c) = NMS-caused
    kept_only: bool = False       # (a) holds only through final detections (kept by NMS, matched elsewhere)
    winner: str | None = None     # the detection that suppressed the recovering candidate: partner (it found the
    #                               pair's other person), mislocalised (overlaps this person at IoU in [0.1, 0.5),
    #                               found no one), other


@dataclass
class SetReport:
    name: str
    scenes: int
    persons: int
    missed: int
    labels: dict[str, int] = field(default_factory=dict)
    labels_by_role: dict[str, dict[str, int]] = field(default_factory=dict)
    suppressed_share: float = float("nan")
    nms_caused: int = 0
    nms_caused_labelled_suppressed: int = 0
    suppressed_not_nms_caused: dict[str, int] = field(default_factory=dict)
    has_candidate: int = 0
    winners: dict[str, int] = field(default_factory=dict)   # NMS-caused misses by what suppressed them
    by_pair_iou: list[dict] = field(default_factory=list)   # per pair-IoU bin: persons, missed, suppressed
    pair_iou_min: float = float("nan")
    pair_iou_max: float = float("nan")
    summary: list[dict] = field(default_factory=list)


def scene_configs(base: SyntheticConfig) -> tuple[SyntheticConfig, SyntheticConfig]:
    """(base scenes' config, donor scenes' config) from ``pull.synthetic``."""
    common = {"persons_per_image": (1, 1), "p_occluder": 0.0, "p_truncated": 0.0, "person_height": HEIGHT}
    return base.model_copy(update=common), base.model_copy(update={**common, "distractors_per_image": (0, 0)})


def _single_person(scene: Scene):
    persons = [o for o in scene.objects if o.category == "person" and o.bbox is not None and o.visible_area >= 10]
    return persons[0] if len(persons) == 1 else None


def _placements(box: np.ndarray, w: float, h: float, bottom: float, W: int, H: int) -> np.ndarray:
    """[N, 4] boxes of a ``w`` x ``h`` crop with its bottom at ``bottom``, at every integer x inside the image."""
    x0 = np.arange(0, int(W - np.ceil(w)) + 1, dtype=float)
    y0 = np.full_like(x0, bottom - h)
    return np.stack([x0, y0, x0 + w, y0 + h], 1)


def plant(seed: int, index: int, base_cfg: SyntheticConfig, donor_cfg: SyntheticConfig,
          nms_iou: float) -> tuple[Planted, Planted] | None:
    """(pair scene, control scene) of scene ``index`` of plant seed ``seed``, or None when the base or donor scene
    does not qualify (not exactly one annotated person, base person occluded > 30 %, no placement inside the image
    for either set)."""
    render = PLANT_SEED + 10 * seed
    base, donor = render_scene(base_cfg, render, index), render_scene(donor_cfg, render + 1, index)
    rng = np.random.default_rng([render + 2, index])
    person, dperson = _single_person(base), _single_person(donor)
    if person is None or dperson is None or person.occlusion > 0.3 or dperson.occlusion > 0.0:
        return None
    H, W = base.image.shape[:2]
    bbox = np.asarray(person.bbox, float)
    dx0, dy0, dx1, dy1 = (int(v) for v in dperson.bbox)
    dmask = np.logical_or.reduce(list(dperson.visible_part_masks.values()))[dy0:dy1, dx0:dx1]
    dpix = donor.image[dy0:dy1, dx0:dx1]
    h = (bbox[3] - bbox[1]) * rng.uniform(*SCALE)
    scale = h / (dy1 - dy0)
    w_px, h_px = max(1, round((dx1 - dx0) * scale)), max(1, round(h))
    if h_px >= H or w_px >= W:
        return None
    pix = cv2.resize(dpix, (w_px, h_px), interpolation=cv2.INTER_LINEAR)
    mask = cv2.resize(dmask.astype(np.uint8), (w_px, h_px), interpolation=cv2.INTER_NEAREST).astype(bool)
    bottom = float(np.clip(round(bbox[3] + rng.uniform(-FEET, FEET) * h), h_px, H))
    boxes = _placements(bbox, w_px, h_px, bottom, W, H)
    ious = iou_matrix(boxes, bbox[None])[:, 0]                           # [N]
    target = rng.uniform(*PAIR_IOU)
    pair_ok = ious > nms_iou + MIN_MARGIN
    apart = np.flatnonzero(ious == 0.0)
    if not pair_ok.any() or not len(apart):
        return None
    pair_box = boxes[np.argmin(np.where(pair_ok, np.abs(ious - target), np.inf))]
    control_box = boxes[rng.choice(apart)]
    amodal = np.logical_or.reduce(list(person.part_masks.values()))
    visible = np.logical_or.reduce(list(person.visible_part_masks.values()))
    others = np.array([o.bbox for o in base.objects if o.category != "person" and o.bbox is not None
                       and o.visible_area >= 10], float).reshape(-1, 4)
    ys, xs = np.nonzero(mask)
    tight = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)     # the pasted mask's own box
    out = []
    for name, box in (("pair", pair_box), ("control", control_box)):
        image = base.image.copy()
        x0, y0 = int(box[0]), int(box[1])
        region = image[y0:y0 + h_px, x0:x0 + w_px]
        region[mask] = pix[mask]
        pasted = np.zeros((H, W), bool)
        pasted[y0:y0 + h_px, x0:x0 + w_px] = mask
        extent = tight + [x0, y0, x0, y0]
        hidden = 1.0 - float((visible & ~pasted).sum()) / max(int(amodal.sum()), 1)
        gt = np.stack([bbox, extent])
        out.append(Planted(f"{name}{render}-{index:05d}", image, gt, others,
                           float(iou_matrix(gt[:1], gt[1:])[0, 0]), hidden))
    return out[0], out[1]


def nms_check(ci: CandidateImage, g: int, conf: float, nms_iou: float) -> dict:
    """The independent check of person ``g`` of a missed image (module docstring: has_candidate, removed_by_nms,
    recovered, kept_only, winner); reads only boxes, scores and :func:`detection.evaluation.match`."""
    iou = iou_matrix(ci.gt_boxes[g:g + 1], ci.cand_boxes)[0]                         # [K]
    qual = (iou >= MATCH_IOU) & (ci.cand_scores >= conf)
    out = {"has_candidate": bool(qual.any()), "removed_by_nms": False, "recovered": False, "kept_only": False,
           "winner": None}
    if not qual.any():
        return out
    same = (np.abs(ci.cand_boxes[:, None, :] - ci.det_boxes[None, :, :]).max(-1) < SAME_BOX_PX)   # [K, D]
    kept = same.any(1)
    removed = qual & ~kept
    out["kept_only"] = not removed.any()
    over = iou_matrix(ci.cand_boxes, ci.det_boxes) > nms_iou                           # [K, D]
    beaten = over & (ci.det_scores[None, :] >= ci.cand_scores[:, None]) & ~same
    removed &= beaten.any(1)
    out["removed_by_nms"] = bool(removed.any())
    before = match(ci.evaluation())
    for k in np.flatnonzero(removed)[np.argsort(-ci.cand_scores[removed])][:MAX_TRIES]:
        ev = ImageEval(np.vstack([ci.det_boxes, ci.cand_boxes[k:k + 1]]), np.append(ci.det_scores, ci.cand_scores[k]),
                       ci.gt_boxes, ci.gt_ignore)
        if match(ev).found(conf)[g]:
            out["recovered"] = True
            winners = np.flatnonzero(beaten[k])
            d = winners[np.argmax(ci.det_scores[winners])]
            own = iou_matrix(ci.det_boxes[d:d + 1], ci.gt_boxes[g:g + 1])[0, 0]
            out["winner"] = ("partner" if before.det_gt[d] == 1 - g else
                             "mislocalised" if before.det_gt[d] < 0 and 0.1 <= own < MATCH_IOU else "other")
            break
    return out


def run_set(name: str, scenes: list[Planted], detector, person: int, conf: float, nms_iou: float,
            seen: float) -> tuple[SetReport, list[PersonOutcome]]:
    """Detect, label (the project's code) and check one set of planted scenes."""
    images: list[CandidateImage] = []
    types: list[ErrorTypes] = []
    rows: list[PersonOutcome] = []
    for s in range(0, len(scenes), 32):
        chunk = scenes[s:s + 32]
        batch = to_batch([p.image for p in chunk])
        with torch.no_grad():
            cands = detector.candidates(batch)
            dets = detector.detect(batch)
        for b, (p, det) in enumerate(zip(chunk, dets)):
            keep = det.labels.cpu().numpy() == person
            boxes, scores = person_candidates(cands, b, person)
            ci = CandidateImage(gt_boxes=p.gt, det_boxes=det.boxes.cpu().numpy()[keep],
                                det_scores=det.scores.cpu().numpy()[keep], cand_boxes=boxes, cand_scores=scores,
                                other_boxes=p.other)
            t = classify_errors(ci, conf, seen_score=seen)
            images.append(ci)
            types.append(t)
            for g, role in enumerate(("back", "front")):
                row = PersonOutcome(p.image_id, role, p.pair_iou, float(p.gt[g, 3] - p.gt[g, 1]), p.back_occlusion,
                                    str(t.gt_type[g]), float(t.gt_best_iou[g]), float(t.gt_best_score[g]))
                if row.label != "found":
                    for k, v in nms_check(ci, g, conf, nms_iou).items():
                        setattr(row, k, v)
                rows.append(row)
    missed = [r for r in rows if r.label != "found"]
    labels = Counter(r.label for r in missed)
    sup = [r for r in missed if r.label == "suppressed"]
    report = SetReport(
        name=name, scenes=len(scenes), persons=len(rows), missed=len(missed),
        labels={k: labels.get(k, 0) for k in MISS_TYPES},
        labels_by_role={role: {k: sum(r.label == k and r.role == role for r in missed) for k in MISS_TYPES}
                        for role in ("back", "front")},
        suppressed_share=len(sup) / len(missed) if missed else float("nan"),
        nms_caused=sum(r.recovered for r in missed),
        nms_caused_labelled_suppressed=sum(r.recovered and r.label == "suppressed" for r in missed),
        suppressed_not_nms_caused=dict(Counter(
            "kept_only" if r.kept_only else "removed_not_recovered" if r.removed_by_nms else "not_removed_by_nms"
            for r in sup if not r.recovered)),
        has_candidate=sum(r.has_candidate for r in missed),
        winners=dict(Counter(r.winner for r in missed if r.recovered)),
        by_pair_iou=[{"pair_iou": f"[{lo}, {hi})", "persons": sum(lo <= r.pair_iou < hi for r in rows),
                      "missed": sum(lo <= r.pair_iou < hi for r in missed),
                      "suppressed": sum(lo <= r.pair_iou < hi for r in sup)}
                     for lo, hi in IOU_BINS if any(lo <= r.pair_iou < hi for r in rows)],
        pair_iou_min=float(min(p.pair_iou for p in scenes)), pair_iou_max=float(max(p.pair_iou for p in scenes)),
        summary=error_summary(images, conf, seen_score=seen, types=types).to_dict("records"))
    return report, rows


def print_set(r: SetReport, rows: list[PersonOutcome]) -> None:
    print(f"{r.name}: {r.scenes} scenes, {r.persons} persons, pair box IoU {r.pair_iou_min:.3f}-{r.pair_iou_max:.3f};"
          f" missed {r.missed} ({r.missed / max(r.persons, 1):.3f}); labels {r.labels} "
          f"(back {r.labels_by_role['back']}, front {r.labels_by_role['front']}); suppressed share "
          f"{r.suppressed_share:.3f}")
    print(f"  independent check: {r.has_candidate}/{r.missed} missed have a candidate >= conf at IoU >= 0.5; "
          f"NMS-caused (removed by NMS, recovered when put back) {r.nms_caused}, of which labelled suppressed "
          f"{r.nms_caused_labelled_suppressed} (suppressed by: {r.winners}); "
          f"labelled suppressed but not NMS-caused: {r.suppressed_not_nms_caused}")
    print(f"  by pair box IoU: {r.by_pair_iou}")
    for t in MISS_TYPES:
        sel = [x for x in rows if x.label == t]
        if sel:
            print(f"  {t}: {len(sel)}, median best IoU {np.nanmedian([x.best_iou for x in sel]):.2f}, best score "
                  f"{np.nanmedian([x.best_score for x in sel]):.2f}, back-person occlusion "
                  f"{np.median([x.back_occlusion for x in sel]):.2f}, NMS-caused {sum(x.recovered for x in sel)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1, help="plant seed; 0 is the one looked at while writing this")
    parser.add_argument("--scenes", type=int, default=1000, help="scene indices tried (those that qualify are used)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/miss_types.json")
    args = parser.parse_args()
    start = time.perf_counter()
    device = start_run(args.threads)
    params = load_params(check_files=False)
    spec = params.infer.detectors[0]
    detector = load_detector(device)
    person = detector.class_names.index("person")
    conf, nms_iou = detector.conf, detector.iou
    seen = min(SEEN_SCORE, conf)
    base_cfg, donor_cfg = scene_configs(params.pull.synthetic)
    planted = [p for p in (plant(args.seed, i, base_cfg, donor_cfg, nms_iou) for i in range(args.scenes)) if p]
    pairs, controls = [p[0] for p in planted], [p[1] for p in planted]
    if not pairs:
        raise RuntimeError(f"no scene of plant seed {args.seed} qualified out of {args.scenes}")
    if min(p.pair_iou for p in pairs) <= nms_iou or max(p.pair_iou for p in controls) > 0.0:
        raise AssertionError("a planted pair does not exceed the NMS IoU, or a control pair overlaps")
    print(f"plant seed {args.seed} (render seeds {PLANT_SEED + 10 * args.seed}, +1, +2): {len(pairs)} of "
          f"{args.scenes} scenes qualify; detector {spec.weights} conf {conf} NMS IoU {nms_iou}, seen_score {seen}")
    reports, outcomes = {}, {}
    for name, scenes in (("pairs", pairs), ("control", controls)):
        report, rows = run_set(name, scenes, detector, person, conf, nms_iou, seen)
        print_set(report, rows)
        reports[name], outcomes[name] = report, rows
    pr = reports["pairs"]
    nms_caused = [r for r in outcomes["pairs"] if r.recovered]
    targets = {"pairs_suppressed_share_ge_0.9": bool(pr.suppressed_share >= 0.9),
               "nms_caused_labelled_suppressed_ge_0.9":
                   bool(pr.nms_caused_labelled_suppressed >= 0.9 * len(nms_caused)) if nms_caused else None}
    seconds = time.perf_counter() - start
    print(f"targets {targets}; {seconds:.0f} s")
    write_results(args.out, {
        "args": vars(args), "detector_weights": spec.weights, "detector_sha256_12": file_digest(spec.weights),
        "conf": conf, "nms_iou": nms_iou, "seen_score": seen,
        "plant": {"render_seeds": [PLANT_SEED + 10 * args.seed + k for k in range(3)], "height": HEIGHT,
                  "pair_iou_target": PAIR_IOU, "min_margin": MIN_MARGIN, "scale": SCALE, "feet": FEET},
        "sets": {k: asdict(v) for k, v in reports.items()},
        "missed": {k: [asdict(r) for r in v if r.label != "found"] for k, v in outcomes.items()},
        "targets": targets, "seconds": seconds})


if __name__ == "__main__":
    main()
