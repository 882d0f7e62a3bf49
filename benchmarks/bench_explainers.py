"""Overhead of every explainer: wall time / (n_forward / raw batched forward throughput of the same model), for
the demo detector (D-RISE score of one pedestrian, regions = its body parts) and the demo classifier (all 4 class
probabilities, 16 SLIC superpixels, image already at the model's input size). 1.0 would mean the method costs
exactly its forwards through the bare network; target <= 1.15. Captum's FeatureAblation and KernelShap (with
perturbations_per_eval = the chunk size) run on the same scorer, regions and budget for comparison.
Each method runs 5 times, each run right after timing the same number of bare forwards; the overhead is the
median of those paired ratios (the VM's speed drifts, so unpaired timings are not comparable). Beside it, "own":
the method's wall time over the time spent inside its scorer in the same run (its own cost factor; the scorer's
cost over the bare network is bench_models' scorer/raw ratio), which the drift cannot reach.

    python benchmarks/bench_explainers.py [--budget 256] [--out benchmarks/results/explainers.json]
"""
from __future__ import annotations

import argparse
import os
import time
import warnings

import flows  # noqa: F401  (environment defaults)
import numpy as np
import torch
import torch.nn.functional as F

from bench_models import write_results
from bench_shapley import real_games
from detection.models.letterbox import letterbox
from detection.models.scene_classifier import load_classifier
from detection.scorers import ClassifierScorer
from explainers import METHODS, superpixels
from explainers.perturb import Blur

CHUNK = 16


def raw_seconds(raw_fn, raw_batch: torch.Tensor, n: int) -> float:
    """Wall time of n images through the bare network, in chunks of the batch's size (as explainers send them)."""
    with torch.inference_mode():
        start = time.perf_counter()
        for s in range(0, n, raw_batch.shape[0]):
            raw_fn(raw_batch[:min(raw_batch.shape[0], n - s)])
        if raw_batch.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start


class TimedScorer:
    """The scorer, timing its own calls: a method's wall time over the time spent inside its scorer is the method's
    own cost factor, measured within one run and so immune to the VM's speed drift (which moves both alike)."""

    def __init__(self, scorer):
        self.scorer, self.seconds = scorer, 0.0

    def __getattr__(self, name):
        return getattr(self.scorer, name)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = self.scorer(images)
        self.seconds += time.perf_counter() - start
        return out


def paired_overhead(run, raw_fn, raw_batch, timer: TimedScorer, repeats: int = 5) -> dict:
    """Run once (warm-up, counts the forwards n), then ``repeats`` times, each right after timing n bare forwards;
    overhead = median of the per-pair ratios, which cancels the VM's slow speed drift (it moves by up to 2x over
    minutes, so raw throughput measured once before and once after all methods is not comparable)."""
    n = run()
    raw_seconds(raw_fn, raw_batch, n)
    ratios, seconds, raws, own = [], [], [], []
    for _ in range(repeats):
        raws.append(raw_seconds(raw_fn, raw_batch, n))
        timer.seconds = 0.0
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
        ratios.append(seconds[-1] / raws[-1])
        own.append(seconds[-1] / timer.seconds)
    return {"n_forward": n, "seconds": float(np.median(seconds)), "raw_seconds": float(np.median(raws)),
            "overhead": float(np.median(ratios)), "own_factor": float(np.median(own))}


def captum_runs(scorer, image, regions, budget) -> dict[str, callable]:
    """Captum's FeatureAblation and KernelShap on the same scorer, regions and budget; each returns its forwards."""
    from captum.attr import FeatureAblation, KernelShap

    calls = [0]

    def forward(x):
        calls[0] += x.shape[0]
        with torch.inference_mode():
            return scorer(x)[:, 0]

    labels = torch.full(image.shape[-2:], regions.shape[0], dtype=torch.long, device=image.device)
    for r in range(regions.shape[0]):
        labels[regions[r] > 0] = r
    mask = labels[None, None].expand(1, 3, *labels.shape)
    base = Blur().baseline(image)[None]
    runs = {"captum_feature_ablation": lambda: FeatureAblation(forward).attribute(
                image[None], baselines=base, feature_mask=mask, perturbations_per_eval=CHUNK),
            "captum_kernel_shap": lambda: KernelShap(forward).attribute(
                image[None], baselines=base, feature_mask=mask, n_samples=budget, perturbations_per_eval=CHUNK)}

    def counted(run):
        def go() -> int:
            calls[0] = 0
            run()
            return calls[0]
        return go
    return {name: counted(run) for name, run in runs.items()}


def bench_model(label, scorer, raw_fn, raw_batch, image, regions, budget, methods) -> dict:
    scorer = TimedScorer(scorer)

    def explain_run(name: str):
        method = METHODS[name](scorer, chunk_size=CHUNK)
        use_regions = None if name in ("rise", "drise") else regions
        b = 2 ** regions.shape[0] if name == "exact_shapley" else budget
        return lambda: method.explain(image, use_regions, budget=b, seed=0).n_forward

    runs = {name: explain_run(name) for name in methods}
    runs.update(captum_runs(scorer, image, regions, budget))
    rows = {name: paired_overhead(run, raw_fn, raw_batch, scorer) for name, run in runs.items()}
    raw = float(np.median([r["n_forward"] / r["raw_seconds"] for r in rows.values()]))
    print(f"\n{label}: raw forward {raw:.0f} img/s (batch {CHUNK}, median over the pairs)")
    print(f"{'method':<26}{'forwards':>9}{'seconds':>9}{'raw s':>8}{'overhead':>10}{'own':>7}")
    for name, r in rows.items():
        print(f"{name:<26}{r['n_forward']:>9}{r['seconds']:>9.2f}{r['raw_seconds']:>8.2f}{r['overhead']:>10.2f}"
              f"{r['own_factor']:>7.3f}")
    return {"raw_images_per_s": raw, "methods": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=int, default=256)
    parser.add_argument("--out", default="benchmarks/results/explainers.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    person = real_games(1, device)[0]
    scorer = person["scorer"]
    scorer.chunk_size = CHUNK
    det = scorer.model
    image = person["image"]
    lb, _ = letterbox(image[None].expand(CHUNK, -1, -1, -1).contiguous(), det.imgsz, det.stride)
    parts = torch.cat([person["regions"][10], person["regions"][12][10:11]]).float()      # 10 parts + context
    methods = ["occlusion", "rise", "drise", "lime", "bayes_shapley", "kernel_shap", "permutation_shapley",
               "beta_shapley", "decam"]
    results = {"device": str(device), "cpus": os.cpu_count(), "budget": args.budget}
    results["detector"] = bench_model(f"demo detector, D-RISE score of {person['det_id']}, 11 part regions", scorer,
                                      det.model, lb, image, parts, args.budget, methods)
    results["detector_exact_parts6"] = bench_model(
        "demo detector, exact Shapley over 6 parts", scorer, det.model, lb, image,
        person["regions"][6].float(), args.budget, ["exact_shapley"])

    clf = load_classifier("models/classifier.pt", device=device)
    small = F.interpolate(image[None], size=clf.input_size, mode="bilinear", align_corners=False)[0].contiguous()
    cscorer = ClassifierScorer(clf, chunk_size=CHUNK)
    pre = clf.preprocess(small[None].expand(CHUNK, -1, -1, -1).contiguous())
    regions = superpixels(small, 16).float()
    results["classifier"] = bench_model(f"demo classifier, 4 classes, {regions.shape[0]} superpixels", cscorer,
                                        clf.model, pre, small, regions, args.budget, methods)
    write_results(args.out, results)


if __name__ == "__main__":
    main()
