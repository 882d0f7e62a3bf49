"""Sample efficiency of Shapley estimators: median and p90 relative L2 error against exact Shapley values, for
M in {6, 10, 12} players at budgets {32, ..., 512} forwards, on synthetic games and on real body-part games (the
demo detector's D-RISE score of a pedestrian, players = its body parts), for our estimators (Bayesian Shapley
from designed pairs, the default; KernelSHAP with third-order terms; classic linear KernelSHAP, order 1; antithetic
permutations; Beta continuous coalitions) and for Captum's KernelShap and SHAP's KernelExplainer run on the same
games with the same budgets.
Prints a table with ours / the better peer, writes JSON.

Real games are enumerated once (2^M forwards, the ground truth); estimators that query binary coalitions then
read those values from the table, so every method sees exactly the same game. The Beta estimator queries
continuous coalitions (partly visible parts), so it runs on the live model.

    python benchmarks/bench_shapley.py [--persons 3] [--seeds 5] [--out benchmarks/results/shapley.json]
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import flows  # noqa: F401  (environment defaults)
import numpy as np
import pyarrow.parquet as pq
import torch

from detection.body import PART_GROUPS
from detection.datasets.imageio import load_rgb, to_batch
from detection.masks import rle_decode
from detection.models.yolo import YoloDetector
from detection.scorers import DRiseScorer
from explainers.game import RegionGame
from explainers.metrics import relative_error
from explainers.perturb import make_perturbation
from explainers.bayesian_shapley import bayes_shapley
from explainers.shapley import all_coalitions, beta_shapley, exact_coefficients, kernel_shap, permutation_shapley

BUDGETS = (32, 64, 128, 256, 512)
PLAYERS = (6, 10, 12)
PEERS = ("captum_kernel_shap", "shap_kernel_explainer")


class TableGame:
    """A binary game read from its table of 2^M values (coalitions are rounded to 0/1)."""

    def __init__(self, values: torch.Tensor):
        self.values = values.double()                                   # [2^M, T]
        self.M = int(np.log2(values.shape[0]))
        self.powers = (2 ** torch.arange(self.M)).double()
        self.calls = 0

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        z = torch.as_tensor(z).double().reshape(-1, self.M)
        self.calls += z.shape[0]
        return self.values[(z.round() @ self.powers).long()]


def synthetic_game(M: int, seed: int) -> tuple[callable, torch.Tensor]:
    """A multilinear game with main effects, pairwise and three-way interactions (continuous in z)."""
    rng = np.random.default_rng(seed)
    a = torch.tensor(rng.normal(size=M))
    b = torch.triu(torch.tensor(rng.normal(size=(M, M))) * 0.4, 1)
    triples = [rng.choice(M, 3, replace=False) for _ in range(3)]
    c = torch.tensor(rng.normal(size=3))

    def game(z):
        z = torch.as_tensor(z).double()
        v = z @ a + ((z @ b) * z).sum(1)
        for (i, j, k), w in zip(triples, c):
            v = v + w * z[:, i] * z[:, j] * z[:, k]
        return v[:, None]
    return game, game(torch.from_numpy(all_coalitions(M)))


def real_games(persons: int, device) -> list[dict]:
    """Pedestrians the demo detector finds (>= 60 px tall, source gt parts): one D-RISE scorer and three region
    sets each: 6 parts, 10 parts, 10 parts + context + the rest of the image (12)."""
    parts = pq.read_table("data/parts/parts.parquet").to_pylist()
    images = {r["image_id"]: r for r in pq.read_table("data/pulled/images.parquet").to_pylist()}
    dets = {r["det_id"]: r for r in pq.read_table("data/infer/detections.parquet").to_pylist()
            if r["model_id"] == "demo-yolo"}
    by_det: dict[str, dict] = {}
    for p in parts:
        if p["model_id"] == "demo-yolo":
            by_det.setdefault(p["det_id"], {})[p["part"]] = p
    detector = YoloDetector("models/detector.pt", device=device)
    games = []
    for det_id in sorted(by_det):
        d = dets[det_id]
        if d["bbox"][3] - d["bbox"][1] < 60 or by_det[det_id]["head"]["source"] != "gt":
            continue
        img = images[d["image_id"]]
        H, W = img["height"], img["width"]
        masks = {k: torch.from_numpy(rle_decode(v["rle"], H, W)) for k, v in by_det[det_id].items()}
        p10 = torch.stack([masks[p] for p in PART_GROUPS["parts10"]])
        p6 = torch.stack([torch.stack([masks[m] for m in members]).any(0)
                          for members in PART_GROUPS["parts6"].values()])
        rest = ~(p10.any(0) | masks["context"])
        p12 = torch.cat([p10, masks["context"][None], rest[None]])
        image = to_batch([load_rgb(img["uri"])])[0].to(device)
        scorer = DRiseScorer(detector, torch.tensor([d["bbox"]]), torch.tensor([d["class_probs"]]))
        games.append({"det_id": det_id, "image": image, "scorer": scorer, "regions": {6: p6, 10: p10, 12: p12}})
        if len(games) == persons:
            break
    return games


def captum_kernel_shap(game, M: int, budget: int, seed: int) -> tuple[torch.Tensor, int]:
    from captum.attr import KernelShap as CaptumKernelShap

    calls = [0]

    def forward(z):
        calls[0] += z.shape[0]
        return game(z.double())[:, 0]

    torch.manual_seed(seed)
    ks = CaptumKernelShap(forward)
    phi = ks.attribute(torch.ones(1, M, dtype=torch.float64), baselines=torch.zeros(1, M, dtype=torch.float64),
                       n_samples=budget, perturbations_per_eval=64)
    return phi[0], calls[0]


def shap_kernel_explainer(game, M: int, budget: int, seed: int) -> tuple[torch.Tensor, int]:
    import shap

    calls = [0]

    def f(X):
        calls[0] += X.shape[0]
        return game(torch.from_numpy(np.asarray(X, dtype=np.float64)))[:, 0].numpy()

    np.random.seed(seed)
    explainer = shap.KernelExplainer(f, np.zeros((1, M)))
    phi = explainer.shap_values(np.ones((1, M)), nsamples=budget - 2, silent=True)   # + background and x itself
    return torch.tensor(np.asarray(phi).reshape(-1)), calls[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--persons", type=int, default=3)
    parser.add_argument("--synthetic", type=int, default=5, help="synthetic games per M")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/shapley.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    perturbation = make_perturbation("blur")
    errors: dict[tuple, list[float]] = {}

    def run_all(kind: str, M: int, table: TableGame, live_game, exact: torch.Tensor):
        for budget in BUDGETS:
            if budget >= 2 ** M:
                continue
            for seed in range(args.seeds):
                rng = lambda: np.random.default_rng(seed)  # noqa: E731
                runs = {
                    "bayes_shapley": lambda: bayes_shapley(table, M, budget, rng()).phi[0],
                    "kernel_shap": lambda: kernel_shap(table, M, budget, rng()).phi[0],
                    "kernel_shap_order1": lambda: kernel_shap(table, M, budget, rng(), order=1).phi[0],
                    "permutation": lambda: permutation_shapley(table, M, budget, rng()).phi[0],
                    "beta": lambda: beta_shapley(live_game, M, budget, rng(), device).phi[0],
                    "captum_kernel_shap": lambda: captum_kernel_shap(table, M, budget, seed)[0],
                    "shap_kernel_explainer": lambda: shap_kernel_explainer(table, M, budget, seed)[0],
                }
                for name, fn in runs.items():
                    if name == "permutation" and budget < 2 + 2 * (M - 1):
                        continue
                    if name == "beta" and kind == "real" and seed >= 3:
                        continue                                  # live forwards: fewer repeats
                    err = relative_error(fn().double().cpu(), exact).item()
                    errors.setdefault((kind, M, budget, name), []).append(err)

    start = time.perf_counter()
    for M in PLAYERS:
        for g in range(args.synthetic):
            game, values = synthetic_game(M, 1000 * M + g)
            exact = (exact_coefficients(M).T @ values)[:, 0]
            run_all("synthetic", M, TableGame(values), game, exact)
    print(f"synthetic games done in {time.perf_counter() - start:.0f} s")
    games = real_games(args.persons, device)
    for person in games:
        for M in PLAYERS:
            regions = person["regions"][M].float().to(device)
            live = RegionGame(lambda x: person["scorer"](x).float(), person["image"], regions, perturbation,
                              chunk_size=16)
            values = live(torch.from_numpy(all_coalitions(M)).to(device)).double().cpu()
            exact = (exact_coefficients(M).T @ values)[:, 0]
            run_all("real", M, TableGame(values), live, exact)
        print(f"real game {person['det_id']} done at {time.perf_counter() - start:.0f} s")

    summary = {}
    names = ["bayes_shapley", "kernel_shap", "kernel_shap_order1", "permutation", "beta", "captum_kernel_shap",
             "shap_kernel_explainer"]
    for kind in ("synthetic", "real"):
        print(f"\n{kind} games: median / p90 relative L2 error vs exact Shapley")
        print(f"{'M':>3}{'budget':>7}" + "".join(f"{n[:21]:>22}" for n in names) + f"{'ours/better peer':>18}")
        for M in PLAYERS:
            for budget in BUDGETS:
                row = {n: errors.get((kind, M, budget, n)) for n in names}
                if not any(row.values()):
                    continue
                cells = []
                for n in names:
                    e = row[n]
                    if e:
                        summary[f"{kind}/M{M}/B{budget}/{n}"] = {"median": float(np.median(e)),
                                                                 "p90": float(np.quantile(e, 0.9)), "runs": len(e)}
                        cells.append(f"{np.median(e):>13.3f} / {np.quantile(e, 0.9):<6.3f}")
                    else:
                        cells.append(f"{'-':>22}")
                ratio = np.median(row["bayes_shapley"]) / min(np.median(row[n]) for n in PEERS)
                summary[f"{kind}/M{M}/B{budget}/ours_over_better_peer"] = float(ratio)
                print(f"{M:>3}{budget:>7}" + "".join(cells) + f"{ratio:>18.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": str(device), "persons": [g["det_id"] for g in games], "errors": summary},
                              indent=2) + "\n")
    print(f"written: {out.absolute()}  ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
