"""The guide stage: model guidance closes the loop the audit opened. The audit finds that the scene classifier reads
the spurious background cue; this stage fine-tunes it with BCE + λ · energy loss (Rao et al., ICCV 2023,
https://arxiv.org/abs/2303.11932; ``explainers.guidance``) on the training scenes, with boxes for a seeded fraction
of them, and shows by the same audit whether it is fixed.

The re-audit reuses the pipeline's own flows rather than a second implementation: ``infer_flow``, ``explain_flow``
and ``evaluate_flow`` run as subflows on ``GuideOutputs.audit_params(params)``: the same params with the guided
classifier under its own model id (``guide.model_id``), only the ``classes`` explain jobs (the RISE job by default:
an explainer the guidance did not train on), and every output, metrics file and plot under ``data/guide/``. That is
the least invasive correct way: no stage's code changes, the original tables are never rewritten (both models sit
side by side: ``data/infer`` / ``data/explain`` / ``data/evaluate`` for the original, ``data/guide/*`` for the
guided one, each row with its model id), and a change to infer / explain / evaluate applies to both audits alike.
The price: the guided infer re-runs the (unchanged) detector, whose detections explain and evaluate read (~10 s).
Wall times the subflows record go to ``metrics/timings.json`` under ``guide`` (kept out of the hashed outputs).

Then both models are measured on held-out scenes (``tasks.guide.heldout_measures``: the paired cue probe with
bootstrap intervals, F1 in-distribution and on the decorrelated set), and the RISE EPG inside the cue label's boxes
is read from both evaluate tables; everything goes to ``metrics/guide.json``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import flows  # noqa: F401  (environment defaults)
from flows.runner import task_runner

import pyarrow.parquet as pq
from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from detection.models.scene_classifier import load_classifier
from tasks import stages
from tasks.explain_jobs import check_jobs
from tasks.guide import guide, heldout_measures, original_classifier, rise_epg, train_guided
from tasks.params import Params, load_params
from tasks.shards import write_json
from tasks.timings import RUN_TIMINGS, record_run


def _audit(audit: Params) -> dict:
    """The guided classifier through infer, explain and evaluate (subflows, each with its stage's task runner)."""
    from flows.evaluate import evaluate_flow
    from flows.explain import explain_flow
    from flows.infer import infer_flow

    seconds = {}
    for name, fn, runner in (("infer", infer_flow, ThreadPoolTaskRunner(max_workers=1)),
                             ("explain", explain_flow, task_runner(audit, audit.explain.runner)),
                             ("evaluate", evaluate_flow, task_runner(audit, audit.explain.runner))):
        start = time.perf_counter()
        fn.with_options(task_runner=runner)(audit)
        seconds[name] = round(time.perf_counter() - start, 2)
    return seconds


def _classifier_f1(metrics_file: Path, model_id: str) -> dict:
    data = json.loads(metrics_file.read_text()).get(model_id, {})
    return {split: data[split] for split in ("val", "all") if split in data}


@flow(name="guide", log_prints=True)
def guide_flow(params: Params) -> dict:
    """Fine-tune -> re-audit -> held-out comparison -> ``metrics/guide.json`` (see the module docstring)."""
    logger = get_run_logger()
    out = guide(params)
    audit = check_jobs(out.audit_params(params))
    started = time.perf_counter()
    training = train_guided(params, out)
    trained = time.perf_counter()
    logger.info("guide: %s classifier %s (%s)", training["source"], out.model, training.get("seconds", ""))
    seconds = _audit(audit)
    original_id, guided_id = params.infer.classifier.id, params.guide.model_id
    models = {original_id: original_classifier(params), guided_id: load_classifier(out.model, device="cpu")}
    heldout, table = heldout_measures(params, models)
    pq.write_table(table, out.heldout)
    label = params.pull.synthetic.spurious.label
    jobs = [j.name for j in audit.explain.jobs]
    guided_eval = stages.evaluate(audit)
    epg = {original_id: rise_epg(stages.evaluate(params).read("metrics"), stages.explain(params).read("targets"),
                                 label, jobs),
           guided_id: rise_epg(guided_eval.read("metrics"), stages.explain(audit).read("targets"), label, jobs)}
    audited = {original_id: _classifier_f1(Path(params.infer.metrics), original_id),
               guided_id: _classifier_f1(Path(audit.infer.metrics), guided_id)}
    spurious = {original_id: json.loads(Path(params.infer.metrics).read_text()).get(original_id, {}).get("spurious"),
                guided_id: json.loads(Path(audit.infer.metrics).read_text()).get(guided_id, {}).get("spurious")}
    training.pop("seconds", None)
    metrics = {"original": original_id, "guided": guided_id, "label": label, "jobs": jobs,
               "training": training, "audited": audited, "audited_probe": spurious, "rise_epg": epg, **heldout}
    write_json(out.metrics, metrics)
    stray = out.out_dir / RUN_TIMINGS                 # the subflows' wall times: out of the hashed folder
    if stray.is_file():
        stray.unlink()
    record_run("guide", {"train_seconds": round(trained - started, 2), **{f"{k}_seconds": v for k, v in
                                                                            seconds.items()},
                         "wall_seconds": round(time.perf_counter() - started, 2)}, out.metrics)
    probe = heldout["models"]
    logger.info("guide: probe P(%s | no %s, cue) %.3f -> %.3f; decorrelated mean F1 %.3f -> %.3f", label, label,
                probe[original_id]["probe"]["with_cue"]["mean"], probe[guided_id]["probe"]["with_cue"]["mean"],
                probe[original_id]["decorrelated"]["mean_f1"], probe[guided_id]["decorrelated"]["mean_f1"])
    return metrics


def run_guide(params_file: str | Path = "params.yaml") -> dict:
    params = check_jobs(load_params(params_file), str(params_file))
    return guide_flow(params)


__all__ = ["guide_flow", "run_guide"]
