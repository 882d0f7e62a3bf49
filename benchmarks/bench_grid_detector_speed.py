"""Time of a FastShapGridDetector explanation (``explainers.fastshap_grid_detector``) per image and per pedestrian,
beside one detector pass of the same image, on one CPU thread: the demo detector at its pipeline size (imgsz 320),
images of the pipeline's size (240 x 320, random pixels: the cost does not depend on the content once the targets
are fixed), T = 1, 2, 4 given boxes (an image's pedestrians share the explanation's two detector passes and its one
explainer forward). Each explanation builds its explainer as the explain stage does (a scorer per image).

    python benchmarks/bench_grid_detector_speed.py [--weights weights/demo/fastshap_grid_detector.pt] [--images 24]
"""
from __future__ import annotations

import argparse
import statistics
import time

import flows  # noqa: F401  (environment defaults)

import torch

from bench_models import write_results
from detection.models.yolo import YoloDetector
from detection.scorers import DRiseScorer
from explainers.fastshap_grid_detector import FastShapGridDetector, FastShapGridDetectorCheckpoint

BOXES = torch.tensor([[40.0, 30.0, 100.0, 220.0], [150.0, 20.0, 210.0, 200.0], [230.0, 60.0, 290.0, 230.0],
                      [10.0, 100.0, 50.0, 200.0]])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="weights/demo/fastshap_grid_detector.pt")
    parser.add_argument("--detector", default="weights/demo/detector.pt")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/grid_detector_speed.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    detector = YoloDetector(args.detector, imgsz=320, conf=0.25, iou=0.5, device="cpu")
    ckpt = FastShapGridDetectorCheckpoint.load(args.weights)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 240, 320, generator=g) for _ in range(args.images)]
    results = {}
    for T in (1, 2, 4):
        for image in images[:2]:                                                  # warm-up
            FastShapGridDetector(DRiseScorer(detector, BOXES[:T], torch.ones(T, 1)), weights=ckpt).explain(image)
        times, passes = [], []
        for image in images:
            start = time.perf_counter()
            FastShapGridDetector(DRiseScorer(detector, BOXES[:T], torch.ones(T, 1)), weights=ckpt).explain(image)
            times.append(time.perf_counter() - start)
            start = time.perf_counter()
            detector.candidates_and_maps(image[None])
            passes.append(time.perf_counter() - start)
        per_image, one_pass = statistics.median(times) * 1000, statistics.median(passes) * 1000
        results[f"T={T}"] = {"ms_per_image": round(per_image, 1), "ms_per_pedestrian": round(per_image / T, 1),
                             "detector_pass_ms": round(one_pass, 1)}
        print(f"T={T}: {per_image:.1f} ms an image, {per_image / T:.1f} ms a pedestrian (one detector pass "
              f"{one_pass:.1f} ms; the explanation takes two)", flush=True)
    write_results(args.out, {"weights": args.weights, "images": args.images, "results": results})


if __name__ == "__main__":
    main()
