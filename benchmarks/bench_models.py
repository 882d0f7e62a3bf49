"""Raw batched forward throughput of the demo detector and classifier vs their scorers on the same inputs.

Raw forward = the network alone on a ready batch (``detector.model(letterboxed)``, ``classifier.model(normalised)``),
at the best of several batch sizes. Scorer = what every explainer calls (letterbox / resize + normalise, forward,
D-RISE similarity or target probabilities), in chunks of that batch size. The two are then timed in 12 short
interleaved rounds and compared by the median per-round ratio (a shared VM's speed drifts by 2x over minutes).
Target: scorer >= 90 % of raw forward.

ONNX rows (``kind: onnx``, detection.models.onnx_runtime): the same detector exported by ultralytics (dynamic
batch and size) and the classifier exported by torch.onnx, scored through ONNX Runtime (as many threads as torch)
against the PyTorch adapter's scorer, interleaved the same way; the ratio is ONNX / PyTorch scorer img/s.

    python benchmarks/bench_models.py [--out benchmarks/results/models.json] [--seconds 3] [--quick] [--no-onnx]
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

from detection.datasets.imageio import load_rgb, to_batch
from detection.datasets.tables import DatasetTables
from detection.models.letterbox import letterbox
from detection.models.scene_classifier import load_classifier
from detection.models.specs import ClassifierSpec, DetectorSpec, build_classifier, build_detector
from detection.models.yolo import YoloDetector
from detection.scorers import ClassifierScorer, DRiseScorer


def throughput(fn, batch: torch.Tensor, seconds: float) -> float:
    """Images per second of ``fn(batch)``, after warm-up, over at least ``seconds``."""
    with torch.inference_mode():
        for _ in range(2):
            fn(batch)
        if batch.is_cuda:
            torch.cuda.synchronize()
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            fn(batch)
            n += 1
        if batch.is_cuda:
            torch.cuda.synchronize()
        return n * batch.shape[0] / (time.perf_counter() - start)


def write_results(path: str, results: dict) -> None:
    """The benchmark's numbers as JSON (benchmarks/results/ by default), with the machine's load average when they
    were written (other jobs on a shared machine slow every timing; ratios within one run are what to compare)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    load = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    out.write_text(json.dumps({**results, "loadavg_1_5_15_min": load, "torch_threads": torch.get_num_threads(),
                               "written": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2) + "\n")
    print(f"written: {out.absolute()}")


def compare(raw_fn, raw_batch, scorer, images, seconds: float, rounds: int = 12) -> tuple[float, float, float]:
    """Raw and scorer throughput in short interleaved rounds; the ratio is the median of per-round ratios, which
    cancels the slow drift of a shared machine's speed. Returns (median raw, median scorer, median ratio)."""
    raw, scored = [], []
    for _ in range(rounds):
        raw.append(throughput(raw_fn, raw_batch, seconds / rounds))
        scored.append(throughput(scorer, images, seconds / rounds))
    ratio = float(np.median(np.array(scored) / np.array(raw)))
    return float(np.median(raw)), float(np.median(scored)), ratio


def export_onnx(detector_pt: str, classifier, folder: Path) -> tuple[Path, Path]:
    """The detector exported by ultralytics (offline; dynamic batch and size) and the classifier's network by
    torch.onnx (dynamic batch), into ``folder``."""
    import shutil
    import warnings

    from ultralytics import YOLO

    pt = folder / Path(detector_pt).name
    shutil.copyfile(detector_pt, pt)                # ultralytics writes the .onnx beside the .pt
    det_onnx = Path(YOLO(str(pt)).export(format="onnx", imgsz=320, dynamic=True, simplify=False, verbose=False))
    clf_onnx = folder / "classifier.onnx"
    size = classifier.input_size or (240, 320)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(classifier.model.cpu().eval(), (torch.rand(1, 3, *size),), str(clf_onnx), dynamo=False,
                          input_names=["images"], output_names=["logits"], dynamic_axes={"images": {0: "batch"}})
    classifier.model.to(classifier.device)
    return det_onnx, clf_onnx


def onnx_rows(args, device, images, det, ref, order, clf, results: dict) -> None:
    """Scorer img/s of the ONNX Runtime adapters vs the PyTorch adapters' scorers (same chunk size, same inputs)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        det_onnx, clf_onnx = export_onnx(args.detector, clf, Path(tmp))
        chunk = results["detector"]["best_batch"]
        onnx_det = build_detector(DetectorSpec(id="onnx", kind="onnx", weights=str(det_onnx), imgsz=det.imgsz),
                                  str(device), chunk)
        ref_scorer = DRiseScorer.for_detections(det, ref, index=order.tolist(), chunk_size=chunk)
        onnx_scorer = DRiseScorer.for_detections(onnx_det, ref, index=order.tolist(), chunk_size=chunk)
        diff = float((onnx_scorer(images[:chunk]) - ref_scorer(images[:chunk])).abs().max())
        torch_s, onnx_s, ratio = compare(ref_scorer, images[:chunk], onnx_scorer, images[:chunk], 4 * args.seconds)
        results["detector_onnx"] = {"batch": chunk, "providers": onnx_det.graph.providers,
                                    "pytorch_scorer_images_per_s": torch_s, "onnx_scorer_images_per_s": onnx_s,
                                    "onnx_vs_pytorch": ratio, "max_abs_score_difference": diff}
        chunk = results["classifier"]["best_batch"]
        spec = ClassifierSpec(id="onnx", kind="onnx", weights=str(clf_onnx), classes=clf.class_names,
                              multi_label=clf.multi_label, input_size=clf.input_size,
                              onnx={"mean": clf.mean.flatten().tolist(), "std": clf.std.flatten().tolist(),
                                    "antialias": clf.antialias})
        onnx_clf = build_classifier(spec, str(device), chunk)
        ref_scorer, onnx_scorer = ClassifierScorer(clf, chunk_size=chunk), ClassifierScorer(onnx_clf, chunk_size=chunk)
        diff = float((onnx_scorer(images[:chunk]) - ref_scorer(images[:chunk])).abs().max())
        torch_s, onnx_s, ratio = compare(ref_scorer, images[:chunk], onnx_scorer, images[:chunk], 4 * args.seconds)
        results["classifier_onnx"] = {"batch": chunk, "providers": onnx_clf.model.graph.providers,
                                      "pytorch_scorer_images_per_s": torch_s, "onnx_scorer_images_per_s": onnx_s,
                                      "onnx_vs_pytorch": ratio, "max_abs_score_difference": diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pulled", default="data/pulled")
    parser.add_argument("--detector", default="models/detector.pt")
    parser.add_argument("--classifier", default="models/classifier.pt")
    parser.add_argument("--batch-sizes", default="1,8,16,32,64")
    parser.add_argument("--targets", type=int, default=5, help="D-RISE targets (detections explained at once)")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--out", default="benchmarks/results/models.json")
    parser.add_argument("--quick", action="store_true", help="batch sizes 1,16 and 0.5 s per timing (a smoke run)")
    parser.add_argument("--no-onnx", dest="onnx", action="store_false", help="skip the ONNX Runtime rows")
    args = parser.parse_args()
    if args.quick:
        args.batch_sizes, args.seconds = "1,16", 0.5
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sizes = [int(b) for b in args.batch_sizes.split(",")]

    rows = DatasetTables.read(args.pulled).images.to_pylist()[:max(sizes)]
    images = to_batch([load_rgb(r["uri"]) for r in rows]).to(device)
    results: dict = {"device": str(device), "cpus": os.cpu_count(), "image_size": list(images.shape[-2:])}

    det = YoloDetector(args.detector, device=device)
    ref = det.detect(images[:1])[0]
    order = ref.scores.argsort(descending=True)[:args.targets]
    lb, _ = letterbox(images, det.imgsz, det.stride)
    raw = {b: throughput(det.model, lb[:b], args.seconds) for b in sizes}
    best = max(raw, key=raw.get)
    scorer = DRiseScorer.for_detections(det, ref, index=order.tolist(), chunk_size=best)
    raw_best, scored, ratio = compare(det.model, lb[:best], scorer, images[:best], 4 * args.seconds)
    results["detector"] = {"raw_images_per_s": raw, "best_batch": best, "targets": len(order),
                           "raw_best_images_per_s": raw_best, "scorer_images_per_s": scored, "scorer_vs_raw": ratio}

    clf = load_classifier(args.classifier, device=device)
    pre = clf.preprocess(images)
    raw = {b: throughput(clf.model, pre[:b], args.seconds) for b in sizes}
    best = max(raw, key=raw.get)
    scorer = ClassifierScorer(clf, chunk_size=best)
    raw_best, scored, ratio = compare(clf.model, pre[:best], scorer, images[:best], 4 * args.seconds)
    results["classifier"] = {"raw_images_per_s": raw, "best_batch": best, "targets": scorer.num_targets,
                             "input_size": list(clf.input_size) if clf.input_size else None,
                             "raw_best_images_per_s": raw_best, "scorer_images_per_s": scored, "scorer_vs_raw": ratio}
    if clf.input_size is not None and tuple(images.shape[-2:]) != tuple(clf.input_size):
        # Explainers can resize an image to the model's input once and perturb it there: no resize per forward.
        small = torch.nn.functional.interpolate(images[:best], size=clf.input_size, mode="bilinear",
                                                align_corners=False).contiguous()
        _, scored_small, ratio_small = compare(clf.model, pre[:best], scorer, small, 4 * args.seconds)
        results["classifier"].update(scorer_at_input_size_images_per_s=scored_small,
                                     scorer_at_input_size_vs_raw=ratio_small)

    if args.onnx:
        onnx_rows(args, device, images, det, ref, order, clf, results)

    print(f"\nmodel throughput on {device} ({os.cpu_count()} CPUs), images {tuple(images.shape[-2:])}")
    print(f"{'model':<12}{'batch':>6}{'raw img/s':>11}{'scorer img/s':>14}{'scorer/raw':>12}")
    for name in ("detector", "classifier"):
        r = results[name]
        print(f"{name:<12}{r['best_batch']:>6}{r['raw_best_images_per_s']:>11.1f}"
              f"{r['scorer_images_per_s']:>14.1f}{r['scorer_vs_raw']:>12.3f}")
        print(f"{'':<12}raw by batch size: " + ", ".join(f"{b}: {v:.1f}" for b, v in r["raw_images_per_s"].items()))
        if "scorer_at_input_size_vs_raw" in r:
            print(f"{'':<12}scorer on images already at the input size: {r['scorer_at_input_size_images_per_s']:.1f}"
                  f" img/s, {r['scorer_at_input_size_vs_raw']:.3f} of raw")
    for name in ("detector_onnx", "classifier_onnx"):
        if name in results:
            r = results[name]
            print(f"{name:<16}batch {r['batch']}: ONNX Runtime scorer {r['onnx_scorer_images_per_s']:.1f} img/s vs "
                  f"PyTorch {r['pytorch_scorer_images_per_s']:.1f} ({r['onnx_vs_pytorch']:.3f}x; scores differ by "
                  f"<= {r['max_abs_score_difference']:.1e})")
    write_results(args.out, results)


if __name__ == "__main__":
    main()
