"""The evaluate stage: metrics of every explanation (deletion / insertion AUC, pointing game and energy pointing game
against boxes and body parts, cost) and the agreement between methods, as a Parquet table, DVC metrics and DVC
plots."""
from __future__ import annotations

import shutil
from pathlib import Path

import flows  # noqa: F401  (environment defaults)
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from prefect import flow, get_run_logger

from detection.datasets.tables import SCHEMAS, DatasetTables, rows_to_table, write_table_atomic
from flows.explain import read_explanations
from flows.progress import progress
from flows.runner import task_runner
from explainers.perturb import make_perturbation
from tasks.evaluate import SUBSTRATES, agreement_rows, evaluate_shard
from tasks.evaluate_summary import NOTES, summarise, undefined_counts, write_plots
from tasks.params import Params, load_params
from tasks.shards import fresh_staging, publish, read_shards, shard_ranges, write_json
from tasks.undefined import NONFINITE_SALIENCY


@flow(name="evaluate", log_prints=True)
def evaluate_flow(params: Params) -> dict:
    """Shards of images -> metrics / errors tables (published in one swap), metrics/evaluate.json, plots/*.csv."""
    logger = get_run_logger()
    cfg = params.evaluate
    exp_dir = Path(params.explain.out_dir)
    explanations = read_explanations(exp_dir)
    targets = {(t["image_id"], t["target_id"]): t for t in
               pq.read_table(exp_dir / "targets.parquet", schema=SCHEMAS["targets"]).to_pylist()}
    data = DatasetTables.read(params.pull.out_dir)
    wanted = {(t["parts_model"], t["parts_id"]) for t in targets.values() if t["parts_id"] is not None}
    items: dict[str, dict] = {}
    for img in data.images.select(["image_id", "uri", "split", "height", "width"]).to_pylist():
        items[img["image_id"]] = {"image": img, "targets": {}, "explanations": [], "parts": {}, "gt_boxes": {}}
    cols = [c for c in explanations.column_names if c not in ("options",)]
    for e in explanations.select(cols).to_pylist():
        item = items[e["image_id"]]
        item["explanations"].append(e)
        item["targets"][e["target_id"]] = targets[(e["image_id"], e["target_id"])]
    for p in pq.read_table(Path(params.parts.out_dir) / "parts.parquet", schema=SCHEMAS["parts"]).to_pylist():
        if (p["model_id"], p["det_id"]) in wanted and items[p["image_id"]]["explanations"]:
            items[p["image_id"]]["parts"].setdefault((p["model_id"], p["det_id"]), []).append(p)
    for a in data.annotations.select(["image_id", "category", "bbox", "iscrowd"]).to_pylist():
        if not a["iscrowd"] and items[a["image_id"]]["explanations"]:
            items[a["image_id"]]["gt_boxes"].setdefault(a["category"], []).append(a["bbox"])
    ordered = [i for i in items.values() if i["explanations"]]
    out = Path(cfg.out_dir)
    staging = fresh_staging(out)
    futures = [evaluate_shard.submit(ordered[r.start:r.stop], params, str(staging / "_shards" / f"{r.start:08d}"))
               for r in shard_ranges(len(ordered), cfg.shard_size)]
    shard_dirs = progress(futures, "evaluate")
    tables = read_shards(shard_dirs, ("metrics", "errors"))
    shutil.rmtree(staging / "_shards", ignore_errors=True)
    metrics = pa.concat_tables([tables["metrics"], rows_to_table(agreement_rows(explanations), "metrics")])
    write_table_atomic(metrics, staging / "metrics.parquet")
    write_table_atomic(tables["errors"], staging / "errors.parquet")
    publish(staging, out)
    summary = {"explanations": explanations.num_rows, "errors": tables["errors"].num_rows,
               "substrates": {m: make_perturbation(SUBSTRATES[m]).describe() for m in SUBSTRATES}, "steps": cfg.steps,
               "causal_split": cfg.causal_split, "by_kind": summarise(metrics),
               "undefined": undefined_counts(metrics),
               "nonfinite_saliency": tables["errors"].filter(
                   pc.equal(tables["errors"]["error_type"], NONFINITE_SALIENCY)).num_rows,
               "pointing_tolerance": cfg.pointing_tolerance, "notes": NOTES}
    write_json(cfg.metrics, summary)
    write_plots(metrics, explanations, cfg.plots_dir)
    logger.info("evaluate: %d metric rows for %d explanations, %d errors, undefined values %s", metrics.num_rows,
                explanations.num_rows, tables["errors"].num_rows, summary["undefined"])
    return summary


def run_evaluate(params_file: str | Path = "params.yaml") -> dict:
    params = load_params(params_file)
    return evaluate_flow.with_options(task_runner=task_runner(params, params.explain.runner))(params)
