"""The ``models_fastshap`` stage: the FastShapParts network (a learned explainer of a pedestrian's body-part Shapley
game: FastSHAP, Jethani et al. 2022, https://arxiv.org/abs/2107.07436; ``explainers.fastshap``) of the explain
stage's detector, the FastShapGrid network (a saliency map of a classifier's grid-cell game in one forward;
``explainers.fastshap_grid``) of the audited classifier and the FastShapGridDetector network (a saliency map of a
detection's grid-cell game in one forward; ``explainers.fastshap_grid_detector``) of the explain stage's detector
that the ``fastshap`` params section configures, each trained on the training scenes or, with ``weights``, a given
file verified (the explainer's guard: trained for these model weights, this game) and copied
(``tasks.fastshap_stage``). Writes ``fastshap.out_dir`` (the weights files ``fastshap`` / ``fastshap_bayes`` /
``fastshap_grid`` / ``fastshap_grid_detector`` explain jobs name) and ``fastshap.metrics``; wall times go to
``metrics/timings.json``.
"""
from __future__ import annotations

import time
from pathlib import Path

import flows  # noqa: F401  (environment defaults)

from prefect import flow, get_run_logger

from tasks.fastshap_stage import (
    provide_detector_grid_weights,
    provide_grid_weights,
    provide_weights,
    write_metrics,
)
from tasks.params import Params, load_params, weights_read_by_jobs
from tasks.timings import record_run


@flow(name="fastshap", log_prints=True)
def fastshap_flow(params: Params, progress: bool = True) -> dict:
    """The detector's FastShapParts, the classifier's FastShapGrid and the detector's FastShapGridDetector weights
    (train or verify + copy) -> ``fastshap.out_dir`` and ``fastshap.metrics``, each only where an explain job's
    ``options.weights`` names its file (``tasks.params.weights_read_by_jobs``; a configured network no job reads is
    skipped with a log line: its checks would refuse a model nobody explains with it). Raises ValueError /
    FileNotFoundError naming the ``fastshap`` key at fault."""
    logger = get_run_logger()
    started = time.perf_counter()
    records = {}
    read = weights_read_by_jobs(params)
    for name, file in (("detector", params.fastshap.weights_file()),
                       ("classifier", params.fastshap.grid_weights_file()),
                       ("detector_grid", params.fastshap.detector_grid_weights_file())):
        if file is not None and file not in read:
            logger.info("fastshap: params fastshap.%s is configured but no explain job reads %s: skipped", name, file)
    if params.fastshap.detector is not None and params.fastshap.weights_file() in read:
        r = records["detector"] = provide_weights(params, progress)
        logger.info("fastshap: detector weights %s (%s, %s training persons, held-out median rel. L2 error %s on %s "
                    "persons)", r["file"], r["source"], r["train_persons"], r["heldout_median_rel_l2"],
                    r["heldout_persons"])
    if params.fastshap.classifier is not None and params.fastshap.grid_weights_file() in read:
        r = records["classifier"] = provide_grid_weights(params, progress)
        logger.info("fastshap: classifier weights %s (%s, %s x %s cells, held-out deletion AUC median %s, RISE@%s's "
                    "%s)", r["file"], r["source"], *r["grid"], r["heldout_deletion_auc_median"],
                    r["heldout_rise_budget"], r["heldout_rise_deletion_auc_median"])
    if params.fastshap.detector_grid is not None and params.fastshap.detector_grid_weights_file() in read:
        r = records["detector_grid"] = provide_detector_grid_weights(params, progress)
        logger.info("fastshap: detector grid weights %s (%s, %s x %s cells, held-out deletion AUC median %s, "
                    "D-RISE@%s's %s)", r["file"], r["source"], r["grid"], r["grid"], r["heldout_deletion_auc_median"],
                    r["heldout_drise_budget"], r["heldout_drise_deletion_auc_median"])
    if not records:
        logger.info("fastshap: no network provided (none configured, or none an explain job reads)")
    Path(params.fastshap.out_dir).mkdir(parents=True, exist_ok=True)     # the stage's output exists even when empty
    write_metrics(params.fastshap.metrics, records)
    record_run("fastshap", {"wall_seconds": round(time.perf_counter() - started, 2)}, params.fastshap.metrics)
    return records


def run_fastshap(params_file: str | Path = "params.yaml") -> dict:
    return fastshap_flow(load_params(params_file))


__all__ = ["fastshap_flow", "run_fastshap"]
