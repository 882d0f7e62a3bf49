"""RExL cell policies by learner: the DAgger policy against MaskablePPO, from scratch and as a fine-tune (issue 20).

Scores each policy file given by its deterministic roll-out (the ``Rexl`` explainer's: the highest logit among the
free cells) on two disjoint sets of classifier targets, every class of every scene:

* ``select``: training scenes 896..911 of the classifier's training stream (never in any policy's training scenes
  0..255; the set the learners' settings and round counts were chosen on);
* ``heldout``: the held-out scenes of ``pedestrians.py`` (seed 1000), never trained or tuned on: what is reported.

Metric: the cell-granularity deletion AUC of the roll-out (the environment's return, lower is better), mean and
median over targets, with the forwards a roll-out costs. Pixel-level deletion / insertion against RISE@4000 on the
held-out scenes: ``bench_rexl.py --policy FILE``. Training runs: ``tasks.rexl_cells_ppo`` / ``tasks.rexl_imitation``
(their seconds and steps are read from each file's ``training`` record).

    python benchmarks/bench_rexl_ppo.py POLICY.pt [POLICY.pt ...] [--scenes 4] [--split heldout|select]
"""
from __future__ import annotations

import argparse
import time

import flows  # noqa: F401  (environment defaults)

import numpy as np
import torch
import torch.nn.functional as F

from bench_models import write_results
from detection.datasets.imageio import to_batch
from detection.datasets.synthetic import render_scene
from detection.models.scene_classifier import load_classifier
from detection.scorers import ClassifierScorer
from explainers.rexl import CellFeatures, PolicyCheckpoint
from pedestrians import classifier_scenes, describe_split, file_digest, start_run
from tasks.params import load_params
from tasks.rexl_cells_ppo import rollout_auc
from tasks.rexl_env import EpisodeBatch
from tasks.rexl_train import classifier_episodes

SELECT = range(896, 912)


def select_scenes(size) -> list[torch.Tensor]:
    """Training scenes 896..911 (the classifier's training stream, ``tasks.rexl_train.training_scenes``'s)."""
    params = load_params(check_files=False)
    seed = params.seed + params.models.train_data.seed_offset
    out = []
    for index in SELECT:
        img = to_batch([render_scene(params.pull.synthetic, seed, index).image])[0]
        out.append(F.interpolate(img[None], size=tuple(size), mode="bilinear", align_corners=False)[0])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("policies", nargs="+")
    parser.add_argument("--weights", default="weights/demo/classifier.pt")
    parser.add_argument("--split", choices=("select", "heldout"), default="heldout")
    parser.add_argument("--scenes", type=int, default=4, help="held-out scenes (x every class)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = start_run(args.threads)
    start = time.perf_counter()
    clf = load_classifier(args.weights, device=device)
    scorer = ClassifierScorer(clf)
    if args.split == "select":
        images = select_scenes(clf.input_size)
    else:
        images = [F.interpolate(img[None], size=tuple(clf.input_size), mode="bilinear", align_corners=False)[0]
                  for _, img in classifier_scenes("heldout", args.scenes)]
    episodes, _ = classifier_episodes(images, clf.num_classes, "dataset")
    rows = {}
    for path in args.policies:
        ckpt = PolicyCheckpoint.load(path)
        features = CellFeatures(clf, ckpt.features["blocks"], ckpt.grid)
        batch = EpisodeBatch(scorer, features, grid=ckpt.grid, mode="deletion", perturbation=ckpt.perturbation,
                             norm=None)
        auc = rollout_auc(batch, episodes, ckpt.policy()).cpu().numpy()
        t = ckpt.training
        rows[path] = {"cell_auc_mean": float(np.mean(auc)), "cell_auc_median": float(np.median(auc)),
                      "forwards_per_target": batch.n_forward / len(episodes), "algorithm": t.get("algorithm"),
                      "training_seconds": t.get("seconds"), "training_steps": t.get("steps"),
                      "init_training_seconds": t.get("init_training_seconds"),
                      "init_training_steps": t.get("init_training_steps"), "sha256_12": file_digest(path)}
        print(f"{path:<60} cell AUC mean {rows[path]['cell_auc_mean']:.3f} median "
              f"{rows[path]['cell_auc_median']:.3f}  ({t.get('algorithm')}, {t.get('seconds')} s, "
              f"{t.get('steps')} steps)", flush=True)
    split = "select: training scenes 896..911" if args.split == "select" else describe_split("heldout")
    write_results(args.out or f"benchmarks/results/rexl_ppo_{args.split}.json",
                  {"device": str(device), "split": split, "targets": len(episodes), "policies": rows,
                   "seconds": round(time.perf_counter() - start, 1)})


if __name__ == "__main__":
    main()
