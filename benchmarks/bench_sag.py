"""Structured attention graphs over body parts (Shitole et al., NeurIPS 2021, https://arxiv.org/abs/2011.06733)
against the exact minimal sufficient part sets: what the pipeline runs, checked against the truth.

For each found pedestrian of a split (``benchmarks/pedestrians.py``; default: the held-out scenes, render seed
``HELDOUT_SEED`` = 1000, never trained or tuned on), the players are its non-empty body parts of the parts stage's
grouping (``parts10`` + ``context``: 11 players when every part has a pixel; the rest of the image always shown,
hidden parts blurred) and the score is the demo detector's D-RISE similarity to its detection.

* **Truth**: the full 2^M coalition table (2,048 forwards for 11 players, batched through
  :class:`~explainers.game.RegionGame`) gives every minimal sufficient set
  (:func:`explainers.sag.exact_minimal_sufficient`: >= 0.9 of the full score, no proper subset sufficient).
* **Measured**: the pipeline's method, :class:`explainers.sag.Sag` with its defaults, called as an explain job
  calls it (``tasks.explain``: ``Sag(scorer, chunk_size=explain.chunk_size).explain(image, parts, budget=None,
  seed=explanation_seed(seed, image_id, target_id, 'sag'))``): BayesShapley on 64 forwards as the heuristic (every
  binary coalition it scores is remembered), then beam search (width 3, 15 successors, > 10 roots stops it) with
  monotone inference (a superset of a set scored sufficient is taken as sufficient without a forward), greedy
  pruning (removals tried least important first, stopping at the first that keeps the set sufficient) and the
  deletion graph, 320 forwards in all.
* Per pedestrian: set recall (exact sets found / exact sets), precision (found sets that are exact / found), the
  forwards beyond the heuristic's (``search_forward``: search + pruning, which the target bounds; ``n_forward``:
  the deletion graph included), the status ('complete' | 'budget' | 'flat'). Summary: median recall and the share
  of pedestrians with recall >= 0.95 and search forwards <= 150, against the target of issue 21 (median recall
  >= 0.95 with <= 150 forwards beyond the heuristic's, >= 50 found pedestrians: found by the detector, those whose
  score is flat included; the medians are over the others). The search stops after more than 10 roots (the
  paper's rule), so recall is also given over pedestrians with <= 10 exact sets.
* Diagnostics, read off the table (no forward; the full / empty scores not counted; the same heuristic values, no
  heuristic coalitions for free, no budget): ``unbounded_*`` the same search, ``paper_*`` the paper's search
  (``infer=False``: every child scored), so the two searches' recall can be compared on the same pedestrians.

Sag's width / successors / threshold / max_roots are the paper's / reference code's (``../shared/docs/methods.md``),
importance_budget 64 and budget 320 the pipeline's. The search's economy (monotone inference, pruning that stops at
the first sufficient removal; a surrogate-guided lazy expansion measured and not adopted) was chosen on the ``tune``
split (pedestrians of the pulled data, seed 0); reported on the ``--split`` chosen (held-out by default).
``--max-seconds`` stops starting new pedestrians after that wall time (the results say how many ran); the JSON is
rewritten after every pedestrian.

    python benchmarks/bench_sag.py [--split heldout] [--persons 50] [--threads 1] [--max-seconds 0]
                                   [--out benchmarks/results/sag_<split>.json]
"""
from __future__ import annotations

import argparse
import os
import time

import flows  # noqa: F401  (environment defaults)

import numpy as np
import torch

from bench_models import write_results
from detection.body import BODY_PARTS
from explainers.game import RegionGame
from explainers.perturb import make_perturbation
from explainers.sag import Sag, exact_minimal_sufficient, structured_attention_graph
from pedestrians import describe_split, file_digest, pedestrians, start_run
from tasks.explain import explanation_seed
from tasks.params import load_params

NAMES = [*BODY_PARTS, "context"]
TARGET_RECALL, TARGET_FORWARDS, TARGET_PERSONS = 0.95, 150, 50


def coalition_table(scorer, image: torch.Tensor, regions: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """v(S) [2^M] for every bitmask S of ``regions`` [M, H, W] (bit i = region i shown; hidden regions blurred as
    Sag's default perturbation), in batches of ``chunk_size`` images."""
    M = regions.shape[0]
    bits = torch.arange(2 ** M)
    Z = ((bits[:, None] >> torch.arange(M)[None]) & 1).float()
    game = RegionGame(scorer, image, regions, make_perturbation("blur"), chunk_size)
    with torch.inference_mode():
        return game(Z)[:, 0].float().cpu()


def table_game(table: torch.Tensor):
    """The game read off its full table [2^M]: coalitions [N, M] (0/1) -> scores [N, 1], no forward."""
    M = int(round(np.log2(table.numel())))
    weights = 2 ** torch.arange(M)

    def game(z: torch.Tensor) -> torch.Tensor:
        return table[(z.round().long().cpu() * weights).sum(1)][:, None]
    return game


def names_of(sets, names: list[str]) -> list[list[str]]:
    return sorted(sorted(names[i] for i in s) for s in sets)


def summary(rows: list[dict]) -> dict:
    """Median / share summary of the measured pedestrians (flat ones excluded: no set can be sufficient)."""
    done = [r for r in rows if "recall" in r]
    if not done:
        return {"pedestrians": 0}
    recall = np.array([r["recall"] for r in done])
    search = np.array([r["search_forwards"] for r in done])
    small = [r["recall"] for r in done if r["exact_sets"] <= 10]
    med_recall, med_search = float(np.median(recall)), float(np.median(search))
    return {"pedestrians": len(done), "found_pedestrians": len(rows), "flat_skipped": len(rows) - len(done),
            "median_recall": med_recall, "mean_recall": float(recall.mean()),
            "share_recall_1": float((recall >= 1).mean()), "share_recall_ge_0.95": float((recall >= 0.95).mean()),
            "share_recall_ge_0.95_and_search_le_150": float(((recall >= 0.95) & (search <= 150)).mean()),
            "median_precision": float(np.nanmedian([r["precision"] for r in done])),
            "median_search_forwards": med_search, "max_search_forwards": int(search.max()),
            "median_forwards_beyond_heuristic_with_graph": float(np.median([r["sag_forwards"] for r in done])),
            "median_heuristic_forwards": float(np.median([r["heuristic_forwards"] for r in done])),
            "status_counts": {s: sum(r["status"] == s for r in done) for s in dict.fromkeys(r["status"] for r in done)},
            "unbounded_median_recall": float(np.median([r["unbounded_recall"] for r in done])),
            "unbounded_median_search_forwards": float(np.median([r["unbounded_search_forwards"] for r in done])),
            "unbounded_max_search_forwards": int(max(r["unbounded_search_forwards"] for r in done)),
            "paper_median_recall": float(np.median([r["paper_recall"] for r in done])),
            "paper_mean_recall": float(np.mean([r["paper_recall"] for r in done])),
            "paper_share_recall_ge_0.95": float(np.mean([r["paper_recall"] >= 0.95 for r in done])),
            "paper_median_search_forwards": float(np.median([r["paper_search_forwards"] for r in done])),
            "median_exact_sets": float(np.median([r["exact_sets"] for r in done])),
            "pedestrians_at_most_10_exact": len(small),
            "median_recall_when_at_most_10_exact": float(np.median(small)) if small else float("nan"),
            "target": f"median recall >= {TARGET_RECALL} with median search forwards <= {TARGET_FORWARDS} on >= "
                      f"{TARGET_PERSONS} found pedestrians (flat ones counted as found, left out of the medians)",
            "recall_met": bool(med_recall >= TARGET_RECALL), "forwards_met": bool(med_search <= TARGET_FORWARDS),
            "target_met": bool(med_recall >= TARGET_RECALL and med_search <= TARGET_FORWARDS
                               and len(rows) >= TARGET_PERSONS)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=["tune", "heldout"], default="heldout")
    parser.add_argument("--persons", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=0.0, help="stop starting pedestrians after this (0: no)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = start_run(args.threads)
    params = load_params(check_files=False)
    chunk = params.explain.chunk_size
    out = args.out or f"benchmarks/results/sag_{args.split}.json"
    start = time.perf_counter()
    rows: list[dict] = []
    head = {"device": str(device), "cpus": os.cpu_count(), "split": describe_split(args.split),
            "detector_weights_sha256_12": file_digest("models/detector.pt"), "players": "non-empty of " + str(NAMES),
            "method": "explainers.sag.Sag defaults (BayesShapley importance_budget 64, budget 320, width 3, "
                      "successors 15, max_roots 10, threshold 0.9, blur; monotone inference)", "chunk_size": chunk,
            "tuned_on": "tune split (data/pulled, seed 0): the search's economy; width / successors / threshold / "
                        "max_roots are the paper's"}
    for p in pedestrians(args.split, args.persons, device):
        if args.max_seconds and time.perf_counter() - start > args.max_seconds:
            break
        t0 = time.perf_counter()
        masks = p["regions"][12][:11]                                  # 10 parts + context; the rest always shown
        keep = masks.flatten(1).any(1)
        names = [n for n, k in zip(NAMES, keep.tolist()) if k]         # as tasks.explain._regions: non-empty parts
        regions = masks[keep].float().to(device)
        table = coalition_table(p["scorer"], p["image"], regions, chunk)
        t_table = time.perf_counter() - t0
        image_id, target_id = p["det_id"].split("/", 1)
        method = Sag(p["scorer"], chunk_size=chunk)
        exp = method.explain(p["image"], regions, budget=None, seed=explanation_seed(params.seed, image_id,
                                                                                      target_id, "sag"))
        graph = exp.graphs[0]
        row = {"det_id": p["det_id"], "players": len(names), "status": graph.status,
               "full_score": graph.full_score, "table_full_score": float(table[-1]),
               "table_seconds": round(t_table, 1), "sag_seconds": round(time.perf_counter() - t0 - t_table, 1)}
        if graph.status == "flat" or not (table[-1] > table[0] and table[-1] > 0):
            rows.append({**row, "skipped": "full score not above the empty score, or not positive"})
        else:
            exact = exact_minimal_sufficient(table, 0.9)
            found = graph.root_sets()
            hit = len(found & exact)
            row.update({"recall": hit / len(exact), "precision": hit / len(found) if found else float("nan"),
                        "exact_sets": len(exact), "found_sets": len(found),
                        "search_forwards": graph.search_forward, "sag_forwards": graph.n_forward,
                        "heuristic_forwards": exp.n_forward - graph.n_forward, "total_forwards": exp.n_forward,
                        "smallest_exact": min(len(s) for s in exact),
                        "exact": names_of(exact, names), "found": names_of(found, names),
                        "missed": names_of(exact - found, names), "not_exact": names_of(found - exact, names)})
            # diagnostic: the same search (same heuristic values, Sag's search defaults) with no budget, read off the
            # table (no forward; its full / empty scores are counted here, the heuristic has them in the pipeline)
            free = structured_attention_graph(table_game(table), len(names), exp.relevance[0])
            free_found = free.root_sets()
            row.update({"unbounded_recall": len(free_found & exact) / len(exact),
                        "unbounded_search_forwards": free.search_forward - 2, "unbounded_status": free.status})
            paper = structured_attention_graph(table_game(table), len(names), exp.relevance[0], infer=False)
            row.update({"paper_recall": len(paper.root_sets() & exact) / len(exact),
                        "paper_search_forwards": paper.search_forward - 2,
                        "paper_found": names_of(paper.root_sets(), names)})
            rows.append(row)
        print(p["det_id"], {k: row.get(k) for k in ("status", "recall", "precision", "exact_sets", "found_sets",
                                                     "search_forwards", "sag_forwards", "unbounded_recall",
                                                     "unbounded_search_forwards", "paper_recall",
                                                     "paper_search_forwards", "table_seconds",
                                                     "sag_seconds")}, flush=True)
        write_results(out, {**head, "summary": summary(rows), "per_target": rows,
                            "seconds": round(time.perf_counter() - start, 1)})
    print(summary(rows))


if __name__ == "__main__":
    main()
