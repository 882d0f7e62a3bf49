"""The parts stage: body-part masks of every pedestrian (ground-truth persons and person detections), and their
quality against the synthetic ground-truth part masks."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import flows  # noqa: F401  (environment defaults)

import pyarrow as pa
from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from tasks import stages
from tasks.params import Params, load_params
from tasks.parts import PartIouStats, PartsShard, parts_shard
from tasks.shards import MANIFEST, fresh_staging, publish, staged_shard_dir, write_json, write_staged


@flow(name="parts", log_prints=True)
def parts_flow(params: Params) -> dict:
    """Shards of images -> parts / part_iou / errors tables, published in one swap, and ``metrics/parts.json``.

    Tasks get :class:`~tasks.parts.PartsShard` descriptions and read their own images' rows; the shards are
    streamed into the published tables and the metrics accumulated piece by piece (Arrow group_by), so the flow
    holds one shard at a time."""
    logger = get_run_logger()
    cfg = params.parts
    pulled = stages.pull(params)
    shards = PartsShard.plan(params, pulled.path("images"), pulled.path("annotations"), pulled.path("gt_parts"),
                             stages.infer(params).path("detections"))
    outputs = stages.parts(params)
    staging = fresh_staging(outputs.out_dir)
    futures = [parts_shard.submit(shard, cfg, staged_shard_dir(staging, i)) for i, shard in enumerate(shards)]
    targets: dict[str, Counter] = {"model_id": Counter(), "source": Counter()}
    iou = PartIouStats(params.infer.reasonable.min_height)

    def visit(name: str, table: pa.Table) -> None:
        if name == "parts":
            keys = table.select(["model_id", "det_id", "source"]).group_by(["model_id", "det_id", "source"])
            keys = keys.aggregate([])
            for column, counter in targets.items():
                for row in keys.group_by(column).aggregate([([], "count_all")]).to_pylist():
                    counter[row[column]] += row["count_all"]
        elif name == "part_iou":
            iou.add(table)

    counts = write_staged(staging, [f.result() for f in futures],
                          {name: staging / outputs.TABLES[name] for name in outputs.TABLES}, visit)
    metrics = {
        "rows": counts["parts"],
        "targets": dict(sorted(targets["model_id"].items())),
        "sources": dict(sorted(targets["source"].items())),
        "errors": counts["errors"],
        "grouping": cfg.grouping,
        "iou": iou.result(),
    }
    write_json(staging / MANIFEST, {"params": cfg.model_dump(mode="json")})
    publish(staging, outputs.out_dir)
    write_json(outputs.metrics, metrics)
    logger.info("parts: %d rows for %s targets, %d errors", counts["parts"], metrics["targets"], metrics["errors"])
    return metrics


def run_parts(params_file: str | Path = "params.yaml") -> dict:
    params = load_params(params_file)
    return parts_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=params.workers))(params)
