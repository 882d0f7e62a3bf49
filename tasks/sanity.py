"""The evaluate stage's sanity check of every explain job: Adebayo et al.'s cascading model-parameter randomisation
("Sanity Checks for Saliency Maps", NeurIPS 2018, https://arxiv.org/abs/1810.03292; explainers.sanity).

For each job, its first ``evaluate.sanity.targets`` explained targets (in image, target order) are explained again,
exactly as the explain stage does (``tasks.explain.explain_targets``: same regions, budget, options and seed), on
copies of the audited model whose top parameterised layers are randomised in ``steps`` cumulative stages (a learned
explainer's guard against other model weights is off on the copies: :func:`_unguarded`). Each map is
compared with the trained model's by Spearman's rank correlation, of the signed and of the absolute values: the
relevance vector for region jobs (body parts, superpixels, grid cells), the stored saliency grid for pixel jobs.
A job *passes* when, with every layer randomised, both medians over its targets are at most
``evaluate.sanity.max_correlation`` in absolute value: its explanations depend on what the model learned. A
black-box model (ONNX, ``kind: callable``) has no parameters to randomise: its jobs get the status
``not applicable`` and no rows.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from detection.scorers_grad import gradients_unavailable
from explainers.registry import METHODS
from explainers.sanity import randomised_copies, rank_correlation
from tasks.explain import ExplainItem, explain_targets, parts_lookup
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


def sanity_targets(explanations: pa.Table, jobs: list[ExplainJob], per_job: int) -> dict[str, list[tuple[str, str]]]:
    """The first ``per_job`` (image_id, target_id) each job explained, sorted: what the check re-explains."""
    by_job: dict[str, set[tuple[str, str]]] = {}
    for k in explanations.select(["job", "image_id", "target_id"]).to_pylist():
        by_job.setdefault(k["job"], set()).add((k["image_id"], k["target_id"]))
    return {job.name: sorted(by_job.get(job.name, ()))[:per_job] for job in jobs}


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
    """The job as run on a randomised copy: a learned explainer (``needs_trained_weights``, RExL) refuses a model
    whose weights are not the ones its policy was trained for (its guard), and a randomised copy is such a model on
    purpose, so its guard is switched off there (``check_weights: false``, recorded in the options; the trained
    model's stage 0 keeps it). Other jobs unchanged."""
    if not METHODS[job.method].needs_trained_weights:
        return job
    return job.model_copy(update={"options": {**job.options, "check_weights": False}})


@task(cache_policy=NO_CACHE)
def sanity_check(items: list[ExplainItem], chosen: dict[str, list[tuple[str, str]]], params: Params) -> dict:
    """Re-explain the ``chosen`` targets of every job on the cascade of randomised models. ``items``: the explain
    stage's items (image row, targets, parts) of the images involved. Returns ``{"rows": [SanityRow dicts],
    "errors": [errors rows], "status": {job: "checked" | "not applicable: <why>"}}``."""
    cfg, device = params.explain, task_device(params.explain.device)
    by_image = {i["image"]["image_id"]: i for i in items}
    rows, errors, status = [], [], {}
    images = _Images(params, device, errors)
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
        reference: dict[tuple[str, str, str], np.ndarray] = {}
        for copy in randomised_copies(model, "model", steps=params.evaluate.sanity.steps, seed=params.seed):
            scorer_for = _scorer_for(params, device, kind, copy.model)
            stage = f"stage {copy.stage} ({copy.randomised}/{copy.layers} layers randomised)"
            for job in jobs:
                run = _unguarded(job) if copy.stage > 0 else job
                for image_id, target_id in chosen[job.name]:
                    image = images.get(by_image[image_id], kind == "classifier")
                    if image is None:
                        continue
                    current = _explained_map(run, scorer_for, image, by_image[image_id], target_id, params, device,
                                             errors, stage)
                    if copy.stage == 0 and current is not None:
                        reference[(job.name, image_id, target_id)] = current
                    ref = reference.get((job.name, image_id, target_id))
                    rho = rho_abs = float("nan")
                    if ref is not None and current is not None and ref.shape == current.shape:
                        rho, rho_abs = _correlations(ref, current)
                    rows.append(asdict(SanityRow(job.name, job.method, kind, copy.stage, copy.randomised, copy.layers,
                                                 copy.top_layer, image_id, target_id, rho, rho_abs)))
    return {"rows": rows, "errors": errors, "status": status}


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
    medians at full randomisation at most ``max_correlation`` in absolute value; no finite value: does not pass)."""
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
            entry.update({"method": mine[0]["method"], "model": mine[0]["model"],
                          "targets": len({(r["image_id"], r["target_id"]) for r in mine}),
                          "spearman_full": full["spearman"], "spearman_abs_full": full["spearman_abs"],
                          "passes": all(v is not None and abs(v) <= max_correlation for v in values),
                          "stages": per_stage})
        out[job] = entry
    return out


def _median(values: list[float]) -> float | None:
    finite = [v for v in values if np.isfinite(v)]
    return round(float(np.median(finite)), 4) if finite else None


__all__ = ["SanityRow", "sanity_check", "sanity_summary", "sanity_targets"]
