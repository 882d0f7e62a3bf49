"""Where the audited detector fails, and what it was looking at: the evaluate stage's join of per-pedestrian
detector errors with the dataset-scale explanations.

For every ground-truth pedestrian (non-crowd, the audited detector's person class) it builds one row of
*targets × attributes × outcomes*: the attributes pulled for it (drawn by the synthetic generator, computed from
boxes and pixels, the user's own: :mod:`detection.attributes`), whether the detector missed it (the one found rule
of infer's recall and explain's targets: :func:`detection.evaluation.match`, one-to-one at IoU >= 0.5, score >= the
detector's conf) and, for the pedestrians explained by the default body-part job, each part's and the context's
share of |relevance| (as the report computes it). Then

* :func:`detection.slices.find_slices` (SliceLine lattice search, bootstrap intervals, Benjamini–Hochberg q-values)
  finds the attribute slices where the miss rate is highest, and where the context share and the two parts with the
  largest mean share deviate most (either way) -> the ``slices`` table;
* MR⁻² (:func:`detection.miss_rate.subset_miss_rates`, CityPersons' Reasonable / small / heavy-occlusion / all
  subsets, heights in pixels as given, image-bootstrap 95 % intervals) over infer's detections of the audited
  detector (stored down to infer's EVAL_CONF), and each subset's miss rate vs FPPI curve read at 33 FPPI values
  (the summary's ``mr_fppi``: ``{subset: {"fppi": [...], "miss_rate": [...]}}``, 4 significant digits; the
  report's log-log figure);
* every missed pedestrian gets a type from the detector's candidates before NMS (:mod:`detection.miss_types`:
  suppressed / below_threshold / mislocalised / never_seen), the candidates computed once per image that has a
  missed pedestrian -> the ``misses`` table, and the type summary with TIDE-style AP / miss-rate gains.

Pedestrians below ``explain.min_height`` are in the miss-rate slices and MR⁻² (they are annotated) but have no
relevance shares (they were not explained).
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from detection.attributes import KEYS, attribute_frame, non_crowd
from detection.datasets.tables import rows_to_table
from detection.evaluation import MATCH_IOU, ImageEval, match
from detection.miss_rate import (
    CITYPERSONS_SUBSETS,
    CURVE_FPPI,
    MissRateCurve,
    counted_miss_rates,
    join_counts,
    subset_counts,
)
from detection.miss_types import CandidateImage, ErrorTally, classify_errors, person_candidates
from detection.slices import SliceConfig, find_slices, slice_mask
from tasks.memory import release_freed_memory
from tasks.model_cache import detector_model, load_image, task_device
from tasks.params import Params
from tasks.part_shares import part_shares as compute_part_shares

SEEN_SCORE = 0.05     # candidates scoring below this (or below conf, if lower) are background for the miss types
CONTEXT = "context"
MISSED = "missed"
SLICE_CONFIG = SliceConfig(n_boot=1000)      # 1000 resamples: intervals to about +-0.01 at a few hundred persons
TOP_PARTS = 2                                 # body parts (largest mean share) whose share is sliced too
MR2_BOOT = 300                                # image-bootstrap resamples of each MR⁻²
MR2_SUBSETS = ("reasonable", "small", "heavy_occlusion")
DROP_COLUMNS = {*KEYS, "shirt_rgb", "pants_rgb"}   # keys; RGB triples (their named colours are columns)
NO_GT = ("the dataset has no annotated pedestrians of the audited detector's person class, so misses, miss "
         "rates and MR⁻² cannot be computed")


def share_column(part: str) -> str:
    return f"share:{part}"


# ---------------------------------------------------------------------------------------------------- outcomes
def _by_image(table: pa.Table) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in table.to_pylist():
        out.setdefault(r["image_id"], []).append(r)
    return out


def _boxes_by_image(table: pa.Table):
    """image_id -> (boxes [D, 4], scores [D]) of ``table``'s rows of that image, in table order (empty arrays for an
    image without rows): one sort and two arrays for the whole table, not a Python dict per row."""
    ids = table["image_id"].to_numpy(zero_copy_only=False).astype(object)
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    boxes = np.asarray(table["bbox"].combine_chunks().flatten().to_numpy(zero_copy_only=False), float).reshape(-1, 4)
    boxes, scores = boxes[order], table["score"].to_numpy(zero_copy_only=False).astype(float)[order]

    def rows(image_id: str) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = np.searchsorted(ids, image_id, "left"), np.searchsorted(ids, image_id, "right")
        return boxes[lo:hi], scores[lo:hi]
    return rows


def _person_detections(detections: pa.Table, model_id: str, person_class: str) -> pa.Table:
    keep = pc.and_(pc.equal(detections["model_id"], model_id), pc.equal(detections["category"], person_class))
    return detections.filter(keep).select(["image_id", "score", "bbox"])


def person_outcomes(annotations: pa.Table, detections: pa.Table, model_id: str, person_class: str,
                    conf: float) -> pd.DataFrame:
    """One row per non-crowd ground-truth ``person_class`` annotation (annotation order): ``image_id, ann_id,
    height`` (box, px), ``occlusion``, ``missed`` (0 / 1: no one-to-one match at IoU >= MATCH_IOU scoring >=
    ``conf``, the rule of explain's targets and infer's recall) and ``score`` (its matched detection's, 0 if none)."""
    persons = non_crowd(annotations, person_class)
    dets = _boxes_by_image(_person_detections(detections, model_id, person_class))
    rows = []
    for image_id, gt in _by_image(persons.select(["image_id", "ann_id", "bbox", "occlusion"])).items():
        g_boxes = np.array([a["bbox"] for a in gt], float).reshape(-1, 4)
        m = match(ImageEval(*dets(image_id), g_boxes), MATCH_IOU)
        found = m.found(conf)
        for gi, a in enumerate(gt):
            rows.append({"image_id": image_id, "ann_id": a["ann_id"], "height": g_boxes[gi, 3] - g_boxes[gi, 1],
                         "occlusion": a["occlusion"], "missed": float(not found[gi]),
                         "score": float(m.gt_score[gi]) if m.gt_det[gi] >= 0 else 0.0})
    return pd.DataFrame(rows, columns=["image_id", "ann_id", "height", "occlusion", "missed", "score"])


def default_part_job(explanations: pa.Table) -> str | None:
    """The job whose part shares are sliced: the first job (in table order) explaining ground-truth persons with
    body-part relevance whose method estimates Shapley values, else the first such job; None when there is none
    (the report's main job, for persons)."""
    from explainers.registry import METHODS

    sel = explanations.select(["job", "method"]).filter(pc.and_(pc.equal(explanations["kind"], "persons"),
                                                                pc.is_valid(explanations["relevance"])))
    pairs = sel.group_by("job", use_threads=False).aggregate([("method", "last")])
    jobs = dict(zip(pairs["job"].to_pylist(), pairs["method_last"].to_pylist()))  # jobs first-seen, last method
    shapley = [j for j, m in jobs.items() if m in METHODS and METHODS[m].shapley_values]
    return shapley[0] if shapley else next(iter(jobs), None)


def part_shares(explanations: pa.Table, job: str) -> pd.DataFrame:
    """Wide table (``image_id, ann_id``, one ``share:<part>`` column per region, in the order regions first appear)
    of ``job``'s persons with relevance and region names: each region's share of the target's |relevance|
    (:func:`tasks.part_shares.part_shares`, the report's number; NaN for a region the target lacks)."""
    shares = compute_part_shares(explanations, job=job, kinds=("persons",))
    if shares.targets.num_rows == 0:
        return pd.DataFrame(columns=list(KEYS))
    t = shares.targets
    return pd.concat([pd.DataFrame({"image_id": t["image_id"].to_pandas(), "ann_id": t["target_id"].to_pandas()}),
                      pd.DataFrame(shares.wide(), columns=[share_column(n) for n in shares.parts])], axis=1)


def outcome_table(annotations: pa.Table, detections: pa.Table, drawn: pa.Table | None, computed: pa.Table | None,
                  user: pa.Table | None, shares: pd.DataFrame, model_id: str, person_class: str,
                  conf: float) -> tuple[pd.DataFrame, list[str]]:
    """(targets × attributes × outcomes, the attribute columns): one row per ground-truth pedestrian with its
    attributes, ``missed``, ``score`` and the ``share:*`` columns (NaN where not explained)."""
    outcomes = person_outcomes(annotations, detections, model_id, person_class, conf)
    attrs = attribute_frame(annotations, drawn, computed, category=person_class)
    if user is not None:
        attrs = attrs.merge(user.to_pandas().astype({k: str for k in KEYS}), on=list(KEYS), how="left")
    columns = [c for c in attrs.columns if c not in DROP_COLUMNS and _sliceable(attrs[c])]
    frame = outcomes.drop(columns=["occlusion"]).merge(attrs, on=list(KEYS), how="left")
    frame = frame.merge(shares.astype({k: str for k in KEYS}), on=list(KEYS), how="left")
    return frame, columns


def _sliceable(values: pd.Series) -> bool:
    """A column slices can use: scalar values (not lists) taking at least two distinct values."""
    present = values.dropna()
    if present.empty or isinstance(present.iloc[0], (list, tuple, np.ndarray)):
        return False
    return present.nunique() > 1


# ---------------------------------------------------------------------------------------------------- slices
def slice_rows(frame: pd.DataFrame, columns: list[str], job: str | None,
               config: SliceConfig = SLICE_CONFIG) -> pd.DataFrame:
    """The ``slices`` table: find_slices for the miss rate (higher), the context share and the :data:`TOP_PARTS`
    body parts with the largest mean share (either direction), each slice with the mean context share of its
    explained pedestrians and of the rest."""
    outcomes = [(MISSED, None, "higher")]
    shares = [c for c in frame.columns if c.startswith("share:")]
    if job is not None and shares:
        body = frame[[c for c in shares if c != share_column(CONTEXT)]].mean().sort_values(ascending=False)
        outcomes += [(c, job, "both") for c in ([share_column(CONTEXT)] if share_column(CONTEXT) in shares else [])
                     + list(body.index[:TOP_PARTS])]
    ctx = frame[share_column(CONTEXT)].to_numpy(float) if share_column(CONTEXT) in frame else None
    out = []
    for outcome, source, direction in outcomes:
        cfg = config.model_copy(update={"direction": direction})
        y = frame[outcome].to_numpy(float)
        found = find_slices(frame[columns], y, cfg)
        if found.empty:
            continue
        ref = frame.loc[np.isfinite(y), columns]
        found = found.assign(outcome=outcome, job=source, rank=np.arange(1, len(found) + 1))
        inside_ctx, rest_ctx = [], []
        for preds in found["predicates"]:
            mask = np.zeros(len(frame), bool)
            mask[np.flatnonzero(np.isfinite(y))] = slice_mask(ref, preds, cfg)
            c = np.full(len(frame), np.nan) if ctx is None else ctx
            inside_ctx.append(np.nanmean(c[mask]) if np.isfinite(c[mask]).any() else np.nan)
            rest_ctx.append(np.nanmean(c[~mask]) if np.isfinite(c[~mask]).any() else np.nan)
        found["context_share"], found["context_share_rest"] = inside_ctx, rest_ctx
        found["predicates"] = found["predicates"].map(json.dumps)
        out.append(found)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


# ---------------------------------------------------------------------------------------------------- MR-2
IMAGE_BATCH = 2048     # images matched / typed at a time (MR-2, miss types): one batch's per-image objects in memory


def _image_batches(images: pa.Table, tables: dict[str, pa.Table], batch: int):
    """Yield (the ``images`` rows [s, s + batch), {name: the rows of ``tables[name]`` of those images, in table
    order}) for s = 0, batch, 2 batch, ...: each table is grouped once by its images' positions (rows of an image not
    in ``images`` are dropped), so the batches together cost one pass, not one filter of the whole table each."""
    grouped = {}
    for name, table in tables.items():
        pos = pc.fill_null(pc.index_in(table["image_id"], value_set=images["image_id"]), -1).to_numpy().astype(np.int64)
        order = np.argsort(pos, kind="stable")
        grouped[name] = (table.take(pa.array(order)), pos[order])
    for s in range(0, images.num_rows, batch):
        rows = images.slice(s, batch)
        yield rows, {name: t.slice(lo, hi - lo) for name, (t, p) in grouped.items()
                     for lo, hi in [np.searchsorted(p, [s, s + batch])]}


def miss_rates(images: pa.Table, annotations: pa.Table, detections: pa.Table, model_id: str, person_class: str,
               n_boot: int = MR2_BOOT, seed: int = 0) -> dict[str, dict]:
    """MR⁻² with bootstrap intervals on CityPersons' Reasonable, small and heavy-occlusion subsets over every image
    (crowd annotations: ignore regions; visibility = 1 - occlusion, unknown = visible; NaN values as None), each
    with ``curve``: its miss rate vs FPPI read at :data:`detection.miss_rate.CURVE_FPPI`
    (:class:`detection.miss_rate.MissRateCurve`). Images are matched :data:`IMAGE_BATCH` at a time
    (:func:`detection.miss_rate.subset_counts`), so memory holds one batch's per-image objects and the dataset's
    per-detection counts (~17 bytes a detection per subset)."""
    subsets = {k: CITYPERSONS_SUBSETS[k] for k in MR2_SUBSETS}
    tables = {"gt": annotations.filter(pc.equal(annotations["category"], person_class))
              .select(["image_id", "bbox", "iscrowd", "occlusion"]),
              "dets": _person_detections(detections, model_id, person_class)}
    batches: dict[str, list] = {k: [] for k in subsets}
    for batch, parts in _image_batches(images.select(["image_id"]), tables, IMAGE_BATCH):
        gt, dets = _by_image(parts["gt"]), _boxes_by_image(parts["dets"])
        evals = []
        for image_id in batch["image_id"].to_pylist():
            g = gt.get(image_id, [])
            occ = np.array([np.nan if a["occlusion"] is None else a["occlusion"] for a in g], float)
            evals.append(ImageEval(*dets(image_id), np.array([a["bbox"] for a in g], float).reshape(-1, 4),
                                   np.array([bool(a["iscrowd"]) for a in g], bool), {"visibility": 1.0 - occ}))
        for k, c in subset_counts(evals, subsets).items():
            batches[k].append(c)
    rates = counted_miss_rates({k: join_counts(v) for k, v in batches.items()}, n_boot=n_boot, seed=seed,
                               curve_points=CURVE_FPPI)
    return {k: {m: None if isinstance(v, float) and not np.isfinite(v) else v for m, v in r.items()}
            for k, r in rates.items()}


# ---------------------------------------------------------------------------------------------------- miss types
def _candidates(params: Params, images: list[dict], errors: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """image_id -> (boxes [K, 4], person scores [K]) of the audited detector's candidates before NMS, for ``images``
    (``images`` rows), batched by image size in ``explain.chunk_size`` images; unreadable images get an ``errors``
    row and no entry. Memory: one batch of decoded images at a time (a first pass decodes each image once, on the
    CPU, only to learn whether it loads and its size, so the batches are the same as when every image was held).
    The detector's batches are formed within ``images``: :func:`miss_types` passes one :data:`IMAGE_BATCH` at a
    time, so for a model whose outputs depend on a batch's make-up in their last bits (as with ``chunk_size``) the
    scores can differ in those bits from a call with every image."""
    spec = params.explain_detector()
    device = task_device(params.explain.device)
    groups: dict[tuple[int, int], list[dict]] = {}
    for img in images:
        image = load_image(img, "evaluate", "cpu", errors)
        if image is not None:
            groups.setdefault(tuple(image.shape[-2:]), []).append(img)
        del image
    if not groups:
        return {}
    detector = detector_model(spec.model_dump_json(), device, params.explain.chunk_size)
    person = detector.class_names.index(spec.person_class)
    out = {}
    chunk = params.explain.chunk_size
    for group in groups.values():
        for s in range(0, len(group), chunk):
            loaded = [(img["image_id"], load_image(img, "evaluate", device, errors)) for img in group[s:s + chunk]]
            loaded = [(i, x) for i, x in loaded if x is not None]     # unreadable since the first pass: in errors
            if not loaded:
                continue
            with torch.no_grad():
                cands = detector.candidates(torch.stack([x for _, x in loaded]))
            out.update({iid: person_candidates(cands, b, person) for b, (iid, _) in enumerate(loaded)})
            del loaded, cands
    return out


NO_CANDIDATES = (np.zeros((0, 4)), np.zeros(0))     # (boxes, scores): an image typed from its final detections


def candidate_image(annotations: list[dict], detections: list[dict], person_class: str,
                    candidates: tuple[np.ndarray, np.ndarray] = NO_CANDIDATES) -> tuple[list[dict], CandidateImage]:
    """One image's persons (annotations of ``person_class``, crowds included) and the
    :class:`~detection.miss_types.CandidateImage` that types its errors: its person detections (any score), the
    candidates before NMS when given (boxes [K, 4], scores [K]; none: final detections only) and the other classes'
    non-crowd boxes (confusions)."""
    persons = [x for x in annotations if x["category"] == person_class]
    other = [x["bbox"] for x in annotations if x["category"] != person_class and not x["iscrowd"]]
    boxes, scores = candidates
    return persons, CandidateImage(gt_boxes=[x["bbox"] for x in persons], det_boxes=[x["bbox"] for x in detections],
                                   det_scores=[x["score"] for x in detections], cand_boxes=boxes, cand_scores=scores,
                                   gt_ignore=[bool(x["iscrowd"]) for x in persons], other_boxes=other)


def miss_types(params: Params, images: pa.Table, annotations: pa.Table, detections: pa.Table,
               outcomes: pd.DataFrame, errors: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per missed pedestrian with its type, the type summary of :func:`detection.miss_types.error_summary`)
    at the audited detector's conf. The detector's candidates before NMS are computed once per image with a missed
    pedestrian; other images keep their final detections only (enough to type their false positives). An
    unreadable image adds an ``errors`` row and is left out (its misses stay untyped). Images are typed
    :data:`IMAGE_BATCH` at a time and summarised with :class:`detection.miss_types.ErrorTally`, so memory
    holds one batch's candidates (thousands per image for a real detector) and per-image objects, not the dataset's."""
    spec = params.explain_detector()
    seen = min(SEEN_SCORE, spec.conf)           # candidates below this are background (never above the threshold)
    with_miss = set(outcomes.loc[outcomes["missed"] > 0, "image_id"])
    tables = {"anns": annotations.select(["image_id", "ann_id", "category", "bbox", "iscrowd", "occlusion"]),
              "dets": _person_detections(detections, spec.id, spec.person_class)}
    tally, rows = ErrorTally(), []
    for batch, parts in _image_batches(images.select(["image_id", "uri"]), tables, IMAGE_BATCH):
        anns, dets = _by_image(parts["anns"]), _by_image(parts["dets"])
        rows_img = batch.to_pylist()
        cands = _candidates(params, [r for r in rows_img if r["image_id"] in with_miss], errors)
        cand_images, types = [], []
        for img in rows_img:
            i = img["image_id"]
            if i in with_miss and i not in cands:
                continue                                                # unreadable: in errors
            persons, ci = candidate_image(anns.get(i, []), dets.get(i, []), spec.person_class,
                                          cands.get(i, NO_CANDIDATES))
            t = classify_errors(ci, spec.conf, seen_score=seen)
            cand_images.append(ci)
            types.append(t)
            rows.extend({"image_id": i, "ann_id": x["ann_id"], "miss_type": t.gt_type[g], "best_iou": t.gt_best_iou[g],
                         "best_score": t.gt_best_score[g], "height": x["bbox"][3] - x["bbox"][1],
                         "occlusion": x["occlusion"]}
                        for g, x in enumerate(persons) if t.gt_type[g] not in ("found", "ignored"))
        tally.add(cand_images, types)
    misses = pd.DataFrame(rows, columns=["image_id", "ann_id", "miss_type", "best_iou", "best_score", "height",
                                         "occlusion"])
    return misses, tally.summary()


# ---------------------------------------------------------------------------------------------------- the task
def _records(frame: pd.DataFrame) -> list[dict]:
    return [{k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in r.items()}
            for r in frame.to_dict("records")]


@task(cache_policy=NO_CACHE)
def where_it_fails(params: Params, images: pa.Table, annotations: pa.Table, detections: pa.Table,
                   explanations: pa.Table, drawn: pa.Table | None, computed: pa.Table | None,
                   user: pa.Table | None) -> tuple[dict[str, pa.Table], list[dict], dict]:
    """(``slices`` / ``misses`` tables, errors rows, the summary for metrics/evaluate.json). Without ground truth
    (no annotation of the audited detector's person class) both tables are empty and the summary says why."""
    spec = params.explain_detector()
    empty = {"slices": rows_to_table([], "slices"), "misses": rows_to_table([], "misses")}
    if not pc.any(pc.equal(annotations["category"], spec.person_class)).as_py():
        return empty, [], {"ground_truth": False, "reason": NO_GT}
    job = default_part_job(explanations)
    shares = part_shares(explanations, job) if job else pd.DataFrame(columns=list(KEYS))
    frame, columns = outcome_table(annotations, detections, drawn, computed, user, shares, spec.id,
                                   spec.person_class, spec.conf)
    release_freed_memory()             # each section's transient arrays handed back before the next one's
    slices = slice_rows(frame, columns, job)
    release_freed_memory()
    errors: list[dict] = []
    misses, types = miss_types(params, images, annotations, detections, frame, errors)
    release_freed_memory()
    rates = miss_rates(images, annotations, detections, spec.id, spec.person_class, seed=params.seed)
    mr2 = {k: {m: v for m, v in r.items() if m != "curve"} for k, r in rates.items()}
    curves: dict[str, MissRateCurve] = {k: r["curve"] for k, r in rates.items()}
    tables = {"slices": rows_to_table(_records(slices.drop(columns=["redundant_of"], errors="ignore")), "slices")
              if len(slices) else empty["slices"],
              "misses": rows_to_table(_records(misses), "misses") if len(misses) else empty["misses"]}
    by_outcome = {o: {"slices": int((slices["outcome"] == o).sum()),
                      "significant": int(((slices["outcome"] == o) & slices["significant"]).sum())}
                  for o in dict.fromkeys(slices["outcome"])} if len(slices) else {}
    top = slices[(slices["outcome"] == MISSED) & slices["significant"]].head(3) if len(slices) else slices
    summary = {"ground_truth": True, "persons": len(frame), "explained": int(frame[share_column(CONTEXT)].notna().sum())
               if share_column(CONTEXT) in frame else 0, "miss_rate": float(frame["missed"].mean()) if len(frame)
               else None, "conf": spec.conf, "job": job, "attributes": columns, "slices": by_outcome,
               "top_miss_slices": [{"slice": r["slice"], "miss_rate": r["mean"], "low": r["ci_low"],
                                    "high": r["ci_high"], "rest": r["rest_mean"], "size": int(r["size"]),
                                    "q_value": r["q_value"]} for r in _records(top)],
               "mr2": mr2, "mr2_note": "CityPersons subsets, heights in px as annotated (scale 1), image bootstrap",
               "mr_fppi": {k: c.to_lists() for k, c in curves.items()},
               "miss_types": _records(types)}
    return tables, errors, summary
