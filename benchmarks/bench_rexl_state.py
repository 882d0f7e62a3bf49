"""Can a RExL policy read a good deletion order from its state? The cell policy against the controls (issue 20).

RExL's policy chooses the next cell from the state alone: features of the *current* canvas (``explainers.rexl``),
never the effect a candidate deletion would have. The shipped MLP policy (MaskablePPO, ``tasks.rexl_train``) reaches
a cell-granularity deletion AUC of ~0.53 on held-out targets, the greedy search (every candidate scored, ~1,225
forwards a target) ~0.12. This benchmark trains a *cell policy* (``explainers.rexl.CellPolicy`` on
``CellFeatures``: the classifier's blocks 2 and 3 and its class maps pooled to the 7 x 7 grid, one weight-shared
network per cell) by imitating a one-step look-ahead teacher (``tasks.rexl_imitation``, DAgger) on training scenes
only, then compares its roll-outs with the controls on held-out scenes.

* **Training** (training scenes 0..``--train``-1 of the classifier's own training stream x every class; never the
  held-out scenes): ``tasks.rexl_imitation.train_look_ahead`` with its defaults (the first settings tried, not
  tuned), one policy per number of DAgger rounds (round r resumes rounds < r from ``--checkpoint-dir``).
* **Reported on held-out scenes** (``pedestrians.classifier_scenes('heldout')``, seed 1000) x every class:
  cell-granularity deletion AUC of each order (the environment's return), and the pixel-level deletion AUC (mean
  substrate, 20 steps, ``bench_quality.curve_scores``) of its maps: the paper's (cumulative credit, bilinear) and
  the rank map constant on cells (``credit='rank', upsample='nearest'``). Orders: random (floor), the class-map rule
  (no learning, on the same cell state), single-cell occlusion (each cell deleted alone once, 49 forwards, then a
  fixed order), the cell policy through the ``Rexl`` explainer (its exact forwards), and (``--greedy``) the greedy
  search (ceiling). RISE@4000 on the same targets: ``bench_rexl.py``.

    python benchmarks/bench_rexl_state.py [--train 48] [--rounds 2] [--scenes 4] [--greedy]
"""
from __future__ import annotations

import argparse
import time

import flows  # noqa: F401  (environment defaults)

import numpy as np
import torch
import torch.nn.functional as F

from bench_models import write_results
from bench_quality import curve_scores
from bench_rexl import greedy_order, order_curve, ordered_saliency
from detection.models.scene_classifier import load_classifier
from detection.scorers import ClassifierScorer
from explainers.perturb import make_perturbation
from explainers.rexl import CellFeatures, CellGame, Rexl
from pedestrians import classifier_scenes, describe_split, file_digest, start_run
from tasks.rexl_imitation import Teacher, guide_rule, rollout, train_look_ahead
from tasks.rexl_train import training_scenes

GRID = 7
N_CELLS = GRID * GRID


def class_map_order(clf, image, sub) -> tuple[list[list[int]], list[torch.Tensor]]:
    """The no-learning control on the cell state: every class's roll-out of the class-map rule (its target's class map
    of the current canvas, highest first): orders [C][n] and probability curves C x [n + 1]."""
    teacher = Teacher(CellFeatures(clf, (2, 3), GRID), GRID, "mean")
    order, curve = rollout(teacher, [image], guide_rule(teacher.guide, 0.0))
    return order.tolist(), list(curve)


def occlusion_order(scorer, image, sub) -> list[list[int]]:
    """Each cell deleted alone (n forwards): cells by the class probability after it, lowest first, per class."""
    b = sub.baseline(image)
    labels = CellGame(image[None], b[None], "deletion", GRID).labels
    alone = torch.eye(N_CELLS, dtype=torch.bool)
    with torch.inference_mode():
        probs = scorer(torch.where(alone[:, labels].view(N_CELLS, 1, *image.shape[-2:]), b[None], image[None]))
    return probs.float().T.argsort(1).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="weights/demo/classifier.pt")
    parser.add_argument("--train", type=int, default=48, help="training scenes (x every class) for the teacher")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--scenes", type=int, default=4, help="held-out scenes (x every class) reported on")
    parser.add_argument("--split", choices=["tune", "heldout"], default="heldout")
    parser.add_argument("--greedy", action="store_true", help="also the greedy search (~1,225 forwards a target)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--checkpoint-dir", default=".work/rexl/bench_state", help="the trainer's finished rounds")
    parser.add_argument("--out", default="benchmarks/results/rexl_state.json")
    args = parser.parse_args()
    device = start_run(args.threads)
    start = time.perf_counter()
    clf = load_classifier(args.weights, device=device)
    sub = make_perturbation("mean")
    train_images = training_scenes(args.train, clf.input_size)
    policies = {}
    for r in range(1, args.rounds + 1):             # round r resumes the rounds before it from the checkpoint dir
        ckpt, summary = train_look_ahead(ClassifierScorer(clf), train_images, rounds=r, seed=args.seed,
                                         checkpoint_dir=args.checkpoint_dir)
        policies[f"look_ahead_round{r}"] = ckpt
        print(summary["rounds"][-1], flush=True)
    cases = []
    for image_id, img in classifier_scenes(args.split, args.scenes):
        if clf.input_size is not None and tuple(clf.input_size) != tuple(img.shape[-2:]):
            img = F.interpolate(img[None], size=clf.input_size, mode="bilinear", align_corners=False)[0]
        cases.append((image_id, img.contiguous()))
    rng = np.random.default_rng(args.seed)
    rows: dict[str, dict[str, list[float]]] = {}
    for _, image in cases:
        scorer = ClassifierScorer(clf)
        C = scorer.num_targets
        orders = {"random": ([rng.permutation(N_CELLS).tolist() for _ in range(C)], None),
                  "classmap": class_map_order(clf, image, sub),
                  "occlusion": (occlusion_order(scorer, image, sub), None)}
        for key, ckpt in policies.items():
            exp = Rexl(scorer, policy=ckpt).explain(image)
            orders[key] = (exp.order.tolist(), list(exp.curve))
            rows.setdefault(key, {}).setdefault("forwards", []).append(exp.n_forward + exp.n_feature_forward)
        if args.greedy:
            orders["greedy"] = ([greedy_order(scorer, image, c, GRID, "deletion", sub)[0] for c in range(C)], None)
        for key, (order, curve) in orders.items():
            if curve is None:             # a fixed order: its curve along that order
                curve = [order_curve(scorer, image, o, c, GRID, "deletion", sub) for c, o in enumerate(order)]
            row = rows.setdefault(key, {})
            row.setdefault("cell_auc", []).extend(float(torch.trapezoid(c, dx=1 / N_CELLS)) for c in curve)
            for name, (credit, upsample) in {"paper": ("cumulative", "bilinear"),
                                             "rank_nearest": ("rank", "nearest")}.items():
                sal = ordered_saliency(order, curve, GRID, "deletion", tuple(image.shape[-2:]), credit, upsample)
                row.setdefault(f"deletion_{name}", []).extend(curve_scores(scorer, image, sal)["deletion/mean"]
                                                              .tolist())
    table = {k: {c: {"median": float(np.median(v)), "mean": float(np.mean(v))} for c, v in row.items()}
             for k, row in rows.items()}
    for key, row in table.items():
        print(f"{key:<20} " + "  ".join(f"{c} {v['median']:.3f} (mean {v['mean']:.3f})" for c, v in row.items()),
              flush=True)
    write_results(args.out, {"device": str(device), "split": describe_split(args.split),
                             "scenes": [i for i, _ in cases], "classifier_weights_sha256_12": file_digest(args.weights),
                             "train_scenes": [0, args.train], "settings": {k: v for k, v in vars(args).items()
                                                                            if k != "out"},
                             "training": {k: p.training for k, p in policies.items()}, "orders": table,
                             "seconds": round(time.perf_counter() - start, 1)})


if __name__ == "__main__":
    main()
