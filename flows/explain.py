"""The explain stage: every configured explainer job over every target of the dataset, one shard of images per
task. Shards are written atomically and kept across runs: a re-run after a crash computes only the shards that are
missing; a change of params or inputs (a different config hash) starts over."""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import flows  # noqa: F401  (environment defaults)
from flows.progress import progress
from flows.runner import task_runner

import pyarrow as pa
import pyarrow.compute as pc
from prefect import flow, get_run_logger

from detection.datasets.tables import write_table_atomic
from detection.models.specs import model_files
from tasks import stages
from tasks.explain import build_targets, config_hash, explain_shard, shard_items
from tasks.explain_jobs import check_jobs
from tasks.params import Params, load_params
from tasks.shards import is_done, keep_if_same_config, shard_name, shard_ranges, write_json
from tasks.timings import read_shard_timings, record_run


def _input_files(params: Params) -> list[Path]:
    """The files an explain run's rows depend on (hashed into its config): the tables it reads, the weights."""
    pulled, inferred = stages.pull(params), stages.infer(params)
    files = [pulled.path("images"), pulled.path("annotations"), inferred.path("detections"),
             inferred.path("predictions"), stages.parts(params).path("parts")]
    models = [params.explain_detector(), *([params.infer.classifier] if params.infer.classifier is not None else [])]
    return files + [f for spec in models for f in model_files(spec)]


def _forwards(explanations: pa.Table) -> dict[str, float]:
    """Model forward passes of each job, shared ones divided among the targets that shared them."""
    per_row = pc.divide(pc.cast(explanations["n_forward"], pa.float64()),
                        pc.cast(explanations["shared_by"], pa.float64()))
    by_job: dict[str, float] = {}
    for job, n in zip(explanations["job"].to_pylist(), per_row.to_pylist()):
        by_job[job] = by_job.get(job, 0.0) + n
    return {job: round(n) for job, n in by_job.items()}


def _classes(params: Params, predictions: pa.Table) -> list[str]:
    """The classifier's classes in the order its predictions name them (none without a classifier)."""
    if params.infer.classifier is None:
        return []
    mine = predictions.filter(pc.equal(predictions["model_id"], params.infer.classifier.id))
    return list(dict.fromkeys(mine["category"].to_pylist()))


@flow(name="explain", log_prints=True)
def explain_flow(params: Params) -> dict:
    """Targets -> shards of images -> explanations/job=<job>/shard-NNNNN.parquet (+ errors), then the metrics.
    The jobs are checked against the explainers first (:func:`tasks.explain_jobs.check_jobs`; raises ParamsError).
    Shards follow the persistent convention of :mod:`tasks.shards`: same config hash -> finished shards are kept."""
    params = check_jobs(params)                 # a bad method / option fails here, before any shard
    logger = get_run_logger()
    cfg = params.explain
    started = time.perf_counter()
    data = stages.pull(params).dataset()
    inferred = stages.infer(params)
    targets = build_targets(params, data.images, data.annotations, inferred.read("detections"),
                            _classes(params, inferred.read("predictions")))
    outputs = stages.explain(params)
    key = config_hash(params, _input_files(params))
    keep_if_same_config(outputs.out_dir, key)
    write_table_atomic(targets, outputs.path("targets"))
    write_json(outputs.manifest, {"config_hash": key,
                                  "params": cfg.model_dump(mode="json")})

    needs_parts = bool(pc.any(pc.is_valid(targets["parts_id"])).as_py())
    items = shard_items(data.images, targets, stages.parts(params).read("parts") if needs_parts else None)
    shards = shard_ranges(len(items), cfg.shard_size)
    todo = [s for s in range(len(shards)) if not is_done(outputs.out_dir, shard_name(s))]
    logger.info("explain: %d targets in %d images, %d shards (%d already done), jobs %s", targets.num_rows,
                len(items), len(shards), len(shards) - len(todo), [j.name for j in cfg.jobs])
    futures = [explain_shard.submit(items[shards[s].start:shards[s].stop], params, s) for s in todo]
    results = progress(futures, "explain")
    explanations, errors = outputs.read("explanations"), outputs.read("errors")
    wall = time.perf_counter() - started
    metrics = {"targets": dict(sorted(Counter(targets["kind"].to_pylist()).items())),
               "explanations": dict(sorted(Counter(explanations["job"].to_pylist()).items())),
               "forwards": dict(sorted(_forwards(explanations).items())),
               "errors": errors.num_rows, "shards": len(shards)}
    write_json(outputs.metrics, metrics)
    shard_seconds = read_shard_timings(outputs.out_dir)
    timing = {"shards_run": len(todo), "wall_seconds": round(wall, 2),
              "explainer_seconds_this_run": round(sum(r["seconds"] for r in results), 2),
              "explainer_seconds_total": round(sum(v for t in shard_seconds.values()
                                                   for v in t["explainer_seconds"].values()), 2)}
    record_run("explain", timing, outputs.metrics)
    logger.info("explain: %d explanations, %d errors; %d shards run in %.1f s", explanations.num_rows,
                errors.num_rows, len(todo), wall)
    return {**metrics, **timing}


def run_explain(params_file: str | Path = "params.yaml") -> dict:
    params = check_jobs(load_params(params_file), str(params_file))
    return explain_flow.with_options(task_runner=task_runner(params, params.explain.runner))(params)


__all__ = ["explain_flow", "run_explain"]
