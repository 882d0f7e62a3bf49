"""Tasks of the explain stage: which targets each image has, and one shard of images explained by every configured
job. A shard's files are written atomically and marked done last, so a re-run after a crash skips finished shards
and recomputes only the rest; every explanation is seeded from (seed, image, target, job), never from run order.

Incremental re-audits: every explanation *group* (one target of a body-part job whose method plays one target per
call; all targets of an image of a shared-forward job, ``shared_by``: :func:`shares_forwards`) is keyed by what its
rows depend on (:func:`group_key`: image bytes, targets, body-part masks, model weights, job, seed,
``saliency_size`` / ``chunk_size``, the job's code) and stored in the result store (tasks.result_store); a shard task
reuses stored groups and computes only the others, in the same order, so its files equal a from-scratch run's. A
task gets an :class:`ExplainShard` (image ids and table paths) and reads its own rows (:func:`read_items`)."""
from __future__ import annotations

import functools
import hashlib
import json
import time
from pathlib import Path
from typing import TypedDict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from detection.datasets.records import error_row
from detection.datasets.tables import SCHEMAS, rows_to_table, write_table_atomic
from detection.evaluation import MATCH_IOU, ImageEval, match
from detection.masks import rle_decode
from detection.models.specs import model_sha256
from explainers.base import BudgetError, has_pixel
from explainers.metrics import downsample
from explainers.regions import grid_regions, superpixels
from explainers.registry import METHODS
from explainers.sag import Sag
from tasks import stages
from tasks.model_cache import classifier_scorer, classifier_view, detection_scorer, load_image, task_device
from tasks.params import ExplainJob, ExplainParams, Params
from tasks.result_store import Reuse, digest, files_digest, store_for
from tasks.shards import mark_done, shard_name
from tasks.stage_deps import ROOT as STAGE_ROOT
from tasks.stage_deps import Entry, module_closure, module_file, stage_code_files
from tasks.timings import write_shard_timing

IMAGE_COLUMNS = ["image_id", "uri", "split", "height", "width"]


class ExplainItem(TypedDict):
    """One image of an explain shard: its ``images`` row (IMAGE_COLUMNS), its ``targets`` rows (every kind), and the
    ``parts`` rows of those targets that have body parts (masks as RLE)."""

    image: dict
    targets: list[dict]
    parts: list[dict]


def shard_items(images: pa.Table, targets: pa.Table, parts: pa.Table | None) -> list[ExplainItem]:
    """The images that have targets, in image order, each with its targets and their body parts (``parts``: the
    parts stage's table, or None when no target has body parts)."""
    items = {r["image_id"]: ExplainItem(image=r, targets=[], parts=[])
             for r in images.select(IMAGE_COLUMNS).to_pylist()}
    target_rows = targets.to_pylist()
    for t in target_rows:
        items[t["image_id"]]["targets"].append(t)
    wanted = {(t["parts_model"], t["parts_id"]) for t in target_rows if t["parts_id"] is not None}
    for p in parts.to_pylist() if wanted and parts is not None else []:
        if (p["model_id"], p["det_id"]) in wanted:
            items[p["image_id"]]["parts"].append(p)
    return [i for i in items.values() if i["targets"]]


# ---------------------------------------------------------------------------------------------------- targets
def _person_rows(annotations: pa.Table, category: str = "person") -> dict[str, list[dict]]:
    """The ``category`` annotations per image, crowd regions included (they are ignore regions of the matching)."""
    persons: dict[str, list[dict]] = {}
    for a in annotations.filter(pc.equal(annotations["category"], category)).to_pylist():
        persons.setdefault(a["image_id"], []).append(a)
    return persons


def build_targets(params: Params, images: pa.Table, annotations: pa.Table, detections: pa.Table,
                  classes: list[str]) -> pa.Table:
    """One row per thing to explain, with the attributes the report breaks relevance down by: ground-truth persons
    (found or missed, and the score of the detection matched to them, 0 if none), the detector's person
    detections above its threshold (true or false positives) and the classifier's classes (label present,
    spurious cue). Found / missed and true positives follow the one rule of infer's recall,
    ``detection.evaluation.match`` / ``found`` (one-to-one, IoU >= MATCH_IOU, score >= the detector's conf), so
    that the missed count is the GT count minus the true positives. A dataset with no ground truth of the person
    class (a folder of photos) leaves a detection's ``found`` / ``label_present`` null (unknown), not False; so does
    a detection on a crowd region (``iscrowd``: an ignore region, as in infer's AP), and crowds are never targets."""
    spec = params.explain_detector()
    ground_truth = bool(pc.any(pc.equal(annotations["category"], spec.person_class)).as_py())
    persons = annotations.filter(pc.equal(annotations["category"], spec.person_class))
    mine = detections.filter(pc.and_(pc.equal(detections["model_id"], spec.id),
                                     pc.equal(detections["category"], spec.person_class)))
    mine = mine.drop_columns([c for c in ("keypoints",) if c in mine.column_names])
    pieces = []
    for start in range(0, max(images.num_rows, 1), TARGETS_BATCH):    # one batch of images' rows in Python at a time
        batch = images.slice(start, TARGETS_BATCH)
        ids = batch["image_id"]
        pieces.append(_image_targets(params, batch, persons.filter(pc.is_in(persons["image_id"], value_set=ids)),
                                     mine.filter(pc.is_in(mine["image_id"], value_set=ids)), classes, ground_truth))
    return pa.concat_tables(pieces).combine_chunks()


TARGETS_COLUMNS = {"images": ["image_id", "split", "labels", "spurious_cue"],
                   "annotations": ["image_id", "ann_id", "category", "bbox", "iscrowd", "occlusion"],
                   "detections": ["image_id", "det_id", "model_id", "category", "score", "above_conf", "bbox",
                                  "class_probs"]}
"""The columns of the pulled / inferred tables :func:`build_targets` reads (the explain flow reads no others:
not the keypoints, masks or hashes)."""


def read_targets_inputs(images: str | Path, annotations: str | Path, detections: str | Path
                        ) -> tuple[pa.Table, pa.Table, pa.Table]:
    """The :data:`TARGETS_COLUMNS` of the images, annotations and detections Parquet files, with their schemas."""
    return tuple(pq.read_table(path, columns=TARGETS_COLUMNS[name], schema=SCHEMAS[name])
                 for name, path in (("images", images), ("annotations", annotations), ("detections", detections)))


TARGETS_BATCH = 2048
"""Images whose targets :func:`build_targets` builds together (their annotation and detection rows as Python
objects): the flow's memory stays flat in the dataset's size."""


def _image_targets(params: Params, images: pa.Table, persons: pa.Table, detections: pa.Table, classes: list[str],
                   ground_truth: bool) -> pa.Table:
    """:func:`build_targets` for ``images`` given their ``persons`` (annotations of the detector's person class)
    and ``detections`` (the audited detector's person detections); ``ground_truth``: the dataset has persons."""
    cfg = params.explain
    spec = params.explain_detector()
    kinds = {j.targets for j in cfg.jobs}
    all_persons = _person_rows(persons, spec.person_class)
    dets: dict[str, list[dict]] = {}
    for d in detections.to_pylist():
        dets.setdefault(d["image_id"], []).append(d)
    rows = []
    for img in images.to_pylist():
        iid = img["image_id"]
        gt, found_dets = all_persons.get(iid, []), dets.get(iid, [])
        g_boxes = np.array([a["bbox"] for a in gt], float).reshape(-1, 4)
        d_boxes = np.array([d["bbox"] for d in found_dets], float).reshape(-1, 4)
        d_scores = np.array([d["score"] for d in found_dets], float)
        crowd = np.array([bool(a["iscrowd"]) for a in gt], bool)
        matching = match(ImageEval(d_boxes, d_scores, g_boxes, crowd), MATCH_IOU)
        is_found = matching.found(spec.conf)
        base = {"image_id": iid, "split": img["split"]}
        if "persons" in kinds:
            for gi, a in enumerate(gt):
                h = a["bbox"][3] - a["bbox"][1]
                if crowd[gi] or h < cfg.min_height:
                    continue
                score = float(matching.gt_score[gi]) if matching.gt_det[gi] >= 0 else 0.0
                rows.append({**base, "target_id": a["ann_id"], "kind": "persons", "model_id": spec.id,
                             "category": spec.person_class, "bbox": a["bbox"], "height": h,
                             "occlusion": a["occlusion"], "found": bool(is_found[gi]),
                             "score": score, "label_present": True,
                             "spurious_cue": img["spurious_cue"], "parts_id": a["ann_id"], "parts_model": "gt"})
        if "detections" in kinds:
            for di, d in enumerate(found_dets):
                h = d["bbox"][3] - d["bbox"][1]
                if not d["above_conf"] or h < cfg.min_height:
                    continue
                gi = int(matching.det_gt[di])
                tp = bool(matching.det_tp[di]) if ground_truth and not matching.det_ignored[di] else None
                rows.append({**base, "target_id": d["det_id"], "kind": "detections", "model_id": spec.id,
                             "category": d["category"], "bbox": d["bbox"], "height": h,
                             "occlusion": gt[gi]["occlusion"] if tp else None, "found": tp, "score": d["score"],
                             "class_probs": d["class_probs"], "label_present": tp,
                             "spurious_cue": img["spurious_cue"], "parts_id": d["det_id"], "parts_model": spec.id})
        if "classes" in kinds:
            labels = img["labels"]
            for c in classes:
                rows.append({**base, "target_id": f"class:{c}", "kind": "classes",
                             "model_id": params.infer.classifier.id, "category": c,
                             "label_present": None if labels is None else c in labels,
                             "spurious_cue": img["spurious_cue"]})
    return rows_to_table(rows, "targets")


def code_files() -> list[Path]:
    """The source an explanation's numbers depend on: the explain stage's code deps in dvc.yaml, i.e. every project
    module the stage imports (:func:`tasks.stage_deps.stage_code_files`), absolute paths, sorted."""
    return [STAGE_ROOT / f for f in stage_code_files("explain")]


def config_hash(params: Params, input_files: list[str | Path]) -> str:
    """What an explain run's rows depend on: its params, the seed, the audited detector / classifier specs, the
    content of its input tables and weights, and the code that computes them. A different hash means the stored
    shards are stale."""
    h = hashlib.sha256(json.dumps([params.seed, params.explain.model_dump(mode="json", exclude={"runner", "cache_dir"}),
                                   params.explain_detector().model_dump(mode="json"),
                                   None if params.infer.classifier is None else
                                   params.infer.classifier.model_dump(mode="json")], sort_keys=True).encode())
    for f in [*input_files, *code_files()]:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def explanation_seed(seed: int, image_id: str, target_id: str, job: str) -> int:
    """Each explanation's seed depends on what it explains, not on which worker or in what order it ran."""
    digest = hashlib.sha256(f"{seed}|{image_id}|{target_id}|{job}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _regions(job: ExplainJob, image: torch.Tensor, parts: dict[str, torch.Tensor] | None):
    """(names, masks [R, H, W]) for a job: the target's non-empty body parts, superpixels or grid cells."""
    H, W = image.shape[-2:]
    if job.regions == "parts":
        names = [n for n, m in parts.items() if bool(has_pixel(m, (0, 1)))]
        return names, torch.stack([parts[n] for n in names]).to(image.device) if names else None
    if job.regions == "superpixels":
        masks = superpixels(image, job.n_regions).to(image.device)
    else:
        rows = max(1, round((job.n_regions * H / W) ** 0.5))
        masks = grid_regions(H, W, rows, max(1, round(job.n_regions / rows)), image.device)
    return [f"r{i:03d}" for i in range(masks.shape[0])], masks


def _check_players(players: tuple[str, ...], parts: dict[str, torch.Tensor]) -> None:
    """Raises ValueError naming the body parts that are no ``players`` of a trained file (the parts stage's
    grouping is not the trained one)."""
    unknown = sorted(set(parts) - set(players))
    if unknown:
        raise ValueError(f"body parts {unknown} are no players of the trained file ({list(players)}): its grouping "
                         f"is not parts.grouping")


def _player_regions(players: tuple[str, ...], image: torch.Tensor, parts: dict[str, torch.Tensor]):
    """(players, masks [P, H, W]) of a method that plays the players its trained file names (``fixed_players``):
    the target's body-part masks in that order, an empty mask for a part without a pixel; masks None when no part
    has one. Raises ValueError naming the parts that are no players (the parts stage's grouping is not the trained
    one)."""
    _check_players(players, parts)
    empty = torch.zeros(image.shape[-2:], dtype=torch.bool, device=image.device)
    masks = torch.stack([parts[n].to(image.device) if n in parts else empty for n in players])
    return list(players), masks if bool(has_pixel(masks, (0, 1, 2))) else None


def _drop_empty_players(rows: list[dict], masks: torch.Tensor) -> None:
    """Keep, in each row, the region names and relevance of the players with a pixel (a part without one is a
    dummy player: relevance exactly 0), so a fixed-player job's rows list the parts every parts job lists."""
    keep = has_pixel(masks.flatten(1), 1).nonzero()[:, 0].tolist()
    for row in rows:
        names = row["region_names"]
        _own_regions(row, names, [names[i] for i in keep])


def saliency_mass(saliency: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Sum of a saliency map [H, W] over each region [R, H, W] -> [R]: like a Shapley value, a part's total
    contribution (a larger part can carry more), so pixel and region methods compare on the same footing."""
    return masks.reshape(masks.shape[0], -1).float() @ saliency.reshape(-1).float()


def _row(item_target: dict, job: ExplainJob, exp, t: int, T: int, names, cfg: ExplainParams, seed: int,
         device: str) -> dict:
    sal = downsample(exp.saliency[t:t + 1], cfg.saliency_size)[0].numpy().astype(np.float16)
    options = json.dumps(exp.options, sort_keys=True)
    return {"image_id": item_target["image_id"], "target_id": item_target["target_id"],
            "kind": item_target["kind"], "job": job.name, "method": exp.method, "regions": job.regions,
            "saliency": sal.ravel(), "saliency_height": sal.shape[0], "saliency_width": sal.shape[1],
            "region_names": names,
            "relevance": None if exp.relevance is None else exp.relevance[t].tolist(),
            "full_score": None if exp.full_score is None else float(exp.full_score[t]),
            "empty_score": None if exp.empty_score is None else float(exp.empty_score[t]),
            "n_forward": exp.n_forward, "shared_by": T, "device": torch.device(device).type, "seed": seed,
            "seconds": exp.seconds,      # not a column (tasks.timings): summed into the shard's timing file
            "options_hash": hashlib.sha256(options.encode()).hexdigest()[:12], "options": options}


def shares_forwards(job: ExplainJob) -> bool:
    """Whether one explain call covers every target of an image (one set of forwards, one seed and one store
    entry for them all): pixel methods, regions every target shares (superpixels, grid), and body-part games of a
    method that takes each target's own players in one call (``per_target_regions``). Other body-part games run
    per target."""
    return job.regions != "parts" or METHODS[job.method].per_target_regions


def _each_targets_regions(job: ExplainJob, players: tuple[str, ...] | None, image: torch.Tensor,
                          targets: list[dict], parts_of, errors: list[dict],
                          uri: str) -> tuple[list[dict], list[str], torch.Tensor | None, list[list[str]]]:
    """(targets, names, masks [T, R, H, W], each target's own parts) of a per-target-regions job: the R regions are
    the trained ``players`` of a fixed-player method (:func:`_check_players`), else every body part with a pixel in
    some target (first seen first), each target's masks in that order (empty where it has no such part); a target's
    own parts are its parts with a pixel in its own order (what a one-target call would list). A target without a
    body part becomes an ``errors`` row and is left out. Raises ValueError for parts that are no players (the whole
    job's fault)."""
    kept, own, found = [], [], []
    for t in targets:
        parts = parts_of(t)
        if players is not None:
            _check_players(players, parts)
        mine = [n for n in (players if players is not None else parts)
                if n in parts and bool(has_pixel(parts[n], (0, 1)))]
        if not mine:
            errors.append(error_row("explain", uri, "ValueError", f"{job.name} {t['target_id']}: no non-empty "
                                    "body part", t["image_id"]))
            continue
        kept.append(t)
        own.append(mine)
        found.append(parts)
    names = list(players) if players is not None else list(dict.fromkeys(n for mine in own for n in mine))
    if not kept:
        return kept, names, None, own
    masks = torch.zeros(len(kept), len(names), *image.shape[-2:], dtype=torch.bool, device=image.device)
    for t, (target, parts, mine) in enumerate(zip(kept, found, own)):
        for n in mine:
            if tuple(parts[n].shape) != tuple(image.shape[-2:]):
                raise ValueError(f"{target['target_id']}: body part {n!r} mask {tuple(parts[n].shape)} does not "
                                 f"match the image {tuple(image.shape[-2:])}")
            masks[t, names.index(n)] = parts[n] > 0 if parts[n].dtype != torch.bool else parts[n]
    return kept, names, masks, own


def _own_regions(row: dict, names: list[str], own: list[str]) -> None:
    """A per-target-regions row lists its target's own parts (``own``, in its order) and their relevance, as a
    one-target call would, out of the call's common ``names``."""
    index = [names.index(n) for n in own]
    row["region_names"] = list(own)
    if row["relevance"] is not None:
        row["relevance"] = [row["relevance"][i] for i in index]


def _method_and_regions(job: ExplainJob, scorer_for, image: torch.Tensor, group: list[dict], parts_of,
                        cfg: ExplainParams, errors: list[dict], uri: str):
    """(method, targets, region names, masks) of one group: the job's method on the group's scorer and its
    players (None for pixel jobs). A per-target-regions job's masks are [T, R, H, W] and its names a pair (the R
    common names, each target's own parts: :func:`_each_targets_regions`); its targets without a body part become
    ``errors`` rows and leave the group, possibly empty. Raises ValueError when the group has no usable region."""
    method = METHODS[job.method](scorer_for(group), chunk_size=cfg.chunk_size, **job.options)
    if job.regions == "parts" and method.per_target_regions:
        players = tuple(method.players) if method.fixed_players else None
        kept, names, masks, own = _each_targets_regions(job, players, image, group, parts_of, errors, uri)
        if kept and len(kept) < len(group):        # the scorer's targets are the explained ones
            method = METHODS[job.method](scorer_for(kept), chunk_size=cfg.chunk_size, **job.options)
        return method, kept, (names, own), masks
    if method.fixed_players:
        names, masks = _player_regions(method.players, image, parts_of(group[0]))
    else:
        names, masks = (None, None) if job.regions == "none" else _regions(
            job, image, None if shares_forwards(job) else parts_of(group[0]))
    if job.regions != "none" and masks is None:
        raise ValueError("no non-empty body part")
    return method, group, names, masks


def explain_targets(job: ExplainJob, scorer_for, image: torch.Tensor, targets: list[dict], parts_of,
                     cfg: ExplainParams, seed: int, device: str, errors: list[dict], uri: str) -> list[dict]:
    """One job over one image's targets of one kind. Pixel methods, region methods whose regions every target
    shares (superpixels, grid) and methods that take each target's body parts in one call explain all targets with
    one set of forwards (:func:`shares_forwards`); other body-part games run per target.
    A target the method cannot explain (no usable region, budget too small) becomes an ``errors`` row. A ``sag`` job's
    rows carry its graph's ``sag`` table rows under the transient key ``sag`` (not a column, like ``seconds``)."""
    shared = shares_forwards(job)
    each = job.regions == "parts" and shared           # one call, each target its own regions [T, R, H, W]
    groups = [targets] if shared else [[t] for t in targets]
    rows = []
    for group in groups:
        first = group[0]
        s = explanation_seed(seed, first["image_id"], "*" if shared else first["target_id"], job.name)
        try:
            method, group, names, masks = _method_and_regions(job, scorer_for, image, group, parts_of, cfg, errors,
                                                              uri)
            if not group:
                continue
            exp = method.explain(image, masks, budget=job.budget, seed=s)
        except (ValueError, BudgetError) as exc:
            which = "all targets" if shared else first["target_id"]
            errors.append(error_row("explain", uri, type(exc).__name__, f"{job.name} {which}: {exc}",
                                    first["image_id"]))
            continue
        own = None
        if each:
            names, own = names
        new = [_row(t, job, exp, i, len(group), names, cfg, s, device) for i, t in enumerate(group)]
        if each:                                 # each row lists its own target's parts, as a one-target call would
            for row, mine in zip(new, own):
                _own_regions(row, names, mine)
        elif method.fixed_players:               # rows list the players with a pixel, as for every parts job
            _drop_empty_players(new, masks)
        for t, row, graph in zip(group, new, getattr(exp, "graphs", None) or []):   # a sag job: its graphs
            row["sag"] = graph.rows(names, summary=True, image_id=t["image_id"], target_id=t["target_id"],
                                    kind=t["kind"], job=job.name)
        if job.regions == "none" and parts_of is not None:      # pixel saliency -> its mass on each body part
            for i, (t, row) in enumerate(zip(group, new)):
                part_names, part_masks = _regions(job.model_copy(update={"regions": "parts"}), image, parts_of(t))
                if part_masks is not None:
                    row["region_names"] = part_names
                    row["relevance"] = saliency_mass(exp.saliency[i].to(device), part_masks).tolist()
        rows += new
    return rows


def parts_lookup(part_rows: list[dict], device: str):
    """``parts_of(target)``: the target's body-part masks {part: [H, W] bool on ``device``} from its ``parts`` rows
    ({} when it has none)."""
    by_target: dict[tuple[str, str], dict[str, dict]] = {}
    for p in part_rows:
        by_target.setdefault((p["model_id"], p["det_id"]), {})[p["part"]] = p

    def parts_of(t: dict) -> dict[str, torch.Tensor] | None:
        rows = by_target.get((t["parts_model"], t["parts_id"]))
        if rows is None:
            return {}
        return {n: torch.from_numpy(rle_decode(r["rle"], r["height"], r["width"])).to(device)
                for n, r in rows.items()}
    return parts_of


def image_sha256(uri: str) -> str | None:
    """SHA-256 of the image file's bytes (what its explanations depend on), or None when it cannot be read (then
    nothing of it is reused; explaining it records the error)."""
    try:
        with open(uri, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except OSError:
        return None


def job_groups(item: ExplainItem, params: Params):
    """The explanation groups of one image, in the order explain computes them: (job, targets) for every job (in
    params order) whose split the image is in and that has targets of its kind; a group is every such target of the
    image for a shared-forward job (:func:`shares_forwards`: one set of forwards explains them all), one target
    otherwise."""
    for job in params.explain.jobs:
        if job.split is not None and item["image"]["split"] != job.split:
            continue
        targets = [t for t in item["targets"] if t["kind"] == job.targets]
        yield from ((job, g) for g in ([targets] if targets and shares_forwards(job) else [[t] for t in targets]))


# ---------------------------------------------------------------------------------------------------- reuse
@functools.lru_cache(maxsize=64)
def job_code_files(method: str) -> tuple[Path, ...]:
    """The source a ``method`` job's numbers depend on: the explain stage's code (:func:`code_files`) less the
    modules of the *other* registered methods that ``method``'s own module does not import, so that editing one
    explainer invalidates only its jobs' stored rows (shared code, e.g. explainers/base.py or this module,
    invalidates every job)."""
    own = {module_file(m) for m in module_closure((Entry(METHODS[method].__module__),))}
    others = {module_file(cls.__module__) for cls in METHODS.values()} - own
    return tuple(f for f in code_files() if f not in others)


def job_base_name(job: ExplainJob) -> str:
    """A job's entry in :func:`job_bases`: its targets and name (``persons/rise``), unique per params
    (tasks.params allows one name on several target kinds, e.g. rise on persons and on classes)."""
    return f"{job.targets}/{job.name}"


def job_bases(params: Params) -> dict[str, str]:
    """Per job name, the digest of what every explanation of the job depends on besides its image and targets:
    the job (ExplainJob dump: method, targets, budget, regions, options ...), the seed, the explain params that
    change numbers (``saliency_size``, ``chunk_size``: images per forward pass, the batch a model runs), the audited
    model (its spec and :func:`detection.models.specs.model_sha256` of its weights / code) and the job's code
    (:func:`job_code_files`). Raises FileNotFoundError naming a missing weights or code file."""
    cfg = params.explain
    models = {}
    out = {}
    for job in cfg.jobs:
        spec = params.infer.classifier if job.targets == "classes" else params.explain_detector()
        if spec.id not in models:
            models[spec.id] = {"spec": spec.model_dump(mode="json"), "sha256": model_sha256(spec)}
        out[job_base_name(job)] = digest({"stage": "explain", "job": job.model_dump(mode="json"), "seed": params.seed,
                                "saliency_size": list(cfg.saliency_size), "chunk_size": cfg.chunk_size,
                                "model": models[spec.id], "code": files_digest(list(job_code_files(job.method)))})
    return out


def _target_parts(item: ExplainItem, target: dict) -> list:
    """The target's body-part rows as explain uses them (tasks.explain.parts_lookup: by part name, table order)."""
    by_part: dict[str, dict] = {}
    for p in item["parts"]:
        if (p["model_id"], p["det_id"]) == (target.get("parts_model"), target.get("parts_id")):
            by_part[p["part"]] = p
    return [[n, r["height"], r["width"], np.asarray(r["rle"], np.int64)] for n, r in by_part.items()]


def target_key(job: ExplainJob, item: ExplainItem, target: dict) -> dict:
    """What a store key records of one target (:func:`group_key`, ``tasks.sanity.sanity_key``): kind, target_id,
    category, bbox, class_probs and, for person / detection jobs, its body-part masks' RLE."""
    return {"kind": target["kind"], "target_id": target["target_id"], "category": target.get("category"),
            "bbox": target.get("bbox"), "class_probs": target.get("class_probs"),
            "parts": None if job.targets == "classes" else _target_parts(item, target)}


def group_key(base: str, device: str, image_sha: str | None, job: ExplainJob, item: ExplainItem,
              group: list[dict], seed: int) -> str | None:
    """The store key of one explanation group: the job's base (:func:`job_bases`), the device type, the image's
    content hash, the seed inputs (seed, image_id, target_id or ``*``) and every target of the group (kind,
    target_id, category, bbox, class_probs and, for person / detection jobs, its body-part masks' RLE). None when
    the image cannot be hashed."""
    if image_sha is None:
        return None
    shared = shares_forwards(job)
    return digest({"base": base, "device": torch.device(device).type, "image": image_sha, "seed": seed,
                   "image_id": item["image"]["image_id"], "seed_target": "*" if shared else group[0]["target_id"],
                   "targets": [target_key(job, item, t) for t in group]})


STORE_TABLES = ("explanations", "errors", "sag")


def _stored(rows: list[dict], errors: list[dict]) -> tuple[dict[str, pa.Table], float]:
    """A computed group as a store entry: its explanation rows (transient keys dropped), errors and sag rows, and
    its explainer seconds (shared forwards counted once)."""
    graphs = [g for r in rows for g in r.get("sag", ())]
    plain = [{k: v for k, v in r.items() if k not in ("sag", "seconds")} for r in rows]
    seconds = sum(r["seconds"] / r["shared_by"] for r in rows)
    return {"explanations": rows_to_table(plain, "explanations"), "errors": rows_to_table(errors, "errors"),
            "sag": rows_to_table(graphs, "sag")}, seconds


def _restored(entry: dict, img: dict) -> tuple[list[dict], list[dict]]:
    """A stored group's explanation rows (``seconds`` 0: nothing was computed; the group's sag rows on its first
    row, flattened in the same order) and its errors rows (naming this image's file)."""
    rows = [{**r, "seconds": 0.0} for r in entry["explanations"].to_pylist()]
    graphs = entry["sag"].to_pylist()
    if rows and graphs:
        rows[0]["sag"] = graphs
    errors = [{**e, "uri": img["uri"], "image_id": img["image_id"]} for e in entry["errors"].to_pylist()]
    return rows, errors


class ExplainReuse(Reuse):
    """The stored groups an explain shard reuses, and the keys of its groups (:func:`group_key`)."""

    def __init__(self, cache_dir: str | None, bases: dict[str, str], params: Params, device: str):
        super().__init__(store_for(cache_dir, "explain", STORE_TABLES))
        self.bases, self.params, self.device, self.images = bases, params, device, {}

    def key(self, job: ExplainJob, item: ExplainItem, group: list[dict]) -> str | None:
        if self.store is None or job_base_name(job) not in self.bases:
            return None
        img = item["image"]
        if img["image_id"] not in self.images:
            self.images[img["image_id"]] = image_sha256(img["uri"])
        return group_key(self.bases[job_base_name(job)], self.device, self.images[img["image_id"]], job, item, group,
                         self.params.seed)

    def prefetch_items(self, items: list[ExplainItem]) -> None:
        self.prefetch([self.key(job, item, g) for item in items for job, g in job_groups(item, self.params)])


def explain_image(item: ExplainItem, params: Params, device: str, errors: list[dict],
                  reuse: ExplainReuse | None = None) -> list[dict]:
    """Every job of the explain params on one image's targets; bad targets go to ``errors``. With ``reuse``, a
    group whose key is stored is taken from the store (the image is not even loaded when every group is), the
    others are computed and recorded for the store."""
    cfg = params.explain
    img = item["image"]
    image = small = parts_of = None
    loaded = False
    rows = []
    groups = list(job_groups(item, params))
    if not groups:          # nothing to explain here: still report an unreadable image, as every image is checked
        load_image(img, "explain", device, errors)
    for job, group in groups:
        key = reuse.key(job, item, group) if reuse is not None else None
        entry = reuse.get(key) if reuse is not None else None
        if entry is not None:
            new, new_errors = _restored(entry, img)
            rows += new
            errors += new_errors
            continue
        if not loaded:
            image, loaded = load_image(img, "explain", device, errors), True
            parts_of = parts_lookup(item["parts"], device)
        if image is None:
            return []
        new_errors: list[dict] = []
        started = time.perf_counter()
        if job.targets == "classes":
            small = classifier_view(params, device, image) if small is None else small
            new = explain_targets(job, lambda ts: classifier_scorer(params, device, ts), small, group, None,
                                  cfg, params.seed, device, new_errors, img["uri"])
        else:
            new = explain_targets(job, lambda ts: detection_scorer(params, device, ts), image, group,
                                  parts_of, cfg, params.seed, device, new_errors, img["uri"])
        if reuse is not None:
            tables, seconds = _stored(new, new_errors)
            reuse.put(key, tables, seconds if new else time.perf_counter() - started)
        rows += new
        errors += new_errors
    return rows


# ---------------------------------------------------------------------------------------------------- shards
class ExplainShard(TypedDict):
    """What one explain task needs to find its rows: its shard index, its images (ids, in image order) and the
    tables to read their rows from (absolute paths; ``parts`` None when no target has body parts), the result
    store (``cache_dir``, None: off) and the jobs' key bases (:func:`job_bases`)."""

    shard: int
    image_ids: list[str]
    images: str
    targets: str
    parts: str | None
    cache_dir: str | None
    bases: dict[str, str]


def _rows_of(path: str, image_ids: list[str], columns: list[str] | None = None) -> pa.Table:
    """The rows of a Parquet table whose ``image_id`` is one of ``image_ids``, in file order."""
    return pq.read_table(path, columns=columns, filters=[("image_id", "in", list(image_ids))])


def read_items(shard: ExplainShard) -> list[ExplainItem]:
    """The shard's items (:func:`shard_items`), from its own rows of the images, targets and parts tables."""
    ids = shard["image_ids"]
    targets = _rows_of(shard["targets"], ids)
    parts = _rows_of(shard["parts"], ids) if shard["parts"] is not None else None
    return shard_items(_rows_of(shard["images"], ids, IMAGE_COLUMNS), targets, parts)


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
def explain_shard(shard: ExplainShard, params: Params) -> dict:
    """Explain shard ``shard["shard"]`` (its images, read by :func:`read_items`) and write its files under the
    explain stage's output (one per job, plus errors, plus the ``sag`` table when a sag job runs;
    ``tasks.stages.ExplainOutputs.shard_files``); the done marker goes last (``tasks.shards``). Groups stored in
    the result store are reused, the rest computed and stored (before the shard's files). Returns counts and the
    explainer seconds of what was computed."""
    index = shard["shard"]
    device = task_device(params.explain.device)
    items = read_items(shard)
    reuse = ExplainReuse(shard["cache_dir"], shard["bases"], params, device)
    reuse.prefetch_items(items)
    rows, errors = [], []
    for item in items:
        rows += explain_image(item, params, device, errors, reuse)
    reuse.flush()
    graphs = [g for r in rows for g in r.pop("sag", ())]
    jobs = sorted({j.name for j in params.explain.jobs})
    outputs = stages.explain(params)
    files = outputs.shard_files(index, jobs)
    if any(issubclass(METHODS[j.method], Sag) for j in params.explain.jobs):
        write_table_atomic(rows_to_table(graphs, "sag"), files["sag"])
    for job in jobs:
        write_table_atomic(rows_to_table([r for r in rows if r["job"] == job], "explanations"), files[job])
    write_table_atomic(rows_to_table(errors, "errors"), files["errors"])
    seconds = {job: round(sum(r["seconds"] / r["shared_by"] for r in rows if r["job"] == job), 3) for job in jobs}
    write_shard_timing(outputs.out_dir, shard_name(index), {"explainer_seconds": seconds, "device": device,
                                                            "groups": reuse.counts()})
    # The exact device (cuda:<worker>) depends on which Dask worker took the shard: only the timing file keeps it;
    # the hashed rows keep its type (cpu / cuda), which a run's outputs share.
    mark_done(outputs.out_dir, shard_name(index), {"rows": len(rows), "errors": len(errors)})
    return {"shard": index, "rows": len(rows), "errors": len(errors), "seconds": float(sum(seconds.values())),
            **reuse.counts()}
