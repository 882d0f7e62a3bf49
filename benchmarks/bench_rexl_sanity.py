"""The model-randomisation sanity check (Adebayo et al. 2018) of the RExL detector parts jobs on more targets than
the pipeline's 12, for each game's stable-baselines3 policy and its DAgger policy.

The pipeline's own check (``tasks.sanity.sanity_check``: each target re-explained exactly as the explain stage does,
on cascades of randomised copies of the detector; ``tasks.sanity.sanity_summary``: passes when both medians of the
rank correlation at full randomisation, signed and absolute, are at most ``evaluate.sanity.max_correlation``), on
the first ``--targets`` detections the ``rexl@parts`` job explained (val split), for four jobs: ``rexl@parts`` and
``rexl_insertion@parts`` with each policy file. Needs the pipeline's data (``dvc repro explain``). The rows go to a
result store under ``--cache-dir`` (not the pipeline's), so a rerun reuses them.

    python benchmarks/bench_rexl_sanity.py [--targets 40] [--threads 2]

Writes benchmarks/results/rexl_sanity.json.
"""
from __future__ import annotations

import argparse
import time

import flows  # noqa: F401  (environment defaults)

import torch

from bench_models import write_results
from tasks import stages
from tasks.explain import ExplainShard, read_items
from tasks.params import load_params
from tasks.sanity import sanity_check, sanity_summary, sanity_targets

POLICIES = {"deletion": {"ppo": "weights/demo/rexl_detector_deletion_cells_ppo.pt",
                         "dagger": "weights/demo/rexl_detector_deletion_cells.pt"},
            "insertion": {"ppo": "weights/demo/rexl_detector_insertion_cells_ppo.pt",
                          "dagger": "weights/demo/rexl_detector_insertion_cells.pt"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache-dir", default=".work/rexl_sanity")
    ap.add_argument("--out", default="benchmarks/results/rexl_sanity.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    params = load_params()
    by_mode = {}
    for job in params.explain.jobs:
        if job.method == "rexl" and job.targets == "detections":
            mode = "insertion" if "insertion" in str(job.options.get("policy")) else "deletion"
            by_mode[mode] = job
    jobs = [by_mode[mode].model_copy(update={"label": f"rexl_{mode}_{kind}",
                                             "options": {**by_mode[mode].options, "policy": policy}})
            for mode, files in POLICIES.items() for kind, policy in files.items()]
    explain_out = stages.explain(params)
    explanations = explain_out.read("explanations").select(["job", "image_id", "target_id"])
    first = sanity_targets(explanations, [by_mode["deletion"]], args.targets)[by_mode["deletion"].name]
    chosen = {job.name: first for job in jobs}
    run = params.model_copy(update={"explain": params.explain.model_copy(update={"jobs": jobs,
                                                                                 "cache_dir": args.cache_dir})})
    items = read_items(ExplainShard(shard=0, image_ids=sorted({i for i, _ in first}),
                                    images=str(stages.pull(params).path("images")),
                                    targets=str(explain_out.path("targets")),
                                    parts=str(stages.parts(params).path("parts")), cache_dir=None, bases={}))
    out = sanity_check.fn(items, chosen, run)
    summary = sanity_summary(out["rows"], out["status"], params.evaluate.sanity.max_correlation)
    print(f"{len(first)} targets, {time.perf_counter() - started:.0f} s")
    for name, entry in summary.items():
        print(f"  {name:28s} passes {entry.get('passes')!s:5s} settled {entry.get('settled')!s:5s} signed "
              f"{entry.get('spearman_full')} {entry.get('spearman_full_interval')}  abs "
              f"{entry.get('spearman_abs_full')} {entry.get('spearman_abs_full_interval')}")
    write_results(args.out, {"targets": len(first), "policies": POLICIES, "jobs": summary,
                             "errors": len(out["errors"]), "max_correlation": params.evaluate.sanity.max_correlation,
                             "seconds": time.perf_counter() - started, "threads": args.threads})


if __name__ == "__main__":
    main()
