"""Sample efficiency of Shapley estimators: median and p90 relative L2 error against exact Shapley values, for
M in {6, 10, 12} players at budgets {32, ..., 512} forwards, ours against the public approximators of Captum, SHAP
and shapiq (``peers.py``) on the same games with the same budgets.

Two splits (``pedestrians.py``):
  --split tune     the data our defaults were chosen on: pedestrians of data/pulled and the synthetic family
                   ``multilinear3`` (main effects, pairwise and three three-way terms). Every peer runs in every
                   configuration of ``peers.CONFIGS``; the best configuration of each peer per cell (lowest median
                   error) is saved for the held-out run.
  --split heldout  what the tables report: pedestrians of scenes rendered with a seed nothing was trained or tuned
                   on, and synthetic families ours was never tuned on (logistic, and_or, sparse_high_order,
                   threshold). Each peer runs in its library default and in the configuration the tuning run chose
                   for that cell; "best peer" is the lowest median of all those runs in the cell.

Real games: a pedestrian's body-part game through the demo detector (D-RISE score of its detection, blur hides a
player). The 12-player game (10 parts + context + rest of the image) is enumerated once (2^12 forwards) and cached
under benchmarks/results/games/ (keyed by split and detector weights); the 10-player game (context and rest always
shown) and the 6-player game (parts6 unions) are its restrictions, read from the same table (checked against the
live game on the first pedestrian). Estimators that query binary coalitions read the table; Beta (continuous
coalitions) runs live on the first --beta-persons pedestrians, one seed.

    python benchmarks/bench_shapley.py --split tune [--persons 5] [--kinds synthetic,real]
    python benchmarks/bench_shapley.py --split heldout [--persons 30] [--kinds synthetic,real]
    python benchmarks/bench_shapley.py --split heldout --kinds real --persons 10 --enumerate-only   (fill the cache)
Writes benchmarks/results/shapley_<split>_<kind>.json.
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
from threadpoolctl import threadpool_limits

from explainers.bayesian_shapley import DEFAULT_DECAY, bayes_shapley
from explainers.game import RegionGame
from explainers.metrics import relative_error
from explainers.perturb import make_perturbation
from explainers.shapley import (
    all_coalitions,
    continuous_coalition_shapley,
    exact_coefficients,
    kernel_shap,
    permutation_shapley,
)
from pedestrians import describe_split, file_digest, load_detector, pedestrians, start_run
from peers import CONFIGS, PEERS, config_key, run_peer, versions, warm_up

BUDGETS = (32, 64, 128, 256, 512)
PLAYERS = (6, 10, 12)
OURS = ("bayes_shapley", "kernel_shap", "kernel_shap_order1", "permutation", "beta")
TUNE_FAMILIES = ("multilinear3",)
HELDOUT_FAMILIES = ("logistic", "and_or", "sparse_high_order", "threshold")
RESULTS = Path("benchmarks/results")


class TableGame:
    """A binary game read from its table of 2^M values (coalitions are rounded to 0/1); counts its calls."""

    def __init__(self, values: torch.Tensor):
        self.values = values.double()                                   # [2^M, T]
        self.M = int(np.log2(values.shape[0]))
        self.powers = (2 ** torch.arange(self.M)).double()
        self.calls = 0

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        z = torch.as_tensor(z).double().reshape(-1, self.M)
        self.calls += z.shape[0]
        return self.values[(z.round() @ self.powers).long()]


# ------------------------------------------------------------------------------------------------ synthetic games
def _multilinear3(rng: np.random.Generator, M: int):
    """The tuning family: main effects, pairwise, three three-way terms."""
    a = torch.tensor(rng.normal(size=M))
    b = torch.triu(torch.tensor(rng.normal(size=(M, M))) * 0.4, 1)
    triples = [rng.choice(M, 3, replace=False) for _ in range(3)]
    c = torch.tensor(rng.normal(size=3))

    def v(z):
        out = z @ a + ((z @ b) * z).sum(1)
        for (i, j, k), w in zip(triples, c):
            out = out + w * z[:, i] * z[:, j] * z[:, k]
        return out
    return v


def _logistic(rng: np.random.Generator, M: int):
    """A saturating score of main effects and pairwise terms (all orders)."""
    a = torch.tensor(rng.normal(size=M))
    b = torch.triu(torch.tensor(rng.normal(size=(M, M))) * 0.4, 1)
    centre = float(a.sum() / 2 + b.sum() / 4)

    def v(z):
        return torch.sigmoid(z @ a + ((z @ b) * z).sum(1) - centre)
    return v


def _and_or(rng: np.random.Generator, M: int):
    """Detection needs every group: product over 3 groups of a soft OR."""
    groups = np.array_split(rng.permutation(M), 3)
    w = torch.tensor(rng.uniform(0.3, 0.95, size=M))

    def v(z):
        out = torch.ones(z.shape[0], dtype=torch.float64)
        for g in groups:
            out = out * (1 - torch.prod(1 - w[g] * z[:, g], dim=1))
        return out
    return v


def _sparse_high_order(rng: np.random.Generator, M: int):
    """Main effects plus M random terms of order 4 to 6."""
    a = torch.tensor(rng.normal(size=M))
    terms = [rng.choice(M, int(rng.integers(4, min(6, M) + 1)), replace=False) for _ in range(M)]
    c = torch.tensor(rng.normal(size=M))

    def v(z):
        out = z @ a
        for t, w in zip(terms, c):
            out = out + w * torch.prod(z[:, t], dim=1)
        return out
    return v


def _threshold(rng: np.random.Generator, M: int):
    """A smoothed weighted-voting game: softplus(k (a.z - quota)) / k."""
    a = torch.tensor(rng.uniform(0.2, 1.0, size=M))
    quota = float(rng.uniform(0.3, 0.7) * a.sum())
    k = 8.0 / float(a.sum())

    def v(z):
        return torch.nn.functional.softplus(k * (z @ a - quota)) / k
    return v


SYNTHETIC_FAMILIES = {"multilinear3": _multilinear3, "logistic": _logistic, "and_or": _and_or,
                      "sparse_high_order": _sparse_high_order, "threshold": _threshold}


def synthetic_game(family: str, M: int, seed: int):
    """A game on continuous coalitions z in [0, 1]^M (Beta needs them); returns (game, its 2^M binary values)."""
    if family not in SYNTHETIC_FAMILIES:
        raise ValueError(f"unknown synthetic family {family!r}")
    v = SYNTHETIC_FAMILIES[family](np.random.default_rng(seed), M)

    def game(z):
        return v(torch.as_tensor(z).double())[:, None]
    return game, game(torch.from_numpy(all_coalitions(M)))


def synthetic_seed(split: str, M: int, g: int) -> int:
    """The tuning games keep the seeds the defaults were chosen on (1000 M + g); held-out games use others."""
    return 1000 * M + g if split == "tune" else 1_000_000 + 1000 * M + g


# ------------------------------------------------------------------------------------------------ real games
def restriction_index(M: int) -> torch.Tensor:
    """Row of the 12-player table (10 parts, context, rest) for each coalition of the M-player game: M = 10 shows
    context and rest always; M = 6 shows the parts6 unions of parts (``detection.body.PART_GROUPS``)."""
    from detection.body import BODY_PARTS, PART_GROUPS

    Z = torch.from_numpy(all_coalitions(M)).double()
    if M == 12:
        z12 = Z
    elif M == 10:
        z12 = torch.cat([Z, torch.ones(len(Z), 2, dtype=torch.float64)], 1)
    elif M == 6:
        member = torch.zeros(6, 10, dtype=torch.float64)
        for g, members in enumerate(PART_GROUPS["parts6"].values()):
            for m in members:
                member[g, BODY_PARTS.index(m)] = 1
        z12 = torch.cat([Z @ member, torch.ones(len(Z), 2, dtype=torch.float64)], 1)
    else:
        raise ValueError(f"no restriction of the 12-player body-part game to M = {M}")
    return (z12 @ (2 ** torch.arange(12)).double()).long()


def enumerate_game12(person: dict, device) -> torch.Tensor:
    """A pedestrian's 12-player game (10 parts, context, rest; blur hides a player) on every coalition: [2^12, 1]
    float64 (2^12 forwards of its D-RISE scorer)."""
    live = RegionGame(lambda x, s=person["scorer"]: s(x).float(), person["image"],
                      person["regions"][12].float().to(device), make_perturbation("blur"), chunk_size=16)
    with torch.inference_mode():
        return live(torch.from_numpy(all_coalitions(12)).to(device)).double().cpu()


def real_tables(split: str, n: int, device) -> tuple[list[dict], dict]:
    """The first n pedestrians of a split with their 12-player game tables (cached); and cache facts."""
    weights = load_params_detector_weights()
    cache = RESULTS / "games" / f"{split}-detector-{file_digest(weights)}.pt"
    stored = torch.load(cache) if cache.is_file() else {}
    detector = load_detector(device)
    persons = pedestrians(split, n, device, detector=detector)
    start, new = time.perf_counter(), 0
    for p in persons:
        if p["det_id"] not in stored:
            stored[p["det_id"]] = enumerate_game12(p, device)
            new += 1
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save(stored, cache)
            print(f"  enumerated {p['det_id']} (2^12 forwards) at {time.perf_counter() - start:.0f} s", flush=True)
        p["table12"] = stored[p["det_id"]]
    return persons, {"cache": str(cache), "enumerated_now": new, "detector_weights": weights,
                     "detector_sha256_12": file_digest(weights)}


def load_params_detector_weights() -> str:
    from tasks.params import load_params

    return load_params(check_files=False).infer.detectors[0].weights


def check_restrictions(person: dict, device, n: int = 32) -> float:
    """Max |table-derived value - live value| over n random coalitions of the 10- and 6-player games."""
    rng = np.random.default_rng(0)
    worst = 0.0
    for M in (10, 6):
        live = RegionGame(lambda x, s=person["scorer"]: s(x).float(), person["image"],
                          person["regions"][M].float().to(device), make_perturbation("blur"), chunk_size=16)
        rows = rng.integers(0, 2 ** M, n)
        with torch.inference_mode():
            got = live(torch.from_numpy(all_coalitions(M)[rows]).to(device)).double().cpu()
        want = person["table12"][restriction_index(M)[rows]]
        worst = max(worst, float((got - want).abs().max()))
    return worst


# ------------------------------------------------------------------------------------------------ running
def load_tuned_configs(path: Path) -> dict:
    if not path.is_file():
        raise SystemExit(f"{path} not found: run `python benchmarks/bench_shapley.py --split tune` first (it chooses "
                         f"each peer's configuration on the tuning data)")
    return json.loads(path.read_text())["chosen_configs"]


def peer_runs(split: str, kind: str, M: int, budget: int, tuned: dict | None) -> list[tuple[str, dict]]:
    """(peer, config) pairs to run in a cell: every configuration when tuning; else default + the tuned one."""
    runs = []
    for name in PEERS:
        configs = CONFIGS[name] if split == "tune" else [CONFIGS[name][0]]
        if split != "tune":
            chosen = (tuned or {}).get(f"{kind}/M{M}/B{budget}/{name}")
            if chosen is not None and config_key(chosen) != config_key(configs[0]):
                configs = configs + [chosen]
        runs += [(name, c) for c in configs]
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=["tune", "heldout"], default="heldout")
    parser.add_argument("--kinds", default="synthetic,real", help="comma-separated: synthetic, real")
    parser.add_argument("--persons", type=int, default=None, help="pedestrians (default: tune 5, heldout 30)")
    parser.add_argument("--synthetic", type=int, default=5, help="synthetic games per family and M")
    parser.add_argument("--seeds", type=int, default=None, help="estimator seeds per game (default: 5 for the "
                                                                 "tuning synthetic games, else 3)")
    parser.add_argument("--beta-persons", type=int, default=4, help="pedestrians Beta runs live on (one seed)")
    parser.add_argument("--tuned", default=str(RESULTS / "shapley_tune_{kind}.json"))
    parser.add_argument("--enumerate-only", action="store_true", help="real games: enumerate and cache the tables of "
                        "the first --persons pedestrians, then stop (to spread the 2^12 forwards each over runs)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: on a shared 2-core machine "
                                                               "two threads spin-wait, ~9x the CPU per forward)")
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    if not set(kinds) <= {"synthetic", "real"}:
        parser.error(f"--kinds: unknown {sorted(set(kinds) - {'synthetic', 'real'})}")
    device = start_run(args.threads)
    warm_up(TableGame)
    for kind in kinds:
        run_kind(args, kind, device)


def run_kind(args, kind: str, device) -> None:  # noqa: C901  (one benchmark run: its closures share the run's tallies)
    split = args.split
    tuned = None if split == "tune" else load_tuned_configs(Path(args.tuned.format(kind=kind)))
    seeds = args.seeds or (5 if kind == "synthetic" and split == "tune" else 3)
    errors: dict[str, list[float]] = {}
    by_group: dict[str, dict[str, list[float]]] = {}        # per synthetic family (real: one group)
    failures: dict[str, str] = {}
    start = time.perf_counter()
    threads = torch.get_num_threads()
    seconds: dict[str, float] = {}

    def clock(key: str, t0: float) -> None:
        seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - t0

    def run_cell(M: int, budget: int, table: TableGame, live_game, exact: torch.Tensor, beta_seeds: int,
                 group: str) -> None:
        # The estimators' small solves run 5-30x slower with 2 threads on a shared 2-core machine: one thread each,
        # BLAS included (the enumeration of the real games runs with --threads).
        torch.set_num_threads(1)
        with threadpool_limits(1):
            run_seeds(M, budget, table, live_game, exact, beta_seeds, group)

    def record(key: str, group: str, err: float) -> None:
        errors.setdefault(key, []).append(err)
        by_group.setdefault(group, {}).setdefault(key, []).append(err)

    def run_seeds(M: int, budget: int, table: TableGame, live_game, exact: torch.Tensor, beta_seeds: int,
                  group: str) -> None:
        for seed in range(seeds):
            ours = {                                            # each run: a fresh generator of this seed
                "bayes_shapley": lambda rng: bayes_shapley(table, M, budget, rng).phi[0],
                "kernel_shap": lambda rng: kernel_shap(table, M, budget, rng).phi[0],
                "kernel_shap_order1": lambda rng: kernel_shap(table, M, budget, rng, order=1).phi[0],
                "permutation": lambda rng: permutation_shapley(table, M, budget, rng).phi[0],
                "beta": lambda rng: continuous_coalition_shapley(live_game, M, budget, rng, device).phi[0],
            }
            for name, fn in ours.items():
                if name == "permutation" and budget < 2 + 2 * (M - 1):
                    continue
                if name == "beta" and seed >= beta_seeds:
                    continue
                t0 = time.perf_counter()
                phi = fn(np.random.default_rng(seed))
                clock(f"M{M}/B{budget}/{name}", t0)
                err = relative_error(torch.as_tensor(phi).double().cpu(), exact).item()
                record(f"M{M}/B{budget}/{name}", group, err)
            for name, config in peer_runs(split, kind, M, budget, tuned):
                key = f"M{M}/B{budget}/{name}/{config_key(config)}"
                if key in failures:
                    continue
                try:
                    t0 = time.perf_counter()
                    phi = run_peer(name, table, M, budget, seed, config)
                    clock(key, t0)
                except Exception as exc:      # a peer that cannot run at this budget (too few samples) is recorded
                    failures[key] = f"{type(exc).__name__}: {exc}"[:300]
                    continue
                err = relative_error(torch.as_tensor(phi).double(), exact).item()
                record(key, group, err if np.isfinite(err) else float("inf"))

    facts: dict = {"split": describe_split(split) if kind == "real" else split, "kind": kind, "seeds": seeds,
                   "device": str(device), "cpus": os.cpu_count(), "peer_versions": versions(),
                   "bayes_shapley_decay": DEFAULT_DECAY}
    if kind == "synthetic":
        families = TUNE_FAMILIES if split == "tune" else HELDOUT_FAMILIES
        facts.update(families=list(families), games_per_family=args.synthetic)
        for family in families:
            for M in PLAYERS:
                for g in range(args.synthetic):
                    game, values = synthetic_game(family, M, synthetic_seed(split, M, g))
                    exact = (exact_coefficients(M).T @ values)[:, 0]
                    for budget in BUDGETS:
                        if budget < 2 ** M:
                            run_cell(M, budget, TableGame(values), game, exact, beta_seeds=seeds, group=family)
            print(f"{family} done at {time.perf_counter() - start:.0f} s", flush=True)
    else:
        n = args.persons or (5 if split == "tune" else 30)
        persons, cache = real_tables(split, n, device)
        if args.enumerate_only:
            print(f"{len(persons)} game tables in {cache['cache']} ({cache['enumerated_now']} enumerated now)")
            return
        facts.update(persons=[p["det_id"] for p in persons], heights=[round(p["height"], 1) for p in persons],
                     **cache)
        facts["restriction_check_max_abs_diff"] = check_restrictions(persons[0], device)
        print(f"10-/6-player games read from the 12-player table vs live: max |diff| "
              f"{facts['restriction_check_max_abs_diff']:.2e}", flush=True)
        perturbation = make_perturbation("blur")
        for k, p in enumerate(persons):
            for M in PLAYERS:
                values = p["table12"][restriction_index(M)]
                exact = (exact_coefficients(M).T @ values)[:, 0]
                live = RegionGame(lambda x, s=p["scorer"]: s(x).float(), p["image"], p["regions"][M].float().to(device),
                                  perturbation, chunk_size=16)
                for budget in BUDGETS:
                    if budget < 2 ** M:
                        run_cell(M, budget, TableGame(values), live, exact,
                                 beta_seeds=1 if k < args.beta_persons else 0, group="real")
            print(f"real game {p['det_id']} done at {time.perf_counter() - start:.0f} s", flush=True)
    facts["seconds"] = round(time.perf_counter() - start, 1)
    torch.set_num_threads(threads)
    facts["by_family"] = family_summary(by_group)
    summarise(split, kind, errors, seconds, failures, facts)


def family_summary(by_group: dict) -> dict:
    """Per family and cell: bayes_shapley's median, the best peer's (lowest median of any peer run in that family
    and cell) and their ratio."""
    out: dict = {}
    for group, errors in by_group.items():
        cells: dict = {}
        for key, errs in errors.items():
            M, B, name, *config = key.split("/")
            cell = cells.setdefault(f"{M}/{B}", {"peers": {}})
            if config:
                cell["peers"][f"{name}/{config[0]}"] = float(np.median(errs))
            elif name == "bayes_shapley":
                cell["bayes_shapley"] = float(np.median(errs))
        for cell in cells.values():
            best = min(cell.pop("peers").items(), key=lambda kv: kv[1])
            cell["best_peer"], cell["best_peer_median"] = best
            cell["ratio"] = cell["bayes_shapley"] / best[1] if best[1] > 0 else None
        out[group] = cells
    return out


def summarise(split: str, kind: str, errors: dict, seconds: dict, failures: dict, facts: dict) -> None:
    cells: dict = {}
    chosen: dict = {}
    for key, errs in errors.items():
        M, B, name, *config = key.split("/")
        cell = cells.setdefault(f"{M}/{B}", {"ours": {}, "peers": {}})
        stats = {"median": float(np.median(errs)), "p90": float(np.quantile(errs, 0.9)), "runs": len(errs),
                 "ms_per_run": round(1000 * seconds.get(key, 0.0) / len(errs), 2)}
        if config:
            cell["peers"].setdefault(name, {})[config[0]] = stats
        else:
            cell["ours"][name] = stats
    print(f"\n{split} / {kind}: median / p90 relative L2 error vs exact Shapley values")
    print(f"{'cell':<10}{'bayes_shapley':>16}{'kernel_shap':>16}{'best peer':>16}  {'(which)':<46}{'ratio':>7}")
    for cell_key in sorted(cells, key=lambda c: tuple(int(x[1:]) for x in c.split("/"))):
        cell = cells[cell_key]
        default_of = {name: config_key(CONFIGS[name][0]) for name in PEERS}
        for name, by_config in cell["peers"].items():
            best = min(by_config, key=lambda c: by_config[c]["median"])
            cell["peers"][name] = {"configs": by_config, "best_config": best,
                                   "default_config": default_of[name], **by_config[best]}
            if split == "tune":
                chosen[f"{kind}/{cell_key}/{name}"] = _config_from_key(name, best)
        ranked = sorted(cell["peers"], key=lambda n: cell["peers"][n]["median"])
        best_peer = ranked[0] if ranked else None
        ours = cell["ours"]["bayes_shapley"]
        cell["best_peer"] = best_peer
        cell["ratio_bayes_over_best_peer"] = (ours["median"] / cell["peers"][best_peer]["median"]
                                              if best_peer and cell["peers"][best_peer]["median"] > 0 else None)
        cell["peers_ranked"] = [(n, cell["peers"][n]["best_config"], cell["peers"][n]["median"]) for n in ranked]
        bp = cell["peers"][best_peer]
        k = cell["ours"]["kernel_shap"]
        print(f"{cell_key:<10}{ours['median']:>9.4f}/{ours['p90']:<6.3f}{k['median']:>9.4f}/{k['p90']:<6.3f}"
              f"{bp['median']:>9.4f}/{bp['p90']:<6.3f}  {best_peer + ' ' + bp['best_config']:<46}"
              f"{cell['ratio_bayes_over_best_peer']:>9.3g}")
    out = RESULTS / f"shapley_{split}_{kind}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {**facts, "cells": cells, "peer_failures": failures}
    if split == "tune":
        result["chosen_configs"] = chosen
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written: {out.absolute()}  ({facts['seconds']:.0f} s)")


def _config_from_key(name: str, key: str) -> dict:
    for config in CONFIGS[name]:
        if config_key(config) == key:
            return config
    raise KeyError(f"{name}: no configuration {key}")


if __name__ == "__main__":
    main()
