"""Quality vs budget: deletion / insertion AUC (RISE's metrics; deletion substrate = mean colour, insertion
substrate = blur k11 sigma5, 20 steps) of each method's saliency at budgets from 100 to 4000 forwards, on the demo
models: the detector (D-RISE score of pedestrians >= 60 px; regions = 10 body parts + context) and the classifier
(all 4 classes of val scenes at the model's input size; regions = 24 SLIC superpixels). Medians over targets.

    python benchmarks/bench_quality.py [--persons 3] [--scenes 4] [--models detector,classifier] [--methods ...]
                                       [--out benchmarks/results/quality.json]
"""
from __future__ import annotations

import argparse
import os
import warnings

import flows  # noqa: F401  (environment defaults)
import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from bench_models import write_results
from bench_shapley import real_games
from detection.datasets.imageio import load_rgb, to_batch
from detection.models.scene_classifier import load_classifier
from detection.scorers import ClassifierScorer
from explainers import METHODS, deletion_insertion, superpixels

BUDGETS = (100, 250, 500, 1000, 2000, 4000)
STEPS = 20
DETECTOR_METHODS = {"drise": ({"grid": 8, "center": True}, False), "occlusion": ({}, False),
                    "occlusion@parts": ({}, True), "bayes_shapley@parts": ({}, True), "kernel_shap@parts": ({}, True),
                    "lime@parts": ({}, True)}
# Shapley methods hide regions by blur by default, which leaves colour (the demo classifier's cue) in place: on the
# classifier they also run with the mean colour that LIME, occlusion, RISE and the deletion curve use ("/mean").
CLASSIFIER_METHODS = {"rise": ({"center": True}, False), "occlusion": ({}, False),
                      "bayes_shapley@superpixels": ({}, True),
                      "bayes_shapley@superpixels/mean": ({"perturbation": "mean"}, True),
                      "kernel_shap@superpixels": ({}, True),
                      "kernel_shap@superpixels/mean": ({"perturbation": "mean"}, True), "lime@superpixels": ({}, True)}


def curve_scores(scorer, image, saliency) -> tuple[torch.Tensor, torch.Tensor]:
    d = deletion_insertion(scorer, image, saliency, mode="deletion", substrate="mean", steps=STEPS)
    i = deletion_insertion(scorer, image, saliency, mode="insertion", substrate="blur", steps=STEPS)
    return d.auc, i.auc


def run_model(label: str, cases: list[tuple], methods: dict) -> dict:
    """cases: (scorer, image, regions). Returns {method: {budget: {deletion, insertion, n_forward}}}."""
    out: dict = {}
    for name, (options, uses_regions) in methods.items():
        cls = METHODS[name.split("@")[0]]
        out[name] = {}
        for budget in BUDGETS:
            dels, inss, fws = [], [], []
            for scorer, image, regions in cases:
                exp = cls(scorer, **options).explain(image, regions if uses_regions else None, budget=budget, seed=0)
                d, i = curve_scores(scorer, image, exp.saliency)
                dels += d.tolist()
                inss += i.tolist()
                fws.append(exp.n_forward)
            out[name][budget] = {"deletion": float(np.median(dels)), "insertion": float(np.median(inss)),
                                 "n_forward": int(np.median(fws))}
            print(f"{label:<10} {name:<24} budget {budget:>5} (used {int(np.median(fws)):>5}): "
                  f"deletion {np.median(dels):.3f}  insertion {np.median(inss):.3f}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--persons", type=int, default=3)
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--models", default="detector,classifier", help="comma-separated: detector, classifier")
    parser.add_argument("--methods", default=None, help="comma-separated method keys to run (default: all)")
    parser.add_argument("--out", default="benchmarks/results/quality.json")
    args = parser.parse_args()
    models = set(args.models.split(","))
    if not models <= {"detector", "classifier"}:
        parser.error(f"--models: unknown {sorted(models - {'detector', 'classifier'})}")
    every = set(DETECTOR_METHODS) | set(CLASSIFIER_METHODS)
    chosen = every if args.methods is None else set(args.methods.split(","))
    if not chosen <= every:
        parser.error(f"--methods: unknown {sorted(chosen - every)}; expected some of {sorted(every)}")
    warnings.filterwarnings("ignore")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = {"device": str(device), "cpus": os.cpu_count(), "steps": STEPS, "budgets": list(BUDGETS),
               "substrates": {"deletion": "mean", "insertion": "blur(sigma=5.0,kernel=11)"}}
    if "detector" in models:
        persons = real_games(args.persons, device)
        det_cases = [(p["scorer"], p["image"], p["regions"][12][:11].float()) for p in persons]  # 10 parts + context
        results["detector"] = run_model("detector", det_cases,
                                        {k: v for k, v in DETECTOR_METHODS.items() if k in chosen})
    if "classifier" in models:
        clf = load_classifier("models/classifier.pt", device=device)
        images = [r for r in pq.read_table("data/pulled/images.parquet").to_pylist() if r["split"] == "val"]
        clf_cases = []
        for r in images[:args.scenes]:
            img = to_batch([load_rgb(r["uri"])])[0].to(device)
            small = F.interpolate(img[None], size=clf.input_size, mode="bilinear", align_corners=False)[0]
            clf_cases.append((ClassifierScorer(clf), small.contiguous(), superpixels(small, 24).float()))
        results["classifier"] = run_model("classifier", clf_cases,
                                          {k: v for k, v in CLASSIFIER_METHODS.items() if k in chosen})
    write_results(args.out, results)


if __name__ == "__main__":
    main()
