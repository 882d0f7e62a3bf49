"""FastShapParts (``explainers.fastshap``) against exact Shapley values on held-out pedestrians.

Game: a pedestrian's body-part game as the explain stage plays it: 11 players (the 10 parts of ``parts10`` and the
context, box minus body; the rest of the image always shown), blur hides a player, the value is the demo detector's
D-RISE similarity to the pedestrian's detection. Pedestrians: the ``heldout`` split of ``pedestrians.py`` (scenes
rendered with seed 1000: never trained, never tuned on). Exact values: every coalition of the pedestrian's non-empty
players (2^n <= 2^11 forwards; an empty part is a dummy with value exactly 0), enumerated once and cached under
benchmarks/results/fastshap_games_<split>_<detector digest>.pt.

Compared on the same pedestrians: FastShapParts (one explainer forward + one detector call of 2 images: the full and
the empty coalition, for the efficiency normalisation), BayesShapley at 8 to 64 forwards (read from the table,
5 seeds each). Reported: median / p90 relative L2 error vs exact, top-part agreement (the arg-max part agrees with the
exact arg-max), explaining ms per pedestrian.

    python benchmarks/bench_fastshap.py --enumerate-only --persons 50      (fill the cache)
    python benchmarks/bench_fastshap.py --weights models/explainers/fastshap_parts.pt --persons 50
    python benchmarks/bench_fastshap.py --weights a.pt,b.pt --persons 50 --cached-only   (only cached pedestrians)
    python benchmarks/bench_fastshap.py --cached-only --stability 20     (+ how stable the exact values are)
Writes benchmarks/results/fastshap_<split>.json.

``--stability N``: the exact values of the first N pedestrians again after a change no explainer could be asked to
see -- the image, masks and detection box shifted ``SHIFT`` px right (the left edge repeated), and the mirror image
(each player's mask mirrored with it) -- as the relative L2 difference to the unchanged exact values: how far from the
exact values an estimator that reads the image can expect to be unless it replicates the detector.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import flows  # noqa: F401  (environment defaults)

import numpy as np
import torch

from detection.scorers import DRiseScorer
from explainers.bayesian_shapley import bayes_shapley
from explainers.game import RegionGame
from explainers.metrics import relative_error
from explainers.perturb import make_perturbation
from explainers.shapley import all_coalitions, exact_coefficients
from explainers.trained import save_checkpoint
from pedestrians import describe_split, file_digest, load_detector, pedestrians, start_run

RESULTS = Path("benchmarks/results")
PLAYERS = 11                     # 10 parts + context
BAYES_BUDGETS = (8, 12, 16, 24, 32, 48, 64)
BAYES_SEEDS = 5


class TableGame:
    """A binary game read from its table of 2^M values (coalitions rounded to 0/1)."""

    def __init__(self, values: torch.Tensor):
        self.values = values.double()
        self.M = int(round(np.log2(values.shape[0])))
        self.powers = (2 ** torch.arange(self.M)).double()

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        z = torch.as_tensor(z).double().reshape(-1, self.M)
        return self.values[(z.round() @ self.powers).long()]


def cache_path(split: str, detector_weights: str) -> Path:
    return RESULTS / f"fastshap_games_{split}_{file_digest(detector_weights)}.pt"


def enumerate_game(scorer, image: torch.Tensor, regions: torch.Tensor, chunk: int = 64) -> dict:
    """``present`` [n] player indices (of the 11 ``regions``) with a pixel, ``values`` [2^n] float64 (the game on
    every coalition of those players, blur hiding a player)."""
    present = [i for i in range(PLAYERS) if bool(regions[i].any())]
    game = RegionGame(scorer, image, regions[present].float(), make_perturbation("blur"), chunk)
    with torch.inference_mode():
        values = game(torch.from_numpy(all_coalitions(len(present))).to(image.device))[:, 0].double()
    return {"present": torch.tensor(present), "values": values.cpu()}


def enumerate_tables(peds: list[dict], cache: Path, chunk: int = 64) -> list[dict]:
    """Per pedestrian its :func:`enumerate_game` table, cached in ``cache`` (resumed pedestrian by pedestrian)."""
    done = torch.load(cache, weights_only=True) if cache.is_file() else {}
    for k, p in enumerate(peds):
        if p["det_id"] in done:
            continue
        start = time.perf_counter()
        done[p["det_id"]] = enumerate_game(p["scorer"], p["image"], p["regions"][12][:PLAYERS], chunk)
        save_checkpoint(done, cache)
        print(f"  {k + 1}/{len(peds)} {p['det_id']}: 2^{len(done[p['det_id']]['present'])} in "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    return [done[p["det_id"]] for p in peds]


SHIFT = 4                        # px: half the demo detector's finest stride


def changed(p: dict, change: str, detector) -> tuple[torch.Tensor, torch.Tensor, DRiseScorer]:
    """The pedestrian's image [3, H, W], players [11, H, W] and D-RISE scorer after ``change`` ('shift' or
    'mirror'; the box moved with the image)."""
    image, regions = p["image"], p["regions"][12][:PLAYERS]
    box = p["scorer"].target_boxes.clone()
    W = image.shape[-1]
    if change == "shift":
        image = torch.cat([image[..., :1].expand(-1, -1, SHIFT), image[..., :-SHIFT]], -1)
        regions = torch.cat([torch.zeros_like(regions[..., :SHIFT]), regions[..., :-SHIFT]], -1)
        box[:, 0] += SHIFT
        box[:, 2] += SHIFT
    else:
        image, regions = image.flip(-1), regions.flip(-1)
        box[:, 0], box[:, 2] = W - p["scorer"].target_boxes[:, 2], W - p["scorer"].target_boxes[:, 0]
    return image, regions, DRiseScorer(detector, box, p["scorer"].target_probs, chunk_size=16)


def stability_rows(peds: list[dict], tables: list[dict], exacts: list[torch.Tensor], detector, cache: Path) -> dict:
    """Relative L2 difference between the exact values after a shift / mirror (``changed``) and the unchanged exact
    values, per pedestrian (cached in ``cache``, resumed pedestrian by pedestrian)."""
    done = torch.load(cache, weights_only=True) if cache.is_file() else {}
    out = {}
    for change in ("shift", "mirror"):
        diffs, full_moves = [], []
        for p, table, exact in zip(peds, tables, exacts):
            key = f"{change}:{SHIFT if change == 'shift' else ''}:{p['det_id']}"
            if key not in done:
                image, regions, scorer = changed(p, change, detector)
                table_changed = enumerate_game(scorer, image, regions)
                # mask i flipped is player i's mirror region: a mirror-symmetric game gives it player i's value
                done[key] = {"phi": exact_phi(table_changed), "full": float(table_changed["values"][-1])}
                save_checkpoint(done, cache)
            diffs.append(float(relative_error(done[key]["phi"][None], exact[None])[0]))
            full_moves.append(done[key]["full"] - float(table["values"][-1]))
        out[f"stability:{change}"] = {"median": float(np.median(diffs)), "p90": float(np.quantile(diffs, 0.9)),
                                      "n": len(diffs), "full_score_change_median": float(np.median(full_moves)),
                                      "shift_px": SHIFT if change == "shift" else None,
                                      "per_pedestrian": diffs}
    return out


def exact_phi(table: dict) -> torch.Tensor:
    """Exact Shapley values [11] (zeros for the dummies) of a cached table."""
    present = table["present"]
    phi = torch.zeros(PLAYERS, dtype=torch.float64)
    phi[present] = exact_coefficients(len(present)).T @ table["values"]
    return phi


def top_agrees(estimate: torch.Tensor, exact: torch.Tensor) -> bool:
    return int(estimate.argmax()) == int(exact.argmax())


def summary(errors: list[float], agree: list[bool]) -> dict:
    e = np.asarray(errors, float)
    return {"median": float(np.median(e)), "p90": float(np.quantile(e, 0.9)), "mean": float(e.mean()),
            "top_part_agreement": float(np.mean(agree)), "n": int(len(e))}


def bayes_rows(tables: list[dict], exacts: list[torch.Tensor], label: str = "bayes_shapley",
               means: list[torch.Tensor] | None = None, error: float | None = None) -> dict:
    """BayesShapley at every budget of ``BAYES_BUDGETS``, ``BAYES_SEEDS`` seeds each, on the cached tables; with
    ``means`` (one [1, n] per table, its players with a pixel) as its prior (``ShapleyPrior``), stated ``error``
    wrong."""
    from explainers.bayesian_shapley import ShapleyPrior
    out = {}
    for budget in BAYES_BUDGETS:
        errors, agree = [], []
        for k, (table, exact) in enumerate(zip(tables, exacts)):
            present = table["present"]
            prior = None if means is None else (lambda e, f, mean=means[k]: ShapleyPrior(mean, error))
            for seed in range(BAYES_SEEDS):
                est = bayes_shapley(TableGame(table["values"][:, None]), len(present), budget,
                                    np.random.default_rng(seed), prior=prior)
                phi = torch.zeros(PLAYERS, dtype=torch.float64)
                phi[present] = est.phi[0]
                errors.append(float(relative_error(phi[None], exact[None])[0]))
                agree.append(top_agrees(phi, exact))
        row = summary(errors, agree)
        out[f"{label}@{budget}"] = row if means is None else {**row, "prior_relative_error": error}
    return out


def uniform_rows(tables: list[dict], exacts: list[torch.Tensor]) -> dict:
    """The floor to beat: v(all) - v(none) split equally among the players with a pixel (2 forwards)."""
    errors, agree = [], []
    for table, exact in zip(tables, exacts):
        phi = torch.zeros(PLAYERS, dtype=torch.float64)
        phi[table["present"]] = float(table["values"][-1] - table["values"][0]) / len(table["present"])
        errors.append(float(relative_error(phi[None], exact[None])[0]))
        agree.append(top_agrees(phi, exact))
    return {"uniform_split": summary(errors, agree)}


def profile_rows(tables: list[dict], exacts: list[torch.Tensor]) -> dict:
    """What an amortised explainer that ignores its input can reach: each pedestrian gets the mean share of every
    part over the *other* pedestrians (leave one out), restricted to its players with a pixel, times its gap."""
    shares = torch.stack([e / e.sum() for e in exacts])
    errors, agree = [], []
    for k, (table, exact) in enumerate(zip(tables, exacts)):
        profile = torch.cat([shares[:k], shares[k + 1:]]).mean(0)
        phi = torch.zeros(PLAYERS, dtype=torch.float64)
        present = table["present"]
        phi[present] = profile[present] / profile[present].sum() * exact.sum()
        errors.append(float(relative_error(phi[None], exact[None])[0]))
        agree.append(top_agrees(phi, exact))
    return {"population_profile": summary(errors, agree)}


def fastshap_rows(peds: list[dict], exacts: list[torch.Tensor], weights: str) -> dict:
    """FastShapParts with the weights file ``weights``, run live as the explain stage runs it."""
    from explainers.fastshap import FastShapCheckpoint, FastShapParts
    ckpt = FastShapCheckpoint.load(weights)
    errors, agree, seconds, forwards = [], [], [], []
    for p, exact in zip(peds, exacts):
        exp = FastShapParts(p["scorer"], weights=ckpt).explain(p["image"], p["regions"][12][:PLAYERS])
        phi = exp.relevance[0].double()
        errors.append(float(relative_error(phi[None], exact[None])[0]))
        agree.append(top_agrees(phi, exact))
        seconds.append(exp.seconds)
        forwards.append((exp.n_forward, exp.n_explainer_forward))
    return {**summary(errors, agree), "ms_per_pedestrian_median": 1000 * float(np.median(seconds)),
            "model_forwards": forwards[0][0], "explainer_forwards": forwards[0][1],
            "training_persons": ckpt.training.get("persons"), "weights": weights,
            "weights_heldout_check": {k: v for k, v in ckpt.heldout.items() if k != "errors"},
            "per_pedestrian_error": errors}


def hybrid_rows(peds: list[dict], tables: list[dict], exacts: list[torch.Tensor], weights: str) -> dict:
    """BayesShapley with the FastShapParts estimate as its prior (``ShapleyPrior``, relative error = the weights
    file's own held-out median, never one measured on these pedestrians), at the budgets of ``bayes_rows`` and the
    same seeds, on the cached tables. The estimate costs 1 explainer forward and no model forward of its own. With
    the control: the even split as the prior, stated as wrong (what a prior without any learning gives)."""
    from explainers.fastshap import FastShapCheckpoint, FastShapParts
    ckpt = FastShapCheckpoint.load(weights)
    error = ckpt.heldout.get("median_rel_l2")
    if error is None:
        return {}
    estimates = [FastShapParts(p["scorer"], weights=ckpt).explain(p["image"], p["regions"][12][:PLAYERS]).relevance
                 for p in peds]
    learned = bayes_rows(tables, exacts, "bayes_shapley+fastshap", [e[:, t["present"]].double()
                                                                    for e, t in zip(estimates, tables)], error)
    even = [torch.full((1, len(t["present"])), float(x.sum()) / len(t["present"]), dtype=torch.float64)
            for t, x in zip(tables, exacts)]
    return {**{k: {**v, "weights": weights} for k, v in learned.items()},
            **bayes_rows(tables, exacts, "bayes_shapley+even_split", even, error)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="heldout", choices=("tune", "heldout"))
    parser.add_argument("--persons", type=int, default=50)
    parser.add_argument("--weights", default="models/explainers/fastshap_parts.pt",
                        help="weights file(s), comma-separated (e.g. trained on more and more persons)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--enumerate-only", action="store_true")
    parser.add_argument("--cached-only", action="store_true",
                        help="report on the pedestrians whose exact values are cached (no enumeration)")
    parser.add_argument("--stability", type=int, default=0, metavar="N",
                        help="also the exact values' change under a shift / the mirror image, first N pedestrians")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = start_run(args.threads)
    start = time.perf_counter()
    detector = load_detector(device)
    peds = pedestrians(args.split, args.persons, device, detector=detector)
    from tasks.params import load_params
    det_weights = load_params(check_files=False).infer.detectors[0].weights
    cache = cache_path(args.split, det_weights)
    if args.cached_only:
        done = torch.load(cache, weights_only=True) if cache.is_file() else {}
        peds = [p for p in peds if p["det_id"] in done]
    tables = enumerate_tables(peds, cache)
    if args.enumerate_only:
        return
    exacts = [exact_phi(t) for t in tables]
    result = {"split": describe_split(args.split), "persons": len(peds), "players": "parts10 + context (11)",
              "detector": file_digest(det_weights), "cpus": os.cpu_count(), "threads": args.threads}
    rows = {}
    for weights in args.weights.split(","):
        rows[f"fastshap:{Path(weights).name}"] = fastshap_rows(peds, exacts, weights)
    rows.update(bayes_rows(tables, exacts))
    rows.update(hybrid_rows(peds, tables, exacts, args.weights.split(",")[0]))
    rows.update(uniform_rows(tables, exacts))
    rows.update(profile_rows(tables, exacts))
    if args.stability:
        stable = cache.with_name(cache.stem + "_stability.pt")
        n = args.stability
        rows.update(stability_rows(peds[:n], tables[:n], exacts[:n], detector, stable))
    result.update(rows)
    result["seconds"] = time.perf_counter() - start
    print(f"\n{args.split}: {len(peds)} pedestrians, relative L2 error vs exact Shapley (11 players)")
    print(f"{'method':<20}{'median':>9}{'p90':>9}{'top-part':>10}")
    for name, row in rows.items():
        if isinstance(row, dict):
            print(f"{name:<20}{row['median']:>9.4f}{row['p90']:>9.4f}"
                  f"{row.get('top_part_agreement', float('nan')):>10.2f}")
    out = Path(args.out or RESULTS / f"fastshap_{args.split}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
