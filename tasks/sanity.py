"""The evaluate stage's sanity check of every explain job: Adebayo et al.'s cascading model-parameter randomisation
("Sanity Checks for Saliency Maps", NeurIPS 2018, https://arxiv.org/abs/1810.03292; explainers.sanity).

For each job, its first ``evaluate.sanity.targets`` explained targets (in image, target order) are explained again,
exactly as the explain stage does (``tasks.explain.explain_targets``: same regions, budget, options and seed), on
copies of the audited model whose top parameterised layers are randomised in ``steps`` cumulative stages (a learned
explainer's guard against other model weights is off on the copies: :func:`_unguarded`). Each map is
compared with the trained model's by Spearman's rank correlation, of the signed and of the absolute values: the
relevance vector for region jobs (body parts, superpixels, grid cells), the stored saliency grid for pixel jobs.
A job *passes* when, with every layer randomised, both medians over its targets are at most
``evaluate.sanity.max_correlation`` in absolute value: its explanations depend on what the model learned. Each
median at full randomisation comes with a 95 % percentile-bootstrap interval over the targets (:func:`median_interval`)
and the verdict is *settled* when the intervals put it on one side of the limit (every interval inside it: passes;
some interval wholly beyond it: fails); otherwise the verdict is the point estimate's and may flip with a few more
targets or with float rounding of the model (with 2 targets one did: benchmarks/README.md). Such a job is checked
again on more of its targets, up to ``evaluate.sanity.max_targets`` (:mod:`tasks.sanity_extension`, a module of its
own so that its edits leave this module's stored rows valid). A black-box model
(ONNX, ``kind: callable``) has no parameters to randomise: its jobs get the status
``not applicable`` and no rows.
"""
from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from detection.datasets.tables import rows_to_table
from detection.models.specs import model_sha256
from detection.scorers_grad import gradients_unavailable
from explainers.registry import METHODS
from explainers.sanity import randomised_copies, rank_correlation
from tasks.bootstrap import CONFIDENCE, N_BOOT, SEED, cell_seed
from tasks.explain import ExplainItem, explain_targets, image_sha256, parts_lookup, target_key
from tasks.model_cache import (
    classifier_model,
    classifier_scorer,
    classifier_view,
    detection_scorer,
    detector_model,
    load_image,
    task_device,
)
from tasks.params import ExplainJob, Params
from tasks.result_store import Reuse, cache_dir_of, digest, files_digest, store_for
from tasks.stage_deps import Entry, module_closure, module_file

STORE_TABLES = ("sanity", "errors")


@dataclass
class SanityRow:
    """One row of evaluate's ``sanity`` table: a job's explanation of one target on one stage's model."""

    job: str
    method: str
    model: str                    # detector | classifier
    stage: int                    # 0: the trained model
    randomised: int               # top parameterised layers randomised
    layers: int                   # parameterised layers of the network
    top_layer: str | None         # the lowest layer randomised so far
    image_id: str
    target_id: str
    spearman: float               # signed maps; NaN when either map is constant or failed
    spearman_abs: float           # absolute maps


def sanity_targets(explanations: pa.Table, jobs: list[ExplainJob], per_job: int,
                   start: int = 0) -> dict[str, list[tuple[str, str]]]:
    """The first ``per_job`` (image_id, target_id) each job explained, sorted, less the first ``start`` of them:
    what the check re-explains."""
    by_job: dict[str, set[tuple[str, str]]] = {}
    for k in explanations.select(["job", "image_id", "target_id"]).to_pylist():
        by_job.setdefault(k["job"], set()).add((k["image_id"], k["target_id"]))
    return {job.name: sorted(by_job.get(job.name, ()))[start:per_job] for job in jobs}


def _map(row: dict, job: ExplainJob) -> np.ndarray:
    if job.regions != "none":
        return np.asarray(row["relevance"], np.float64)
    return np.asarray(row["saliency"], np.float64)


def _model_of(job: ExplainJob) -> str:
    return "classifier" if job.targets == "classes" else "detector"


class _Images:
    """Each image loaded once (at the classifier's input size for classifier jobs), across stages and jobs."""

    def __init__(self, params: Params, device: str, errors: list[dict]):
        self.params, self.device, self.errors, self.cache = params, device, errors, {}

    def get(self, item: ExplainItem, classifier: bool) -> torch.Tensor | None:
        key = (item["image"]["image_id"], classifier)
        if key not in self.cache:
            image = load_image(item["image"], "evaluate", self.device, self.errors)
            if classifier and image is not None:
                image = classifier_view(self.params, self.device, image)
            self.cache[key] = image
        return self.cache[key]


def _scorer_for(params: Params, device: str, kind: str, model):
    if kind == "classifier":
        return lambda ts: classifier_scorer(params, device, ts, classifier=model)
    return lambda ts: detection_scorer(params, device, ts, detector=model)


def _explained_map(job: ExplainJob, scorer_for, image: torch.Tensor, item: ExplainItem, target_id: str,
                   params: Params, device: str, errors: list[dict], stage: str) -> np.ndarray | None:
    """The job's map of one target exactly as the explain stage computes it (None, with an errors row, when the
    method fails on this stage's model)."""
    target = next(t for t in item["targets"] if t["target_id"] == target_id)
    failed: list[dict] = []
    parts_of = None if job.targets == "classes" else parts_lookup(item["parts"], device)   # as explain_image does
    made = explain_targets(job, scorer_for, image, [target], parts_of, params.explain,
                           params.seed, device, failed, item["image"]["uri"])
    for e in failed:
        errors.append({**e, "stage": "evaluate", "message": f"sanity {stage}: {e['message']}"})
    return _map(made[0], job) if made else None


def _unguarded(job: ExplainJob) -> ExplainJob:
    """The job as run on a randomised copy: a learned explainer (``needs_trained_weights``: RExL, FastSHAP) refuses
    a model whose weights are not the ones its policy or network was trained for (its guard), and a randomised copy
    is such a model on purpose, so its guard is switched off there (``check_weights: false``, recorded in the
    options; the trained model's stage 0 keeps it). Other jobs unchanged."""
    if not METHODS[job.method].needs_trained_weights:
        return job
    return job.model_copy(update={"options": {**job.options, "check_weights": False}})


@functools.lru_cache(maxsize=1)
def code_files() -> tuple[Path, ...]:
    """The source a sanity row depends on: every project module :mod:`tasks.sanity` imports (the randomisation,
    the explain stage's code and every explainer, the models and scorers), sorted."""
    return tuple(sorted(module_file(m) for m in module_closure((Entry("tasks.sanity"),))))


def sanity_bases(params: Params) -> dict[str, str]:
    """Per model kind (``detector`` / ``classifier``), the digest of what every sanity row of a target depends on
    besides the job, the image and the target: the model (its spec and weights hash), the cascade (``steps``, the
    seed that draws the random layers), the explain params that change an explanation (``saliency_size``,
    ``chunk_size``) and the code (:func:`code_files`). Raises FileNotFoundError naming a missing file."""
    code = files_digest(list(code_files()))
    out = {}
    for kind, spec in (("detector", params.explain_detector()), ("classifier", params.infer.classifier)):
        if spec is None:
            continue
        out[kind] = digest({"stage": "sanity", "model": spec.model_dump(mode="json"), "weights": model_sha256(spec),
                            "steps": params.evaluate.sanity.steps, "seed": params.seed,
                            "saliency_size": list(params.explain.saliency_size),
                            "chunk_size": params.explain.chunk_size, "code": code})
    return out


def sanity_key(base: str, device: str, job: ExplainJob, image_sha: str | None, item: ExplainItem,
               target_id: str, job_digest: str | None = None) -> str | None:
    """The store key of one (job, target)'s rows at every stage of the cascade: the kind's base
    (:func:`sanity_bases`), the device type, the job (the digest of its dump: options and the bytes of the files they
    name; ``job_digest`` when the caller computed it once for all the job's targets), the image's content hash and
    the target (kind, id, category, bbox, class_probs, its body-part masks' RLE). None when the image cannot be
    hashed (always computed)."""
    if image_sha is None:
        return None
    target = target_key(job, item, next(t for t in item["targets"] if t["target_id"] == target_id))
    job_digest = job_digest or digest(job.model_dump(mode="json"))
    return digest({"base": base, "device": torch.device(device).type, "job": job_digest,
                   "image": image_sha, "image_id": item["image"]["image_id"], "target": target})


@task(cache_policy=NO_CACHE)
def sanity_check(items: list[ExplainItem], chosen: dict[str, list[tuple[str, str]]], params: Params) -> dict:
    """Re-explain the ``chosen`` targets of every job on the cascade of randomised models. ``items``: the explain
    stage's items (image row, targets, parts) of the images involved. A (job, target)'s rows at every stage are kept
    in the result store under ``explain.cache_dir`` (:func:`sanity_key`), with the errors rows its re-explanations
    recorded, and reused by a later run (the errors replayed); a target whose image cannot be read is not stored.
    The randomised copies are built only when some chosen target of their model is not in the store. Returns
    ``{"rows": [SanityRow dicts], "errors": [errors rows], "status": {job: "checked" | "not applicable: <why>"},
    "reused": n, "computed": n}`` (targets)."""
    cfg, device = params.explain, task_device(params.explain.device)
    by_image = {i["image"]["image_id"]: i for i in items}
    rows, errors, status = [], [], {}
    images = _Images(params, device, errors)
    reuse = Reuse(store_for(cache_dir_of(params), "sanity", STORE_TABLES))
    bases = sanity_bases(params) if reuse.store is not None else {}
    shas: dict[str, str | None] = {}
    job_digests: dict[str, str] = {}

    def key(kind: str, job: ExplainJob, image_id: str, target_id: str) -> str | None:
        if kind not in bases:
            return None
        item = by_image[image_id]
        if image_id not in shas:
            shas[image_id] = image_sha256(item["image"]["uri"])
        if job.name not in job_digests:           # the dump hashes the files its options name: once per job
            job_digests[job.name] = digest(job.model_dump(mode="json"))
        return sanity_key(bases[kind], device, job, shas[image_id], item, target_id, job_digests[job.name])

    for kind in ("detector", "classifier"):
        jobs = [j for j in cfg.jobs if _model_of(j) == kind and chosen.get(j.name)]
        if not jobs:
            continue
        model = (classifier_model(params.infer.classifier.model_dump_json(), device, cfg.chunk_size)
                 if kind == "classifier" else
                 detector_model(params.explain_detector().model_dump_json(), device, cfg.chunk_size))
        reason = gradients_unavailable(model)      # no torch.nn.Module network: nothing to randomise
        if reason is not None:
            status.update({j.name: f"not applicable: {reason}" for j in jobs})
            continue
        status.update({j.name: "checked" for j in jobs})
        keys = {(job.name, i, t): key(kind, job, i, t) for job in jobs for i, t in chosen[job.name]}
        reuse.prefetch(keys.values())
        by_pair: dict[tuple[str, str, str], list[dict]] = {}       # (job, image, target) -> its rows by stage
        missing: dict[str, list[tuple[str, str]]] = {}
        for job in jobs:
            for image_id, target_id in chosen[job.name]:
                entry = reuse.get(keys[(job.name, image_id, target_id)])
                if entry is None:
                    missing.setdefault(job.name, []).append((image_id, target_id))
                else:
                    by_pair[(job.name, image_id, target_id)] = entry["sanity"].to_pylist()
                    img = by_image[image_id]["image"]
                    errors += [{**e, "uri": img["uri"], "image_id": image_id} for e in entry["errors"].to_pylist()]
        if missing:
            _compute(kind, model, jobs, missing, keys, by_image, images, params, device, errors, reuse, by_pair)
        rows += [r for which in keys for r in by_pair.get(which, ())]     # job, target, stage order: reuse or not
    reuse.flush()
    return {"rows": rows, "errors": errors, "status": status, "reused": reuse.reused, "computed": reuse.computed}


def _compute(kind: str, model, jobs: list[ExplainJob], missing: dict[str, list[tuple[str, str]]],
             keys: dict[tuple[str, str, str], str | None], by_image: dict[str, ExplainItem], images: _Images,
             params: Params, device: str, errors: list[dict], reuse: Reuse,
             by_pair: dict[tuple[str, str, str], list[dict]]) -> None:
    """The ``missing`` (job, target) pairs of one model on its cascade of randomised copies, into ``by_pair`` and
    ``reuse`` with the errors rows each recorded (a pair whose image cannot be read is computed, not stored)."""
    computed: dict[tuple[str, str, str], list[dict]] = {}
    recorded: dict[tuple[str, str, str], list[dict]] = {}
    unreadable: set[tuple[str, str, str]] = set()
    seconds: dict[tuple[str, str, str], float] = {}
    reference: dict[tuple[str, str, str], np.ndarray] = {}
    for copy in randomised_copies(model, "model", steps=params.evaluate.sanity.steps, seed=params.seed):
        scorer_for = _scorer_for(params, device, kind, copy.model)
        stage = f"stage {copy.stage} ({copy.randomised}/{copy.layers} layers randomised)"
        for job in jobs:
            run = _unguarded(job) if copy.stage > 0 else job
            for image_id, target_id in missing.get(job.name, ()):
                which = (job.name, image_id, target_id)
                started = time.perf_counter()
                image = images.get(by_image[image_id], kind == "classifier")
                if image is None:
                    unreadable.add(which)
                    continue
                before = len(errors)
                current = _explained_map(run, scorer_for, image, by_image[image_id], target_id, params, device,
                                         errors, stage)
                recorded.setdefault(which, []).extend(errors[before:])
                if copy.stage == 0 and current is not None:
                    reference[which] = current
                ref = reference.get(which)
                rho = rho_abs = float("nan")
                if ref is not None and current is not None and ref.shape == current.shape:
                    rho, rho_abs = _correlations(ref, current)
                computed.setdefault(which, []).append(asdict(SanityRow(
                    job.name, job.method, kind, copy.stage, copy.randomised, copy.layers, copy.top_layer,
                    image_id, target_id, rho, rho_abs)))
                seconds[which] = seconds.get(which, 0.0) + time.perf_counter() - started
    for job in jobs:
        for image_id, target_id in missing.get(job.name, ()):
            which = (job.name, image_id, target_id)
            by_pair[which] = computed.get(which, [])
            reuse.put(None if which in unreadable else keys[which],
                      {"sanity": rows_to_table(by_pair[which], "sanity"),
                       "errors": rows_to_table(recorded.get(which, []), "errors")}, seconds.get(which, 0.0))


def _correlations(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Spearman's rho of the signed and of the absolute maps. A map that turned constant on the randomised model
    keeps none of the trained map's ranking: 0 (not NaN), unless the trained map was constant too (NaN)."""
    a, b = torch.from_numpy(reference), torch.from_numpy(current)
    signed, absolute = rank_correlation(a, b), rank_correlation(a.abs(), b.abs())
    if np.ptp(current) == 0 and np.ptp(reference) > 0:
        signed = 0.0
    if np.ptp(np.abs(current)) == 0 and np.ptp(np.abs(reference)) > 0:
        absolute = 0.0
    return signed, absolute


def sanity_summary(rows: list[dict], status: dict[str, str], max_correlation: float) -> dict[str, dict]:
    """Per job: its status, and where checked the median rank correlations per stage and whether it passes (both
    medians at full randomisation at most ``max_correlation`` in absolute value; no finite value: does not pass), the
    medians' bootstrap intervals at full randomisation (``spearman_full_interval``, ``spearman_abs_full_interval``:
    :func:`median_interval`) and whether they settle the verdict (``settled``: :func:`verdict_settled`)."""
    out: dict[str, dict] = {}
    for job, state in status.items():
        mine = [r for r in rows if r["job"] == job]
        entry: dict = {"status": state}
        if mine:
            stages = sorted({r["stage"] for r in mine})
            per_stage = []
            for s in stages:
                at = [r for r in mine if r["stage"] == s]
                per_stage.append({"stage": s, "randomised": at[0]["randomised"], "layers": at[0]["layers"],
                                  "spearman": _median([r["spearman"] for r in at]),
                                  "spearman_abs": _median([r["spearman_abs"] for r in at])})
            full = per_stage[-1]
            values = [full["spearman"], full["spearman_abs"]]
            last = [r for r in mine if r["stage"] == stages[-1]]
            intervals = [median_interval([r[k] for r in last], f"{job}|{k}") for k in ("spearman", "spearman_abs")]
            entry.update({"method": mine[0]["method"], "model": mine[0]["model"],
                          "targets": len({(r["image_id"], r["target_id"]) for r in mine}),
                          "spearman_full": full["spearman"], "spearman_abs_full": full["spearman_abs"],
                          "spearman_full_interval": intervals[0], "spearman_abs_full_interval": intervals[1],
                          "passes": all(v is not None and abs(v) <= max_correlation for v in values),
                          "settled": verdict_settled(intervals, max_correlation),
                          "stages": per_stage})
        out[job] = entry
    return out


def median_interval(values: list[float], key: str, confidence: float = CONFIDENCE,
                    n_boot: int = N_BOOT) -> list[float] | None:
    """[low, high]: the percentile-bootstrap ``confidence`` interval of the median of the finite ``values`` (the
    targets' rank correlations; Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 13), from the
    stream ``tasks.bootstrap.cell_seed(SEED, key)`` (same bytes every run); None for fewer than 2 finite values."""
    finite = np.asarray([v for v in values if np.isfinite(v)], np.float64)
    if finite.size < 2:
        return None
    rng = np.random.default_rng(cell_seed(SEED, key))
    medians = np.median(finite[rng.integers(0, finite.size, (n_boot, finite.size))], axis=1)
    low, high = np.quantile(medians, [(1 - confidence) / 2, (1 + confidence) / 2])
    return [round(float(low), 4), round(float(high), 4)]


def verdict_settled(intervals: list[list[float] | None], max_correlation: float) -> bool:
    """Whether the intervals of the medians put the verdict on one side of the limit: every interval within
    [-max_correlation, max_correlation] (passes) or some interval wholly outside it (fails). False when an interval
    is missing (fewer than 2 finite correlations)."""
    if any(i is None for i in intervals):
        return False
    inside = all(-max_correlation <= lo and hi <= max_correlation for lo, hi in intervals)
    beyond = any(lo > max_correlation or hi < -max_correlation for lo, hi in intervals)
    return inside or beyond


def _median(values: list[float]) -> float | None:
    finite = [v for v in values if np.isfinite(v)]
    return round(float(np.median(finite)), 4) if finite else None


__all__ = ["SanityRow", "median_interval", "sanity_check", "sanity_summary", "sanity_targets",
           "verdict_settled"]
