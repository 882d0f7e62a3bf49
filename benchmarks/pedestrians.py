"""Benchmark data, split into what defaults were tuned on and what the benchmarks report on.

* ``tune``: the pulled default dataset (``data/pulled``, the pipeline's synthetic scenes of seed 0). Every
  estimator default that the benchmarks compare (BayesShapley's prior decay, KernelSHAP's third-order ridge, the
  perturbation defaults) was chosen on pedestrians of these scenes, and the peers' configurations are chosen here.
* ``train``: the training scenes (the seed the pipeline's trainers render): for benchmarks of learned components,
  which may train here and nowhere else.
* ``heldout``: scenes rendered by the same generator (``params.yaml``'s ``pull.synthetic``) with seed
  ``HELDOUT_SEED``, which is neither the pulled data's seed (0) nor the training scenes' (seed + 1 = 1): never
  trained on, never tuned on. The reported tables use these.

A *pedestrian* is a ground-truth person at least ``min_height`` px tall whom the demo detector finds (a person
detection with box IoU >= ``parts.match_iou``); its players are the 10 body parts built from its ground-truth
keypoints over the detection's box (as the parts stage builds them, source ``gt``), the context (box minus body)
and the rest of the image; its score is the D-RISE similarity to that detection.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from detection.datasets.imageio import load_rgb, to_batch
from detection.datasets.synthetic import render_scene, scene_rows
from detection.datasets.tables import DatasetTables
from detection.evaluation import iou_matrix
from detection.models.yolo import YoloDetector
from detection.parts import Keypoints, PartsError, body_parts
from detection.scorers import DRiseScorer
from tasks.params import load_params

HELDOUT_SEED = 1000
SPLITS = ("tune", "heldout", "train")
TUNE_SOURCE = "data/pulled"


def start_run(threads: int) -> torch.device:
    """What every accuracy benchmark does first: quiet library warnings, ``threads`` torch threads (1 on the shared
    2-core VM: two threads spin-wait there), and the device (CUDA when present)."""
    import warnings

    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def describe_split(split: str) -> str:
    if split == "tune":
        return f"tune: pedestrians of {TUNE_SOURCE} (the pipeline's synthetic scenes, seed 0)"
    if split == "train":
        return f"train: the training scenes (seed {training_seed()}: what learned components train on, never audited)"
    return f"heldout: scenes rendered with seed {HELDOUT_SEED} (pull.synthetic config of params.yaml)"


def file_digest(path: str | Path) -> str:
    """First 12 hex digits of a file's SHA-256 (which weights a result came from)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def scenes(split: str):
    """Yield (image_id, image [3, H, W] float in [0, 1], person annotation rows) of a split, in a fixed order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "tune":
        if not Path(TUNE_SOURCE, "images.parquet").is_file():
            raise FileNotFoundError(f"{TUNE_SOURCE}/images.parquet not found: the tuning split is the pulled default "
                                    f"dataset (dvc repro pull)")
        tables = DatasetTables.read(TUNE_SOURCE)
        persons: dict[str, list[dict]] = {}
        for a in tables.annotations.to_pylist():
            if a["category"] == "person":
                persons.setdefault(a["image_id"], []).append(a)
        for r in tables.images.to_pylist():
            yield r["image_id"], to_batch([load_rgb(r["uri"])])[0], persons.get(r["image_id"], [])
        return
    cfg = load_params(check_files=False).pull.synthetic
    seed = HELDOUT_SEED if split == "heldout" else training_seed()
    for index in range(100_000):
        scene = render_scene(cfg, seed, index)
        image_id = f"{split}{seed}-{index:06d}"
        annotations, _ = scene_rows(scene, image_id)
        yield image_id, to_batch([scene.image])[0], [a for a in annotations if a["category"] == "person"]


def training_seed() -> int:
    """The render seed of the training scenes (``seed`` + ``models.train_data.seed_offset``, as the trainers use)."""
    params = load_params(check_files=False)
    return params.seed + params.models.train_data.seed_offset


def load_detector(device) -> YoloDetector:
    """The demo detector as the pipeline's infer stage configures it (imgsz, conf, NMS IoU from params.yaml)."""
    spec = load_params(check_files=False).infer.detectors[0]
    return YoloDetector(spec.weights, imgsz=spec.imgsz, conf=spec.conf, iou=spec.iou, device=device)


def pedestrians(split: str, n: int, device, min_height: float = 60.0, detector: YoloDetector | None = None,
                skip: int = 0) -> list[dict]:
    """The first ``n`` pedestrians (after ``skip``) of a split, in scene order. Each: ``det_id``, ``image`` [3, H, W],
    ``scorer`` (D-RISE of the detection), ``regions`` {12: [12, H, W] bool = 10 parts, context, rest;
    10: the 10 parts; 6: parts6 groups}, ``box``, ``height``."""
    params = load_params(check_files=False)
    detector = detector or load_detector(device)
    person_class = detector.class_names.index("person") if "person" in detector.class_names else 0
    out: list[dict] = []
    seen = 0
    for image_id, image, persons in scenes(split):
        tall = [p for p in persons if p["bbox"][3] - p["bbox"][1] >= min_height and p["keypoints"] is not None]
        if not tall:
            continue
        dets = detector.detect(image[None].to(device))[0]
        keep = (dets.labels == person_class).nonzero()[:, 0]
        if len(keep) == 0:
            continue
        boxes = dets.boxes[keep].cpu().numpy().astype(float)
        ious = iou_matrix(np.array([p["bbox"] for p in tall], float), boxes)
        used: set[int] = set()
        H, W = image.shape[-2:]
        for k, person in enumerate(tall):
            j = int(np.argmax(ious[k]))
            if ious[k, j] < params.parts.match_iou or j in used:
                continue
            kps = Keypoints.from_coco(person["keypoints"])
            if kps.count < params.parts.min_keypoints:
                continue
            box = boxes[j].tolist()
            try:
                parts = body_parts(kps, box, (H, W), "gt").grouped("parts10", context=True).full()   # [11, H, W]
            except PartsError:
                continue
            used.add(j)
            seen += 1
            if seen <= skip:
                continue
            p10 = torch.from_numpy(parts[:10])
            context = torch.from_numpy(parts[10])
            rest = ~(p10.any(0) | context)
            p12 = torch.cat([p10, context[None], rest[None]])
            d = int(keep[j])
            scorer = DRiseScorer(detector, dets.boxes[d:d + 1], dets.class_probs[d:d + 1], chunk_size=16)
            out.append({"det_id": f"{image_id}/{person['ann_id']}", "image": image.to(device), "scorer": scorer,
                        "regions": {12: p12, 10: p10, 6: parts6(p10)}, "box": box,
                        "height": box[3] - box[1]})
            if len(out) == n:
                return out
    if len(out) < n:
        raise RuntimeError(f"split {split!r} has only {len(out)} pedestrians >= {min_height} px found by the detector "
                           f"(asked for {n}, skipping {skip})")
    return out


def parts6(p10: torch.Tensor) -> torch.Tensor:
    """[6, H, W]: head, torso, and each arm / leg as the union of its two parts (``PART_GROUPS['parts6']``)."""
    from detection.body import BODY_PARTS, PART_GROUPS

    return torch.stack([torch.stack([p10[BODY_PARTS.index(m)] for m in members]).any(0)
                        for members in PART_GROUPS["parts6"].values()])


def classifier_scenes(split: str, n: int, val_only: bool = True) -> list[tuple[str, torch.Tensor]]:
    """The first ``n`` scenes of a split (for ``tune``: its val split, as before), as (image_id, image)."""
    out = []
    if split == "tune":
        images = DatasetTables.read(TUNE_SOURCE).images.to_pylist()
        for r in images:
            if not val_only or r["split"] == "val":
                out.append((r["image_id"], to_batch([load_rgb(r["uri"])])[0]))
            if len(out) == n:
                break
        return out
    for image_id, image, _ in scenes(split):
        out.append((image_id, image))
        if len(out) == n:
            break
    return out
