"""A prior learned from training pedestrians' games: can a linear estimator halve the best peer's error on the
held-out body-part games at the budgets where BayesShapley does not?

``bench_shapley_oracle.py`` found that on synthetic games an estimator told the family's second moments halves the
best peer's error at 32 forwards, and that none can without them. For the audit's own game the family is known: the
audited detector's body-part games. Its moments can be learned where learned components may learn: pedestrians of the
*training* scenes (``pedestrians.py`` split ``train``), enumerated exactly (2^12 forwards each). This bench learns

  mean and covariance of each game's values normalised by its gap, u(S) = (v(S) - v(empty)) / (v(full) - v(empty)),
  over the training pedestrians, shrunk towards a multiple of the identity (shrinkage chosen by leave-one-out on
  the training games only, on the design greedy for shrinkage 0.01);

and estimates a held-out pedestrian's Shapley values as that prior's posterior mean given the queried coalitions
(linear MMSE; efficiency then restored by an equal shift, as BayesShapley does), on a fixed design of the same budget:
the empty and full coalitions plus a greedy A-optimal choice under the learned prior. Reported on the 30 held-out
pedestrians of ``bench_shapley.py``'s real-game table (the first 30 of the held-out split), M = 12 (10 parts, context,
rest) and M = 10 (context and rest always shown: a restriction of the same table), against BayesShapley (the
default) and shapiq's kADDSHAP / KernelSHAP (the best peers there), 3 seeds each.

    python benchmarks/bench_shapley_learned_prior.py --enumerate train --skip 0 --persons 45     (fill the caches,
    python benchmarks/bench_shapley_learned_prior.py --enumerate train --skip 45 --persons 15     resumable; one
    python benchmarks/bench_shapley_learned_prior.py --enumerate heldout --persons 30             file a range)
    python benchmarks/bench_shapley_learned_prior.py --train 60 --persons 30
Writes benchmarks/results/shapley_learned_prior.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import flows  # noqa: F401  (environment defaults)

import numpy as np
import torch

from bench_shapley import RESULTS, enumerate_game12, restriction_index
from bench_shapley_oracle import baseline_errors
from explainers.metrics import relative_error
from explainers.shapley import exact_coefficients
from pedestrians import file_digest, load_detector, pedestrians, start_run

SHRINKAGE = (1e-4, 1e-3, 1e-2, 0.03, 0.1, 0.3)


def cache_file(split: str, skip: int, n: int, weights: str) -> Path:
    return RESULTS / "games" / f"learned-prior-{split}-{skip}-{skip + n}-detector-{file_digest(weights)}.pt"


def enumerate_tables(split: str, skip: int, n: int, device) -> None:
    """The 12-player tables [2^12] of pedestrians skip .. skip + n - 1 of a split (resumable, one file a range)."""
    from bench_shapley import load_params_detector_weights
    weights = load_params_detector_weights()
    path = cache_file(split, skip, n, weights)
    stored = torch.load(path) if path.is_file() else {}
    persons = pedestrians(split, n, device, detector=load_detector(device), skip=skip)
    start = time.perf_counter()
    for p in persons:
        if p["det_id"] in stored:
            continue
        stored[p["det_id"]] = enumerate_game12(p, device)[:, 0]
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(stored, path)
        print(f"  {len(stored)}/{n} {p['det_id']} at {time.perf_counter() - start:.0f} s", flush=True)


def load_tables(split: str, n: int) -> np.ndarray:
    """[n, 2^12] tables of the first n pedestrians of a split found in the range caches of the detector that
    params.yaml names (scene order)."""
    from bench_shapley import load_params_detector_weights
    digest = file_digest(load_params_detector_weights())
    tables: dict[str, torch.Tensor] = {}
    for path in sorted((RESULTS / "games").glob(f"learned-prior-{split}-*-detector-{digest}.pt")):
        tables.update(torch.load(path))
    ids = sorted(tables)                      # det ids sort in scene order ("<split><seed>-<index>/<ann>")
    if len(ids) < n:
        raise SystemExit(f"only {len(ids)} {split} tables cached, {n} asked: run --enumerate {split} first")
    return np.stack([tables[i].numpy() for i in ids[:n]])


class LearnedPrior:
    """Mean [D] and shrunk covariance of gap-normalised game values u over training games U [n, D]:
    (1 - shrinkage) S + shrinkage tr(S) / D I, S the sample covariance (rank < n: the shrinkage makes it usable)."""

    def __init__(self, U: np.ndarray, shrinkage: float):
        self.mean = U.mean(0)
        self.centred = (U - self.mean) / np.sqrt(len(U) - 1)           # S = centred^T centred
        self.shrinkage = shrinkage
        self.level = float((self.centred ** 2).sum()) / U.shape[1]      # tr(S) / D

    def columns(self, observed: np.ndarray) -> np.ndarray:
        """The covariance's columns [D, k] at coalition ids ``observed``."""
        C = (1 - self.shrinkage) * (self.centred.T @ self.centred[:, observed])
        C[observed, np.arange(len(observed))] += self.shrinkage * self.level
        return C

    def estimate(self, A: np.ndarray, observed: np.ndarray, u_obs: np.ndarray) -> np.ndarray:
        """phi [n, M] of u from its values ``u_obs`` [n, k] at ``observed``: the posterior mean, then shifted equally
        per player to sum to u(full) - u(empty) = 1."""
        C = self.columns(observed)
        w = np.linalg.solve(C[observed], (u_obs - self.mean[observed]).T)
        phi = ((A.T @ self.mean)[:, None] + (A.T @ C) @ w).T
        return phi + (1.0 - phi.sum(1, keepdims=True)) / A.shape[1]

    def greedy_design(self, A: np.ndarray, k: int) -> np.ndarray:
        """k coalition ids (the empty and full ones excluded: the normalisation has them) chosen one by one to
        lower the trace of the posterior covariance of phi most (rank-1 updates of P and of A^T P)."""
        D = len(self.mean)
        P = (1 - self.shrinkage) * (self.centred.T @ self.centred) + self.shrinkage * self.level * np.eye(D)
        B = A.T @ P
        chosen: list[int] = []
        for _ in range(k):
            gain = (B ** 2).sum(0) / np.maximum(np.diag(P), 1e-300)
            gain[[0, D - 1] + chosen] = -1.0
            j = int(np.argmax(gain))
            chosen.append(j)
            p = P[:, j].copy()
            B -= np.outer(B[:, j], p) / p[j]
            P -= np.outer(p, p) / p[j]
        return np.array(chosen)


def normalise(V: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(u [n, D], gap [n]): each game's values minus v(empty), over v(full) - v(empty)."""
    gap = V[:, -1] - V[:, 0]
    return (V - V[:, :1]) / gap[:, None], gap


def choose_shrinkage(U: np.ndarray, A: np.ndarray, observed: np.ndarray) -> float:
    """The shrinkage whose leave-one-out median relative error on the training games U is lowest, on a design
    ``observed`` fixed across folds."""
    exact = U @ A
    best = None
    for lam in SHRINKAGE:
        errs = [float(relative_error(LearnedPrior(np.delete(U, i, 0), lam).estimate(A, observed, U[i:i + 1, observed]),
                                     exact[i:i + 1])) for i in range(len(U))]
        med = float(np.median(errs))
        print(f"    shrinkage {lam}: leave-one-out median {med:.4f}", flush=True)
        if best is None or med < best[1]:
            best = (lam, med)
    return best[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--enumerate", choices=("train", "heldout"))
    parser.add_argument("--skip", type=int, default=0)
    parser.add_argument("--persons", type=int, default=30)
    parser.add_argument("--train", type=int, default=60)
    parser.add_argument("--budgets", default="32,64,128")
    parser.add_argument("--players", default="10,12")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS / "shapley_learned_prior.json"))
    args = parser.parse_args()
    device = start_run(args.threads)
    if args.enumerate:
        enumerate_tables(args.enumerate, args.skip, args.persons, device)
        return
    start = time.perf_counter()
    train12, held12 = load_tables("train", args.train), load_tables("heldout", args.persons)
    rows = []
    for M in (int(m) for m in args.players.split(",")):
        index = restriction_index(M).numpy()
        train, held = train12[:, index], held12[:, index]
        A = exact_coefficients(M).numpy()
        U, _ = normalise(train)
        Uh, gap = normalise(held)
        exact = held @ A
        for budget in (int(b) for b in args.budgets.split(",")):
            print(f"M {M} @ {budget}:", flush=True)
            lam = choose_shrinkage(U, A, LearnedPrior(U, 0.01).greedy_design(A, budget - 2))
            prior = LearnedPrior(U, lam)
            obs = prior.greedy_design(A, budget - 2)
            learned = prior.estimate(A, obs, Uh[:, obs]) * gap[:, None]
            errs = {"learned_prior": relative_error(learned, exact).tolist()}
            baseline_errors(held, exact, M, budget, args.seeds, errs)
            peers = {k: float(np.median(v)) for k, v in errs.items() if k.startswith("shapiq")}
            best = min(peers, key=peers.get)
            rows.append({"M": M, "budget": budget, "shrinkage": lam, "errors": errs, "best_peer": best})
            print(f"  learned prior {np.median(errs['learned_prior']):.4f} "
                  f"({np.median(errs['learned_prior']) / peers[best]:.2f}x), bayes_shapley "
                  f"{np.median(errs['bayes_shapley']):.4f} ({np.median(errs['bayes_shapley']) / peers[best]:.2f}x), "
                  f"best peer {peers[best]:.4f} ({best})", flush=True)
    out = {"train": args.train, "heldout": args.persons, "seeds": args.seeds,
           "seconds": round(time.perf_counter() - start, 1), "rows": rows}
    Path(args.out).write_text(json.dumps(out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
