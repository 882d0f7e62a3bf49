"""iGOS++ against D-RISE on the demo detector's pedestrians (and optionally RISE on the demo classifier's scenes):
deletion AUC (mean-colour substrate) and insertion AUC (blur, kernel 11, sigma 5), 20 steps, cost in
forward-equivalents (a backward = 2 forwards) and seconds. Targets: iGOS++ (detection setting, ~300
forward-equivalents) within 10 % of D-RISE@4000 on both AUCs; on the classifier, deletion <= RISE@4000's.

    python benchmarks/bench_igos.py [--split heldout] [--persons 30] [--drise 4000] [--scenes 0] [--rise 4000]
                                    [--threads 1] [--out benchmarks/results/igos_<split>.json]
"""
from __future__ import annotations

import argparse
import os
import time

import flows  # noqa: F401  (environment defaults)

import numpy as np
import torch.nn.functional as F

from bench_models import write_results
from detection.models.scene_classifier import load_classifier
from detection.scorers import ClassifierScorer
from explainers import deletion_insertion
from explainers.igos import IGosPP
from explainers.rise import DRise, Rise
from pedestrians import classifier_scenes, describe_split, file_digest, pedestrians, start_run

STEPS = 20


def measure(scorer, image, method, budget) -> dict:
    exp = method.explain(image, budget=budget, seed=0)
    out = {"n_forward": exp.n_forward, "seconds": exp.seconds}
    for mode in ("deletion", "insertion"):
        out[mode] = deletion_insertion(scorer, image, exp.saliency, mode=mode, steps=STEPS).auc.tolist()
    return out


def summarise(rows: list[dict]) -> dict:
    cat = {k: np.concatenate([np.atleast_1d(r[k]) for r in rows]) for k in ("deletion", "insertion")}
    return {"median_deletion": float(np.nanmedian(cat["deletion"])),
            "mean_deletion": float(np.nanmean(cat["deletion"])),
            "median_insertion": float(np.nanmedian(cat["insertion"])),
            "mean_insertion": float(np.nanmean(cat["insertion"])),
            "mean_n_forward": float(np.mean([r["n_forward"] for r in rows])),
            "mean_seconds": float(np.mean([r["seconds"] for r in rows])), "targets": int(cat["deletion"].size)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=["tune", "heldout"], default="heldout")
    parser.add_argument("--persons", type=int, default=30)
    parser.add_argument("--drise", type=int, default=4000, help="D-RISE budget (masks)")
    parser.add_argument("--scenes", type=int, default=0, help="classifier scenes (0: detector only)")
    parser.add_argument("--rise", type=int, default=4000, help="RISE budget on the classifier")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = start_run(args.threads)
    start = time.perf_counter()
    results = {"device": str(device), "cpus": os.cpu_count(), "split": describe_split(args.split), "steps": STEPS,
               "substrates": {"deletion": "mean colour", "insertion": "blur(sigma=5.0,kernel=11)"},
               "detector_weights_sha256_12": file_digest("models/detector.pt")}
    if args.persons:
        persons = pedestrians(args.split, args.persons, device)
        results["persons"] = [p["det_id"] for p in persons]
        rows = {"igos_pp": [], f"drise@{args.drise}": []}
        for p in persons:
            rows["igos_pp"].append(measure(p["scorer"], p["image"], IGosPP(p["scorer"], setting="detection"), None))
            rows[f"drise@{args.drise}"].append(measure(p["scorer"], p["image"], DRise(p["scorer"]), args.drise))
            print(p["det_id"], {k: (v[-1]["deletion"], v[-1]["insertion"]) for k, v in rows.items()}, flush=True)
        results["detector"] = {k: {"summary": summarise(v), "per_target": v} for k, v in rows.items()}
    if args.scenes:
        clf = load_classifier("models/classifier.pt", device=device)
        results["classifier_weights_sha256_12"] = file_digest("models/classifier.pt")
        rows = {"igos_pp": [], f"rise@{args.rise}": []}
        for image_id, img in classifier_scenes(args.split, args.scenes):
            img = img.to(device)
            if clf.input_size is not None and tuple(clf.input_size) != tuple(img.shape[-2:]):
                img = F.interpolate(img[None], size=clf.input_size, mode="bilinear", align_corners=False)[0]
            scorer = ClassifierScorer(clf)
            rows["igos_pp"].append(measure(scorer, img.contiguous(), IGosPP(scorer, setting="classification"), None))
            rows[f"rise@{args.rise}"].append(measure(scorer, img.contiguous(), Rise(scorer), args.rise))
            print(image_id, flush=True)
        results["classifier"] = {k: {"summary": summarise(v), "per_target": v} for k, v in rows.items()}
    results["seconds"] = round(time.perf_counter() - start, 1)
    write_results(args.out or f"benchmarks/results/igos_{args.split}.json", results)


if __name__ == "__main__":
    main()
