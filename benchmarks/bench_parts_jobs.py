"""Cost of a pedestrian's body-part explanation in the explain stage: the learned ``fastshap`` and ``rexl`` parts jobs
of params.yaml (one call per pedestrian, and one call per image with each pedestrian's own regions,
``per_target_regions``) against the sampling ``bayes_shapley`` job at its default 48 forwards, on the same
detections of the same images, interleaved image by image in one run (the CPU's speed drifts between days: only
the ratios within a run compare).

Timed per image: what ``tasks.explain.explain_targets`` does for the job (building the method on the image's
scorer, the players' masks, ``explain``), not the image decoding or the masks' RLE decoding that every job shares.
Needs the pipeline's data (``dvc repro explain`` wrote the targets table) and the models stage's files.

    python benchmarks/bench_parts_jobs.py [--images 60] [--threads 1] [--methods fastshap rexl]
                                          [--out benchmarks/results/parts_jobs.json]
"""
from __future__ import annotations

import argparse
import statistics
import time

import flows  # noqa: F401  (environment defaults)

import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from bench_models import write_results
from explainers.registry import METHODS
from tasks import stages
from tasks.explain import ExplainShard, _player_regions, _regions, explain_targets, parts_lookup, read_items
from tasks.model_cache import detection_scorer, load_image
from tasks.params import ExplainJob, load_params


def jobs(params, methods: tuple[str, ...] = ("fastshap", "rexl")) -> dict[str, tuple[ExplainJob, bool]]:
    """The compared jobs on the explain stage's detections: name -> (job, one explain call per pedestrian): the
    params' ``fastshap`` and ``rexl`` parts jobs as the stage runs them and one call per pedestrian, and
    ``bayes_shapley`` at 48 forwards (the reference)."""
    base = {"targets": "detections", "regions": "parts", "split": None}
    out = {}
    for job in params.explain.jobs:
        if job.method in methods and job.regions == "parts":
            job = job.model_copy(update=base)
            out[f"{job.name} (stage: one call per image)"] = (job, False)
            out[f"{job.name}, one call per pedestrian"] = (job, True)
    if not out:
        raise SystemExit(f"bench_parts_jobs: params.yaml has no parts job of {list(methods)} (explain.jobs)")
    return {**out, "bayes_shapley@48 (stage)": (ExplainJob(method="bayes_shapley", budget=48, **base), False)}


def run_job(job: ExplainJob, one_by_one: bool, params, image, targets, parts_of, uri: str) -> tuple[int, float]:
    """(explanations, seconds) of one job on one image's detections: as the explain stage runs it
    (``tasks.explain.explain_targets``), or one explain call per pedestrian (how the stage ran these jobs before
    their methods took per-target regions)."""
    errors: list[dict] = []
    start = time.perf_counter()
    if not one_by_one:
        n = len(explain_targets(job, lambda ts: detection_scorer(params, "cpu", ts), image, targets, parts_of,
                                params.explain, params.seed, "cpu", errors, uri))
    else:
        n = 0
        for t in targets:
            method = METHODS[job.method](detection_scorer(params, "cpu", [t]), chunk_size=params.explain.chunk_size,
                                         **job.options)
            _, masks = (_player_regions(method.players, image, parts_of(t)) if method.fixed_players
                        else _regions(job, image, parts_of(t)))
            if masks is not None:
                method.explain(image, masks, budget=job.budget, seed=0)
                n += 1
    return n, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=60, help="the first N images with detections that have parts")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", nargs="+", default=["fastshap", "rexl"], choices=["fastshap", "rexl"],
                    help="the learned methods whose parts jobs are compared (rexl's take minutes)")
    ap.add_argument("--out", default="benchmarks/results/parts_jobs.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params()
    explain_out = stages.explain(params)
    targets = pq.read_table(explain_out.path("targets"))
    ids = pc.unique(targets.filter(pc.equal(targets["kind"], "detections"))["image_id"]).to_pylist()
    items = read_items(ExplainShard(shard=0, image_ids=ids[:args.images], images=str(stages.pull(params).path(
        "images")), targets=str(explain_out.path("targets")), parts=str(stages.parts(params).path("parts")),
        cache_dir=None, bases={}))
    compared = jobs(params, tuple(args.methods))
    seconds = {name: [] for name in compared}
    counts = dict.fromkeys(compared, 0)
    per_image_targets = []
    warm = True
    for item in items:
        dets = [t for t in item["targets"] if t["kind"] == "detections"]
        image = load_image(item["image"], "explain", "cpu", [])
        parts_of = parts_lookup(item["parts"], "cpu")
        dets = [t for t in dets if parts_of(t)]
        if image is None or not dets:
            continue
        if warm:                                   # model loads and first-call set-up out of the timings
            for job, one_by_one in compared.values():
                run_job(job, one_by_one, params, image, dets, parts_of, item["image"]["uri"])
            warm = False
        per_image_targets.append(len(dets))
        for name, (job, one_by_one) in compared.items():
            n, s = run_job(job, one_by_one, params, image, dets, parts_of, item["image"]["uri"])
            counts[name] += n
            seconds[name].append(s)
    if not per_image_targets:
        raise SystemExit(f"bench_parts_jobs: none of the first {args.images} images with detections has one with "
                         "body parts")
    ref_name = "bayes_shapley@48 (stage)"
    ref = sum(seconds[ref_name]) / max(counts[ref_name], 1)
    results = {"images": len(per_image_targets), "pedestrians": sum(per_image_targets),
               "pedestrians_per_image_mean": statistics.mean(per_image_targets), "threads": args.threads,
               "jobs": {}}
    print(f"{results['images']} images, {results['pedestrians']} detections with parts "
          f"({results['pedestrians_per_image_mean']:.2f} an image), {args.threads} thread(s)")
    for name in compared:
        per = sum(seconds[name]) / max(counts[name], 1)
        results["jobs"][name] = {"explanations": counts[name], "seconds": round(sum(seconds[name]), 3),
                                 "ms_per_pedestrian": round(1000 * per, 2),
                                 "bayes_shapley@48 / this": round(ref / per, 2)}
        print(f"  {name:56s} {1000 * per:8.1f} ms / pedestrian   bayes_shapley@48 / this: {ref / per:6.1f}x")
    write_results(args.out, results)


if __name__ == "__main__":
    main()
