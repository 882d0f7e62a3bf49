"""BayesShapley with FastShapGrid's one-forward estimate as its prior, on the classifier's grid-cell game, against
plain BayesShapley at the same forwards and RISE@4000 (issue 19's second grid milestone: deletion <= RISE@4000's).

The rule was written before any number (benchmarks/README.md, "The network as BayesShapley's prior on the grid"):

1. *select* (``--select`` scenes of the training split from ``--select-from``: the shipped network's own held-out
   check scenes, never trained on): the network's relative L2 error against BayesShapley@``--reference`` on the
   grid game, per (scene, class) (``tasks.fastshap_grid_train.shapley_check``, the trainer's own check); its median
   is the prior's stated error;
2. *held-out* (``--scenes`` scenes of ``pedestrians.py``'s held-out split, seed 1000, after its first ``--skip``;
   every class): deletion /
   insertion AUC (``bench_quality.curve_scores``: 20 steps, mean and blur substrates) of the network alone
   (``FastShapGrid``), plain ``BayesShapley`` on its cells and the hybrid (``FastShapGridBayesShapley``, the
   ``fastshap_grid_bayes`` job's class, weighted by the select error) at each ``--budgets`` (seed 0, one estimate
   shared by the classes), RISE@4000 (centred, the network's hide). Each method's median deletion AUC over
   RISE@4000's comes with a 95 % percentile-bootstrap interval over the targets (paired: one resample of the targets
   for both medians).

The game: the network's grid cells (``explainers.regions.grid_regions``), hidden by its perturbation, scored by the
demo scene classifier's class probabilities (``ClassifierScorer``).

    python benchmarks/bench_fastshap_grid_hybrid.py --weights weights/demo/fastshap_grid_classifier.pt
    python benchmarks/bench_fastshap_grid_hybrid.py --skip 16 --scenes 48 \
        --out benchmarks/results/fastshap_grid_hybrid_48.json

Writes benchmarks/results/fastshap_grid_hybrid.json.
"""
from __future__ import annotations

import argparse
import copy
import time

import flows  # noqa: F401  (environment defaults)

import numpy as np
import torch
import torch.nn.functional as F

from bench_models import write_results
from bench_quality import curve_scores
from detection.datasets.imageio import to_batch
from detection.datasets.synthetic import render_scene
from detection.models.scene_classifier import load_classifier
from detection.scorers import ClassifierScorer
from explainers.bayesian_shapley import BayesShapley
from explainers.fastshap_grid import FastShapGrid, FastShapGridBayesShapley, FastShapGridCheckpoint
from explainers.regions import grid_regions
from explainers.rise import Rise
from pedestrians import classifier_scenes, describe_split, file_digest, start_run
from tasks.fastshap_grid_train import shapley_check
from tasks.params import load_params


def sized(img: torch.Tensor, size) -> torch.Tensor:
    if size is not None and tuple(size) != tuple(img.shape[-2:]):
        img = F.interpolate(img[None], size=tuple(size), mode="bilinear", align_corners=False)[0]
    return img.contiguous()


def training_split_scenes(start: int, n: int, size) -> list[torch.Tensor]:
    """Training scenes start .. start + n - 1 (``models.train_data``'s generator and seed)."""
    params = load_params(check_files=False)
    seed = params.seed + params.models.train_data.seed_offset
    return [sized(to_batch([render_scene(params.pull.synthetic, seed, i).image])[0], size)
            for i in range(start, start + n)]


def ratio_interval(method: list[float], reference: list[float], n_boot: int, seed: int = 0) -> list[float]:
    """95 % percentile-bootstrap interval of median(method) / median(reference) over paired targets (one resample of
    the target indices for both); the two lists hold the same targets in the same order."""
    a, b = np.asarray(method, np.float64), np.asarray(reference, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired AUCs differ in length: {a.shape} vs {b.shape}")
    idx = np.random.default_rng(seed).integers(0, a.size, (n_boot, a.size))
    ratios = np.median(a[idx], axis=1) / np.median(b[idx], axis=1)
    return [float(q) for q in np.quantile(ratios, [0.025, 0.975])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default="weights/demo/fastshap_grid_classifier.pt")
    ap.add_argument("--classifier", default="weights/demo/classifier.pt")
    ap.add_argument("--select", type=int, default=12)
    ap.add_argument("--select-from", type=int, default=3800)
    ap.add_argument("--reference", type=int, default=4000, help="BayesShapley forwards of the select reference")
    ap.add_argument("--scenes", type=int, default=16)
    ap.add_argument("--skip", type=int, default=0, help="held-out scenes to pass over first")
    ap.add_argument("--boot", type=int, default=2000, help="bootstrap resamples of the ratio's interval")
    ap.add_argument("--budgets", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--rise", type=int, default=4000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/fastshap_grid_hybrid.json")
    args = ap.parse_args()
    device = start_run(args.threads)
    started = time.perf_counter()
    ckpt = FastShapGridCheckpoint.load(args.weights)
    clf = load_classifier(args.classifier, device=device)
    scorer = ClassifierScorer(clf)

    select = shapley_check(ckpt, lambda: scorer, [img.to(device) for img in training_split_scenes(
        args.select_from, args.select, clf.input_size)], args.reference)
    prior_error = select["shapley_median_rel_l2"]
    print(f"select: {select['shapley_targets']} targets, the network's median relative L2 error vs BayesShapley@"
          f"{args.reference}: {prior_error:.3f}", flush=True)
    chosen = copy.copy(ckpt)                         # the hybrid weights the network by the select split's error
    chosen.heldout = {**ckpt.heldout, **select}
    hide = ckpt.perturbation.split("(")[0]

    aucs: dict[str, dict[str, list[float]]] = {}

    def add(key, image, saliency):
        for curve, auc in curve_scores(scorer, image, saliency).items():
            aucs.setdefault(key, {}).setdefault(curve, []).extend(auc.tolist())

    for k, (_, img) in enumerate(classifier_scenes("heldout", args.skip + args.scenes)[args.skip:]):
        image = sized(img.to(device), clf.input_size)
        cells = grid_regions(*image.shape[-2:], *ckpt.grid, image.device)
        add("fastshap_grid", image, FastShapGrid(scorer, weights=ckpt).explain(image).saliency)
        for budget in args.budgets:
            add(f"bayes_shapley@{budget}", image,
                BayesShapley(scorer, perturbation=hide).explain(image, cells, budget=budget, seed=0).saliency)
            add(f"bayes_shapley+fastshap_grid@{budget}", image,
                FastShapGridBayesShapley(scorer, weights=chosen).explain(image, budget=budget, seed=0).saliency)
        add(f"rise@{args.rise}", image,
            Rise(scorer, center=True, perturbation=hide).explain(image, budget=args.rise, seed=0).saliency)
        print(f"scene {k + 1}/{args.scenes} {time.perf_counter() - started:.0f} s", flush=True)

    rise = float(np.median(aucs[f"rise@{args.rise}"]["deletion/mean"]))
    rows = {key: {**{c: float(np.median(v)) for c, v in curves.items()},
                  **{"mean_" + c: float(np.mean(v)) for c, v in curves.items()},
                  "deletion_vs_rise": float(np.median(curves["deletion/mean"])) / rise,
                  "deletion_vs_rise_interval": ratio_interval(curves["deletion/mean"],
                                                              aucs[f"rise@{args.rise}"]["deletion/mean"], args.boot)}
            for key, curves in aucs.items()}
    for budget in args.budgets:
        plain = np.asarray(aucs[f"bayes_shapley@{budget}"]["deletion/mean"])
        hybrid = np.asarray(aucs[f"bayes_shapley+fastshap_grid@{budget}"]["deletion/mean"])
        rows[f"bayes_shapley+fastshap_grid@{budget}"]["paired_vs_plain"] = {
            "median_difference": float(np.median(hybrid - plain)), "share_better": float(np.mean(hybrid < plain))}
    result = {"weights": args.weights, "weights_digest": file_digest(args.weights),
              "select": {"scenes": [args.select_from, args.select_from + args.select],
                         "targets": select["shapley_targets"], "reference": f"bayes_shapley@{args.reference}",
                         "prior_relative_error": prior_error},
              "heldout": describe_split("heldout"), "scenes": [args.skip, args.skip + args.scenes], "rows": rows,
              "seconds": time.perf_counter() - started, "threads": args.threads}
    print(f"\n{'method':<36}{'deletion (mean)':>16}{'x RISE':>8}{'95 % interval':>16}{'insertion (blur)':>18}")
    for key, row in rows.items():
        low, high = row["deletion_vs_rise_interval"]
        print(f"{key:<36}{row['deletion/mean']:>16.3f}{row['deletion_vs_rise']:>8.2f}{low:>9.2f}-{high:<6.2f}"
              f"{row['insertion/blur']:>18.3f}")
    write_results(args.out, result)


if __name__ == "__main__":
    main()
