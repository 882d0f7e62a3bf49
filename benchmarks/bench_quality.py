"""Quality vs budget: deletion and insertion AUC (RISE's causal metrics, 20 steps), each measured with two
substrates, the mean colour and blur (kernel 11, sigma 5), of every method's saliency, with every method hiding
its regions / masks both ways too (``hide=mean`` and ``hide=blur``): a method that hides with the substrate the
curve then deletes with is graded on its own perturbation, so read the four curves side by side before deciding
which perturbation suits a model.

Models: the demo detector (D-RISE score of pedestrians >= 60 px it finds; region methods play the 10 body parts
+ context) and the demo classifier (the 4 class probabilities of scenes at the model's input size; region methods
play 24 SLIC superpixels). Data: the held-out split of ``pedestrians.py`` by default (``--split tune``: the pulled
dataset's pedestrians and val scenes that the perturbation defaults were chosen on). Medians over targets.

    python benchmarks/bench_quality.py [--split heldout] [--persons 3] [--scenes 4] [--budgets 100,300,1000]
                                       [--models detector,classifier] [--methods ...] [--out ...]
"""
from __future__ import annotations

import argparse
import os
import time

import flows  # noqa: F401  (environment defaults)

import numpy as np
import torch
import torch.nn.functional as F

from bench_models import write_results
from detection.models.scene_classifier import load_classifier
from detection.scorers import ClassifierScorer
from explainers import METHODS, deletion_insertion, superpixels
from pedestrians import classifier_scenes, describe_split, file_digest, pedestrians, start_run

STEPS = 20
SUBSTRATES = ("mean", "blur")
HIDES = ("mean", "blur")
# key -> (method, options, uses regions); every key runs once per hide in HIDES.
DETECTOR_METHODS = {"drise": ("drise", {"grid": 8, "center": True}, False), "occlusion": ("occlusion", {}, False),
                    "occlusion@parts": ("occlusion", {}, True), "bayes_shapley@parts": ("bayes_shapley", {}, True),
                    "kernel_shap@parts": ("kernel_shap", {}, True), "lime@parts": ("lime", {}, True)}
CLASSIFIER_METHODS = {"rise": ("rise", {"center": True}, False), "occlusion": ("occlusion", {}, False),
                      "occlusion@superpixels": ("occlusion", {}, True),
                      "bayes_shapley@superpixels": ("bayes_shapley", {}, True),
                      "kernel_shap@superpixels": ("kernel_shap", {}, True),
                      "lime@superpixels": ("lime", {}, True)}


def curve_scores(scorer, image, saliency) -> dict[str, torch.Tensor]:
    """AUC per target of deletion and insertion with each substrate: {'deletion/mean': [T], ...}."""
    return {f"{mode}/{sub}": deletion_insertion(scorer, image, saliency, mode=mode, substrate=sub, steps=STEPS).auc
            for mode in ("deletion", "insertion") for sub in SUBSTRATES}


def run_model(label: str, cases: list[tuple], methods: dict, budgets: list[int]) -> dict:
    """cases: (scorer, image, regions). Returns {key: {hide: {budget: {curve: median AUC, n_forward}}}}."""
    out: dict = {}
    for key, (method, options, uses_regions) in methods.items():
        cls = METHODS[method]
        out[key] = {}
        for hide in HIDES:
            out[key][hide] = {}
            for budget in budgets:
                aucs: dict[str, list[float]] = {}
                fws = []
                for scorer, image, regions in cases:
                    exp = cls(scorer, perturbation=hide, **options).explain(image, regions if uses_regions else None,
                                                                            budget=budget, seed=0)
                    for curve, auc in curve_scores(scorer, image, exp.saliency).items():
                        aucs.setdefault(curve, []).extend(auc.tolist())
                    fws.append(exp.n_forward)
                row = {curve: float(np.median(v)) for curve, v in aucs.items()}
                row["n_forward"] = int(np.median(fws))
                out[key][hide][budget] = row
                print(f"{label:<10} {key:<26} hide={hide:<4} budget {budget:>5} (used {row['n_forward']:>5}): "
                      + "  ".join(f"{c} {row[c]:.3f}" for c in sorted(aucs)), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=["tune", "heldout"], default="heldout")
    parser.add_argument("--persons", type=int, default=3)
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--budgets", default="100,300,1000")
    parser.add_argument("--models", default="detector,classifier", help="comma-separated: detector, classifier")
    parser.add_argument("--methods", default=None, help="comma-separated method keys to run (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: on a shared 2-core machine "
                                                               "two threads spin-wait, ~9x the CPU per forward)")
    parser.add_argument("--out", default=None, help="default: benchmarks/results/quality_<split>_<models>.json")
    args = parser.parse_args()
    models = args.models.split(",")
    if not set(models) <= {"detector", "classifier"}:
        parser.error(f"--models: unknown {sorted(set(models) - {'detector', 'classifier'})}")
    every = set(DETECTOR_METHODS) | set(CLASSIFIER_METHODS)
    chosen = every if args.methods is None else set(args.methods.split(","))
    if not chosen <= every:
        parser.error(f"--methods: unknown {sorted(chosen - every)}; expected some of {sorted(every)}")
    budgets = [int(b) for b in args.budgets.split(",")]
    device = start_run(args.threads)
    start = time.perf_counter()
    results = {"device": str(device), "cpus": os.cpu_count(), "split": describe_split(args.split), "steps": STEPS,
               "budgets": budgets, "substrates": {"mean": "mean colour", "blur": "blur(sigma=5.0,kernel=11)"},
               "hides": list(HIDES)}
    if "detector" in models:
        persons = pedestrians(args.split, args.persons, device)
        det_cases = [(p["scorer"], p["image"], p["regions"][12][:11].float()) for p in persons]  # 10 parts + context
        results["detector_weights_sha256_12"] = file_digest("models/detector.pt")
        results["persons"] = [p["det_id"] for p in persons]
        results["detector"] = run_model("detector", det_cases,
                                        {k: v for k, v in DETECTOR_METHODS.items() if k in chosen}, budgets)
    if "classifier" in models:
        clf = load_classifier("models/classifier.pt", device=device)
        results["classifier_weights_sha256_12"] = file_digest("models/classifier.pt")
        clf_cases, ids = [], []
        for image_id, img in classifier_scenes(args.split, args.scenes):
            img = img.to(device)
            if clf.input_size is not None and tuple(clf.input_size) != tuple(img.shape[-2:]):
                img = F.interpolate(img[None], size=clf.input_size, mode="bilinear", align_corners=False)[0]
            img = img.contiguous()
            clf_cases.append((ClassifierScorer(clf), img, superpixels(img, 24).float()))
            ids.append(image_id)
        results["scenes"] = ids
        results["classifier"] = run_model("classifier", clf_cases,
                                          {k: v for k, v in CLASSIFIER_METHODS.items() if k in chosen}, budgets)
    results["seconds"] = round(time.perf_counter() - start, 1)
    write_results(args.out or f"benchmarks/results/quality_{args.split}_{'_'.join(models)}.json", results)


if __name__ == "__main__":
    main()
