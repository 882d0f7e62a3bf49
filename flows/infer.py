"""The infer stage: detections / predictions of the configured models over the pulled dataset, and their quality."""
from __future__ import annotations

from pathlib import Path

import flows  # noqa: F401  (environment defaults)

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from tasks import stages
from tasks.infer import infer_shard, quality_from_files, run_id_for
from tasks.params import Params, load_params
from tasks.shards import MANIFEST, fresh_staging, publish, row_ranges, staged_shard_dir, write_json, write_staged


@flow(name="infer", log_prints=True)
def infer_flow(params: Params) -> dict:
    """Shards of images through every model (each loaded once per process), tables published in one swap.

    Tasks get row ranges of the images table and read their own rows; the shards are streamed into the published
    tables and the quality metrics read only the columns they need, so the flow never holds a table's rows as
    Python objects."""
    logger = get_run_logger()
    infer = params.infer
    pulled = stages.pull(params)
    run_id, hashes = run_id_for(infer)
    outputs = stages.infer(params)
    staging = fresh_staging(outputs.out_dir)
    futures = [infer_shard.submit(rows, infer, run_id, hashes, staged_shard_dir(staging, i))
               for i, rows in enumerate(row_ranges(pulled.path("images"), infer.shard_size))]
    files = {name: staging / outputs.TABLES[name] for name in outputs.TABLES}
    counts = write_staged(staging, [f.result() for f in futures], files)
    spurious = params.pull.synthetic.spurious.label if params.pull.source == "synthetic" and \
        params.pull.synthetic.spurious is not None else None
    metrics = {"run_id": run_id, **quality_from_files(
        {"images": pulled.path("images"), "annotations": pulled.path("annotations"),
         "detections": files["detections"], "predictions": files["predictions"]}, infer, spurious)}
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
