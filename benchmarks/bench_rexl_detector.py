"""RExL for the demo detector vs D-RISE@4000 on pedestrians: deletion and insertion AUC of RISE's causal metrics
(20 steps, mean-colour and blur substrates, ``bench_quality.curve_scores``), medians over pedestrians.

Splits (``--split``):
  * ``heldout`` (reported): ``--persons`` pedestrians of ``pedestrians.py``'s held-out scenes (seed 1000,
    ground-truth persons >= 60 px that the demo detector finds), after the first ``--skip``; never trained on. A
    held-out set that has decided between recipes is spent: the next decision is confirmed on the next ``--skip``.
  * ``select`` (tuning): the detector's person detections >= 60 px on training scenes 896 onwards, which no shipped
    policy trains on (the detector policies train on training scenes 0 .. ``images`` - 1, ``images`` <= 256).

Methods (one row each; the policies' substrate):
  * ``rexl`` (one per ``--policy`` file): the box-conditioned cell policy's roll-out (``explainers.rexl.Rexl``: 2 + 48
    model forwards and 1 feature forward per pedestrian at k = 7, 2 + 80 at k = 9; an insertion policy's map is
    read from its insertion game and spends 1 more feature forward, on the image);
  * ``fastshap_grid_detector`` (one per ``--fastshap`` file): FastSHAP's amortised cell values of the detection
    (``explainers.fastshap_grid_detector``: 2 model forwards and 1 explainer forward per pedestrian);
  * ``drise@4000``: D-RISE (grid 8, centred, hide = the substrate), the reference to match; run once per scene for
    all its pedestrians (the same masks serve every target) and cached in ``benchmarks/results/`` by split, persons,
    budget, substrate and the detector's weights;
  * ``drise@<k^2 + 1>`` (``drise@50`` at k = 7): D-RISE with RExL's forwards per pedestrian;
  * ``support``: the no-learning control with the policy's own state: each step deletes the cell where the target's
    support map (the best D-RISE similarity of the anchors centred in each cell) is highest;
  * ``random``: a random cell order (seeded): the floor;
  * ``greedy`` (``--greedy N``: the first N pedestrians, k^2 (k^2 - 1) / 2 forwards each: 1,224 at k = 7): the
    ceiling of a cell order.
Orders are mapped as a detector cell policy's default (the paper's rule: cumulative credit, bilinear) and, with
``@rank_nearest``, as the order itself constant on cells (a classifier cell policy's default).

    python benchmarks/bench_rexl_detector.py --policy P.pt [--policy Q.pt] [--fastshap F.pt] [--split heldout]
                                             [--persons 30] [--skip 0] [--greedy 0] [--out ...]
"""
from __future__ import annotations

import argparse
import time
from collections import OrderedDict
from pathlib import Path

import flows  # noqa: F401  (environment defaults)

import numpy as np
import torch

from bench_models import write_results
from bench_quality import curve_scores
from bench_rexl import greedy_order, order_curve, ordered_saliency, paired
from detection.scorers import DRiseScorer
from explainers.fastshap_grid_detector import FastShapGridDetector, FastShapGridDetectorCheckpoint
from explainers.perturb import make_perturbation
from explainers.rexl import PolicyCheckpoint, Rexl, box_condition
from explainers.rexl_detector import DetectorCellFeatures
from explainers.rise import DRise
from pedestrians import describe_split, file_digest, load_detector, pedestrians, start_run
from tasks.params import load_params
from tasks.rexl_imitation import BoxTeacher, guide_rule, rollout
from tasks.rexl_train import Episode

SELECT_FIRST_SCENE = 896
# key suffix -> (credit, upsampling): "" is a detector cell policy's default (the paper's map), chosen on ``select``
MAPS = {"": ("cumulative", "bilinear"), "@rank_nearest": ("rank", "nearest")}


def select_persons(detector, n: int, min_height: float = 60.0) -> list[dict]:
    """The tuning split: person detections >= ``min_height`` px on training scenes 896, 897, .. (first ``n``)."""
    from tasks.rexl_train import training_scenes
    scenes = training_scenes(SELECT_FIRST_SCENE + 4 * n)[SELECT_FIRST_SCENE:]
    person = detector.class_names.index("person") if "person" in detector.class_names else 0
    out = []
    for index, image in enumerate(scenes):
        dets = detector.detect(image[None].to(detector.device))[0]
        for d in (dets.labels == person).nonzero()[:, 0].tolist():
            box = dets.boxes[d]
            if float(box[3] - box[1]) < min_height:
                continue
            out.append({"det_id": f"train{SELECT_FIRST_SCENE + index:06d}/{d}", "image": image.to(detector.device),
                        "scorer": DRiseScorer(detector, dets.boxes[d:d + 1], dets.class_probs[d:d + 1],
                                              chunk_size=16)})
            if len(out) == n:
                return out
    raise RuntimeError(f"only {len(out)} select pedestrians on {len(scenes)} scenes")


def by_scene(persons: list[dict]) -> OrderedDict:
    """Pedestrians grouped by scene: {scene: (image, one DRiseScorer over its pedestrians, their indices)}."""
    groups: OrderedDict = OrderedDict()
    for i, p in enumerate(persons):
        groups.setdefault(p["det_id"].split("/")[0], []).append(i)
    out = OrderedDict()
    for scene, idx in groups.items():
        first = persons[idx[0]]["scorer"]
        scorer = DRiseScorer(first.model, torch.cat([persons[i]["scorer"].target_boxes for i in idx]),
                             torch.cat([persons[i]["scorer"].target_probs for i in idx]), chunk_size=16)
        out[scene] = (persons[idx[0]]["image"], scorer, idx)
    return out


def reference(persons, budget: int, substrate: str, cache: Path) -> dict:
    """D-RISE@budget per pedestrian: {'aucs': {curve: [P]}, 'n_forward': [P]} (forwards of its scene's one run
    shared by its pedestrians: budget / pedestrians of the scene), cached."""
    if cache.is_file():
        return torch.load(cache, weights_only=True)
    aucs: dict[str, list] = {}
    fw = [0.0] * len(persons)
    for scene, (image, scorer, idx) in by_scene(persons).items():
        t0 = time.perf_counter()
        exp = DRise(scorer, grid=8, center=True, perturbation=substrate).explain(image, budget=budget, seed=0)
        for curve, auc in curve_scores(scorer, image, exp.saliency).items():
            aucs.setdefault(curve, [None] * len(persons))
            for j, i in enumerate(idx):
                aucs[curve][i] = float(auc[j])
        for i in idx:
            fw[i] = exp.n_forward / len(idx)
        print(f"drise@{budget} {scene}: {len(idx)} pedestrians, {time.perf_counter() - t0:.0f} s", flush=True)
    out = {"aucs": aucs, "n_forward": fw}
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, cache)
    return out


def support_order(scorer, image, grid: int, substrate: str) -> tuple[list[int], torch.Tensor]:
    """The no-learning control: each step deletes the cell of the target's highest support map of the current
    canvas (``tasks.rexl_imitation``'s round-1 rule without exploration): the order and its score curve, from the
    same k^2 + 1 detector passes (each gives a canvas's score and support map)."""
    teacher = BoxTeacher(DetectorCellFeatures(scorer, [0], grid), grid, substrate)
    cond = box_condition(scorer.target_boxes[:1].cpu(), *image.shape[-2:], grid)[0]
    order, curve = rollout(teacher, [Episode(image, 0, cond)], guide_rule(teacher.guide, 0.0))
    return order[0].tolist(), curve[0]


def add(rows: dict, key: str, aucs: dict, n_forward: float, cell_auc: float | None = None) -> None:
    row = rows.setdefault(key, {"n_forward": []})
    for curve, auc in aucs.items():
        row.setdefault(curve, []).extend(auc.tolist() if hasattr(auc, "tolist") else list(auc))
    row["n_forward"].append(n_forward)
    if cell_auc is not None:
        row.setdefault("cell_auc", []).append(cell_auc)


def add_order(rows: dict, key: str, p: dict, order: list[int], curve: torch.Tensor, grid: int,
              n_forward: float, mode: str = "deletion") -> None:
    """The rows of one cell order (``mode``: the game it was taken in) and its score curve [k^2 + 1]: each map of
    ``MAPS`` graded by ``curve_scores``; the order's own cell-granularity AUC on the default map's row."""
    n = grid * grid
    for suffix, (credit, upsample) in MAPS.items():
        sal = ordered_saliency([order], [curve], grid, mode, tuple(p["image"].shape[-2:]), credit, upsample)
        add(rows, key + suffix, curve_scores(p["scorer"], p["image"], sal), n_forward,
            None if suffix else float(((curve[1:] + curve[:-1]) / (2 * n)).sum()))


def policy_rows(rows: dict, persons: list[dict], path: str, substrate: str) -> None:
    ckpt = PolicyCheckpoint.load(path)
    if ckpt.perturbation != substrate:
        raise SystemExit(f"{path}: trained on substrate {ckpt.perturbation!r}, the benchmark runs {substrate!r}")
    for p in persons:
        exp = Rexl(p["scorer"], policy=ckpt).explain(p["image"])
        add_order(rows, f"rexl:{Path(path).stem}", p, exp.order[0].tolist(), exp.curve[0], ckpt.grid,
                  exp.n_forward + exp.n_feature_forward, ckpt.mode)


def fastshap_rows(rows: dict, persons: list[dict], path: str, substrate: str) -> None:
    """FastShapGridDetector's maps (one explainer forward and 2 model forwards a pedestrian), graded like the
    others; the explainer's milliseconds a pedestrian in the row's ``ms``."""
    ckpt = FastShapGridDetectorCheckpoint.load(path)
    if ckpt.perturbation != make_perturbation(substrate).describe():
        raise SystemExit(f"{path}: trained on substrate {ckpt.perturbation!r}, the benchmark runs {substrate!r}")
    key = f"fastshap_grid_detector:{Path(path).stem}"
    for p in persons:
        t0 = time.perf_counter()
        exp = FastShapGridDetector(p["scorer"], weights=ckpt).explain(p["image"])
        ms = 1000 * (time.perf_counter() - t0)
        add(rows, key, curve_scores(p["scorer"], p["image"], exp.saliency), exp.n_forward)
        rows[key].setdefault("ms", []).append(ms)


def control_rows(rows: dict, persons: list[dict], grid: int, substrate: str, greedy: int, budget: int) -> None:
    """The controls (module docstring); D-RISE at RExL's cost only where it is not the reference's ``budget``."""
    n, sub = grid * grid, make_perturbation(substrate)
    rng = np.random.default_rng(0)
    for i, p in enumerate(persons):
        if budget != n + 1:
            exp = DRise(p["scorer"], grid=8, center=True, perturbation=substrate).explain(p["image"], budget=n + 1,
                                                                                          seed=0)
            add(rows, f"drise@{n + 1}", curve_scores(p["scorer"], p["image"], exp.saliency), exp.n_forward)
        random_order = rng.permutation(n).tolist()
        orders = [("random", random_order, order_curve(p["scorer"], p["image"], random_order, 0, grid, "deletion",
                                                        sub), n + 1),
                  ("support", *support_order(p["scorer"], p["image"], grid, substrate), n + 1)]
        if i < greedy:
            order, fw = greedy_order(p["scorer"], p["image"], 0, grid, "deletion", sub)
            orders.append(("greedy", order, order_curve(p["scorer"], p["image"], order, 0, grid, "deletion", sub),
                           fw))
        for key, order, curve, fw in orders:
            add_order(rows, key, p, order, curve, grid, fw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", action="append", default=[], help="box-conditioned cell policy (repeatable)")
    parser.add_argument("--fastshap", action="append", default=[],
                        help="FastShapGridDetector weights (tasks.fastshap_grid_detector_train; repeatable)")
    parser.add_argument("--split", choices=("heldout", "select"), default="heldout")
    parser.add_argument("--persons", type=int, default=30)
    parser.add_argument("--skip", type=int, default=0, help="heldout: start after this many pedestrians")
    parser.add_argument("--budget", type=int, default=4000, help="the reference D-RISE budget")
    parser.add_argument("--substrate", default="mean")
    parser.add_argument("--greedy", type=int, default=0, help="greedy order on the first N pedestrians")
    parser.add_argument("--no-controls", action="store_true", help="only the policies and the reference")
    parser.add_argument("--reference-only", action="store_true", help="compute (cache) D-RISE@budget and stop")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="default: benchmarks/results/rexl_detector_<split>.json")
    args = parser.parse_args()
    device = start_run(args.threads)
    start = time.perf_counter()
    detector = load_detector(device)
    if args.skip and args.split != "heldout":
        parser.error("--skip applies to --split heldout only")
    persons = pedestrians("heldout", args.persons, device, detector=detector, skip=args.skip) \
        if args.split == "heldout" else select_persons(detector, args.persons)
    split = f"{args.split}{args.persons}" + (f"_skip{args.skip}" if args.skip else "")
    digest = file_digest(detector.weights)
    cache = Path(f"benchmarks/results/cache/drise{args.budget}_{args.substrate}_{split}_"
                 f"{digest}.pt")
    ref = reference(persons, args.budget, args.substrate, cache)
    if args.reference_only:
        return
    rows: dict[str, dict] = {}
    for i in range(len(persons)):
        add(rows, f"drise@{args.budget}", {c: [v[i]] for c, v in ref["aucs"].items()}, ref["n_forward"][i])
    for path in args.policy:
        policy_rows(rows, persons, path, args.substrate)
        print(f"{path}: done ({time.perf_counter() - start:.0f} s)", flush=True)
    for path in args.fastshap:
        fastshap_rows(rows, persons, path, args.substrate)
        print(f"{path}: done ({time.perf_counter() - start:.0f} s)", flush=True)
    if not args.no_controls:
        grid = PolicyCheckpoint.load(args.policy[0]).grid if args.policy else \
            next(e.spec for e in load_params(check_files=False).rexl.policies().values() if e.model == "detector").grid
        control_rows(rows, persons, grid, args.substrate, args.greedy, args.budget)
    table = {k: {c: float(np.median(v)) for c, v in row.items()} for k, row in rows.items()}
    ref_del = table[f"drise@{args.budget}"]["deletion/mean"]
    ref_ins = table[f"drise@{args.budget}"]["insertion/mean"]
    for row in table.values():
        row["deletion_ratio"] = round(row["deletion/mean"] / ref_del, 3)
        row["insertion_ratio"] = round(row["insertion/mean"] / ref_ins, 3)
    results = {"device": str(device), "split": describe_split(args.split) + (f", after the first {args.skip} "
               f"pedestrians" if args.skip else "") if args.split == "heldout" else
               f"select: detections >= 60 px on training scenes {SELECT_FIRST_SCENE}..", "persons":
               [p["det_id"] for p in persons], "detector_weights_sha256_12": digest, "policies": args.policy,
               "fastshap": args.fastshap, "substrate": args.substrate, "steps": 20, "rows": table,
               "paired": {c: paired(rows, f"drise@{args.budget}", c) for c in ("deletion/mean", "insertion/mean")},
               "per_pedestrian": rows,
               "seconds": round(time.perf_counter() - start, 1)}
    for key, row in table.items():
        print(f"{key:<36} " + "  ".join(f"{c} {v:.3f}" for c, v in sorted(row.items())), flush=True)
    for curve, keys in results["paired"].items():
        for key, v in keys.items():
            print(f"paired {curve} {key:<32} {v}", flush=True)
    write_results(args.out or f"benchmarks/results/rexl_detector_{args.split}"
                  f"{f'_skip{args.skip}' if args.skip else ''}.json", results)


if __name__ == "__main__":
    main()
