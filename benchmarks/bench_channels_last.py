"""The demo detector's scorer with channels-last weights (``YoloDetector``'s CPU default) against the same weights
stored contiguously (``channels_last=False``): images per second at the batch sizes explainers send (1 + T images
for FastSHAP's body parts of T pedestrians, 16 for a sampling explainer's chunk), timed in short interleaved rounds
(the median per-round ratio: a shared VM's speed drifts over minutes), and the largest score difference on the
same pulled images.

    python benchmarks/bench_channels_last.py [--batch-sizes 1,3,16] [--threads 1 2] [--seconds 6]
                                             [--out benchmarks/results/channels_last.json]
"""
from __future__ import annotations

import argparse

import flows  # noqa: F401  (environment defaults)

import torch

from bench_models import compare, write_results
from detection.datasets.imageio import load_rgb, to_batch
from detection.datasets.tables import DatasetTables
from detection.models.yolo import YoloDetector
from detection.scorers import DRiseScorer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pulled", default="data/pulled")
    ap.add_argument("--detector", default="models/detector.pt")
    ap.add_argument("--batch-sizes", default="1,3,16")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--targets", type=int, default=3, help="D-RISE targets (detections explained at once)")
    ap.add_argument("--seconds", type=float, default=6.0, help="each variant's seconds per batch size and thread count")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--out", default="benchmarks/results/channels_last.json")
    args = ap.parse_args()
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    rows = DatasetTables.read(args.pulled).images.to_pylist()[:max(sizes)]
    images = to_batch([load_rgb(r["uri"]) for r in rows])
    variants = {name: YoloDetector(args.detector, device="cpu", channels_last=cl)
                for name, cl in (("contiguous", False), ("channels_last", True))}
    ref = variants["contiguous"].detect(images[:1])[0]
    order = ref.scores.argsort(descending=True)[:args.targets].tolist()
    scorers = {name: DRiseScorer.for_detections(det, ref, index=order, chunk_size=max(sizes))
               for name, det in variants.items()}
    with torch.inference_mode():
        scores = {name: s(images) for name, s in scorers.items()}
    diff = float((scores["contiguous"] - scores["channels_last"]).abs().max()) if order else 0.0
    results = {"detector": args.detector, "images": len(rows), "targets": len(order),
               "max_abs_score_difference": diff, "rows": []}
    print(f"{len(rows)} images, {len(order)} targets; max |score difference| {diff:.2e}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for b in sizes:
            plain, fast, ratio = compare(scorers["contiguous"], images[:b], scorers["channels_last"], images[:b],
                                         args.seconds, args.rounds)
            row = {"threads": threads, "batch": b, "contiguous_img_s": round(plain, 1),
                   "channels_last_img_s": round(fast, 1), "channels_last / contiguous": round(ratio, 3)}
            results["rows"].append(row)
            print(f"  {threads} thread(s), batch {b:3d}: contiguous {row['contiguous_img_s']:7.1f} img/s, "
                  f"channels-last {row['channels_last_img_s']:7.1f} img/s: {ratio:.2f}x")
    write_results(args.out, results)


if __name__ == "__main__":
    main()
