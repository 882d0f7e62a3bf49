"""The explain stage: every configured explainer job over every target of the dataset, one shard of images per
task. Shards are written atomically and kept across runs: a re-run after a crash computes only the shards that are
missing; a change of params or inputs (a different config hash) starts over, and then reuses from the result store
(tasks.result_store, ``explain.cache_dir``) every explanation group whose key is unchanged (same image bytes,
targets, body parts, model, job and code): only new or changed groups are computed. Tasks get shard descriptions
(image ids and table paths, ``tasks.explain.ExplainShard``) and read their own rows; the metrics are Arrow
aggregates."""
from __future__ import annotations

import time
from pathlib import Path

import flows  # noqa: F401  (environment defaults)
from flows.progress import progress
from flows.runner import task_runner

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from prefect import flow, get_run_logger

from detection.datasets.tables import SCHEMAS, write_table_atomic
from detection.models.specs import model_files
from tasks import stages
from tasks.explain import ExplainShard, build_targets, config_hash, explain_shard, job_bases, read_targets_inputs
from tasks.explain_jobs import check_jobs
from tasks.params import FILE_OPTIONS, Params, load_params
from tasks.result_store import cache_dir_of
from tasks.shards import is_done, keep_if_same_config, shard_name, shard_ranges, write_json
from tasks.timings import read_shard_timings, record_run


def _input_files(params: Params) -> list[Path]:
    """The files an explain run's rows depend on (hashed into its config): the tables it reads, the weights, and the
    files jobs' options name (``tasks.params.FILE_OPTIONS``: a ``rexl`` job's trained policy; their bytes are in
    each job's result-store key too, through the job's dump)."""
    pulled, inferred = stages.pull(params), stages.infer(params)
    files = [pulled.path("images"), pulled.path("annotations"), inferred.path("detections"),
             inferred.path("predictions"), stages.parts(params).path("parts")]
    models = [params.explain_detector(), *([params.infer.classifier] if params.infer.classifier is not None else [])]
    options = [Path(job.options[k]) for job in params.explain.jobs for k in FILE_OPTIONS if k in job.options]
    return files + [f for spec in models for f in model_files(spec)] + list(dict.fromkeys(options))


def _forwards(explanations: pa.Table) -> dict[str, float]:
    """Model forward passes of each job, shared ones divided among the targets that shared them (Arrow
    aggregate over the ``job``, ``n_forward``, ``shared_by`` columns)."""
    per_row = pc.divide(pc.cast(explanations["n_forward"], pa.float64()),
                        pc.cast(explanations["shared_by"], pa.float64()))
    sums = pa.table({"job": explanations["job"], "n": per_row}).group_by("job").aggregate([("n", "sum")])
    return {job: round(n) for job, n in zip(sums["job"].to_pylist(), sums["n_sum"].to_pylist())}


def _counts(column: pa.ChunkedArray) -> dict[str, int]:
    """How many times each value occurs, sorted by value (Arrow ``value_counts``)."""
    counts = pc.value_counts(column)
    return dict(sorted(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist())))


def _sharded_columns(outputs: stages.ExplainOutputs, name: str, columns: list[str]) -> pa.Table:
    """Only ``columns`` of a sharded table of the explain output (every finished or not shard file)."""
    files = sorted(str(f) for f in outputs.out_dir.glob(outputs.TABLES[name]))
    if not files:
        return SCHEMAS[name].empty_table().select(columns)
    return ds.dataset(files, schema=SCHEMAS[name], format="parquet").to_table(columns=columns)


def _shards(params: Params, targets: pa.Table, needs_parts: bool) -> list[ExplainShard]:
    """One description per shard of the images that have targets (in image order): image ids, table paths, the
    store and the jobs' key bases."""
    ids = pc.unique(targets["image_id"])                 # build_targets emits targets in image order
    outputs, bases = stages.explain(params), job_bases(params)
    paths = {"images": str(stages.pull(params).path("images").resolve()),
             "targets": str(outputs.path("targets").resolve()),
             "parts": str(stages.parts(params).path("parts").resolve()) if needs_parts else None}
    return [ExplainShard(shard=i, image_ids=ids[r.start:r.stop].to_pylist(), cache_dir=cache_dir_of(params),
                         bases=bases, **paths)
            for i, r in enumerate(shard_ranges(len(ids), params.explain.shard_size))]


def _classes(params: Params, inferred: stages.InferOutputs) -> list[str]:
    """The classifier's classes in the order its predictions name them (none without a classifier)."""
    if params.infer.classifier is None:
        return []
    predictions = pq.read_table(inferred.path("predictions"), columns=["model_id", "category"],
                                schema=SCHEMAS["predictions"])
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
    pulled, inferred = stages.pull(params), stages.infer(params)
    images, annotations, detections = read_targets_inputs(pulled.path("images"), pulled.path("annotations"),
                                                          inferred.path("detections"))
    targets = build_targets(params, images, annotations, detections, _classes(params, inferred))
    del images, annotations, detections
    outputs = stages.explain(params)
    key = config_hash(params, _input_files(params))
    keep_if_same_config(outputs.out_dir, key)
    write_table_atomic(targets, outputs.path("targets"))
    write_json(outputs.manifest, {"config_hash": key,
                                  "params": cfg.model_dump(mode="json", exclude={"cache_dir"})})

    needs_parts = bool(pc.any(pc.is_valid(targets["parts_id"])).as_py())
    shards = _shards(params, targets, needs_parts)
    todo = [s for s in shards if not is_done(outputs.out_dir, shard_name(s["shard"]))]
    logger.info("explain: %d targets in %d images, %d shards (%d already done), jobs %s, result store %s",
                targets.num_rows, pc.count_distinct(targets["image_id"]).as_py(), len(shards),
                len(shards) - len(todo), [j.name for j in cfg.jobs], cache_dir_of(params) or "off")
    futures = [explain_shard.submit(s, params) for s in todo]
    results = progress(futures, "explain")
    explanations = _sharded_columns(outputs, "explanations", ["job", "n_forward", "shared_by"])
    errors = _sharded_columns(outputs, "errors", ["image_id"])
    wall = time.perf_counter() - started
    metrics = {"targets": _counts(targets["kind"]), "explanations": _counts(explanations["job"]),
               "forwards": dict(sorted(_forwards(explanations).items())),
               "errors": errors.num_rows, "shards": len(shards)}
    write_json(outputs.metrics, metrics)
    shard_seconds = read_shard_timings(outputs.out_dir)
    timing = {"shards_run": len(todo), "wall_seconds": round(wall, 2),
              "explainer_seconds_this_run": round(sum(r["seconds"] for r in results), 2),
              "groups_computed": sum(r["computed"] for r in results),
              "groups_reused": sum(r["reused"] for r in results),
              "explainer_seconds_reused": round(sum(r["seconds_reused"] for r in results), 2),
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
