"""Body-part masks for 10,000 detections on the CPU (target < 60 s): the parts stage's per-detection work
(keypoint source choice, masks, grouping + context, RLE rows) without Prefect. Prints a table, writes JSON.

Detections are rendered synthetic pedestrians (sizes as in the default dataset) with jittered boxes, so each one
matches a GT person (source gt); the template (no keypoints) path is timed too.

    python benchmarks/bench_parts.py [--n 10000] [--out benchmarks/results/parts.json]
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from bench_models import write_results
from detection.datasets.synthetic import SyntheticConfig, render_scene, scene_rows
from detection.parts import body_parts
from tasks.params import PartsParams
from tasks.parts import _rows, choose_keypoints


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000, help="detections per measurement")
    parser.add_argument("--out", default="benchmarks/results/parts.json")
    args = parser.parse_args()
    cfg = SyntheticConfig()
    rng = np.random.default_rng(0)
    items = []
    index = 0
    while sum(len(i["persons"]) for i in items) < 400:
        anns, _ = scene_rows(render_scene(cfg, 0, index), f"b{index}")
        persons = [a for a in anns if a["category"] == "person"]
        items.append({"image": {"image_id": f"b{index}", "uri": "", "height": cfg.height, "width": cfg.width},
                      "persons": persons, "pose": [], "detections": [], "gt_parts": []})
        index += 1
    pairs = [(item, p) for item in items for p in item["persons"]]
    detections = []
    for k in range(args.n):
        item, person = pairs[k % len(pairs)]
        shift = rng.normal(0, 0.02, 2) * (person["bbox"][3] - person["bbox"][1])
        box = np.asarray(person["bbox"]) + np.tile(shift, 2)
        detections.append((item, box.tolist()))
    params = PartsParams()

    def run(template: bool, n: int = args.n) -> float:
        start = time.perf_counter()
        rows = 0
        for item, box in detections[:n]:
            scope = {**item, "persons": []} if template else item
            kps, source = choose_keypoints(box, None, scope, params)
            person = body_parts(kps, box, (cfg.height, cfg.width), source)
            rows += len(_rows(item["image"], "d", "m", person.grouped(params.grouping, params.context)))
        assert rows == 11 * n
        return time.perf_counter() - start

    run(False, 200)                                                    # warm-up
    results = {"gt_keypoints_s": run(False), "template_s": run(True)}
    heights = [p["bbox"][3] - p["bbox"][1] for _, p in pairs]
    print(f"\nparts for {args.n} detections ({cfg.width}x{cfg.height} images, person height median "
          f"{np.median(heights):.0f} px), {os.cpu_count()} CPUs ({platform.processor() or platform.machine()})")
    print(f"{'keypoints':<14}{'seconds':>10}{'det/s':>10}")
    for name, key in (("ground truth", "gt_keypoints_s"), ("template", "template_s")):
        print(f"{name:<14}{results[key]:>10.1f}{args.n / results[key]:>10.0f}")
    write_results(args.out, {"n": args.n, "cpus": os.cpu_count(), **results})


if __name__ == "__main__":
    main()
