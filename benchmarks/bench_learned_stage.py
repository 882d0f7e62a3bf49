"""The explain stage's explainer time with the learned jobs in place of the sampling ones (issue 19's stage target:
>= 20x less, every quality metric within the learned explainers' targets), read from one pipeline run that ran both.

Pairs (sampling job -> its learned replacement in the default ``explain.jobs``):

- ``bayes_shapley@parts`` (48 forwards, ground-truth persons) -> ``fastshap@parts`` (FastShapParts, the detector's
  detections),
- ``drise`` (256 masks, persons, val split) -> ``fastshap_grid_detector`` (FastShapGridDetector, detections, val),
- ``rise`` (256 masks, classes, val) -> ``fastshap_grid`` (FastShapGrid, classes, val).

Per job: explanations (rows of ``data/explain/explanations/job=<job>``), explainer seconds summed over the shards'
timing files (``data/explain/_timings``: one run, so the jobs shared the machine's speed that day), seconds per
explanation, and the evaluate stage's medians (``metrics/evaluate.json``: model forwards per explanation, deletion /
insertion AUC on the causal split). The stage figure: the sampling jobs' summed seconds against what their learned
replacements cost for the same number of explanations (seconds per explanation x the sampling job's count; the
target sets differ -- persons vs detections -- so this is a rate, not a paired measurement), and the whole stage's
explainer time as run and with those three replaced (the other jobs -- occlusion, the hybrid, RExL's -- stay).
Run after ``dvc repro evaluate`` (the timing files are not DVC outputs: a stage that DVC restored from its cache
has none).

    python benchmarks/bench_learned_stage.py [--out benchmarks/results/learned_stage.json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow.parquet as pq

from bench_models import write_results
from tasks.params import load_params
from tasks.timings import read_shard_timings

PAIRS = (("bayes_shapley@parts", "fastshap@parts"), ("drise", "fastshap_grid_detector"), ("rise", "fastshap_grid"))


def explanations(root: Path, job: str) -> int:
    """Rows of a job's explanation shards (one per explained target)."""
    return sum(pq.ParquetFile(f).metadata.num_rows for f in sorted((root / f"job={job}").glob("*.parquet")))


def job_rows(root: Path, metrics: dict) -> dict[str, dict]:
    """Per job of the run: explanations, explainer seconds, seconds per explanation, and its evaluate medians."""
    seconds: dict[str, float] = {}
    for timing in read_shard_timings(root).values():
        for job, s in timing["explainer_seconds"].items():
            seconds[job] = seconds.get(job, 0.0) + float(s)
    if not seconds:
        raise SystemExit(f"bench_learned_stage: no shard timings under {root}/_timings (run dvc repro explain here: a "
                         "stage restored from DVC's cache has none)")
    by_job = {job: m for kind in metrics["by_kind"].values() for job, m in kind.items()}
    rows = {}
    for job, s in sorted(seconds.items()):
        n = explanations(root / "explanations", job)
        m = by_job.get(job, {})
        rows[job] = {"explanations": n, "explainer_seconds": s, "seconds_per_explanation": s / n if n else None,
                     "model_forwards_per_explanation": m.get("n_forward"), "deletion_auc": m.get("deletion_auc"),
                     "insertion_auc": m.get("insertion_auc")}
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/learned_stage.json")
    args = parser.parse_args(argv)
    params = load_params(check_files=False)
    root = Path(params.explain.out_dir)
    rows = job_rows(root, json.loads(Path(params.evaluate.metrics).read_text()))
    pairs, sampled, learned = [], 0.0, 0.0
    print("| sampling job → learned job | explanations | explainer s | s / explanation | model forwards / "
          "explanation | deletion AUC ↓ | insertion AUC ↑ | time ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for slow, fast in PAIRS:
        if not (rows.get(slow, {}).get("explanations") and rows.get(fast, {}).get("explanations")):
            print(f"(skipped {slow} -> {fast}: not both explained something in this run)")
            continue
        a, b = rows[slow], rows[fast]
        ratio = a["seconds_per_explanation"] / b["seconds_per_explanation"]
        sampled += a["explainer_seconds"]
        learned += b["seconds_per_explanation"] * a["explanations"]
        pairs.append({"sampling": slow, "learned": fast, "ratio_per_explanation": round(ratio, 1)})
        for job, r, cell in ((slow, a, ""), (fast, b, f"**{ratio:.1f}×**")):
            print(f"| {job} | {r['explanations']} | {r['explainer_seconds']:.1f} | {r['seconds_per_explanation']:.4f} "
                  f"| {r['model_forwards_per_explanation']} | {r['deletion_auc']} | {r['insertion_auc']} | {cell} |")
    stage = round(sampled / learned, 1) if learned else None
    total = sum(r["explainer_seconds"] for r in rows.values())
    replaced = total - sampled + learned
    print(f"sampling jobs {sampled:.1f} s; their learned replacements at the same counts {learned:.1f} s: {stage}×")
    print(f"the whole stage as run: {total:.1f} s of explainer time; with those replaced {replaced:.1f} s "
          f"({total / replaced:.2f}×: the other jobs stay)")
    rows = {job: {**r, "explainer_seconds": round(r["explainer_seconds"], 2),
                  "seconds_per_explanation": None if r["seconds_per_explanation"] is None else
                  round(r["seconds_per_explanation"], 5)} for job, r in rows.items()}
    write_results(args.out, {"pairs": pairs, "jobs": rows, "sampling_seconds": round(sampled, 2),
                             "learned_seconds_at_sampling_counts": round(learned, 2), "stage_ratio": stage,
                             "run_seconds_total": round(total, 2), "run_seconds_with_replacements": round(replaced, 2)})


if __name__ == "__main__":
    main()
