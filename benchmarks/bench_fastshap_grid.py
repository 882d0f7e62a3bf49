"""FastShapGrid (a learned saliency map: ``explainers.fastshap_grid``) vs RISE on the bench_quality protocol:
deletion / insertion AUC of RISE's causal metrics (20 steps, mean-colour and blur substrates:
``bench_quality.curve_scores``), medians over every (scene, class) target of the held-out scenes of
``pedestrians.py`` (seed 1000: never trained or tuned on; the network learns on the training scenes and picks its
epoch on a training-split validation tenth, ``tasks.fastshap_grid_train``).

Methods, all on the demo scene classifier's class probabilities at its input size:
  * ``fastshap_grid``: the trained network, 2 classifier forwards + 1 explainer forward per scene (every class);
  * ``fastshap_grid@untrained``: the same architecture with its initial weights (seeded) and the same efficiency
    normalisation: what the architecture and the game's ends give without learning (the floor);
  * ``rise@N``: RISE (centred masks, the network's perturbation as hide) with N masks, shared by the classes:
    ``--rise 250 4000`` (issue 19's milestones: deletion <= RISE@250's, then <= RISE@4000's);
  * ``bayes_shapley@N`` (``--shapley N ...``): the same grid game's Shapley values estimated by BayesShapley (the
    project's default estimator) with N forwards shared by the classes: what the network is trained to reproduce,
    near its exact values at large N -- the ceiling of any network that learns them exactly.
Also the explainer's wall time per scene (forwards included) beside RISE@250's, as a ratio measured in this run.
Several weights files (comma-separated, e.g. a pixels-only network and one that reads the classifier's features)
are compared on the same scenes, each with its own untrained control.

    python benchmarks/bench_fastshap_grid.py --weights .work/fastshap_grid/grid.pt [--scenes 16] [--rise 250 4000]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import flows  # noqa: F401  (environment defaults)

import numpy as np
import torch
import torch.nn.functional as F

from bench_models import write_results
from bench_quality import curve_scores
from detection.models.scene_classifier import load_classifier
from detection.scorers import ClassifierScorer
from explainers.bayesian_shapley import BayesShapley
from explainers.fastshap_grid import FastShapGrid, FastShapGridCheckpoint, FastShapGridNet
from explainers.regions import grid_regions
from explainers.rise import Rise
from pedestrians import classifier_scenes, describe_split, file_digest, start_run


def untrained(ckpt: FastShapGridCheckpoint, seed: int = 0) -> FastShapGridCheckpoint:
    """``ckpt`` with the network's initial weights (seeded): the no-learning control."""
    torch.manual_seed(seed)
    net = FastShapGridNet(ckpt.classes, ckpt.grid, ckpt.width, ckpt.hidden, ckpt.cell, features=ckpt.feature_channels)
    state = net.state_dict()
    for name in ("feature_mean", "feature_std"):        # data statistics, not learned: the trained network's
        if name in state:
            state[name] = ckpt.state_dict[name].clone()
    return FastShapGridCheckpoint(ckpt.model_sha256, ckpt.classes, ckpt.image_size, ckpt.grid, ckpt.perturbation,
                                  state, ckpt.net_size, ckpt.width, ckpt.hidden, ckpt.value_scale,
                                  feature_blocks=ckpt.feature_blocks, feature_channels=ckpt.feature_channels)


def rows(cases, networks: dict[str, FastShapGridCheckpoint], budgets: list[int],
         shapley: tuple[int, ...] = ()) -> dict:
    """{method: {curve: median AUC, 'n_forward': median per scene, 'seconds': median per scene}}; ``networks``:
    {key: weights}, each with its untrained control (``key@untrained``), all on one perturbation and grid;
    ``shapley``: BayesShapley budgets on that grid's cells."""
    out: dict[str, dict[str, list]] = {}
    hides = {c.perturbation for c in networks.values()}
    if len(hides) != 1:
        raise SystemExit(f"bench_fastshap_grid: the networks hide with different perturbations {sorted(hides)}")
    hide = hides.pop().split("(")[0]
    grids = {tuple(c.grid) for c in networks.values()}
    if shapley and len(grids) != 1:
        raise SystemExit(f"bench_fastshap_grid: --shapley needs one grid, the networks have {sorted(grids)}")
    rows_, cols_ = grids.pop()
    explainers = {}
    for key, ckpt in networks.items():
        explainers[key], explainers[key + "@untrained"] = ckpt, untrained(ckpt)

    def add(key, scorer, image, saliency, n_forward, seconds):
        row = out.setdefault(key, {})
        for curve, auc in curve_scores(scorer, image, saliency).items():
            row.setdefault(curve, []).extend(auc.tolist())
        row.setdefault("n_forward", []).append(n_forward)
        row.setdefault("seconds", []).append(seconds)

    for scorer, image in cases:
        for key, weights in explainers.items():
            start = time.perf_counter()
            exp = FastShapGrid(scorer, weights=weights).explain(image)
            add(key, scorer, image, exp.saliency, exp.n_forward, time.perf_counter() - start)
        for budget in budgets:
            start = time.perf_counter()
            r = Rise(scorer, center=True, perturbation=hide).explain(image, budget=budget, seed=0)
            add(f"rise@{budget}", scorer, image, r.saliency, r.n_forward, time.perf_counter() - start)
        for budget in shapley:
            start = time.perf_counter()
            cells = grid_regions(*image.shape[-2:], rows_, cols_, image.device)
            b = BayesShapley(scorer, perturbation=hide).explain(image, cells, budget=budget, seed=0)
            add(f"bayes_shapley@{budget}", scorer, image, b.saliency, b.n_forward, time.perf_counter() - start)
        print("scene done", flush=True)
    return {k: {c: float(np.median(v)) for c, v in row.items()} | {"mean_" + c: float(np.mean(v))
                                                                    for c, v in row.items() if "/" in c}
            for k, row in out.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="FastShapGrid weights (tasks.fastshap_grid_train); "
                                                              "several, comma-separated, are compared on the same "
                                                              "scenes (keyed fastshap_grid:<file stem>)")
    parser.add_argument("--classifier", default="weights/demo/classifier.pt")
    parser.add_argument("--scenes", type=int, default=16)
    parser.add_argument("--split", default="heldout")
    parser.add_argument("--rise", type=int, nargs="+", default=[250, 4000])
    parser.add_argument("--shapley", type=int, nargs="*", default=[],
                        help="BayesShapley budgets on the network's grid (the values it learns; e.g. 1000 4000)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/fastshap_grid.json")
    args = parser.parse_args(argv)
    device = start_run(args.threads)
    started = time.perf_counter()
    files = args.weights.split(",")
    keys = ["fastshap_grid"] if len(files) == 1 else [f"fastshap_grid:{Path(f).stem}" for f in files]
    if len(set(keys)) != len(keys):
        raise SystemExit(f"bench_fastshap_grid: --weights files must have distinct names (stems), got {files}")
    networks = {key: FastShapGridCheckpoint.load(f) for key, f in zip(keys, files)}
    clf = load_classifier(args.classifier, device=device)
    cases = []
    for _, img in classifier_scenes(args.split, args.scenes):
        img = img.to(device)
        if clf.input_size is not None and tuple(clf.input_size) != tuple(img.shape[-2:]):
            img = F.interpolate(img[None], size=clf.input_size, mode="bilinear", align_corners=False)[0]
        cases.append((ClassifierScorer(clf), img.contiguous()))
    results = rows(cases, networks, args.rise, tuple(args.shapley))
    rise = results.get(f"rise@{min(args.rise)}")
    summary = {key: {"deletion_vs_rise": {f"rise@{b}": results[key]["deletion/mean"] /
                                          results[f"rise@{b}"]["deletion/mean"] for b in args.rise},
                     "insertion_vs_rise": {f"rise@{b}": results[key]["insertion/blur"] /
                                           results[f"rise@{b}"]["insertion/blur"] for b in args.rise},
                     "time_vs_rise_min": results[key]["seconds"] / rise["seconds"] if rise else None}
               for key in networks}
    summary = summary["fastshap_grid"] if len(files) == 1 else summary
    described = {key: {"weights": f, "weights_sha256_12": file_digest(f), "grid": list(c.grid),
                       "feature_blocks": list(c.feature_blocks),
                       "training": {k: v for k, v in c.training.items() if k != "history"}, "heldout": c.heldout}
                 for key, f, c in zip(keys, files, networks.values())}
    out = {"split": describe_split(args.split), "scenes": len(cases), "targets_per_scene": cases[0][0].num_targets,
           "classifier_sha256_12": file_digest(args.classifier),
           **(described["fastshap_grid"] if len(files) == 1 else {"networks": described}),
           "results": results, "summary": summary, "seconds": time.perf_counter() - started}
    write_results(args.out, out)
    for key, row in results.items():
        print(f"{key:26s} deletion/mean {row['deletion/mean']:.3f}  insertion/blur {row['insertion/blur']:.3f}  "
              f"deletion/blur {row['deletion/blur']:.3f}  insertion/mean {row['insertion/mean']:.3f}  "
              f"forwards {row['n_forward']:.0f}  {row['seconds'] * 1000:.0f} ms")
    print(summary)


if __name__ == "__main__":
    main()
