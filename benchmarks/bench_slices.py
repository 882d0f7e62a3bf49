"""Planted-weakness benchmark for slice discovery (Domino's evaluation idea, for a detector).

The demo detector runs once on held-out synthetic scenes; a wrapper then multiplies by ``--factor`` (0.3) the score
of every detection overlapping (IoU >= 0.5) a person inside one planted attribute slice, with no retraining. Each
person's outcome is missed (no one-to-one match scoring >= the detector's conf) and :func:`detection.slices.find_slices`
searches the generator's attributes (``attributes`` table, plus occlusion / truncation). Reported per run: the rank of
the planted slice (strict: the same predicates; overlap: a slice whose rows have Jaccard >= 0.5 with it), whether it
is significant, and the significant slices of the same scenes with nothing planted; then the discovery time on
``--rows`` persons resampled from the scenes.

    python benchmarks/bench_slices.py [--seeds 5] [--images 800] [--rows 20000] [--out benchmarks/results/slices.json]
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
from pedestrians import HELDOUT_SEED, load_detector
from tasks.params import load_params

PLANTED = ({"facing": "back", "shirt_colour": "blue"},
           {"pants_colour": "black", "short_sleeves": "yes"},
           {"facing": "left", "occluder": "none"})
ATTRIBUTES = ["facing", "yaw_deg", "walking_phase", "stride", "arm_pose", "skin_tone", "shirt_colour", "pants_colour",
              "hair_colour", "short_sleeves", "bare_shins", "height_px", "truncation_side", "occluder", "occluded_by",
              "person_overlap", "contrast", "shirt_contrast", "lighting", "occlusion", "truncation"]


def run_scenes(seed: int, n_images: int, detector) -> tuple[pd.DataFrame, list[dict]]:
    """Persons (attributes + annotation columns) and, per image, the detections and person boxes."""
    cfg = load_params(check_files=False).pull.synthetic
    persons, images = [], []
    batch, pending = [], []
    for index in range(n_images):
        scene = render_scene(cfg, HELDOUT_SEED + 97 * seed, index)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--images", type=int, default=800)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--factor", type=float, default=0.3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="benchmarks/results/slices.json")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    detector = load_detector(args.device)
    config = SliceConfig()
    runs, null_runs, timings = [], [], []
    for seed in range(args.seeds):
        frame, images = run_scenes(seed, args.images, detector)
        cols = [c for c in ATTRIBUTES if c in frame.columns]
        base = missed(frame, images, detector.conf, None, 1.0)
        null = find_slices(frame[cols], base, config)
        null_runs.append({"seed": seed, "persons": len(frame), "miss_rate": float(base.mean()),
                          "significant": int(null["significant"].sum()),
                          "top": null["slice"].head(3).tolist()})
        print(f"seed {seed}: {len(frame)} persons, miss rate {base.mean():.3f}, nothing planted: "
              f"{int(null['significant'].sum())} significant slices {null['slice'].head(3).tolist()}")
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
                         "top": slices["slice"].head(3).tolist()})
            print(f"  planted {planted}: size {truth.sum()}, miss {base[truth].mean():.2f} -> {y[truth].mean():.2f},"
                  f" rank {strict} (overlap {overlap}), significant {sig}, {seconds:.1f} s; top "
                  f"{slices['slice'].head(3).tolist()}")
        if seed == 0 and args.rows:
            rng = np.random.default_rng(0)
            take = rng.integers(0, len(frame), args.rows)
            big = frame[cols].iloc[take].reset_index(drop=True)
            truth = slice_mask(frame, PLANTED[0], config)[take]
            y = (rng.random(args.rows) < np.where(truth, 0.7, base[take].mean())).astype(float)
            find_slices(big.iloc[:500], y[:500], config)                    # warm-up (imports, numba)
            for _ in range(3):
                start = time.perf_counter()
                find_slices(big, y, config)
                timings.append(time.perf_counter() - start)
            print(f"discovery on {args.rows} persons x {len(cols)} attributes: "
                  f"median {np.median(timings):.2f} s of {[round(t, 2) for t in timings]}")
    first = sum(r["rank"] == 1 for r in runs)
    top3 = sum(r["rank"] is not None and r["rank"] <= 3 for r in runs)
    ofirst = sum(r["overlap_rank"] == 1 for r in runs)
    otop3 = sum(r["overlap_rank"] is not None and r["overlap_rank"] <= 3 for r in runs)
    print(f"planted slice first in {first}/{len(runs)} (overlap {ofirst}), top 3 in {top3}/{len(runs)} "
          f"(overlap {otop3}); nothing planted: significant slices per run {[r['significant'] for r in null_runs]}")
    write_results(args.out, {"args": vars(args), "runs": runs, "null_runs": null_runs,
                             "discovery_seconds": timings, "first": first, "top3": top3,
                             "overlap_first": ofirst, "overlap_top3": otop3})


if __name__ == "__main__":
    main()
