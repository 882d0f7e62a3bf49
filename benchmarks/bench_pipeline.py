"""Explain-stage throughput (explanations per minute) with 1 and 2 workers, and orchestration overhead: the
stage's wall time against the sum of the explainers' own time (Explanation.seconds). Runs the real explain flow on
the default dataset and jobs of params.yaml (after `dvc repro parts`), into a scratch folder.

    python benchmarks/bench_pipeline.py [--workers 1 2] [--runner threads] [--out benchmarks/results/pipeline.json]
"""
from __future__ import annotations

import argparse
import os
import shutil
import time

import flows  # noqa: F401  (environment defaults)
import torch

from bench_models import write_results
from flows.explain import explain_flow
from flows.runner import task_runner
from tasks.params import load_params

SCRATCH = ".work/bench_pipeline"


def run(params, workers: int, runner: str) -> dict:
    out = f"{SCRATCH}/explain-{runner}-{workers}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = params.explain.model_copy(update={
        "out_dir": out, "metrics": f"{out}.json",
        "runner": params.explain.runner.model_copy(update={"kind": runner, "workers": workers})})
    p = params.model_copy(update={"explain": cfg})
    start = time.perf_counter()
    metrics = explain_flow.with_options(task_runner=task_runner(p, cfg.runner))(p)
    wall = time.perf_counter() - start
    n = sum(metrics["explanations"].values())
    explainer = metrics["explainer_seconds_total"]
    row = {"workers": workers, "runner": runner, "explanations": n, "wall_seconds": round(wall, 2),
           "flow_wall_seconds": metrics["wall_seconds_this_run"], "explainer_seconds": explainer,
           "explanations_per_min": round(60 * n / wall, 1),
           # one worker: everything that is not an explainer running (targets, image decoding, Parquet, Prefect)
           "overhead": round(wall / explainer - 1, 3) if workers == 1 else None,
           "explainer_seconds_per_worker": round(explainer / workers, 2)}
    print(f"{runner} x{workers}: {n} explanations in {wall:.1f} s = {row['explanations_per_min']:.0f}/min; "
          f"explainers {explainer:.1f} s in all" + (f", overhead {row['overhead']:.1%}" if workers == 1 else ""))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runner", default="threads", choices=["threads", "dask"])
    parser.add_argument("--out", default="benchmarks/results/pipeline.json")
    args = parser.parse_args()
    params = load_params()
    rows = [run(params, w, args.runner) for w in args.workers]
    shutil.rmtree(SCRATCH, ignore_errors=True)
    write_results(args.out, {"device": "cuda" if torch.cuda.is_available() else "cpu", "cpus": os.cpu_count(),
                             "jobs": [j.name for j in params.explain.jobs], "runs": rows})


if __name__ == "__main__":
    main()
