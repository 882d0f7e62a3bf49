"""Explain-stage throughput (explanations per minute) with 1 and 2 workers, and orchestration overhead: the
stage's wall time against the sum of the explainers' own time (Explanation.seconds). Runs the real explain flow on
the default dataset and the jobs of params.yaml (needs the pipeline's data: `dvc repro parts infer`), into a
scratch folder.

What the timed runs exclude, and how: before them the script starts Prefect's ephemeral API with a trivial flow
and loads the detector and classifier into the explain tasks' per-process model cache (the same cached loaders
the tasks call), and reports both separately (``startup_seconds``, ``model_load_seconds``). With the Dask runner
the models load in the worker processes, inside the timed run (``--runner dask`` says so in its output).
Timed per run: ``wall_seconds`` = the flow call from outside (targets, image decoding, explainers, shard writes,
Prefect's task bookkeeping); ``flow_wall_seconds`` = the flow's own clock (the same minus the flow run's creation).

``--images N`` runs on an evenly spaced subset of N images of the pulled dataset (every split keeps its share):
the pulled, infer and parts tables are filtered to those images into the scratch folder (no image is copied or
re-inferred), so the explain stage's per-image cost is measured without running it on the whole dataset.

    python benchmarks/bench_pipeline.py [--workers 1 2] [--runner threads] [--images N]
                                        [--out benchmarks/results/pipeline.json]
"""
from __future__ import annotations

import argparse
import os
import shutil
import time

import flows  # noqa: F401  (environment defaults)
from flows.explain import explain_flow
from flows.runner import task_runner

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from prefect import flow

from bench_models import write_results
from tasks import stages
from tasks.params import Params, load_params

SCRATCH = ".work/bench_pipeline"


@flow(name="bench-warm-up")
def _warm_up() -> int:
    return 0


def subset_inputs(params: Params, n_images: int) -> Params:
    """Params whose pull / infer / parts outputs are copies of the real ones restricted to ``n_images`` evenly
    spaced images (by image id), written under the scratch folder. Raises ValueError when the dataset has fewer."""
    pulled = stages.pull(params)
    images = pulled.read("images").sort_by("image_id")
    if n_images > images.num_rows:
        raise ValueError(f"--images {n_images}: the pulled dataset has only {images.num_rows} images")
    keep = pa.array([images["image_id"][round(i * images.num_rows / n_images)].as_py() for i in range(n_images)])
    update = {}
    for section, outputs in (("pull", pulled), ("infer", stages.infer(params)), ("parts", stages.parts(params))):
        folder = f"{SCRATCH}/inputs/{section}"
        os.makedirs(folder, exist_ok=True)
        for name in outputs.TABLES:
            source = outputs.path(name)
            table = pq.read_table(source)
            if "image_id" in table.column_names:
                table = table.filter(pc.is_in(table["image_id"], value_set=keep))
            pq.write_table(table, f"{folder}/{source.name}")
        update[section] = getattr(params, section).model_copy(update={"out_dir": folder})
    return params.model_copy(update=update)


def warm_up(params) -> dict:
    """Start Prefect's ephemeral API and fill the explain tasks' model cache; the seconds of each."""
    from tasks.model_cache import classifier_model, detector_model, task_device

    start = time.perf_counter()
    _warm_up()
    startup = time.perf_counter() - start
    start = time.perf_counter()
    device, chunk = task_device(params.explain.device), params.explain.chunk_size
    detector_model(params.explain_detector().model_dump_json(), device, chunk)
    if params.infer.classifier is not None:
        classifier_model(params.infer.classifier.model_dump_json(), device, chunk)
    return {"startup_seconds": round(startup, 2), "model_load_seconds": round(time.perf_counter() - start, 2)}


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
    row = {"workers": workers, "runner": runner, "explanations": n, "by_job": metrics["explanations"],
           "wall_seconds": round(wall, 2), "flow_wall_seconds": metrics["wall_seconds"],
           "explainer_seconds": explainer, "explanations_per_min": round(60 * n / wall, 1),
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
    parser.add_argument("--images", type=int, default=None, help="an evenly spaced subset of the pulled images")
    parser.add_argument("--out", default="benchmarks/results/pipeline.json")
    args = parser.parse_args()
    params = load_params()
    if args.images:
        shutil.rmtree(SCRATCH, ignore_errors=True)
        params = subset_inputs(params, args.images)
    excluded = warm_up(params)
    print(f"excluded from the timed runs: Prefect start-up {excluded['startup_seconds']:.1f} s, model loading "
          f"{excluded['model_load_seconds']:.1f} s" +
          (" (dask: the workers load their own models inside the timed runs)" if args.runner == "dask" else ""))
    rows = [run(params, w, args.runner) for w in args.workers]
    shutil.rmtree(SCRATCH, ignore_errors=True)
    jobs = [{"name": j.name, **j.model_dump(mode="json")} for j in params.explain.jobs]
    write_results(args.out, {"device": "cuda" if torch.cuda.is_available() else "cpu", "cpus": os.cpu_count(),
                             "images": args.images or "all", "jobs": jobs, "excluded": excluded, "runs": rows})


if __name__ == "__main__":
    main()
