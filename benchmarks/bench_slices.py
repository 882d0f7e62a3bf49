"""Planted-weakness benchmark for slice discovery (Domino's evaluation idea, for a detector).

The demo detector runs once on held-out synthetic scenes; a wrapper then multiplies by ``--factor`` (0.3) the score
of every detection overlapping (IoU >= 0.5) a person inside one planted attribute slice, with no retraining. Each
person's outcome is missed (no one-to-one match scoring >= the detector's conf) and :func:`detection.slices.find_slices`
searches the generator's attributes (``attributes`` table, plus occlusion / truncation). Reported per run: the rank of
the planted slice (strict: the same predicates; overlap: a slice whose rows have Jaccard >= 0.5 with it), whether it
is significant, and the significant slices of the same scenes with nothing planted — the demo detector's own weak
slices, real effects — and with the outcome permuted across persons (a true null: no slice can differ but by
chance, the false-discovery check); then the discovery time on
``--rows`` persons resampled from the first seed's scenes (median of 3, with a planted slice and with nothing
planted).

Tuned on vs reported on: scene seed *s* renders ``params.yaml``'s ``pull.synthetic`` scenes with seed
``HELDOUT_SEED + 97 s`` (1000 + 97 s). ``SliceConfig``'s defaults were chosen on the synthetic tables of
tests/test_slices.py (commit 3ded79e), and seed 0 (render seed 1000) is the one looked at since: the smoke run of
2026-11-30 and the profiling of issue 24. The reported runs are seeds ``--first-seed`` (1) onwards, never looked at
before they were reported; the three planted slices are fixed in advance (:data:`PLANTED`), the same for every seed.

    python benchmarks/bench_slices.py [--seeds 5] [--first-seed 1] [--images 800] [--rows 20000]
                                      [--out benchmarks/results/slices.json]
    python benchmarks/bench_slices.py --seeds 1 --images 200 --rows 20000        # short
"""
from __future__ import annotations

import argparse
import time

import flows  # noqa: F401  (environment defaults)

import numpy as np
import pandas as pd
import torch

from bench_models import write_results
from detection.datasets.imageio import to_batch
from detection.datasets.synthetic import attribute_rows, render_scene, scene_rows
from detection.evaluation import ImageEval, iou_matrix, match
from detection.slices import SliceConfig, find_slices, slice_mask
from pedestrians import HELDOUT_SEED, file_digest, load_detector
from tasks.params import load_params

PLANTED = ({"facing": "back", "shirt_colour": "blue"},
           {"pants_colour": "black", "short_sleeves": "yes"},
           {"facing": "left", "occluder": "none"})
ATTRIBUTES = ["facing", "yaw_deg", "walking_phase", "stride", "arm_pose", "skin_tone", "shirt_colour", "pants_colour",
              "hair_colour", "short_sleeves", "bare_shins", "height_px", "truncation_side", "occluder", "occluded_by",
              "person_overlap", "contrast", "shirt_contrast", "lighting", "occlusion", "truncation"]


def render_seed(seed: int) -> int:
    """The generator seed of benchmark seed ``seed``'s scenes."""
    return HELDOUT_SEED + 97 * seed


def run_scenes(seed: int, n_images: int, detector) -> tuple[pd.DataFrame, list[dict]]:
    """Persons (attributes + annotation columns) and, per image, the detections and person boxes."""
    cfg = load_params(check_files=False).pull.synthetic
    persons, images = [], []
    batch, pending = [], []
    for index in range(n_images):
        scene = render_scene(cfg, render_seed(seed), index)
        image_id = f"s{seed}-{index:05d}"
        anns = [a for a in scene_rows(scene, image_id)[0] if a["category"] == "person"]
        attrs = {r["ann_id"]: r for r in attribute_rows(scene, image_id)}
        for a in anns:
            persons.append({**attrs[a["ann_id"]], "occlusion": a["occlusion"], "truncation": a["truncation"]})
        pending.append((image_id, anns))
        batch.append(scene.image)
        if len(batch) == 32 or index == n_images - 1:
            for (iid, anns_), det in zip(pending, detector.detect(to_batch(batch))):
                keep = det.labels.cpu().numpy() == 0
                images.append({"image_id": iid, "ann_ids": [a["ann_id"] for a in anns_],
                               "gt": np.array([a["bbox"] for a in anns_], float).reshape(-1, 4),
                               "boxes": det.boxes.cpu().numpy()[keep], "scores": det.scores.cpu().numpy()[keep]})
            batch, pending = [], []
    frame = pd.DataFrame(persons)
    frame["short_sleeves"] = frame["short_sleeves"].map({True: "yes", False: "no"})
    return frame, images


def missed(frame: pd.DataFrame, images: list[dict], conf: float, weak: np.ndarray | None, factor: float) -> np.ndarray:
    """[P] 0 / 1: missed at ``conf`` after scores of detections on ``weak`` persons are multiplied by ``factor``."""
    row = {aid: i for i, aid in enumerate(frame["ann_id"])}
    out = np.ones(len(frame))
    for img in images:
        idx = np.array([row[a] for a in img["ann_ids"]], int)
        scores = img["scores"].astype(float).copy()
        if weak is not None and len(idx) and len(scores):
            hit = (iou_matrix(img["boxes"], img["gt"]) >= 0.5) & weak[idx][None, :]
            scores[hit.any(1)] *= factor
        found = match(ImageEval(img["boxes"], scores, img["gt"])).found(conf)
        out[idx] = (~found).astype(float)
    return out


def rank_of(slices: pd.DataFrame, frame: pd.DataFrame, planted: dict, config: SliceConfig,
            truth: np.ndarray) -> tuple[int | None, int | None, bool]:
    """(strict rank, overlap rank, planted slice significant), ranks 1-based among the returned slices."""
    strict = overlap = None
    significant = False
    for r, (preds, sig) in enumerate(zip(slices["predicates"], slices["significant"]), start=1):
        mask = slice_mask(frame, preds, config)
        jaccard = (mask & truth).sum() / max((mask | truth).sum(), 1)
        if strict is None and preds == planted:
            strict, significant = r, bool(sig)
        if overlap is None and jaccard >= 0.5:
            overlap = r
            significant = significant or bool(sig)
    return strict, overlap, significant


def time_discovery(frame: pd.DataFrame, cols: list[str], base: np.ndarray, rows: int,
                   config: SliceConfig) -> dict[str, list[float]]:
    """Seconds of 3 find_slices calls on ``rows`` persons resampled from ``frame``, for an outcome with
    :data:`PLANTED`[0] planted (miss rate 0.7 inside, the scenes' rate outside) and one with nothing planted."""
    rng = np.random.default_rng(0)
    take = rng.integers(0, len(frame), rows)
    big = frame[cols].iloc[take].reset_index(drop=True)
    truth = slice_mask(frame, PLANTED[0], config)[take]
    rate = base[take].mean()
    outcomes = {"planted": (rng.random(rows) < np.where(truth, 0.7, rate)).astype(float),
                "nothing_planted": (rng.random(rows) < rate).astype(float)}
    find_slices(big.iloc[:500], outcomes["planted"][:500], config)                    # warm-up (imports)
    timings: dict[str, list[float]] = {}
    for name, y in outcomes.items():
        timings[name] = []
        for _ in range(3):
            start = time.perf_counter()
            find_slices(big, y, config)
            timings[name].append(time.perf_counter() - start)
        print(f"discovery on {rows} persons x {len(cols)} attributes, {name}: "
              f"median {np.median(timings[name]):.2f} s of {[round(t, 2) for t in timings[name]]}")
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=1, help="0 is the seed looked at while tuning")
    parser.add_argument("--images", type=int, default=800)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--factor", type=float, default=0.3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="benchmarks/results/slices.json")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    detector = load_detector(args.device)
    weights = load_params(check_files=False).infer.detectors[0].weights
    config = SliceConfig()
    runs, null_runs, timings = [], [], {}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        frame, images = run_scenes(seed, args.images, detector)
        cols = [c for c in ATTRIBUTES if c in frame.columns]
        base = missed(frame, images, detector.conf, None, 1.0)
        null = find_slices(frame[cols], base, config)
        shuffled = find_slices(frame[cols], np.random.default_rng(seed).permutation(base), config)
        null_runs.append({"seed": seed, "render_seed": render_seed(seed), "persons": len(frame),
                          "miss_rate": float(base.mean()), "significant": int(null["significant"].sum()),
                          "significant_slices": null.loc[null["significant"], ["slice", "size", "mean", "ci_low",
                                                                                "ci_high", "rest_mean", "q_value"]]
                          .to_dict("records"),
                          "permuted_significant": int(shuffled["significant"].sum()),
                          "top": null["slice"].head(3).tolist()})
        print(f"seed {seed} (render seed {render_seed(seed)}): {len(frame)} persons, miss rate {base.mean():.3f}, "
              f"nothing planted: {int(null['significant'].sum())} significant slices {null['slice'].head(3).tolist()};"
              f" outcome permuted: {int(shuffled['significant'].sum())} significant")
        for planted in PLANTED:
            truth = slice_mask(frame, planted, config)
            y = missed(frame, images, detector.conf, truth, args.factor)
            start = time.perf_counter()
            slices = find_slices(frame[cols], y, config)
            seconds = time.perf_counter() - start
            strict, overlap, sig = rank_of(slices, frame, planted, config, truth)
            runs.append({"seed": seed, "planted": planted, "size": int(truth.sum()),
                         "miss_in_slice": float(y[truth].mean()), "miss_in_slice_before": float(base[truth].mean()),
                         "rank": strict, "overlap_rank": overlap, "significant": sig, "seconds": seconds,
                         "significant_slices": int(slices["significant"].sum()),
                         "top": slices["slice"].head(3).tolist()})
            print(f"  planted {planted}: size {truth.sum()}, miss {base[truth].mean():.2f} -> {y[truth].mean():.2f},"
                  f" rank {strict} (overlap {overlap}), significant {sig}, {seconds:.2f} s; top "
                  f"{slices['slice'].head(3).tolist()}")
        if seed == args.first_seed and args.rows:
            timings = time_discovery(frame, cols, base, args.rows, config)
    first = sum(r["rank"] == 1 for r in runs)
    top3 = sum(r["rank"] is not None and r["rank"] <= 3 for r in runs)
    ofirst = sum(r["overlap_rank"] == 1 for r in runs)
    otop3 = sum(r["overlap_rank"] is not None and r["overlap_rank"] <= 3 for r in runs)
    null_sig = [r["significant"] for r in null_runs]
    perm_sig = [r["permuted_significant"] for r in null_runs]
    slowest = max([t for ts in timings.values() for t in ts], default=float("nan"))
    need_first = int(np.ceil(0.8 * len(runs)))                    # the 12 of 15
    targets = {"planted_first": first >= need_first, "planted_top3_all": top3 == len(runs),
               "null_at_most_one_significant": max(null_sig, default=0) <= 1,
               "permuted_at_most_one_significant": max(perm_sig, default=0) <= 1,
               "discovery_20k_under_10s": bool(slowest <= 10.0)}
    print(f"planted slice first in {first}/{len(runs)} (overlap {ofirst}), top 3 in {top3}/{len(runs)} "
          f"(overlap {otop3}); nothing planted: significant slices per run {null_sig} (outcome permuted: {perm_sig}); "
          f"slowest discovery on "
          f"{args.rows} persons {slowest:.2f} s; targets {targets}")
    write_results(args.out, {"args": vars(args), "detector_weights": weights,
                             "detector_sha256_12": file_digest(weights), "config": config.model_dump(),
                             "runs": runs, "null_runs": null_runs, "discovery_seconds": timings, "first": first,
                             "top3": top3, "overlap_first": ofirst, "overlap_top3": otop3, "targets": targets})


if __name__ == "__main__":
    main()
