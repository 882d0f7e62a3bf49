"""RExL vs RISE on the bench_quality protocol: deletion (and insertion) AUC of RISE's causal metrics, 20 steps, with
the mean-colour and blur substrates (``bench_quality.curve_scores``), medians over targets, on the held-out scenes of
``pedestrians.py`` (never trained on: the policies learn on the training scenes, ``tasks.rexl_train``).

Classifier (the demo scene classifier, its 4 class probabilities per scene at its input size):
  * ``rexl`` / ``rexl@single`` / ``rexl@rank``: the trained policy's roll-out, cumulative (the paper's) /
    single-cell credit / the order itself as the map (``explainers.rexl`` docstring);
  * ``rise@4000``: RISE (centred, hide = the policy's substrate) with 4,000 masks: the target to match
    (deletion AUC <= 1.05 x RISE@4000's);
  * ``rise@same``: RISE with the forwards RExL spent on the image, model + feature forwards (issue 20: "RISE at the
    same <= 98 forwards"; RExL's n per target is 2 + 48 model + 48 feature forwards at k = 7);
  * ``greedy``: greedy deletion (insertion) over the same cells: each step takes the cell whose removal drops
    (whose insertion raises) the target's score most, n (n + 1) / 2 - 1 = 1,224 forwards a target at k = 7: the
    ceiling of a cell-ordering policy;
  * ``random``: a random cell order (seeded), credited like RExL: the floor;
  * ``classmap`` (policies with class maps, deletion): the no-learning control with the policy's own state, each step
    the cell of the highest current class map of the target (n - 1 feature forwards + the curve's forwards): what
    the learned policy has to beat to have learned anything beyond its input.
  Every cell order (rexl, greedy, random) is mapped four ways (``VARIANTS``): cumulative credit, bilinear (the
  paper's: no suffix), ``@single``, ``@rank`` (the order itself, bilinear) and ``@rank_nearest`` (the order,
  constant on each cell): the variants cost no forwards beyond the roll-out.
  Also reported: the cell-granularity AUC of each ordering method's own curve (the environment's return), and each
  method paired with RISE@4000 target by target (``classifier_paired``: :func:`paired`'s median
  difference, 95 % bootstrap interval and share of targets better, its ``pedestrians`` field counting targets; the
  values in ``classifier_per_target``): a ratio of medians compares different targets.

Detector (``--detector-policy``, a box-conditioned policy for the demo detector): the same against D-RISE@4000 on the
first ``--persons`` held-out pedestrians (deletion and insertion); skipped without a policy file.

    python benchmarks/bench_rexl.py --policy POLICY.pt [--scenes 4] [--skip 0] [--no-controls] [--split heldout]
                                    [--rise 4000]
                                    [--detector-policy P.pt --persons 30] [--out ...]
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
from detection.models.scene_classifier import load_classifier
from detection.scorers import ClassifierScorer
from explainers.perturb import make_perturbation
from explainers.rexl import (
    CellGame,
    PolicyCheckpoint,
    Rexl,
    cell_saliency,
    class_maps,
    make_features,
    upsample_cells,
)
from explainers.rise import DRise, Rise
from pedestrians import classifier_scenes, describe_split, file_digest, pedestrians, start_run


def order_curve(scorer, image, order: list[int], column: int, grid: int, mode: str, substrate) -> torch.Tensor:
    """The target's scores s_0..s_n [n + 1] along a cell order (one batch of n + 1 canvases)."""
    n = grid * grid
    game = CellGame(image[None].expand(n + 1, -1, -1, -1), substrate.baseline(image)[None].expand(n + 1, -1, -1, -1),
                    mode, grid)
    taken = torch.zeros(n + 1, n, dtype=torch.bool, device=image.device)
    for t, cell in enumerate(order):
        taken[t + 1:, cell] = True
    with torch.inference_mode():
        return scorer(game.canvas(taken)).float()[:, column]


def greedy_order(scorer, image, column: int, grid: int, mode: str, substrate) -> tuple[list[int], int]:
    """Greedy cell order for one target and its forwards: each step scores every remaining cell taken next."""
    base = substrate.baseline(image)[None]
    n = grid * grid
    taken = torch.zeros(1, n, dtype=torch.bool, device=image.device)
    order, forwards = [], 0
    for _ in range(n - 1):
        rest = (~taken[0]).nonzero()[:, 0]
        trial = taken.expand(len(rest), -1).clone()
        trial[torch.arange(len(rest)), rest] = True
        game = CellGame(image[None].expand(len(rest), -1, -1, -1), base.expand(len(rest), -1, -1, -1), mode, grid)
        with torch.inference_mode():
            s = scorer(game.canvas(trial)).float()[:, column]
        forwards += len(rest)
        pick = int(rest[s.argmin() if mode == "deletion" else s.argmax()])
        order.append(pick)
        taken[0, pick] = True
    order.append(int((~taken[0]).nonzero()[0, 0]))
    return order, forwards


def class_map_order(feats, image, column: int, maps: int, grid: int, substrate) -> list[int]:
    """The no-learning control of a policy with class maps (``explainers.rexl.BackboneFeatures`` with cam): deletion,
    each step takes the cell not yet taken where the target's class map of the current canvas is highest (one feature
    forward a step, like the policy's roll-out)."""
    n = grid * grid
    game = CellGame(image[None], substrate.baseline(image)[None], "deletion", grid)
    order = []
    for _ in range(n - 1):
        with torch.inference_mode():
            m = feats(game.canvas())[0, -maps * n:].view(maps, n)[column].masked_fill(game.taken[0], -torch.inf)
        order.append(int(m.argmax()))
        game.take(torch.tensor([order[-1]]))
    order.append(int((~game.taken[0]).nonzero()[0, 0]))
    return order


# key suffix -> (credit, upsampling) of the maps made from a cell order; "" is the paper's
VARIANTS = {"": ("cumulative", "bilinear"), "@single": ("single", "bilinear"), "@rank": ("rank", "bilinear"),
            "@rank_nearest": ("rank", "nearest")}


def ordered_saliency(orders: list[list[int]], curves: list[torch.Tensor], grid: int, mode: str,
                     size: tuple[int, int], credit: str = "cumulative", upsample: str = "bilinear") -> torch.Tensor:
    """Saliency [T, H, W] of given orders and curves by RExL's credit and upsampling rules."""
    cells = cell_saliency(torch.tensor(orders), torch.stack(curves).cpu(), -1.0 if mode == "deletion" else 1.0,
                          credit)
    return upsample_cells(cells, grid, size, upsample)


def cell_auc(curve: torch.Tensor) -> float:
    return float(torch.trapezoid(curve.cpu(), dx=1.0 / (len(curve) - 1)))


def classifier_rows(cases, ckpt: PolicyCheckpoint, rise_budget: int, seed: int, controls: bool = True,
                    per_target: dict | None = None) -> dict:
    """{method: {curve: median AUC, n_forward (median per image), ...}} over every (scene, class); ``controls``:
    False skips greedy, random and the class-map rule (RISE at the reference budget and at RExL's cost stay);
    ``per_target``: filled with each method's per-target values (the lists the medians summarise, in one target
    order for every method)."""
    out: dict[str, dict[str, list]] = {}
    sub = make_perturbation(ckpt.perturbation)
    rng = np.random.default_rng(seed)

    def add(key, scorer, image, saliency, n_forward, extra=None):
        row = out.setdefault(key, {})
        for curve, auc in curve_scores(scorer, image, saliency).items():
            row.setdefault(curve, []).extend(auc.tolist())
        row.setdefault("n_forward", []).append(n_forward)
        row.setdefault("cell_auc", []).extend(extra or [])

    for scorer, image in cases:
        T = scorer.num_targets
        size = tuple(image.shape[-2:])
        start = time.perf_counter()
        exp = Rexl(scorer, policy=ckpt, credit="cumulative", upsample="bilinear").explain(image, seed=0)
        out.setdefault("rexl", {}).setdefault("seconds", []).append(time.perf_counter() - start)
        spent = exp.n_forward + exp.n_feature_forward
        add("rexl", scorer, image, exp.saliency, spent, [cell_auc(c) for c in exp.curve])
        for suffix, (credit, upsample) in list(VARIANTS.items())[1:]:
            sal = ordered_saliency(exp.order.tolist(), list(exp.curve), ckpt.grid, ckpt.mode, size, credit, upsample)
            add(f"rexl{suffix}", scorer, image, sal, spent)
        for key, budget in ((f"rise@{rise_budget}", rise_budget), ("rise@same", spent)):
            r = Rise(scorer, center=True, perturbation=ckpt.perturbation).explain(image, budget=budget, seed=0)
            add(key, scorer, image, r.saliency, r.n_forward)
        if not controls:
            print(f"scene done: rexl {spent} forwards", flush=True)
            continue
        greedy, rand, mapped = [], [], []
        forwards = 0
        maps = class_maps(ckpt.features) if ckpt.mode == "deletion" else 0
        feats = make_features(scorer, ckpt.features) if maps else None
        for t in range(T):
            if maps:
                order = class_map_order(feats, image, t, maps, ckpt.grid, sub)
                mapped.append((order, order_curve(scorer, image, order, t, ckpt.grid, ckpt.mode, sub)))
            order, f = greedy_order(scorer, image, t, ckpt.grid, ckpt.mode, sub)
            forwards += f
            greedy.append((order, order_curve(scorer, image, order, t, ckpt.grid, ckpt.mode, sub)))
            order = rng.permutation(ckpt.grid ** 2).tolist()
            rand.append((order, order_curve(scorer, image, order, t, ckpt.grid, ckpt.mode, sub)))
        n = ckpt.grid ** 2
        control_rows = [("greedy", greedy, forwards), ("random", rand, T * (n + 1))]
        control_rows += [("classmap", mapped, 2 + T * 2 * (n - 1))] if mapped else []
        for key, runs, cost in control_rows:
            for suffix, (credit, upsample) in VARIANTS.items():
                sal = ordered_saliency([o for o, _ in runs], [c for _, c in runs], ckpt.grid, ckpt.mode, size, credit,
                                       upsample)
                add(key + suffix, scorer, image, sal, cost, [cell_auc(c) for _, c in runs] if not suffix else None)
        print(f"scene done: rexl {spent} forwards, greedy {forwards}", flush=True)
    if per_target is not None:
        per_target.update(out)
    return {k: {c: float(np.median(v)) for c, v in row.items() if v} for k, row in out.items()}


def paired(rows: dict, reference: str, curve: str, seed: int = 0, draws: int = 2000) -> dict:
    """Per-target comparison with the reference on ``curve`` for every row over the same targets (pedestrians, or
    classes of scenes; rows on a subset, e.g. ``bench_rexl_detector.py --greedy N``, against the reference's first
    N): the median of the paired differences (row - reference), its bootstrap 95 % interval (targets resampled,
    seeded) and the share of targets where the row is better (lower deletion, higher insertion AUC); the count is
    under ``pedestrians`` (the detector bench's key)."""
    ref = np.asarray(rows[reference][curve], float)
    rng = np.random.default_rng(seed)
    out = {}
    for key, row in rows.items():
        if key == reference or curve not in row:
            continue
        mine = np.asarray(row[curve], float)
        diff = mine - ref[:len(mine)]
        boot = np.median(diff[rng.integers(0, len(diff), (draws, len(diff)))], 1)
        better = diff < 0 if curve.startswith("deletion") else diff > 0
        out[key] = {"median_diff": round(float(np.median(diff)), 4),
                    "ci95": [round(float(np.quantile(boot, 0.025)), 4), round(float(np.quantile(boot, 0.975)), 4)],
                    "better_share": round(float(better.mean()), 3), "pedestrians": int(len(diff))}
    return out


def detector_rows(persons, ckpt: PolicyCheckpoint, budget: int) -> dict:
    """RExL (box-conditioned policy) vs D-RISE@budget on pedestrians: median AUCs."""
    out: dict[str, dict[str, list]] = {}
    for p in persons:
        for key, exp in (("rexl", Rexl(p["scorer"], policy=ckpt).explain(p["image"])),
                         (f"drise@{budget}", DRise(p["scorer"], grid=8, center=True, perturbation=ckpt.perturbation)
                          .explain(p["image"], budget=budget))):
            row = out.setdefault(key, {"n_forward": []})
            for curve, auc in curve_scores(p["scorer"], p["image"], exp.saliency).items():
                row.setdefault(curve, []).extend(auc.tolist())
            row["n_forward"].append(exp.n_forward + getattr(exp, "n_feature_forward", 0))
    return {k: {c: float(np.median(v)) for c, v in row.items()} for k, row in out.items()}


def target_ratios(results: dict) -> dict:
    """Issue 20's target per map variant: each method's median deletion AUC (mean substrate, the policy's) over the
    reference's (RISE@budget / D-RISE@budget), and its forwards per target; ratio <= 1.05 with <= 98 forwards passes."""
    out = {}
    for model, ref_prefix in (("classifier", "rise@"), ("detector", "drise@")):
        rows = results.get(model, {})
        ref = next((k for k in rows if k.startswith(ref_prefix) and k[len(ref_prefix):].isdigit()), None)
        if ref is None:
            continue
        for key, row in rows.items():
            if key.startswith(("rexl", "classmap")) and "deletion/mean" in row:
                out[f"{model}/{key}"] = {"deletion_ratio": round(row["deletion/mean"] / rows[ref]["deletion/mean"], 3),
                                         "reference": ref}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", required=True, help="classifier policy (tasks.rexl_train)")
    parser.add_argument("--weights", default="weights/demo/classifier.pt")
    parser.add_argument("--split", choices=["tune", "heldout"], default="heldout")
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--skip", type=int, default=0,
                        help="skip the split's first SKIP classifier scenes (fresh held-out ones; not the detector's "
                             "persons)")
    parser.add_argument("--no-controls", action="store_true", help="no greedy, random or class-map rule rows")
    parser.add_argument("--rise", type=int, default=4000, help="the reference RISE / D-RISE budget")
    parser.add_argument("--detector-policy", default=None)
    parser.add_argument("--persons", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="default: benchmarks/results/rexl_<split>.json")
    args = parser.parse_args()
    if args.skip < 0 or args.scenes < 1:
        parser.error(f"--skip must be >= 0 and --scenes >= 1, got {args.skip} and {args.scenes}")
    device = start_run(args.threads)
    start = time.perf_counter()
    ckpt = PolicyCheckpoint.load(args.policy)
    clf = load_classifier(args.weights, device=device)
    cases, ids, per_target = [], [], {}
    for image_id, img in classifier_scenes(args.split, args.skip + args.scenes)[args.skip:]:
        img = img.to(device)
        if clf.input_size is not None and tuple(clf.input_size) != tuple(img.shape[-2:]):
            img = F.interpolate(img[None], size=clf.input_size, mode="bilinear", align_corners=False)[0]
        cases.append((ClassifierScorer(clf), img.contiguous()))
        ids.append(image_id)
    results = {"device": str(device), "split": describe_split(args.split), "scenes": ids, "skip": args.skip,
               "controls": not args.no_controls,
               "classifier_weights_sha256_12": file_digest(args.weights), "policy": args.policy,
               "policy_training": ckpt.training, "grid": ckpt.grid, "mode": ckpt.mode,
               "perturbation": ckpt.perturbation, "steps": 20,
               "classifier": classifier_rows(cases, ckpt, args.rise, args.seed, not args.no_controls, per_target)}
    reference = f"rise@{args.rise}"       # per target, paired with the reference (the ratio of medians is not)
    results["classifier_paired"] = {curve: paired(per_target, reference, curve)
                                    for curve in ("deletion/mean", "insertion/mean")}
    results["classifier_per_target"] = {key: {c: row[c] for c in ("deletion/mean", "insertion/mean") if c in row}
                                        for key, row in per_target.items()}
    if args.detector_policy:
        dckpt = PolicyCheckpoint.load(args.detector_policy)
        persons = pedestrians(args.split, args.persons, device)
        results["persons"] = [p["det_id"] for p in persons]
        results["detector"] = detector_rows(persons, dckpt, args.rise)
    results["target"] = target_ratios(results)
    results["seconds"] = round(time.perf_counter() - start, 1)
    for model in ("classifier", "detector"):
        for key, row in results.get(model, {}).items():
            print(f"{model:<10} {key:<12} " + "  ".join(f"{c} {v:.3f}" for c, v in sorted(row.items())), flush=True)
    for curve, rows in results["classifier_paired"].items():
        for key, p in rows.items():
            if key.startswith(("rexl", "rise@same")) and not key.endswith(("@single", "@rank")):
                print(f"paired {curve:<15} {key:<18} median diff {p['median_diff']:+.4f} {p['ci95']}, better on "
                      f"{p['better_share']:.0%} of {p['pedestrians']} targets", flush=True)
    write_results(args.out or f"benchmarks/results/rexl_{args.split}.json", results)


if __name__ == "__main__":
    main()
