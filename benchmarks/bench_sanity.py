"""Adebayo et al.'s cascading randomisation on the demo models: each method's saliency on copies of the model whose
top layers are randomised in ``--stages`` cumulative stages, compared with the trained model's by Spearman's rho
(signed and absolute maps); median over targets per method and stage. A method passes when its correlation at full
randomisation is low (its maps depend on what the model learned).

Models: the demo classifier (its classes on val scenes, at its input size) and the demo detector (D-RISE score of
pedestrians it finds, the trained model's detections as references for every copy).

    python benchmarks/bench_sanity.py [--models classifier,detector] [--scenes 2] [--persons 2] [--stages 4]
        [--methods integrated_gradients,input_x_gradient,grad_cam,igos_pp,rise] [--budget 300] [--threads 1]
        [--out benchmarks/results/sanity_<split>.json]
"""
from __future__ import annotations

import argparse
import functools
import os
import time

import flows  # noqa: F401  (environment defaults)

import numpy as np
import torch.nn.functional as F

from bench_models import write_results
from detection.models.scene_classifier import load_classifier
from detection.scorers import ClassifierScorer, DRiseScorer
from explainers.registry import METHODS, without_detections
from explainers.sanity import cascading_randomisation
from pedestrians import classifier_scenes, describe_split, file_digest, pedestrians, start_run


def summary(rows: list[dict]) -> dict:
    out: dict[str, dict] = {}
    for r in rows:
        out.setdefault(r["method"], {}).setdefault(r["stage"], []).append((r["spearman"], r["spearman_abs"],
                                                                           r["randomised"], r["layers"]))
    return {m: {str(s): {"randomised": f"{v[0][2]}/{v[0][3]}",
                         "spearman": float(np.nanmedian([x[0] for x in v])),
                         "spearman_abs": float(np.nanmedian([x[1] for x in v]))} for s, v in stages.items()}
            for m, stages in out.items()}


def factories(names: list[str], detection: bool, budget: int) -> dict:
    made = {}
    for name in names:
        real = name if detection else without_detections(name)
        kw = {"iterations": 2, "ig_steps": 4} if real == "igos_pp" else {}
        made[real] = functools.partial(METHODS[real], **kw)
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=["tune", "heldout"], default="heldout")
    parser.add_argument("--models", default="classifier,detector")
    parser.add_argument("--scenes", type=int, default=2)
    parser.add_argument("--persons", type=int, default=2)
    parser.add_argument("--stages", type=int, default=4)
    parser.add_argument("--methods", default="integrated_gradients,input_x_gradient,grad_cam,igos_pp,rise")
    parser.add_argument("--budget", type=int, default=300, help="forwards per explanation (methods with budgets)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = start_run(args.threads)
    names = args.methods.split(",")
    start = time.perf_counter()
    results = {"device": str(device), "cpus": os.cpu_count(), "split": describe_split(args.split),
               "budget": args.budget, "stages": args.stages}
    if "classifier" in args.models:
        clf = load_classifier("models/classifier.pt", device=device)
        images = []
        for _, img in classifier_scenes(args.split, args.scenes):
            img = img.to(device)
            if clf.input_size is not None and tuple(clf.input_size) != tuple(img.shape[-2:]):
                img = F.interpolate(img[None], size=clf.input_size, mode="bilinear", align_corners=False)[0]
            images.append(img.contiguous())
        rows = cascading_randomisation(clf, "model", lambda m: ClassifierScorer(m, [0]),
                                       factories(names, False, args.budget), images, steps=args.stages,
                                       budget=args.budget)
        results["classifier"] = {"weights_sha256_12": file_digest("models/classifier.pt"), "target": "person",
                                 "summary": summary(rows), "rows": rows}
        print("classifier", results["classifier"]["summary"], flush=True)
    if "detector" in args.models:
        for p in pedestrians(args.split, args.persons, device):
            ref = p["scorer"]
            rows = cascading_randomisation(ref.model, "model",
                                           lambda m, ref=ref: DRiseScorer(m, ref.target_boxes, ref.target_probs,
                                                                          chunk_size=16),
                                           factories(names, True, args.budget), [p["image"]], steps=args.stages,
                                           budget=args.budget)
            results.setdefault("detector_rows", []).extend({**r, "det_id": p["det_id"]} for r in rows)
        results["detector"] = {"weights_sha256_12": file_digest("models/detector.pt"),
                               "summary": summary(results["detector_rows"])}
        print("detector", results["detector"]["summary"], flush=True)
    results["seconds"] = round(time.perf_counter() - start, 1)
    write_results(args.out or f"benchmarks/results/sanity_{args.split}.json", results)


if __name__ == "__main__":
    main()
