"""The infer stage: detections / predictions of the configured models over the pulled dataset, and their quality."""
from __future__ import annotations

from pathlib import Path

import flows  # noqa: F401  (environment defaults)

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from tasks import stages
from tasks.infer import infer_shard, quality_from_partials, read_quality_partials, run_id_for
from tasks.params import Params, load_params
from tasks.shards import MANIFEST, fresh_staging, publish, row_ranges, staged_shard_dir, write_json, write_staged


@flow(name="infer", log_prints=True)
def infer_flow(params: Params) -> dict:
    """Shards of images through every model (each loaded once per process), tables published in one swap.

    Tasks get row ranges of the images table and read their own rows (and their images' annotations, for their
    share of the detection metrics: ``tasks.infer.shard_quality_partials``); the shards are streamed into the
    published tables and the metrics combined from the shards' partials, so the flow never holds a table's rows as
    Python objects."""
    logger = get_run_logger()
    infer = params.infer
    pulled = stages.pull(params)
    run_id, hashes = run_id_for(infer)
    outputs = stages.infer(params)
    staging = fresh_staging(outputs.out_dir)
    annotations = str(pulled.path("annotations"))
    futures = [infer_shard.submit(rows, infer, run_id, hashes, staged_shard_dir(staging, i), annotations)
               for i, rows in enumerate(row_ranges(pulled.path("images"), infer.shard_size))]
    shard_dirs = [f.result() for f in futures]
    files = {name: staging / outputs.TABLES[name] for name in outputs.TABLES}
    spurious = params.pull.synthetic.spurious.label if params.pull.source == "synthetic" and \
        params.pull.synthetic.spurious is not None else None
    partials = read_quality_partials(shard_dirs)              # before the shard folders are removed
    counts = write_staged(staging, shard_dirs, files)
    metrics = {"run_id": run_id, **quality_from_partials(partials, {"images": pulled.path("images"),
                                                                    "predictions": files["predictions"]},
                                                         infer, spurious)}
    write_json(staging / MANIFEST, {"run_id": run_id, "weights_sha256": hashes,
                                    "params": infer.model_dump(mode="json")})
    publish(staging, outputs.out_dir)
    write_json(outputs.metrics, metrics)
    logger.info("infer %s: %d detections, %d predictions, %d errors", run_id, counts["detections"],
                counts["predictions"], counts["errors"])
    return metrics


def run_infer(params_file: str | Path = "params.yaml") -> dict:
    params = load_params(params_file)
    # Torch already uses every core inside one forward; one task at a time keeps batches full and memory flat.
    return infer_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=1))(params)
