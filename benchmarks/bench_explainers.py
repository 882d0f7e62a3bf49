"""Overhead of every explainer: wall time / (n_forward / raw batched forward throughput of the same model), for
the demo detector (D-RISE score of one pedestrian, regions = its body parts) and the demo classifier (all 4 class
probabilities, 16 SLIC superpixels, image already at the model's input size). 1.0 would mean the method costs
exactly its forwards through the bare network; target <= 1.15. Captum's FeatureAblation and KernelShap (with
perturbations_per_eval = the chunk size) run on the same scorer, regions and budget for comparison.
Each method runs --repeats times (default 3) after a warm-up run, each run right after timing the same number
of bare forwards; "paired" is the median of those ratios. The VM's speed drifts between the two halves of a pair,
so two drift-free figures come from timers inside each run: "own" = wall time / time inside the scorer, and
"net" = wall time / time inside the bare network (the overhead itself, with the network's time measured in the
same run); "in-run" = the network's time per image in the run / in the paired bare loop (above 1 if feeding it
fresh composites made the network itself slower).

    python benchmarks/bench_explainers.py [--budget 256] [--repeats 3] [--models detector,classifier]
                                          [--out benchmarks/results/explainers.json]
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
from detection.models.letterbox import letterbox
from detection.models.scene_classifier import load_classifier
from detection.scorers import ClassifierScorer
from explainers import METHODS, superpixels
from explainers.perturb import Blur
from pedestrians import describe_split, pedestrians

CHUNK = 16
REPEATS = 3          # timed runs per method (default), each paired with the same number of bare forwards


def raw_seconds(raw_fn, raw_batch: torch.Tensor, n: int) -> float:
    """Wall time of n images through the bare network, in chunks of the batch's size (as explainers send them)."""
    with torch.inference_mode():
        start = time.perf_counter()
        for s in range(0, n, raw_batch.shape[0]):
            raw_fn(raw_batch[:min(raw_batch.shape[0], n - s)])
        if raw_batch.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start


class Timed:
    """A callable (a scorer, a bare network) that adds up the time spent inside its calls: a method's wall time
    over it is measured within one run, so the VM's speed drift moves both sides alike."""

    def __init__(self, inner):
        self.inner, self.seconds, self.images = inner, 0.0, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def reset(self) -> None:
        self.seconds, self.images = 0.0, 0

    def __call__(self, images: torch.Tensor, *args, **kw):
        start = time.perf_counter()
        out = self.inner(images, *args, **kw)
        self.seconds += time.perf_counter() - start
        self.images += images.shape[0]
        return out


def paired_overhead(run, raw_batch, scorer: Timed, network: Timed, repeats: int = REPEATS) -> dict:
    """Run once (warm-up, counts the forwards n), then ``repeats`` times, each right after timing n bare forwards;
    overhead = median of the per-pair ratios, which cancels the VM's slow speed drift (it moves by up to 2x over
    minutes, so raw throughput measured once before and once after all methods is not comparable). Beside it the
    medians of the in-run ratios (see the module's docstring)."""
    n = run()
    raw_seconds(network.inner, raw_batch, n)
    ratios, seconds, raws, own, net, in_run = [], [], [], [], [], []
    for _ in range(repeats):
        raws.append(raw_seconds(network.inner, raw_batch, n))
        scorer.reset()
        network.reset()
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
        ratios.append(seconds[-1] / raws[-1])
        own.append(seconds[-1] / scorer.seconds)
        if network.images:                      # Captum's runs go through the scorer, which calls the network
            net.append(seconds[-1] / network.seconds)
            in_run.append(network.seconds / network.images / (raws[-1] / n))
    return {"n_forward": n, "seconds": float(np.median(seconds)), "raw_seconds": float(np.median(raws)),
            "overhead": float(np.median(ratios)), "own_factor": float(np.median(own)),
            "net_overhead": float(np.median(net)), "network_in_run_vs_raw": float(np.median(in_run))}


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


def bench_model(label, scorer, network: Timed, raw_batch, image, regions, budget, methods, repeats: int,
                captum: bool = True) -> dict:
    """``network``: the bare network, already swapped into the model adapter that ``scorer`` calls."""
    scorer = Timed(scorer)

    def explain_run(name: str):
        method = METHODS[name](scorer, chunk_size=CHUNK)
        use_regions = None if name in ("rise", "drise") else regions
        b = 2 ** regions.shape[0] if name == "exact_shapley" else budget
        return lambda: method.explain(image, use_regions, budget=b, seed=0).n_forward

    runs = {name: explain_run(name) for name in methods}
    if captum:
        runs.update(captum_runs(scorer, image, regions, budget))
    rows = {name: paired_overhead(run, raw_batch, scorer, network, repeats) for name, run in runs.items()}
    raw = float(np.median([r["n_forward"] / r["raw_seconds"] for r in rows.values()]))
    print(f"\n{label}: raw forward {raw:.0f} img/s (batch {CHUNK}, median over the pairs)")
    print(f"{'method':<26}{'forwards':>9}{'seconds':>9}{'raw s':>8}{'paired':>8}{'own':>7}{'net':>7}{'in-run':>8}")
    for name, r in rows.items():
        print(f"{name:<26}{r['n_forward']:>9}{r['seconds']:>9.2f}{r['raw_seconds']:>8.2f}{r['overhead']:>8.2f}"
              f"{r['own_factor']:>7.3f}{r['net_overhead']:>7.3f}{r['network_in_run_vs_raw']:>8.3f}")
    return {"raw_images_per_s": raw, "methods": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=REPEATS, help="timed runs per method")
    parser.add_argument("--models", default="detector,classifier", help="comma-separated: detector, classifier")
    parser.add_argument("--out", default="benchmarks/results/explainers.json")
    args = parser.parse_args()
    models = args.models.split(",")
    if not set(models) <= {"detector", "classifier"}:
        parser.error(f"--models: unknown {sorted(set(models) - {'detector', 'classifier'})}")
    warnings.filterwarnings("ignore")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    person = pedestrians("heldout", 1, device)[0]
    scorer = person["scorer"]
    scorer.chunk_size = CHUNK
    det = scorer.model
    det.model = network = Timed(det.model)
    image = person["image"]
    lb, _ = letterbox(image[None].expand(CHUNK, -1, -1, -1).contiguous(), det.imgsz, det.stride)
    parts = torch.cat([person["regions"][10], person["regions"][12][10:11]]).float()      # 10 parts + context
    methods = ["occlusion", "rise", "drise", "lime", "bayes_shapley", "kernel_shap", "permutation_shapley",
               "continuous_coalition_shapley", "decam"]
    results = {"device": str(device), "cpus": os.cpu_count(), "budget": args.budget,
               "pedestrian": person["det_id"], "split": describe_split("heldout"), "repeats": args.repeats}
    if "detector" in models:
        results["detector"] = bench_model(f"demo detector, D-RISE score of {person['det_id']}, 11 part regions",
                                          scorer, network, lb, image, parts, args.budget, methods, args.repeats)
        results["detector_exact_parts6"] = bench_model(
            "demo detector, exact Shapley over 6 parts", scorer, network, lb, image,
            person["regions"][6].float(), args.budget, ["exact_shapley"], args.repeats, captum=False)
    if "classifier" not in models:
        write_results(args.out, results)
        return

    clf = load_classifier("models/classifier.pt", device=device)
    clf.model = network = Timed(clf.model)
    small = F.interpolate(image[None], size=clf.input_size, mode="bilinear", align_corners=False)[0].contiguous()
    cscorer = ClassifierScorer(clf, chunk_size=CHUNK)
    pre = clf.preprocess(small[None].expand(CHUNK, -1, -1, -1).contiguous())
    regions = superpixels(small, 16).float()
    results["classifier"] = bench_model(f"demo classifier, 4 classes, {regions.shape[0]} superpixels", cscorer,
                                        network, pre, small, regions, args.budget, methods, args.repeats)
    write_results(args.out, results)


if __name__ == "__main__":
    main()
