"""The parts stage: body-part masks of every pedestrian (ground-truth persons and person detections), and their
quality against the synthetic ground-truth part masks."""
from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import flows  # noqa: F401  (environment defaults)
import pyarrow.parquet as pq
from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from detection.datasets.tables import SCHEMAS, DatasetTables, write_table_atomic
from tasks.params import Params, load_params
from tasks.parts import parts_shard, quality_metrics, shard_inputs
from tasks.shards import fresh_staging, publish, read_shards, shard_ranges, write_json

TABLES = ("parts", "part_iou", "errors")


@flow(name="parts", log_prints=True)
def parts_flow(params: Params) -> dict:
    """Shards of images -> parts / part_iou / errors tables, published in one swap, and ``metrics/parts.json``."""
    logger = get_run_logger()
    cfg = params.parts
    data = DatasetTables.read(params.pull.out_dir)
    detections = pq.read_table(Path(params.infer.out_dir) / "detections.parquet", schema=SCHEMAS["detections"])
    items = shard_inputs(params, data.images, data.annotations, data.gt_parts, detections)
    out = Path(cfg.out_dir)
    staging = fresh_staging(out)
    futures = [parts_shard.submit(items[r.start:r.stop], cfg, str(staging / "_shards" / f"{r.start:08d}"))
               for r in shard_ranges(len(items), cfg.shard_size)]
    tables = read_shards([f.result() for f in futures], TABLES)
    shutil.rmtree(staging / "_shards", ignore_errors=True)
    for name, table in tables.items():
        write_table_atomic(table, staging / f"{name}.parquet")
    parts = tables["parts"]
    targets = parts.select(["model_id", "det_id", "source"]).group_by(["model_id", "det_id", "source"]).aggregate([])
    metrics = {
        "rows": parts.num_rows,
        "targets": dict(sorted(Counter(targets["model_id"].to_pylist()).items())),
        "sources": dict(sorted(Counter(targets["source"].to_pylist()).items())),
        "errors": tables["errors"].num_rows,
        "grouping": cfg.grouping,
        "iou": quality_metrics(tables["part_iou"], params.infer.reasonable.min_height),
    }
    write_json(staging / "manifest.json", {"params": cfg.model_dump(mode="json")})
    publish(staging, out)
    write_json(cfg.metrics, metrics)
    logger.info("parts: %d rows for %s targets, %d errors", parts.num_rows, metrics["targets"], metrics["errors"])
    return metrics


def run_parts(params_file: str | Path = "params.yaml") -> dict:
    params = load_params(params_file)
    return parts_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=params.workers))(params)
