"""Tasks of the evaluate stage: the metrics of ``explainers.metrics`` for every explanation of a shard of images
(deletion / insertion AUC with the model, pointing game and energy pointing game against boxes and body-part
masks, cost), and the agreement between methods on the same target.

A metric that is undefined for an explanation (constant or NaN saliency, an empty region, an offset map's EPG,
constant relevance: see ``explainers.metrics``) is stored as a row ``undefined:<metric>:<reason>`` (value 1.0)
instead of a value, so it is counted and never averaged; a saliency map with NaN / inf values is also an
``errors`` row (error_type ``nonfinite_saliency``).

Incremental re-audits: the metric rows of each (image, job, kind) group of explanations (their causal curves run in
one batch) are keyed by what they depend on (:func:`group_key`: the explanation rows' content, targets, body parts,
ground-truth boxes for classes, image bytes, model, evaluate params, code) and reused from the result store
(tasks.result_store). A task gets an :class:`EvaluateShard` (image ids, paths, the explain shard files that hold its
explanations) and reads its own rows (:func:`read_items`); it also computes the agreement between the jobs of its
targets (all in its images). The sanity check and where the detector fails are recomputed every run."""
from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import TypedDict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from prefect import task
from prefect.cache_policies import NO_CACHE

from detection.datasets.records import error_row
from detection.datasets.tables import SCHEMAS, rows_to_table, write_table_atomic
from detection.masks import rle_decode
from detection.models.specs import model_sha256
from explainers.metrics import (
    UNDEFINED_REASONS,
    box_masks,
    deletion_insertion,
    energy_pointing_game,
    pointing_game,
    region_share,
    relevance_reason,
    spearman,
    top_match,
    undefined_reason,
)
from tasks.explain import IMAGE_COLUMNS, image_sha256
from tasks.metric_names import (
    AGREE,
    SUBSTRATES,
    TOP_PART_MATCH,
    agreement,
    causal_auc,
    curve_point,
    epg,
    epg_chance,
    pointing,
)
from tasks.model_cache import classifier_scorer, classifier_view, detection_scorer, load_image, task_device
from tasks.params import Params
from tasks.result_store import Reuse, digest, files_digest, store_for
from tasks.shards import write_shard
from tasks.stage_deps import Entry, module_closure, module_file
from tasks.undefined import NONFINITE_SALIENCY, NONFINITE_VALUE, parse_undefined, undefined_metric

__all__ = ["AGREEMENT_FILE", "CONTEXT", "SUBSTRATES", "EvaluateItem", "EvaluateShard", "agreement_rows",
           "evaluate_bases", "evaluate_image", "evaluate_shard", "parse_undefined", "shard_items", "spearman",
           "undefined_metric"]

CONTEXT = "context"


class EvaluateItem(TypedDict):
    """One image of an evaluate shard: its ``images`` row (IMAGE_COLUMNS), its ``explanations`` rows (without
    ``options``), ``targets`` by target_id, the body ``parts`` rows by (parts_model, parts_id), and the non-crowd
    ground-truth boxes (xyxy, pixels) by category."""

    image: dict
    targets: dict[str, dict]
    explanations: list[dict]
    parts: dict[tuple[str, str], list[dict]]
    gt_boxes: dict[str, list[list[float]]]


def shard_items(images: pa.Table, annotations: pa.Table, targets: pa.Table, explanations: pa.Table,
                parts: pa.Table) -> list[EvaluateItem]:
    """The images that have explanations, in image order, each with what its metrics need."""
    by_key = {(t["image_id"], t["target_id"]): t for t in targets.to_pylist()}
    wanted = {(t["parts_model"], t["parts_id"]) for t in by_key.values() if t["parts_id"] is not None}
    items = {r["image_id"]: EvaluateItem(image=r, targets={}, explanations=[], parts={}, gt_boxes={})
             for r in images.select(IMAGE_COLUMNS).to_pylist()}
    for e in explanations.select([c for c in explanations.column_names if c != "options"]).to_pylist():
        item = items[e["image_id"]]
        item["explanations"].append(e)
        item["targets"][e["target_id"]] = by_key[(e["image_id"], e["target_id"])]
    for p in parts.to_pylist():
        if (p["model_id"], p["det_id"]) in wanted and items[p["image_id"]]["explanations"]:
            items[p["image_id"]]["parts"].setdefault((p["model_id"], p["det_id"]), []).append(p)
    for a in annotations.select(["image_id", "category", "bbox", "iscrowd"]).to_pylist():
        if not a["iscrowd"] and items[a["image_id"]]["explanations"]:
            items[a["image_id"]]["gt_boxes"].setdefault(a["category"], []).append(a["bbox"])
    return [i for i in items.values() if i["explanations"]]


def _saliency(row: dict, size: tuple[int, int]) -> torch.Tensor:
    """The stored float16 grid, bilinearly upsampled to the size it was computed at -> [H, W] float32 (a constant
    grid stays exactly constant, so it is recognised as uninformative)."""
    grid = torch.tensor(np.asarray(row["saliency"], np.float32)).view(row["saliency_height"], row["saliency_width"])
    if torch.isfinite(grid).all() and grid.max() == grid.min():
        return torch.full(size, float(grid[0, 0]))
    return F.interpolate(grid[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]


def _metric_rows(row: dict, values: dict[str, float], reasons: dict[str, str] | None = None) -> list[dict]:
    """Metrics-table rows of one explanation: a row per defined value; a value with a reason, or NaN / inf /
    None, becomes a row ``undefined:<metric>:<reason>`` (value 1.0) instead."""
    key = {"image_id": row["image_id"], "target_id": row["target_id"], "kind": row["kind"], "job": row["job"]}
    out = []
    for name, v in values.items():
        reason = (reasons or {}).get(name)
        if reason is None and (v is None or not np.isfinite(v)):
            reason = NONFINITE_VALUE
        out.append({**key, "metric": name, "value": float(v)} if reason is None else
                   {**key, "metric": undefined_metric(name, reason), "value": 1.0})
    return out


def _target_masks(target: dict, parts: list[dict], gt_boxes: dict[str, list], H: int, W: int,
                  scale: tuple[float, float]) -> dict[str, torch.Tensor]:
    """Regions a target's saliency should fall in: its box and body (persons / detections; a target without body
    parts gets an empty body); for classes the GT boxes of the class (label present) and of every object (saliency
    off all objects = background, where a spurious cue lives), at the saliency's resolution."""
    out = {}
    if target["kind"] == "classes":
        sy, sx = scale
        to_mask = lambda boxes: box_masks(torch.tensor(boxes, dtype=torch.float32) *  # noqa: E731
                                          torch.tensor([sx, sy, sx, sy]), H, W).any(0)
        if gt_boxes.get(target["category"]):
            out["box"] = to_mask(gt_boxes[target["category"]])
        every = [b for boxes in gt_boxes.values() for b in boxes]
        if every:
            out["objects"] = to_mask(every)
        return out
    out["box"] = box_masks(torch.tensor([target["bbox"]]), H, W)[0]
    body = [rle_decode(p["rle"], p["height"], p["width"]) for p in parts if p["part"] != CONTEXT]
    # no body part at all: an empty body, so its metrics are counted as undefined (empty_region), not skipped
    out["body"] = torch.from_numpy(np.any(body, 0)) if body else torch.zeros(H, W, dtype=torch.bool)
    return out


def _reason(code: torch.Tensor) -> str | None:
    return UNDEFINED_REASONS[int(code)] or None


def _record_nonfinite(exps: list[dict], job: str, img: dict, errors: list[dict]) -> None:
    """An ``errors`` row for each stored saliency map with NaN / inf values (its metrics are undefined)."""
    for e in exps:
        stored = np.asarray(e["saliency"], np.float32)
        bad = int((~np.isfinite(stored)).sum())
        if bad:
            errors.append(error_row("evaluate", img["uri"], NONFINITE_SALIENCY,
                                    f"{job} {e['target_id']}: {bad} of {stored.size} stored saliency values "
                                    f"are NaN or infinite; its metrics are undefined", img["image_id"]))


def _localisation(sal: torch.Tensor, masks: dict[str, torch.Tensor], tolerance: float, values: dict,
                  reasons: dict) -> None:
    """Pointing game and EPG of one map [1, H, W] against each named region, into ``values`` / ``reasons``."""
    for name, m in masks.items():
        m = m[None]
        for metric, value, check in ((pointing(name), pointing_game(sal, m, tolerance), "pointing"),
                                     (epg(name), energy_pointing_game(sal, m), "epg")):
            values[metric] = float(value[0])
            reason = _reason(undefined_reason(sal, m, check)[0])
            if reason is not None:
                reasons[metric] = reason
        if epg(name) not in reasons:                # EPG's chance level, beside every defined EPG
            values[epg_chance(name)] = float(region_share(m)[0])


def _causal(scorer, view: torch.Tensor, saliency: torch.Tensor, steps: int, values: list[dict],
            reasons: list[dict]) -> None:
    """Deletion / insertion AUC and curve points of every map [N, H, W] with each substrate."""
    for mode in SUBSTRATES:
        curve = deletion_insertion(scorer, view, saliency, mode=mode, substrate=SUBSTRATES[mode], steps=steps)
        for i in range(saliency.shape[0]):
            values[i][causal_auc(mode)] = float(curve.auc[i])
            reason = _reason(curve.reason[i])
            if reason is not None:
                reasons[i][causal_auc(mode)] = reason
                continue
            for k, v in enumerate(curve.curves[i].tolist()):
                values[i][curve_point(mode, k)] = v


def _evaluate_group(job: str, kind: str, exps: list[dict], item: EvaluateItem, image: torch.Tensor, params: Params,
                    device: str, errors: list[dict]) -> list[dict]:
    """Metrics-table rows of one job's explanations of one image's targets of one kind (their causal curves are
    computed in one batch, so the group is the unit of reuse)."""
    cfg = params.evaluate
    img = item["image"]
    H, W = image.shape[-2:]
    causal = cfg.causal and (cfg.causal_split is None or img["split"] == cfg.causal_split)
    ts = [item["targets"][e["target_id"]] for e in exps]
    view = classifier_view(params, device, image) if kind == "classes" else image
    size = tuple(view.shape[-2:])
    saliency = torch.stack([_saliency(e, size) for e in exps])
    values = [{"n_forward": e["n_forward"] / e["shared_by"]} for e in exps]
    reasons: list[dict[str, str]] = [{} for _ in exps]
    _record_nonfinite(exps, job, img, errors)
    scale = (size[0] / H, size[1] / W)
    for i, t in enumerate(ts):
        masks = _target_masks(t, item["parts"].get((t["parts_model"], t["parts_id"]), []), item["gt_boxes"],
                              size[0], size[1], scale)
        _localisation(saliency[i:i + 1], masks, cfg.pointing_tolerance, values[i], reasons[i])
    if causal:
        scorer = (classifier_scorer(params, device, ts) if kind == "classes" else
                  detection_scorer(params, device, ts))
        _causal(scorer, view, saliency, cfg.steps, values, reasons)
    rows = []
    for e, v, r in zip(exps, values, reasons):
        rows += _metric_rows(e, v, r)
    return rows


# ---------------------------------------------------------------------------------------------------- reuse
@functools.lru_cache(maxsize=1)
def code_files() -> tuple[Path, ...]:
    """The source an explanation's metrics depend on: every project module :mod:`tasks.evaluate` imports (the
    explainers' metrics, the scorers, the models, and through tasks.explain the explain stage's code), sorted."""
    return tuple(sorted(module_file(m) for m in module_closure((Entry("tasks.evaluate"),))))


def evaluate_bases(params: Params) -> dict[str, str]:
    """Per target kind, the digest of what every metrics row of that kind depends on besides the image and the
    explanation: the evaluate params that change numbers (``steps``, ``pointing_tolerance``; whether the causal
    metrics run is part of each group's key), ``explain.chunk_size`` (the scorer's batch), the scoring model (its
    spec and weights hash) and the code (:func:`code_files`). Raises FileNotFoundError naming a missing file."""
    cfg = params.evaluate
    code = files_digest(list(code_files()))
    out = {}
    for kind in ("persons", "detections", "classes"):
        spec = params.infer.classifier if kind == "classes" else params.explain_detector()
        if spec is None:
            continue
        out[kind] = digest({"stage": "evaluate", "steps": cfg.steps, "pointing_tolerance": cfg.pointing_tolerance,
                            "chunk_size": params.explain.chunk_size, "model": spec.model_dump(mode="json"),
                            "weights": model_sha256(spec), "code": code})
    return out


def group_key(base: str, device: str, image_sha: str | None, causal: bool, exps: list[dict],
              item: EvaluateItem, kind: str) -> str | None:
    """The store key of one (image, job, kind) group of explanations: the kind's base (:func:`evaluate_bases`), the
    device type, the image's content hash, whether the causal metrics run, every explanation row's content (the
    saliency grid by its bytes), every target (kind, category, bbox, class_probs, body-part masks' RLE) and, for
    classes, the image's ground-truth boxes. None when the image cannot be hashed."""
    if image_sha is None:
        return None
    rows = [{k: (np.asarray(v, np.float16) if k == "saliency" else v) for k, v in e.items()} for e in exps]
    targets = []
    for e in exps:
        t = item["targets"][e["target_id"]]
        parts = item["parts"].get((t.get("parts_model"), t.get("parts_id")), [])
        targets.append({"kind": t["kind"], "category": t.get("category"), "bbox": t.get("bbox"),
                        "class_probs": t.get("class_probs"),
                        "parts": [[p["part"], p["height"], p["width"], np.asarray(p["rle"], np.int64)]
                                  for p in parts]})
    return digest({"base": base, "device": torch.device(device).type, "image": image_sha, "causal": causal,
                   "explanations": rows, "targets": targets,
                   "gt_boxes": item["gt_boxes"] if kind == "classes" else None})


STORE_TABLES = ("metrics", "errors")


class EvaluateReuse(Reuse):
    """The stored metric groups an evaluate shard reuses, and the keys of its groups (:func:`group_key`)."""

    def __init__(self, cache_dir: str | None, bases: dict[str, str], params: Params, device: str):
        super().__init__(store_for(cache_dir, "evaluate", STORE_TABLES))
        self.bases, self.params, self.device, self.images = bases, params, device, {}

    def key(self, job: str, kind: str, exps: list[dict], item: EvaluateItem) -> str | None:
        if self.store is None or kind not in self.bases:
            return None
        img = item["image"]
        if img["image_id"] not in self.images:
            self.images[img["image_id"]] = image_sha256(img["uri"])
        cfg = self.params.evaluate
        causal = cfg.causal and (cfg.causal_split is None or img["split"] == cfg.causal_split)
        return group_key(self.bases[kind], self.device, self.images[img["image_id"]], causal, exps, item, kind)

    def prefetch_items(self, items: list[EvaluateItem]) -> None:
        self.prefetch([self.key(job, kind, exps, item) for item in items
                       for (job, kind), exps in _groups(item).items()])


def _groups(item: EvaluateItem) -> dict[tuple[str, str], list[dict]]:
    """The image's explanations by (job, kind), in first-appearance order."""
    by_job: dict[tuple[str, str], list[dict]] = {}
    for e in item["explanations"]:
        by_job.setdefault((e["job"], e["kind"]), []).append(e)
    return by_job


def evaluate_image(item: EvaluateItem, params: Params, device: str, errors: list[dict],
                   reuse: EvaluateReuse | None = None) -> list[dict]:
    """Metrics-table rows of every explanation of one image (undefined values as ``undefined:`` rows); an
    unreadable image, or a saliency map with NaN / inf values, adds an ``errors`` row. With ``reuse``, a group whose
    key is stored is taken from the store (the image is loaded only for groups that are not)."""
    img = item["image"]
    image, loaded = None, False
    rows = []
    for (job, kind), exps in _groups(item).items():
        key = reuse.key(job, kind, exps, item) if reuse is not None else None
        entry = reuse.get(key) if reuse is not None else None
        if entry is not None:
            rows += entry["metrics"].to_pylist()
            errors += [{**e, "uri": img["uri"], "image_id": img["image_id"]} for e in entry["errors"].to_pylist()]
            continue
        if not loaded:
            image, loaded = load_image(img, "evaluate", device, errors), True
        if image is None:
            return []
        new_errors: list[dict] = []
        started = time.perf_counter()
        new = _evaluate_group(job, kind, exps, item, image, params, device, new_errors)
        if reuse is not None:
            reuse.put(key, {"metrics": rows_to_table(new, "metrics"), "errors": rows_to_table(new_errors, "errors")},
                      time.perf_counter() - started)
        rows += new
        errors += new_errors
    return rows


# ---------------------------------------------------------------------------------------------------- shards
class EvaluateShard(TypedDict):
    """What one evaluate task needs to find its rows: its staged shard folder, its images (ids, in image order),
    the tables to read their rows from (absolute paths; ``explanations``: the explain shard files that hold them,
    in path order), the result store (``cache_dir``, None: off) and the kinds' key bases
    (:func:`evaluate_bases`)."""

    shard_dir: str
    image_ids: list[str]
    images: str
    annotations: str
    targets: str
    parts: str
    explanations: list[str]
    cache_dir: str | None
    bases: dict[str, str]


def _rows_of(path: str, image_ids: list[str], columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(path, columns=columns, filters=[("image_id", "in", list(image_ids))])


def read_explanations(files: list[str], image_ids: list[str]) -> pa.Table:
    """The explanations (without ``options``) of ``image_ids`` from the explain shard ``files``, concatenated in
    the files' order (the order the whole sharded table is read in)."""
    columns = [c for c in SCHEMAS["explanations"].names if c != "options"]
    tables = [_rows_of(f, image_ids, columns).cast(SCHEMAS["explanations"].remove(
        SCHEMAS["explanations"].get_field_index("options"))) for f in files]
    return pa.concat_tables(tables) if tables else SCHEMAS["explanations"].empty_table().select(columns)


def read_items(shard: EvaluateShard) -> tuple[list[EvaluateItem], pa.Table]:
    """The shard's items (:func:`shard_items`) and its explanations, from its own rows of every table."""
    ids = shard["image_ids"]
    explanations = read_explanations(shard["explanations"], ids)
    items = shard_items(_rows_of(shard["images"], ids, IMAGE_COLUMNS),
                        _rows_of(shard["annotations"], ids, ["image_id", "category", "bbox", "iscrowd"]),
                        _rows_of(shard["targets"], ids), explanations, _rows_of(shard["parts"], ids))
    return items, explanations


AGREEMENT_FILE = "agreement.parquet"


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
def evaluate_shard(shard: EvaluateShard, params: Params) -> dict:
    """The metrics of shard ``shard`` (its images' explanations) and the agreement between the jobs on its targets
    (every job of a target is in the target's image, so in this shard), staged in ``shard["shard_dir"]``
    (``metrics`` / ``errors`` by :func:`tasks.shards.write_shard`, the agreement rows in :data:`AGREEMENT_FILE`,
    written before the done marker). Stored metric groups are reused. Returns the folder and the counts."""
    device = task_device(params.explain.device)
    items, explanations = read_items(shard)
    reuse = EvaluateReuse(shard["cache_dir"], shard["bases"], params, device)
    reuse.prefetch_items(items)
    rows, errors = [], []
    for item in items:
        rows += evaluate_image(item, params, device, errors, reuse)
    reuse.flush()
    agree = agreement_rows(explanations)
    write_table_atomic(rows_to_table(agree, "metrics"), Path(shard["shard_dir"]) / AGREEMENT_FILE)
    return {"shard_dir": write_shard(shard["shard_dir"], metrics=rows, errors=errors), **reuse.counts()}


# ---------------------------------------------------------------------------------------------------- agreement
def agreement_rows(explanations: pa.Table) -> list[dict]:
    """For every target explained by several jobs with relevance over the same body parts (at least 3 in common):
    Spearman rank correlation between each pair of jobs (metric ``agree:<other job>`` on the first job of the
    pair) and whether they name the same most relevant part (``top_part_match:<other job>``; ties: a match if any
    top part of one is a top part of the other). Constant or NaN relevance gives ``undefined:`` rows."""
    by_target: dict[tuple[str, str], list[dict]] = {}
    cols = ["image_id", "target_id", "kind", "job", "region_names", "relevance"]
    for r in explanations.select(cols).to_pylist():
        if r["relevance"] is not None and r["kind"] != "classes":
            by_target.setdefault((r["image_id"], r["target_id"]), []).append(r)
    rows = []
    for exps in by_target.values():
        exps.sort(key=lambda r: r["job"])
        for i, a in enumerate(exps):
            for b in exps[i + 1:]:
                common = [n for n in a["region_names"] if n in b["region_names"]]
                if len(common) < 3:
                    continue
                va = [np.nan if a["relevance"][a["region_names"].index(n)] is None else
                      a["relevance"][a["region_names"].index(n)] for n in common]
                vb = [np.nan if b["relevance"][b["region_names"].index(n)] is None else
                      b["relevance"][b["region_names"].index(n)] for n in common]
                names = (agreement(AGREE, b["job"]), agreement(TOP_PART_MATCH, b["job"]))
                reason = relevance_reason(va, vb)
                rows += _metric_rows(a, dict(zip(names, (spearman(va, vb), top_match(va, vb)))),
                                     None if reason is None else dict.fromkeys(names, reason))
    return rows
