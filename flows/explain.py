"""The explain stage: every configured explainer job over every target of the dataset, one shard of images per
task. Shards are written atomically and kept across runs: a re-run after a crash computes only the shards that are
missing; a change of params or inputs (a different config hash) starts over."""
from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path

import flows  # noqa: F401  (environment defaults)
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from prefect import flow, get_run_logger

from detection.datasets.tables import SCHEMAS, DatasetTables, write_table_atomic
from flows.progress import progress
from flows.runner import task_runner
from tasks.explain import DONE_DIR, build_targets, config_hash, explain_shard, is_done
from tasks.explain_jobs import check_jobs
from tasks.params import Params, load_params
from tasks.shards import read_json, shard_ranges, write_json

MANIFEST = "manifest.json"


def _inputs(params: Params) -> dict[str, Path]:
    files = {"images": Path(params.pull.out_dir) / "images.parquet",
             "annotations": Path(params.pull.out_dir) / "annotations.parquet",
             "detections": Path(params.infer.out_dir) / "detections.parquet",
             "predictions": Path(params.infer.out_dir) / "predictions.parquet",
             "parts": Path(params.parts.out_dir) / "parts.parquet",
             "detector": Path(params.explain_detector().weights)}
    if params.infer.classifier is not None:
        files["classifier"] = Path(params.infer.classifier.weights)
    return {k: v for k, v in files.items() if v.is_file() or k not in ("detector", "classifier")}


def prepare_out_dir(out: Path, key: str) -> None:
    """Keep the finished shards of an interrupted run with the same config hash; otherwise start empty."""
    manifest = read_json(out / MANIFEST)
    if manifest is None or manifest.get("config_hash") != key:
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def read_explanations(out_dir: str | Path) -> pa.Table:
    """All finished shards' explanations, in (job, shard) order."""
    files = sorted((Path(out_dir) / "explanations").glob("job=*/shard-*.parquet"))
    tables = [pq.read_table(f, schema=SCHEMAS["explanations"]) for f in files]
    return pa.concat_tables(tables) if tables else SCHEMAS["explanations"].empty_table()


def read_errors(out_dir: str | Path) -> pa.Table:
    files = sorted((Path(out_dir) / "errors").glob("shard-*.parquet"))
    tables = [pq.read_table(f, schema=SCHEMAS["errors"]) for f in files]
    return pa.concat_tables(tables) if tables else SCHEMAS["errors"].empty_table()


@flow(name="explain", log_prints=True)
def explain_flow(params: Params) -> dict:
    """Targets -> shards of images -> explanations/job=<job>/shard-NNNNN.parquet (+ errors), then the metrics.
    The jobs are checked against the explainers first (:func:`tasks.explain_jobs.check_jobs`; raises ParamsError)."""
    params = check_jobs(params)                 # a bad method / option fails here, before any shard
    logger = get_run_logger()
    cfg = params.explain
    started = time.perf_counter()
    inputs = _inputs(params)
    data = DatasetTables.read(params.pull.out_dir)
    detections = pq.read_table(inputs["detections"], schema=SCHEMAS["detections"])
    predictions = pq.read_table(inputs["predictions"], schema=SCHEMAS["predictions"])
    classes = []
    if params.infer.classifier is not None:
        mine = predictions.filter(pc.equal(predictions["model_id"], params.infer.classifier.id))
        classes = list(dict.fromkeys(mine["category"].to_pylist()))
    targets = build_targets(params, data.images, data.annotations, detections, classes)
    out = Path(cfg.out_dir)
    key = config_hash(params, list(inputs.values()))
    prepare_out_dir(out, key)
    write_table_atomic(targets, out / "targets.parquet")
    write_json(out / MANIFEST, {"config_hash": key, "params": cfg.model_dump(mode="json")})

    wanted = {(t["parts_model"], t["parts_id"]) for t in targets.to_pylist() if t["parts_id"] is not None}
    parts = pq.read_table(inputs["parts"], schema=SCHEMAS["parts"]).to_pylist() if wanted else []
    items = {r["image_id"]: {"image": r, "targets": [], "parts": []}
             for r in data.images.select(["image_id", "uri", "split", "height", "width"]).to_pylist()}
    for t in targets.to_pylist():
        items[t["image_id"]]["targets"].append(t)
    for p in parts:
        if (p["model_id"], p["det_id"]) in wanted:
            items[p["image_id"]]["parts"].append(p)
    ordered = [i for i in items.values() if i["targets"]]
    shards = shard_ranges(len(ordered), cfg.shard_size)
    todo = [s for s in range(len(shards)) if not is_done(out, s)]
    logger.info("explain: %d targets in %d images, %d shards (%d already done), jobs %s", targets.num_rows,
                len(ordered), len(shards), len(shards) - len(todo), [j.name for j in cfg.jobs])
    futures = [explain_shard.submit(ordered[shards[s].start:shards[s].stop], params, s, str(out)) for s in todo]
    results = progress(futures, "explain")
    explanations = read_explanations(out)
    errors = read_errors(out)
    wall = time.perf_counter() - started
    per_call = pc.divide(pc.cast(explanations["seconds"], pa.float64()), pc.cast(explanations["shared_by"],
                                                                                pa.float64()))
    metrics = {"targets": dict(sorted(Counter(targets["kind"].to_pylist()).items())),
               "explanations": dict(sorted(Counter(explanations["job"].to_pylist()).items())),
               "errors": errors.num_rows, "shards": len(shards), "shards_run": len(todo),
               "explainer_seconds_this_run": round(sum(r["seconds"] for r in results), 2),
               "explainer_seconds_total": round(float(pc.sum(per_call).as_py() or 0.0), 2),
               "wall_seconds_this_run": round(wall, 2)}
    write_json(cfg.metrics, metrics)
    logger.info("explain: %d explanations, %d errors in %.1f s", explanations.num_rows, errors.num_rows, wall)
    return metrics


def run_explain(params_file: str | Path = "params.yaml") -> dict:
    params = check_jobs(load_params(params_file), str(params_file))
    return explain_flow.with_options(task_runner=task_runner(params, params.explain.runner))(params)


__all__ = ["DONE_DIR", "explain_flow", "read_errors", "read_explanations", "run_explain"]
