"""The pull stage: a dataset version -> validated Parquet tables (images, annotations, gt_parts, errors, and the
per-pedestrian attributes: drawn by the synthetic generator, computed from boxes and pixels, the user's own)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import flows  # noqa: F401  (environment defaults)

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from detection.datasets.records import display_path
from tasks import stages
from tasks.params import Params, load_params
from tasks.pull import (
    SHARDS_DIR,
    check_images_shard,
    fetch_dvc,
    generate_synthetic_shard,
    list_source,
    write_streamed,
)
from tasks.shards import fresh_staging, publish, shard_ranges, write_json


@flow(name="pull", log_prints=True)
def pull_flow(params: Params) -> dict:
    """Build the dataset tables in a staging folder, then publish them over ``pull.out_dir`` in one swap. Shard tasks
    write shard folders; the tables are streamed from them shard by shard, in shard order, as the shards finish
    (``tasks.pull.write_streamed``), so the flow process holds one shard at a time (plus a coco / yolo / folder
    source's listing) and writes while later shards still run."""
    logger = get_run_logger()
    pull = params.pull
    outputs = stages.pull(params)            # with train_data_params(...): the training scenes' folder
    out = outputs.out_dir
    staging = fresh_staging(out)
    out_uri, staging_uri = display_path(out), display_path(staging)

    listing = None
    if pull.source == "synthetic":
        cfg = pull.synthetic
        futures = [generate_synthetic_shard.submit(cfg, params.seed, r.start, r.stop, str(staging),
                                                   f"{out_uri}/images")
                   for r in shard_ranges(cfg.n_images, pull.shard_size)]
    else:
        root = fetch_dvc(pull.dvc, str(staging / "source")) if pull.dvc else None
        listing = list_source(pull, root)
        logger.info("%s lists %d images, %d annotations", pull.source, len(listing.images),
                    len(listing.annotations))
        if listing.errors:
            kinds = Counter(e["error_type"] for e in listing.errors)
            logger.warning("%s: %d listing records in errors (%s)", pull.source, len(listing.errors),
                           ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
        futures = [check_images_shard.submit(listing.images[r.start:r.stop], pull.limits,
                                             str(staging / SHARDS_DIR / f"{r.start:08d}"))
                   for r in shard_ranges(len(listing.images), pull.shard_size)]
    finished = (f.result() for f in futures)           # in shard order, each written as soon as it is done
    stats = write_streamed(staging, pull, params.seed, listing, out_uri, staging_uri, outputs.USER_ATTRIBUTES,
                           shards=finished)
    publish(staging, out)
    write_json(outputs.metrics, stats)
    logger.info("pulled %d images, %d annotations (%d persons), %d errors -> %s", stats["images"],
                stats["annotations"], stats["persons"], stats["errors"], out)
    return stats


def run_pull(params_file: str | Path = "params.yaml") -> dict:
    """Validate params, then run the pull flow with the configured number of worker threads."""
    params = load_params(params_file)
    runner = ThreadPoolTaskRunner(max_workers=params.workers)
    return pull_flow.with_options(task_runner=runner)(params)
