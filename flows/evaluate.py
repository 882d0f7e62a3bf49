"""The evaluate stage: metrics of every explanation (deletion / insertion AUC, pointing game and energy pointing game
against boxes and body parts, cost) and the agreement between methods, as a Parquet table, DVC metrics and DVC
plots; and where the detector fails (tasks.audit_slices: attribute slices of the miss rate and of the relevance
shares, MR⁻², miss types)."""
from __future__ import annotations

import time
from pathlib import Path

import flows  # noqa: F401  (environment defaults)
from flows.progress import progress
from flows.runner import task_runner

import pyarrow as pa
import pyarrow.compute as pc
from prefect import flow, get_run_logger

from detection.datasets.tables import rows_to_table
from explainers.perturb import make_perturbation
from tasks import stages
from tasks.audit_slices import where_it_fails
from tasks.evaluate import SUBSTRATES, agreement_rows, evaluate_shard, shard_items
from tasks.evaluate_summary import NOTES, summarise, undefined_counts, write_mr_fppi, write_plots
from tasks.explain import shard_items as explain_items
from tasks.params import Params, load_params
from tasks.sanity import sanity_check, sanity_summary, sanity_targets
from tasks.shards import collect_staged, fresh_staging, publish, shard_ranges, staged_shard_dir, write_json
from tasks.timings import record_run
from tasks.undefined import NONFINITE_SALIENCY


@flow(name="evaluate", log_prints=True)
def evaluate_flow(params: Params) -> dict:
    """Shards of images -> metrics / errors tables (published in one swap), metrics/evaluate.json, plots/*.csv."""
    logger = get_run_logger()
    cfg = params.evaluate
    started = time.perf_counter()
    explained = stages.explain(params)
    explanations = explained.read("explanations")
    data = stages.pull(params).dataset()
    targets, parts = explained.read("targets"), stages.parts(params).read("parts")
    items = shard_items(data.images, data.annotations, targets, explanations, parts)
    outputs = stages.evaluate(params)
    staging = fresh_staging(outputs.out_dir)
    futures = [evaluate_shard.submit(items[r.start:r.stop], params, staged_shard_dir(staging, i))
               for i, r in enumerate(shard_ranges(len(items), cfg.shard_size))]
    sanity = _submit_sanity(params, explanations, data.images, targets, parts)
    tables = collect_staged(staging, progress(futures, "evaluate"), ("metrics", "errors"))
    shards_done = time.perf_counter()
    checked = sanity.result() if sanity is not None else {"rows": [], "errors": [], "status": {}}
    sanity_done = time.perf_counter()
    metrics = pa.concat_tables([tables["metrics"], rows_to_table(agreement_rows(explanations), "metrics")])
    pulled = stages.pull(params)
    drawn, computed = (_optional(pulled, name, logger) for name in ("attributes", "computed_attributes"))
    failures, failure_errors, where = where_it_fails(params, data.images, data.annotations,
                                                     stages.infer(params).read("detections"), explanations, drawn,
                                                     computed, pulled.user_attributes())
    failures_done = time.perf_counter()
    tables["errors"] = pa.concat_tables([tables["errors"], rows_to_table(checked["errors"] + failure_errors,
                                                                         "errors")])
    outputs.write(staging, {"metrics": metrics, "errors": tables["errors"], **failures,
                            "sanity": rows_to_table(checked["rows"], "sanity")})
    publish(staging, outputs.out_dir)
    summary = {"explanations": explanations.num_rows, "errors": tables["errors"].num_rows,
               "substrates": {m: make_perturbation(SUBSTRATES[m]).describe() for m in SUBSTRATES}, "steps": cfg.steps,
               "causal_split": cfg.causal_split, "by_kind": summarise(metrics),
               "undefined": undefined_counts(metrics),
               "nonfinite_saliency": tables["errors"].filter(
                   pc.equal(tables["errors"]["error_type"], NONFINITE_SALIENCY)).num_rows,
               "pointing_tolerance": cfg.pointing_tolerance, "notes": NOTES, "where_it_fails": where,
               "sanity": {"steps": cfg.sanity.steps, "max_correlation": cfg.sanity.max_correlation,
                          "jobs": sanity_summary(checked["rows"], checked["status"], cfg.sanity.max_correlation)}}
    write_json(outputs.metrics, summary)
    write_plots(metrics, explanations, outputs.plots_dir)
    write_mr_fppi(where, outputs.plots_dir)
    record_run("evaluate", {"wall_seconds": round(time.perf_counter() - started, 2),
                            "shards_seconds": round(shards_done - started, 2),
                            "sanity_wait_seconds": round(sanity_done - shards_done, 2),
                            "where_it_fails_seconds": round(failures_done - sanity_done, 2)}, outputs.metrics)
    logger.info("evaluate: %d metric rows for %d explanations, %d errors, undefined values %s", metrics.num_rows,
                explanations.num_rows, tables["errors"].num_rows, summary["undefined"])
    return summary


def _submit_sanity(params: Params, explanations: pa.Table, images: pa.Table, targets: pa.Table, parts: pa.Table):
    """The sanity check (tasks.sanity) of every job on its first ``evaluate.sanity.targets`` targets, as one task
    running alongside the metric shards; None when off or nothing was explained."""
    per_job = params.evaluate.sanity.targets
    chosen = sanity_targets(explanations, params.explain.jobs, per_job) if per_job else {}
    ids = pa.array(sorted({image_id for keys in chosen.values() for image_id, _ in keys}), pa.string())
    if len(ids) == 0:
        return None
    items = explain_items(images.filter(pc.is_in(images["image_id"], value_set=ids)),
                          targets.filter(pc.is_in(targets["image_id"], value_set=ids)), parts)
    return sanity_check.submit(items, chosen, params)


def _optional(pulled: stages.PullOutputs, name: str, logger) -> pa.Table | None:
    """A pulled attribute table, or None (with a warning) when the pulled folder predates it."""
    try:
        return pulled.read(name)
    except FileNotFoundError:
        logger.warning("evaluate: %s has no %s table (pulled before attributes were written): re-run pull to "
                       "slice on them", pulled.out_dir, name)
        return None


def run_evaluate(params_file: str | Path = "params.yaml") -> dict:
    params = load_params(params_file)
    return evaluate_flow.with_options(task_runner=task_runner(params, params.explain.runner))(params)
