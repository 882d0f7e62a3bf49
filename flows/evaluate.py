"""The evaluate stage: metrics of every explanation (deletion / insertion AUC, pointing game and energy pointing game
against boxes and body parts, cost) and the agreement between methods, as a Parquet table, DVC metrics and DVC
plots; and where the detector fails (tasks.audit_slices: attribute slices of the miss rate and of the relevance
shares, MR⁻², miss types)."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from flows import returning_freed_memory  # (importing flows sets the environment defaults)
from flows.progress import progress
from flows.runner import task_runner

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from prefect import flow, get_run_logger

from detection.datasets.tables import SCHEMAS, rows_to_table
from explainers.perturb import make_perturbation
from tasks import stages
from tasks.audit_slices import where_it_fails
from tasks.evaluate import AGREEMENT_FILE, SUBSTRATES, EvaluateShard, evaluate_bases, evaluate_shard
from tasks.evaluate_summary import NOTES, summarise, undefined_counts, write_mr_fppi, write_plots
from tasks.explain import shard_items as explain_items
from tasks.params import Params, load_params
from tasks.result_store import cache_dir_of
from tasks.sanity import sanity_check, sanity_summary, sanity_targets
from tasks.sanity_extension import extend_unsettled
from tasks.shards import (
    SHARDS_DIR,
    TableWriter,
    fresh_staging,
    iter_shards,
    publish,
    read_image_rows,
    shard_name,
    shard_ranges,
    staged_shard_dir,
    write_json,
)
from tasks.timings import record_run
from tasks.undefined import NONFINITE_SALIENCY

FLOW_COLUMNS = ["image_id", "target_id", "kind", "job", "method", "region_names", "relevance"]
"""The explanations columns the flow itself reads (sanity targets, shards, where it fails, plots): not the saliency
grids, options or per-row bookkeeping, so the flow holds a few small columns per explanation."""
SUMMARY_COLUMNS = ["kind", "job", "metric", "value"]
"""The metrics columns the summaries and plots aggregate, read back from the written table dictionary-encoded
(about 20 bytes per metric row)."""


def _explanation_files(explained: stages.ExplainOutputs) -> list[str]:
    """The explain stage's explanation shard files, in the order the whole table is read (path order)."""
    return sorted(str(f) for f in explained.out_dir.glob(explained.TABLES["explanations"]))


def _columns(files: list[str], name: str, columns: list[str]) -> pa.Table:
    """Only ``columns`` of the sharded table ``name`` made of ``files``, in file order."""
    tables = [pq.read_table(f, columns=columns, schema=SCHEMAS[name]) for f in files]
    return pa.concat_tables(tables) if tables else SCHEMAS[name].empty_table().select(columns)


def _shards(params: Params, staging, files: list[str], explained_ids: pa.Array) -> list[EvaluateShard]:
    """One description per shard of the images that have explanations (in image order): its image ids, the explain
    shard files that hold their rows (explain shard ``k`` covers images ``k * explain.shard_size ...`` of the
    targets table's images; all files when an image is not found there), the table paths, the store and the key
    bases."""
    explained = stages.explain(params)
    images_path = stages.pull(params).path("images")
    image_ids = pq.read_table(images_path, columns=["image_id"])["image_id"]
    order = image_ids.filter(pc.is_in(image_ids, value_set=explained_ids))
    planned = pc.unique(pq.read_table(explained.path("targets"), columns=["image_id"])["image_id"])
    by_name: dict[str, list[str]] = {}
    for f in files:
        by_name.setdefault(Path(f).stem, []).append(f)
    paths = {"images": images_path, "annotations": stages.pull(params).path("annotations"),
             "targets": explained.path("targets"), "parts": stages.parts(params).path("parts")}
    paths = {k: str(Path(v).resolve()) for k, v in paths.items()}
    bases, cache_dir = evaluate_bases(params), cache_dir_of(params)
    out = []
    for i, r in enumerate(shard_ranges(len(order), params.evaluate.shard_size)):
        ids = order[r.start:r.stop]
        position = pc.index_in(ids, value_set=planned)
        if position.null_count:
            mine = files
        else:
            names = {shard_name(p // params.explain.shard_size) for p in position.to_pylist()}
            mine = sorted(f for n in names for f in by_name.get(n, []))
        out.append(EvaluateShard(shard_dir=staged_shard_dir(staging, i), image_ids=ids.to_pylist(),
                                 explanations=mine, cache_dir=cache_dir, bases=bases, **paths))
    return out


def _write_metrics(path: Path, shard_dirs: list[str]) -> pa.Table:
    """Stream the metrics table to ``path``: every finished shard's metric rows, then the agreement rows the shards
    staged (tasks.evaluate.AGREEMENT_FILE), each in shard order, one shard in memory at a time (the rows and order
    of concatenating them all). Returns the :data:`SUMMARY_COLUMNS` of the written table, dictionary-encoded."""
    with TableWriter(path, "metrics") as writer:
        for table in iter_shards(shard_dirs, "metrics"):
            writer.write(table)
        for d in shard_dirs:
            if (Path(d) / AGREEMENT_FILE).is_file():
                writer.write(pq.read_table(Path(d) / AGREEMENT_FILE, schema=SCHEMAS["metrics"]))
    return summary_columns(path)


def summary_columns(path: str | Path) -> pa.Table:
    """The :data:`SUMMARY_COLUMNS` of the metrics table at ``path``, dictionary-encoded with one dictionary per column
    (each row group of a file has its own dictionary; Arrow's group-by cannot combine differing ones, so a table
    of more than one row group, over 65,536 metric rows, needs them unified)."""
    return pq.read_table(path, columns=SUMMARY_COLUMNS, read_dictionary=SUMMARY_COLUMNS[:3]).unify_dictionaries()


def _write_errors(path: Path, shard_dirs: list[str], extra: list[dict]) -> tuple[int, int]:
    """Stream the errors table to ``path``: every finished shard's rows in shard order, then ``extra`` (the sanity
    check's and where-it-fails' rows). Returns (rows, rows of error_type ``nonfinite_saliency``)."""
    nonfinite = 0
    with TableWriter(path, "errors") as writer:
        for table in [*iter_shards(shard_dirs, "errors"), rows_to_table(extra, "errors")]:
            nonfinite += table.filter(pc.equal(table["error_type"], NONFINITE_SALIENCY)).num_rows
            writer.write(table)
    return writer.num_rows, nonfinite


@flow(name="evaluate", log_prints=True)
def evaluate_flow(params: Params) -> dict:
    """Shards of images -> metrics / errors tables (published in one swap), metrics/evaluate.json, plots/*.csv.
    Tasks get shard descriptions and read their own rows (tasks.evaluate.EvaluateShard); metric groups whose key is
    in the result store (``explain.cache_dir``) are reused. The flow streams the shards' tables to disk one shard at a
    time and keeps only small columns per explanation / metric row (:data:`FLOW_COLUMNS`, :data:`SUMMARY_COLUMNS`).
    The sanity check's rows are reused per (job, target) from the same store (tasks.sanity.sanity_key); the
    agreement between methods and where the detector fails are recomputed every run (cheap: relevance vectors;
    tables)."""
    logger = get_run_logger()
    started = time.perf_counter()
    explained = stages.explain(params)
    files = _explanation_files(explained)
    explanations = _columns(files, "explanations", FLOW_COLUMNS)
    outputs = stages.evaluate(params)
    staging = fresh_staging(outputs.out_dir)
    shards = _shards(params, staging, files, pc.unique(explanations["image_id"]))
    futures = [evaluate_shard.submit(s, params) for s in shards]
    sanity = _submit_sanity(params, explanations)
    results = progress(futures, "evaluate")
    shard_dirs = [r["shard_dir"] for r in results]
    metrics = _write_metrics(staging / outputs.TABLES["metrics"], shard_dirs)
    shards_done = time.perf_counter()
    checked = sanity.result() if sanity is not None else {"rows": [], "errors": [], "status": {}, "reused": 0,
                                                          "computed": 0}
    first_done = time.perf_counter()
    checked = _extend_sanity(params, explanations, checked, logger)
    with returning_freed_memory():        # tables from here on: no forward passes to keep freed memory for
        sanity_done = time.perf_counter()
        summary, failures_done, n_errors = _finish(params, staging, outputs, shard_dirs, checked, metrics,
                                                   explanations, logger)
    record_run("evaluate", {"wall_seconds": round(time.perf_counter() - started, 2),
                            "shards_seconds": round(shards_done - started, 2),
                            "sanity_wait_seconds": round(first_done - shards_done, 2),
                            "sanity_extension_seconds": round(sanity_done - first_done, 2),
                            "sanity_targets_computed": checked["computed"], "sanity_targets_reused": checked["reused"],
                            "where_it_fails_seconds": round(failures_done - sanity_done, 2),
                            "groups_computed": sum(r["computed"] for r in results),
                            "groups_reused": sum(r["reused"] for r in results),
                            "seconds_computed": round(sum(r["seconds_computed"] for r in results), 2),
                            "seconds_reused": round(sum(r["seconds_reused"] for r in results), 2)}, outputs.metrics)
    logger.info("evaluate: %d metric rows for %d explanations, %d errors, undefined values %s", metrics.num_rows,
                explanations.num_rows, n_errors, summary["undefined"])
    return summary


def _finish(params: Params, staging: Path, outputs, shard_dirs: list[str], checked: dict, metrics: pa.Table,
            explanations: pa.Table, logger) -> tuple[dict, float, int]:
    """After the shards and the sanity check: where it fails, the errors table, publishing the tables, the metrics
    summary and plots. Returns (summary, when where it fails finished, errors rows). The pulled images and
    annotations are read here, not held through the shards (~50 MB of Arrow at 20k images)."""
    cfg = params.evaluate
    pulled = stages.pull(params)
    images, annotations = _pulled_tables(pulled)
    drawn, computed = (_optional(pulled, name, logger) for name in ("attributes", "computed_attributes"))
    failures, failure_errors, where = where_it_fails(params, images, annotations,
                                                     _detections(stages.infer(params)), explanations, drawn,
                                                     computed, pulled.user_attributes())
    failures_done = time.perf_counter()
    n_errors, nonfinite = _write_errors(staging / outputs.TABLES["errors"], shard_dirs,
                                        checked["errors"] + failure_errors)
    shutil.rmtree(staging / SHARDS_DIR, ignore_errors=True)      # absent when there were no items
    outputs.write(staging, {**failures, "sanity": rows_to_table(checked["rows"], "sanity")})
    publish(staging, outputs.out_dir)
    summary = {"explanations": explanations.num_rows, "errors": n_errors,
               "substrates": {m: make_perturbation(SUBSTRATES[m]).describe() for m in SUBSTRATES}, "steps": cfg.steps,
               "causal_split": cfg.causal_split, "by_kind": summarise(metrics),
               "undefined": undefined_counts(metrics),
               "nonfinite_saliency": nonfinite,
               "pointing_tolerance": cfg.pointing_tolerance, "notes": NOTES, "where_it_fails": where,
               "sanity": {"targets": cfg.sanity.targets, "max_targets": cfg.sanity.max_targets,
                          "steps": cfg.sanity.steps, "max_correlation": cfg.sanity.max_correlation,
                          "jobs": sanity_summary(checked["rows"], checked["status"], cfg.sanity.max_correlation)}}
    write_json(outputs.metrics, summary)
    write_plots(metrics, explanations, outputs.plots_dir)
    write_mr_fppi(where, outputs.plots_dir)
    return summary, failures_done, n_errors


def _submit_sanity(params: Params, explanations: pa.Table, jobs: list[str] | None = None, start: int = 0,
                   stop: int | None = None):
    """The sanity check (tasks.sanity) of every job (or the named ``jobs``) on its targets ``start`` .. ``stop`` - 1
    (default: its first ``evaluate.sanity.targets``), as one submitted task (the first check runs alongside the
    metric shards; the extension, :func:`_extend_sanity`, after them); None when off or nothing was chosen. Only the
    chosen images' rows of the images, targets and parts tables are read."""
    per_job = params.evaluate.sanity.targets if stop is None else stop
    checked_jobs = [j for j in params.explain.jobs if jobs is None or j.name in jobs]
    chosen = sanity_targets(explanations, checked_jobs, per_job, start) if per_job else {}
    ids = pa.array(sorted({image_id for keys in chosen.values() for image_id, _ in keys}), pa.string())
    if len(ids) == 0:
        return None
    wanted = ids.to_pylist()
    targets = read_image_rows(stages.explain(params).path("targets"), wanted, schema=SCHEMAS["targets"])
    parts = read_image_rows(stages.parts(params).path("parts"), wanted, schema=SCHEMAS["parts"])
    images = read_image_rows(stages.pull(params).path("images"), wanted, schema=SCHEMAS["images"])
    items = explain_items(images, targets, parts)
    return sanity_check.submit(items, chosen, params)


def _extend_sanity(params: Params, explanations: pa.Table, checked: dict, logger) -> dict:
    """``checked`` with every job whose verdict its targets left unsettled checked on more of them, up to
    ``evaluate.sanity.max_targets`` (tasks.sanity_extension); it runs after the metric shards (its time:
    ``sanity_extension_seconds`` in the stage's timings)."""
    cfg = params.evaluate.sanity

    def check_more(jobs: list[str], start: int, stop: int) -> dict | None:
        more = _submit_sanity(params, explanations, jobs, start, stop)
        return None if more is None else more.result()

    out = extend_unsettled(checked, cfg.targets, cfg.max_targets, cfg.max_correlation, check_more)
    if out.get("extended"):
        logger.info("sanity: unsettled at %d targets, checked on more: %s", cfg.targets, out["extended"])
    return out


ANNOTATION_COLUMNS = [f.name for f in SCHEMAS["annotations"] if f.name != "keypoints"]
"""The annotations columns the flow reads (where it fails: boxes, categories, occlusion; not the keypoints)."""


def _pulled_tables(pulled: stages.PullOutputs) -> tuple[pa.Table, pa.Table]:
    """The images table and the :data:`ANNOTATION_COLUMNS` of the annotations: not the ground-truth part masks
    or keypoints, which the flow does not use (at 20k images they are ~100 MB of Arrow)."""
    return (pq.read_table(pulled.path("images"), schema=SCHEMAS["images"]),
            pq.read_table(pulled.path("annotations"), columns=ANNOTATION_COLUMNS, schema=SCHEMAS["annotations"]))


DETECTION_COLUMNS = ["image_id", "model_id", "category", "score", "bbox"]
"""The detections columns where it fails reads (the audited model's person boxes and scores): not the keypoints,
ids or weights hashes (at 20k images the latter are most of the table's ~20 MB)."""


def _detections(inferred: stages.InferOutputs) -> pa.Table:
    """Infer's :data:`DETECTION_COLUMNS`."""
    return pq.read_table(inferred.path("detections"), columns=DETECTION_COLUMNS, schema=SCHEMAS["detections"])


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
