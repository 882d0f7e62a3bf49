"""The ``models_rexl`` stage: RExL policies (a learned explainer: Agarwal et al., "Reinforcement Explanation
Learning", https://arxiv.org/abs/2111.13406; ``explainers.rexl``), one per game (deletion, insertion) that the ``rexl``
params section configures for each audited model, trained on the training scenes or, with ``weights``, a given policy
verified (the explainer's guard: the policy was trained for these model weights) and copied (``tasks.rexl_stage``).
Writes ``rexl.out_dir`` (the policy files ``rexl`` explain jobs name) and ``rexl.metrics``; wall times go to
``metrics/timings.json``.
"""
from __future__ import annotations

import time
from pathlib import Path

import flows  # noqa: F401  (environment defaults)

from prefect import flow, get_run_logger

from tasks.params import Params, load_params
from tasks.rexl_stage import provide_policy, write_metrics
from tasks.timings import record_run


@flow(name="rexl", log_prints=True)
def rexl_flow(params: Params, progress: bool = True) -> dict:
    """Each configured policy (train or verify + copy) -> ``rexl.out_dir`` and ``rexl.metrics``. Raises
    ValueError / FileNotFoundError naming the ``rexl.<model>`` (or ``rexl.<model>[i]``) key at fault."""
    logger = get_run_logger()
    started = time.perf_counter()
    records = {}
    for name in params.rexl.policies():
        records[name] = provide_policy(params, name, progress)
        r = records[name]
        logger.info("rexl: %s policy %s (%s, %s steps, mean training AUC %s -> %s)", name, r["policy"], r["source"],
                    r["steps"], r["auc_first"], r["auc_last"])
    if not records:
        logger.info("rexl: no model configured (params rexl.classifier / rexl.detector are null)")
    Path(params.rexl.out_dir).mkdir(parents=True, exist_ok=True)     # the stage's output exists even when empty
    write_metrics(params.rexl.metrics, records)
    record_run("rexl", {"wall_seconds": round(time.perf_counter() - started, 2)}, params.rexl.metrics)
    return records


def run_rexl(params_file: str | Path = "params.yaml") -> dict:
    return rexl_flow(load_params(params_file))


__all__ = ["rexl_flow", "run_rexl"]
