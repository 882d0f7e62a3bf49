"""The parts stage: body-part masks of every pedestrian (ground-truth persons and person detections), and their
quality against the synthetic ground-truth part masks."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import flows  # noqa: F401  (environment defaults)

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from tasks import stages
from tasks.params import Params, load_params
from tasks.parts import parts_shard, quality_metrics, shard_inputs
from tasks.shards import MANIFEST, collect_staged, fresh_staging, publish, shard_ranges, staged_shard_dir, write_json


@flow(name="parts", log_prints=True)
def parts_flow(params: Params) -> dict:
    """Shards of images -> parts / part_iou / errors tables, published in one swap, and ``metrics/parts.json``."""
    logger = get_run_logger()
    cfg = params.parts
    data = stages.pull(params).dataset()
    items = shard_inputs(params, data.images, data.annotations, data.gt_parts,
                         stages.infer(params).read("detections"))
    outputs = stages.parts(params)
    staging = fresh_staging(outputs.out_dir)
    futures = [parts_shard.submit(items[r.start:r.stop], cfg, staged_shard_dir(staging, i))
               for i, r in enumerate(shard_ranges(len(items), cfg.shard_size))]
    tables = collect_staged(staging, [f.result() for f in futures], tuple(outputs.TABLES))
    outputs.write(staging, tables)
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
    write_json(staging / MANIFEST, {"params": cfg.model_dump(mode="json")})
    publish(staging, outputs.out_dir)
    write_json(outputs.metrics, metrics)
    logger.info("parts: %d rows for %s targets, %d errors", parts.num_rows, metrics["targets"], metrics["errors"])
    return metrics


def run_parts(params_file: str | Path = "params.yaml") -> dict:
    params = load_params(params_file)
    return parts_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=params.workers))(params)
