"""Incremental re-audit: what explain + evaluate cost after adding 1 % new images to the dataset, against a full run,
and whether the incremental run's tables equal a from-scratch run's (tasks.result_store).

In a scratch project (``.work/bench_incremental``) with the default generator settings of params.yaml
(``pull.synthetic``), N synthetic images and the shipped demo models (weights/demo, used in place: no models stage):

1. version 1 (N images): pull -> infer -> parts -> explain -> evaluate, result store cold (the *full run*);
2. version 2 (N + ceil(N / 100) images; the generator draws image i from (seed, i) alone, so the first N images are
   byte-identical — checked by their SHA-256): pull -> infer -> parts; whether the old images' detections changed
   (infer runs in batches whose composition changes) is measured; then explain -> evaluate reusing the store (the
   *incremental run*);
3. version 2 from scratch: outputs and store moved aside, explain -> evaluate again; every output file of the two
   stages (what DVC hashes; wall times live in ``_timings`` / ``metrics/timings.json``) compared byte for byte.

Explain jobs: ``occlusion@parts`` and ``bayes_shapley@parts`` (budget 48) over the ground-truth persons; evaluate:
params.yaml's (deletion / insertion on the val split, sanity check of 2 targets per job).

    python benchmarks/bench_incremental.py [--images 100] [--out benchmarks/results/incremental.json]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import flows  # noqa: F401  (environment defaults)

import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from bench_models import write_results

REPO = Path(__file__).resolve().parents[1]
SCRATCH = REPO / ".work/bench_incremental"
JOBS = [{"method": "occlusion", "targets": "persons", "regions": "parts"},
        {"method": "bayes_shapley", "targets": "persons", "regions": "parts", "budget": 48}]


def write_params(n_images: int) -> Path:
    """params.yaml of the scratch project: the repository's, with N images, the demo weights in place, the jobs."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["pull"]["synthetic"]["n_images"] = n_images
    demo = REPO / "weights/demo"
    infer = params["infer"]
    for spec in infer["detectors"]:
        spec["weights"] = str(demo / "detector.pt")
    infer["pose"]["weights"] = str(demo / "detector.pt")
    infer["pose"]["keypoints"] = str(demo / "keypoints.pt")
    infer["classifier"]["weights"] = str(demo / "classifier.pt")
    params["explain"]["jobs"] = JOBS
    path = SCRATCH / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def output_hashes() -> dict[str, str]:
    """sha256 of every file explain and evaluate write (``_timings`` excluded, as .dvcignore does)."""
    files = [p for root in ("data/explain", "data/evaluate", "plots") for p in Path(root).rglob("*")
             if p.is_file() and "_timings" not in p.parts]
    files += [Path("metrics/explain.json"), Path("metrics/evaluate.json")]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(files)}


def audit(params: Path) -> dict:
    """explain then evaluate; their run timings (metrics/timings.json) and wall times."""
    from flows.evaluate import run_evaluate
    from flows.explain import run_explain

    started = time.perf_counter()
    run_explain(params)
    explained = time.perf_counter()
    run_evaluate(params)
    done = time.perf_counter()
    timings = json.loads(Path("metrics/timings.json").read_text())
    return {"explain": timings["explain"], "evaluate": timings["evaluate"],
            "explain_wall": round(explained - started, 2), "evaluate_wall": round(done - explained, 2)}


def prepare(params: Path) -> None:
    from flows.infer import run_infer
    from flows.parts import run_parts
    from flows.pull import run_pull

    run_pull(params)
    run_infer(params)
    run_parts(params)


def detections_of(image_ids) -> object:
    t = pq.read_table("data/infer/detections.parquet")
    t = t.filter(pc.is_in(t["image_id"], value_set=image_ids)).drop_columns(["run_id"])
    return t.sort_by([("model_id", "ascending"), ("image_id", "ascending"), ("det_id", "ascending")])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/incremental.json"))
    args = ap.parse_args(argv)
    shutil.rmtree(SCRATCH, ignore_errors=True)
    SCRATCH.mkdir(parents=True)
    os.chdir(SCRATCH)
    n_new = math.ceil(args.images / 100)

    v1 = write_params(args.images)
    prepare(v1)
    images_v1 = pq.read_table("data/pulled/images.parquet", columns=["image_id", "sha256"])
    dets_v1 = detections_of(images_v1["image_id"])
    full_v1 = audit(v1)

    v2 = write_params(args.images + n_new)
    prepare(v2)
    images_v2 = pq.read_table("data/pulled/images.parquet", columns=["image_id", "sha256"])
    old = dict(zip(images_v1["image_id"].to_pylist(), images_v1["sha256"].to_pylist()))
    now = dict(zip(images_v2["image_id"].to_pylist(), images_v2["sha256"].to_pylist()))
    dets_v2 = detections_of(images_v1["image_id"])
    incremental = audit(v2)
    hashes_incremental = output_hashes()

    for out in ("data/explain", "data/evaluate"):
        shutil.rmtree(out)
    os.replace(".cache", ".cache.incremental")                      # a cold store: from scratch
    scratch = audit(v2)
    hashes_scratch = output_hashes()

    full_seconds = scratch["explain"]["explainer_seconds_this_run"]
    inc_seconds = incremental["explain"]["explainer_seconds_this_run"]
    eval_full = scratch["evaluate"]["seconds_computed"]
    eval_inc = incremental["evaluate"]["seconds_computed"]
    differing = [p for p in hashes_scratch if hashes_scratch[p] != hashes_incremental.get(p)]
    result = {
        "images": {"version_1": len(old), "version_2": len(now), "added": len(now) - len(old)},
        "old_images_identical": all(now.get(k) == v for k, v in old.items()),
        "old_detections_identical": dets_v1.equals(dets_v2),
        "jobs": [j["method"] + "@" + j["regions"] for j in JOBS],
        "explain": {
            "explainer_seconds_full_v2": full_seconds, "explainer_seconds_full_v1":
                full_v1["explain"]["explainer_seconds_this_run"],
            "explainer_seconds_incremental": inc_seconds,
            "share_of_full": round(inc_seconds / full_seconds, 4) if full_seconds else None,
            "groups_computed": incremental["explain"]["groups_computed"],
            "groups_reused": incremental["explain"]["groups_reused"],
            "wall_full_v2": scratch["explain_wall"], "wall_incremental": incremental["explain_wall"]},
        "evaluate": {
            "metric_seconds_full_v2": eval_full, "metric_seconds_incremental": eval_inc,
            "share_of_full": round(eval_inc / eval_full, 4) if eval_full else None,
            "groups_computed": incremental["evaluate"]["groups_computed"],
            "groups_reused": incremental["evaluate"]["groups_reused"],
            "wall_full_v2": scratch["evaluate_wall"], "wall_incremental": incremental["evaluate_wall"],
            "sanity_wait_incremental": incremental["evaluate"]["sanity_wait_seconds"],
            "where_it_fails_incremental": incremental["evaluate"]["where_it_fails_seconds"]},
        "tables_equal_from_scratch": not differing and set(hashes_scratch) == set(hashes_incremental),
        "files_compared": len(hashes_scratch), "files_differing": differing,
        "target": "explain explainer seconds of the incremental run <= 3 % of the full run's",
        "meets_target": bool(full_seconds) and inc_seconds / full_seconds <= 0.03,
    }
    print(json.dumps(result, indent=2))
    write_results(args.out, result)
    return result


if __name__ == "__main__":
    main()
