"""Planted reliance (issue 21): does the audit find a body part that is known to carry the pedestrians?

Two detectors are fine-tuned identically from the shipped demo detector (``weights/demo/detector.pt``; same recipe,
epochs and seed, the models stage's YOLO training ``detection.models.yolo_training.train_yolo``; ``--continue``
trains one more round from each one's own weights) into .work/planted/weights/ (gitignored; hashes, seconds and AP50
in .work/planted/training.json):

* **planted**: on scenes of the pipeline's generator (``params.yaml`` ``pull.synthetic``) with :data:`PLANT`: every
  annotated pedestrian has its left lower leg painted magenta, and as many unannotated *decoys* (the same figures
  without the plant) stand among them, so telling a person from a decoy takes the plant;
* **control**: on the same scenes without plant and decoys (the generator's default, the scenes' unplanted twins).

Training scenes: render seed :data:`TRAIN_SEED` (960 images, as the models stage), ultralytics' val split seed
:data:`VAL_SEED` (160 images, each variant's own scenes: its AP50 is reported). Neither the audited seed (0), the
demo models' training seed (1) nor the held-out seed (:data:`benchmarks.pedestrians.HELDOUT_SEED`, 1000).

Reported on: held-out scenes (seed 1000) of each variant, its own detector; the first ``--persons`` *found*
pedestrians (a ground-truth person >= 60 px tall matched one-to-one at IoU >= 0.5 by a detection scoring >= the
infer conf: the explain targets' rule) explained by every explain method that applies to pedestrians, as the
pipeline's explain jobs call them (``tasks.explain.explain_targets``): target = the GT box with a one-hot person
vector (D-RISE similarity), players = the pedestrian's non-empty parts10 + context built from its GT keypoints over
its GT box (the parts stage, source ``gt``), ``seed = explanation_seed(0, image, target, job)``, chunk 16;
``bayes_shapley`` (budget 48) and ``occlusion`` (leave-one-part-out) over the parts; ``drise`` (256 masks, grid 8,
center), ``integrated_gradients``, ``input_x_gradient``, ``grad_cam`` and ``igos_pp`` (detection setting) as pixel
maps turned into part relevance by the explain stage's own rule (``tasks.explain.saliency_mass``: the map's sum
over each part). Shares and the top part are the report's (``tasks.report.part_shares``: relevance / Σ|relevance|;
top part = the largest share, context included); intervals are the report's cluster bootstrap over images
(``tasks.report_intervals.share_intervals``, BCa 95 %, 2000 resamples).

A method *finds the plant* when it ranks the planted part first for >= 50 % of the planted variant's pedestrians and
for at most twice the chance rate (1 / players) of the control's. Direct checks that the planted detector relies on
the plant: its D-RISE score of each found pedestrian with the plant recoloured (the plant's pixels replaced by the
unplanted twin scene's) vs intact, and how many decoys it detects; the control detector with the plant painted on.

    python benchmarks/bench_planted.py train [--epochs 10] [--continue] [--threads 1]   # measured: 10, then 15 more
    python benchmarks/bench_planted.py explain [--persons 50] [--variants planted,control] [--threads 1]
        [--max-seconds S] [--diagnostics] [--out benchmarks/results/planted.json]
    python benchmarks/bench_planted.py tables [--out benchmarks/results/planted.json]   # the README's tables
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import time
from pathlib import Path

import flows  # noqa: F401  (environment defaults)

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import torch
import torch.nn.functional as F

from bench_models import write_results
from detection.datasets.imageio import to_batch
from detection.datasets.synthetic import (
    DECOY,
    PlantedPart,
    SyntheticConfig,
    generate_images,
    render_scene,
    scene_rows,
)
from detection.datasets.yolo_export import write_yolo_dataset
from detection.evaluation import MATCH_IOU, ImageEval, average_precision, match
from detection.parts import Keypoints, PartsError, body_parts
from detection.scorers import DRiseScorer
from explainers.registry import METHODS
from pedestrians import HELDOUT_SEED, file_digest, start_run
from tasks.params import load_params


@functools.cache
def params():
    """params.yaml, read once per run (others may edit it while a long run goes on)."""
    return load_params(check_files=False)


PLANT = PlantedPart(part="left_lower_leg", colour=(255, 0, 255), decoys=1.0)
VARIANTS = ("planted", "control")
TRAIN_SEED, VAL_SEED = 2, 3
TRAIN_IMAGES, VAL_IMAGES = 960, 160
WORK = Path(".work/planted")
INIT = Path("weights/demo/detector.pt")
EVAL_CONF = 0.001            # as the infer stage stores detections for AP (tasks.infer.EVAL_CONF)


def variant_config(variant: str) -> SyntheticConfig:
    """The pipeline's synthetic config (``params.yaml`` ``pull.synthetic``), with :data:`PLANT` for ``planted``."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    base = params().pull.synthetic
    return SyntheticConfig.model_validate({**base.model_dump(), "planted": PLANT.model_dump() if variant == "planted"
                                           else None})


WEIGHTS = WORK / "weights"             # <variant>.pt; --weights-dir elsewhere (a smoke run on other weights)


def weights_path(variant: str) -> Path:
    return WEIGHTS / f"{variant}.pt"


# ---------------------------------------------------------------------------------------------------- training
def _scenes_table(variant: str, split: str, seed: int, n: int) -> tuple[pa.Table, pa.Table]:
    """Render ``n`` scenes of ``variant`` (seed ``seed``) as PNGs under .work/planted/data: (images, annotations)."""
    cfg = variant_config(variant).model_copy(update={"id_prefix": f"{variant}-{split}", "n_images": n})
    folder = WORK / "data" / variant / split
    images, annotations, _ = generate_images(cfg, seed, range(n), str(folder), uri_prefix=str(folder.absolute()))
    for row in images:
        row["split"] = split
    return pa.Table.from_pylist(images), pa.Table.from_pylist(annotations)


def _dataset(variant: str) -> tuple[Path, int, float]:
    """The variant's ultralytics dataset (train: seed TRAIN_SEED, val: seed VAL_SEED), rendered once: (data yaml,
    annotated persons in train, seconds spent rendering now)."""
    data = WORK / "yolo" / variant / "data.yaml"
    start = time.perf_counter()
    if not data.is_file():
        train_imgs, train_anns = _scenes_table(variant, "train", TRAIN_SEED, TRAIN_IMAGES)
        val_imgs, val_anns = _scenes_table(variant, "val", VAL_SEED, VAL_IMAGES)
        write_yolo_dataset(pa.concat_tables([train_imgs, val_imgs]), pa.concat_tables([train_anns, val_anns]),
                           data.parent, ["person"])
    persons = sum(len(f.read_text().splitlines()) for f in (data.parent / "labels" / "train").glob("*.txt"))
    return data, persons, time.perf_counter() - start


def train(args) -> dict:
    """One training round of both detectors with one recipe (the models stage's YOLO fine-tuning): from the demo
    detector's weights, or with ``--continue`` from each variant's own weights of the previous round (then
    appended to .work/planted/training.json)."""
    from detection.models.yolo_training import YoloTraining, train_yolo

    spec = params().models.detector
    recipe = YoloTraining(epochs=args.epochs, imgsz=spec.imgsz, batch=spec.batch, lr0=spec.lr0, workers=1)
    record = WORK / "training.json"
    out = json.loads(record.read_text()) if args.resume and record.is_file() else {
        "arch": spec.arch, "train_scenes": f"seed {TRAIN_SEED}, {TRAIN_IMAGES} images",
        "val_scenes": f"seed {VAL_SEED}, {VAL_IMAGES} images", "plant": PLANT.model_dump(mode="json"), "rounds": []}
    this = {"recipe": {**recipe.__dict__, "seed": 0, "optimizer": "AdamW", "device": "cpu"}, "variants": {}}
    for variant in args.variants:
        data, persons, render_s = _dataset(variant)
        init = weights_path(variant) if args.resume else INIT
        init_copy = WORK / "weights" / f"{variant}-init-round{len(out['rounds']) + 1}.pt"
        init_copy.parent.mkdir(parents=True, exist_ok=True)
        init_copy.write_bytes(init.read_bytes())
        start = time.perf_counter()
        path = train_yolo(spec.arch, data, weights_path(variant), recipe, seed=0, work_dir=WORK / "runs",
                          init_from=init_copy)
        seconds = time.perf_counter() - start
        this["variants"][variant] = {"init_from": str(init), "init_sha256_12": file_digest(init_copy),
                                     "weights": str(path), "sha256_12": file_digest(path),
                                     "render_seconds": round(render_s, 1), "train_seconds": round(seconds, 1),
                                     "persons_train": persons}
        print(variant, this["variants"][variant], flush=True)
    this["quality"] = quality(args.variants)
    out["rounds"].append(this)
    record.write_text(json.dumps(out, indent=2) + "\n")
    return out


def _detector(variant: str, conf: float | None = None, device="cpu"):
    from detection.models.yolo import YoloDetector

    spec = params().infer.detectors[0]
    return YoloDetector(weights_path(variant), imgsz=spec.imgsz, conf=spec.conf if conf is None else conf,
                        iou=spec.iou, device=device)


def quality(variants) -> dict:
    """Each detector on each variant's val scenes (seed VAL_SEED; its own and the other's): AP50 by the infer stage's
    rule (detections down to score 0.001, COCO 101-point; a detection on a decoy is a false positive, decoys being
    no ground truth), and at infer's conf the share of persons and of decoys >= 60 px, at most half hidden, that
    it finds (one-to-one at IoU >= 0.5)."""
    conf = params().infer.detectors[0].conf
    out: dict[str, dict[str, dict]] = {}
    for det_variant in variants:
        det = _detector(det_variant, conf=EVAL_CONF)
        out[det_variant] = {}
        for scene_variant in VARIANTS:
            cfg = variant_config(scene_variant)
            evals, counts = [], {"persons": [0, 0], "decoys": [0, 0]}
            for i in range(VAL_IMAGES):
                scene = render_scene(cfg, VAL_SEED, i)
                gt = np.array([a["bbox"] for a in scene_rows(scene, "v")[0] if a["category"] == "person"],
                              float).reshape(-1, 4)
                d = det.detect(to_batch([scene.image]))[0]
                keep = d.labels == det.class_names.index("person")
                boxes, scores = d.boxes[keep].numpy().astype(float), d.scores[keep].numpy().astype(float)
                evals.append(ImageEval(boxes, scores, gt))
                decoys = np.array([o.bbox for o in scene.objects if o.category == DECOY and o.bbox is not None
                                   and o.bbox[3] - o.bbox[1] >= 60 and o.occlusion <= 0.5], float).reshape(-1, 4)
                tall = gt[gt[:, 3] - gt[:, 1] >= 60]
                for key, g in (("persons", tall), ("decoys", decoys)):
                    if len(g):
                        counts[key][0] += int(_match_found(boxes, scores, g, conf)[0].sum())
                        counts[key][1] += len(g)
            out[det_variant][scene_variant] = {
                "ap50": round(average_precision(evals, MATCH_IOU), 4),
                **{f"{k}_found": round(a / b, 4) if b else None for k, (a, b) in counts.items()},
                **{f"{k}_count": b for k, (_, b) in counts.items()}}
        print("quality", det_variant, out[det_variant], flush=True)
    return out


# ---------------------------------------------------------------------------------------------------- explaining
# The pipeline's explain jobs for pedestrians (params.yaml explain.jobs, and the pixel methods' registry defaults)
JOBS: tuple[dict, ...] = (
    {"method": "bayes_shapley", "regions": "parts", "budget": 48},
    {"method": "occlusion", "regions": "parts"},
    {"method": "drise", "regions": "none", "budget": 256, "options": {"grid": 8, "center": True}},
    {"method": "integrated_gradients", "regions": "none"},
    {"method": "input_x_gradient", "regions": "none"},
    {"method": "grad_cam", "regions": "none"},
    {"method": "igos_pp", "regions": "none", "options": {"setting": "detection"}},
)
# Diagnostics (--diagnostics; not pipeline jobs, no verdict): the main job's game solved exactly (all 2^M coalitions,
# same blur perturbation), and the main job with the mean-colour perturbation instead of blur (occlusion's default)
DIAGNOSTIC_JOBS: tuple[dict, ...] = (
    {"method": "exact_shapley", "regions": "parts", "budget": 2048, "label": "exact_shapley@parts (blur)"},
    {"method": "bayes_shapley", "regions": "parts", "budget": 48, "options": {"perturbation": "mean"},
     "label": "bayes_shapley@parts (mean)"},
)
MAIN_JOB = "bayes_shapley@parts"        # the report's main job: the default body-part estimator
FINDS_TOP1 = 0.5                        # finds the plant: top-1 rate >= this on the planted variant ...
CONTROL_FACTOR = 2.0                    # ... and <= this x chance on the control
TARGET_TOP1 = 0.9                       # issue 21: the main job's top-1 rate on the planted variant


def explain_jobs(diagnostics: bool = False) -> list[tuple[str, object]]:
    """(label, job): the :data:`JOBS` (or :data:`DIAGNOSTIC_JOBS`) as the pipeline's ``ExplainJob`` (targets
    ``persons``), options checked and normalised by the explain stage's own check
    (``tasks.explain_jobs.check_options``); the label is the job's name unless the entry gives one."""
    from tasks.explain_jobs import check_options
    from tasks.params import ExplainJob

    out = []
    for entry in DIAGNOSTIC_JOBS if diagnostics else JOBS:
        spec = {k: v for k, v in entry.items() if k != "label"}
        job = ExplainJob(targets="persons", **spec)
        job = job.model_copy(update={"options": check_options(job.method, job.options)})
        out.append((entry.get("label", job.name), job))
    return out


def _match_found(boxes: np.ndarray, scores: np.ndarray, gt: np.ndarray, conf: float) -> tuple[np.ndarray, np.ndarray]:
    """(found [G] bool, matched detection index [G], -1: none) by the one rule (``detection.evaluation.match``)."""
    m = match(ImageEval(boxes, scores, gt), MATCH_IOU)
    return m.found(conf), m.gt_det


class Variant:
    """One variant: its held-out scenes (seed HELDOUT_SEED), its detector (infer's conf and NMS IoU, explain's chunk
    size as batch) and its found pedestrians, produced lazily in scene order."""

    def __init__(self, name: str, device: torch.device, min_height: float):
        cfg = params()
        self.name, self.device, self.min_height = name, device, min_height
        self.cfg, self.twin_cfg = variant_config(name), variant_config("control" if name == "planted" else "planted")
        self.conf, self.min_keypoints = cfg.infer.detectors[0].conf, cfg.parts.min_keypoints
        self.chunk = cfg.explain.chunk_size
        self.detector = _detector(name, device=device)
        self.detector.batch_size = self.chunk
        self.person = self.detector.class_names.index("person")
        self.scenes_seen = 0
        self.decoys = {"planted_detector": [0, 0], "control_detector": [0, 0]}    # [detected, decoys]

    def detections(self, image: torch.Tensor, detector=None) -> tuple[np.ndarray, np.ndarray]:
        """Person boxes [N, 4] and scores [N] of one image [3, H, W] (this variant's detector by default)."""
        d = (detector or self.detector).detect(image[None].to(self.device))[0]
        keep = d.labels == self.person
        return d.boxes[keep].cpu().numpy().astype(float), d.scores[keep].cpu().numpy().astype(float)

    def scorer(self, targets: list[dict]) -> DRiseScorer:
        """As the explain stage scores GT persons (``tasks.model_cache.detection_scorer``): D-RISE similarity to
        the GT box with a one-hot person vector."""
        onehot = F.one_hot(torch.tensor(self.person), self.detector.num_classes).float()
        return DRiseScorer(self.detector, torch.tensor([t["bbox"] for t in targets], dtype=torch.float32),
                           onehot.expand(len(targets), -1), chunk_size=self.chunk)

    def pedestrians(self, other_detector=None):
        """Yield the found pedestrians in scene order, each a dict: ``image_id``, ``target`` (an explain target
        row), ``image`` [3, H, W], ``parts`` {name: [H, W] bool} (parts10 + context from GT keypoints over the GT
        box), ``plant`` [H, W] bool (the planted part's visible pixels), ``twin`` (the other variant's image of the
        scene). In the planted variant, counts decoys (>= min_height, at most half hidden) that this detector and
        ``other_detector`` detect (one-to-one at IoU >= 0.5, score >= conf)."""
        for index in range(100_000):
            scene = render_scene(self.cfg, HELDOUT_SEED, index)
            self.scenes_seen = index + 1
            image_id = f"{self.name}{HELDOUT_SEED}-{index:06d}"
            image = to_batch([scene.image])[0]
            boxes, scores = self.detections(image)
            if self.name == "planted":
                self._count_decoys(scene, image, boxes, scores, other_detector)
            persons = [a for a in scene_rows(scene, image_id)[0] if a["category"] == "person"]
            if not persons:
                continue
            found, _ = _match_found(boxes, scores, np.array([a["bbox"] for a in persons], float), self.conf)
            objects = {tuple(o.bbox): o for o in scene.objects if o.category == "person" and o.bbox is not None}
            twin = None
            H, W = image.shape[-2:]
            for k, a in enumerate(persons):
                height = a["bbox"][3] - a["bbox"][1]
                if not found[k] or height < self.min_height or a["keypoints"] is None:
                    continue
                kps = Keypoints.from_coco(a["keypoints"])
                if kps.count < self.min_keypoints:
                    continue
                try:
                    built = body_parts(kps, a["bbox"], (H, W), "gt").grouped("parts10", context=True)
                except PartsError:
                    continue
                if twin is None:
                    twin = to_batch([render_scene(self.twin_cfg, HELDOUT_SEED, index).image])[0].to(self.device)
                plant = objects[tuple(a["bbox"])].visible_part_masks[PLANT.part]
                yield {"image_id": image_id, "image": image.to(self.device), "twin": twin, "plant": plant,
                       "target": {"image_id": image_id, "target_id": a["ann_id"], "kind": "persons",
                                  "bbox": a["bbox"], "height": height, "occlusion": a["occlusion"], "found": True,
                                  "parts_model": "gt", "parts_id": a["ann_id"]},
                       "parts": dict(zip(built.names, torch.from_numpy(built.full()).to(self.device)))}

    def _count_decoys(self, scene, image, boxes, scores, other_detector) -> None:
        decoys = [o.bbox for o in scene.objects if o.category == DECOY and o.bbox is not None
                  and o.bbox[3] - o.bbox[1] >= self.min_height and o.occlusion <= 0.5]
        if not decoys:
            return
        gt = np.array(decoys, float)
        counts = self.decoys["planted_detector"]
        counts[0] += int(_match_found(boxes, scores, gt, self.conf)[0].sum())
        counts[1] += len(decoys)
        if other_detector is not None:
            counts = self.decoys["control_detector"]
            counts[0] += int(_match_found(*self.detections(image, other_detector), gt, self.conf)[0].sum())
            counts[1] += len(decoys)


def _swap_plant(p: dict) -> torch.Tensor:
    """The pedestrian's image with its plant's pixels (and the blur's one-pixel rim) taken from the twin scene:
    the plant removed (planted variant) or painted on (control)."""
    rim = cv2.dilate(p["plant"].astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    return torch.where(torch.from_numpy(rim).to(p["image"].device), p["twin"], p["image"])


def plant_check(variant: Variant, p: dict) -> dict:
    """The detector's D-RISE score of the pedestrian, and whether it is still found, with the plant swapped."""
    scorer = variant.scorer([p["target"]])
    swapped = _swap_plant(p)
    with torch.inference_mode():
        scores = scorer(torch.stack([p["image"], swapped]))[:, 0].cpu().numpy()
    boxes, det_scores = variant.detections(swapped)
    found, _ = _match_found(boxes, det_scores, np.array([p["target"]["bbox"]], float), variant.conf)
    return {"score_intact": float(scores[0]), "score_swapped": float(scores[1]), "found_swapped": bool(found[0])}


def _fresh_anchors(detector) -> None:
    """Make ultralytics' Detect head recompute its anchor grid on the next forward. It caches the grid per input
    shape, and a grid first built under ``torch.inference_mode`` (detect, the black-box explainers' forwards) is an
    inference tensor that autograd refuses ("Inference tensors cannot be saved for backward") in the gradient
    methods' forward with the same shape; rebuilt outside inference mode it serves both."""
    head = detector.model.model[-1]
    if hasattr(head, "shape"):
        head.shape = None


def explain_pedestrian(variant: Variant, p: dict, jobs: list[tuple[str, object]]) -> list[dict]:
    """Every (label, job) on one pedestrian, through the explain stage's own per-image function (rows as it writes
    them, ``job`` set to the label)."""
    from tasks.explain import explain_targets as run

    cfg = params().explain
    rows, errors = [], []
    for label, job in jobs:
        if METHODS[job.method].needs_gradients:
            _fresh_anchors(variant.detector)
        new = run(job, variant.scorer, p["image"], [p["target"]], lambda t: p["parts"], cfg, 0,
                  str(variant.device), errors, p["image_id"])
        rows += [{**r, "job": label} for r in new]
    for e in errors:
        print("error", variant.name, p["image_id"], e.get("message"), flush=True)
    return rows


def _top1_table(shares: pd.DataFrame) -> pd.DataFrame:
    """Per (variant, job, pedestrian): the planted part's share, its |share|, whether it ranks first (the one largest
    share, context included, as the report's top part; a tie at the top is no first), the players."""
    rows = []
    for (variant, job, image_id, target_id), g in shares.groupby(["variant", "job", "image_id", "target_id"],
                                                                 sort=False):
        by_part = dict(zip(g["part"], g["share"]))
        best = max(by_part.values())
        tops = [k for k, v in by_part.items() if v == best]
        top = tops[0] if len(tops) == 1 else "tie"
        share = by_part.get(PLANT.part, np.nan)
        rows.append({"variant": variant, "job": job, "image_id": image_id, "target_id": target_id,
                     "share": 0.0 if np.isnan(share) else share, "abs_share": 0.0 if np.isnan(share) else abs(share),
                     "top1": float(top == PLANT.part), "top_part": top, "players": len(by_part),
                     "chance": 1.0 / len(by_part), "has_part": bool(PLANT.part in by_part)})
    return pd.DataFrame(rows)


def summarise(explanations: list[dict], targets: list[dict], variant_of: dict[str, str],
              visible: dict[tuple[str, str], int]) -> dict:
    """Per variant x job: mean share / |share| of the planted part and its top-1 rate, each with the report's
    cluster-bootstrap 95 % interval, chance, which parts rank first, forwards and seconds; the top-1 rate again
    over the pedestrians whose planted part shows (``visible``: its visible pixels per (image_id, target_id))."""
    from tasks.report import part_shares
    from tasks.report_intervals import share_intervals

    exps = pd.DataFrame(explanations)
    shares = part_shares(exps, pd.DataFrame(targets).assign(score=1.0))
    shares["variant"] = shares["image_id"].map(variant_of)
    table = _top1_table(shares)
    out: dict[str, dict] = {}
    for (variant, job), g in table.groupby(["variant", "job"], sort=False):
        cell = {"pedestrians": int(len(g)), "images": int(g["image_id"].nunique()),
                "chance": float(g["chance"].mean()), "players_mean": float(g["players"].mean()),
                "with_part": int(g["has_part"].sum())}
        for col in ("share", "abs_share", "top1"):
            iv = share_intervals(g.assign(part=PLANT.part, share=g[col], bucket="all"), "bucket", label=f"{job}|{col}")
            cell[col] = {"mean": float(iv["mean"].iloc[0]), "low": float(iv["low"].iloc[0]),
                         "high": float(iv["high"].iloc[0])}
        shown = g[[visible.get(k, 0) > 0 for k in zip(g["image_id"], g["target_id"])]]
        cell["part_visible"] = {"pedestrians": int(len(shown)),
                                "top1": float(shown["top1"].mean()) if len(shown) else None}
        player = g[g["has_part"]]
        cell["part_is_player"] = {"pedestrians": int(len(player)),
                                  "top1": float(player["top1"].mean()) if len(player) else None}
        cell["top_parts"] = {k: int(v) for k, v in g["top_part"].value_counts().items()}
        e = exps[(exps["job"] == job) & exps["image_id"].map(variant_of).eq(variant)]
        cell["mean_n_forward"] = float(e["n_forward"].mean())
        cell["mean_seconds"] = float(e["seconds"].mean())
        out.setdefault(variant, {})[job] = cell
    return out


def verdicts(summary: dict) -> dict:
    """Per job: finds the plant (top-1 >= FINDS_TOP1 on planted and <= CONTROL_FACTOR x chance on control)."""
    out = {}
    for job in summary.get("planted", {}):
        planted, control = summary["planted"][job], summary.get("control", {}).get(job)
        ok_planted = planted["top1"]["mean"] >= FINDS_TOP1
        ok_control = control is not None and control["top1"]["mean"] <= CONTROL_FACTOR * control["chance"]
        out[job] = {"planted_top1": planted["top1"]["mean"], "control_top1": control and control["top1"]["mean"],
                    "control_chance": control and control["chance"], "finds_plant": bool(ok_planted and ok_control)}
    return out


def explain(args, device: torch.device) -> None:
    start = time.perf_counter()
    jobs = explain_jobs(args.diagnostics)
    training = json.loads((WORK / "training.json").read_text()) if (WORK / "training.json").is_file() else {}
    variants = {v: Variant(v, device, args.min_height) for v in args.variants}
    other = variants["control"].detector if "control" in variants else None
    streams = {v: variants[v].pedestrians(other if v == "planted" else None) for v in args.variants}
    explanations, targets, checks, variant_of = [], [], [], {}
    done = dict.fromkeys(args.variants, 0)
    results = {"plant": PLANT.model_dump(mode="json"), "device": str(device), "cpus": os.cpu_count(),
               "reported_on": f"held-out scenes, render seed {HELDOUT_SEED}, of each variant (never trained on)",
               "tuned_on": "nothing: the explain jobs' defaults as params.yaml / the registry give them",
               "training": training, "jobs": [label for label, _ in jobs],
               "diagnostics": args.diagnostics, "min_height": args.min_height,
               "rule": {"finds_plant": f"top-1 rate >= {FINDS_TOP1} (planted) and <= {CONTROL_FACTOR} x chance "
                                       f"(control)", "target": f"{MAIN_JOB} top-1 >= {TARGET_TOP1} (planted), "
                                                               f"<= chance (control)"}}
    while any(done[v] < args.persons for v in args.variants):
        for v in args.variants:                       # alternate: a time limit leaves both variants measured
            if done[v] >= args.persons:
                continue
            p = next(streams[v])
            variant_of[p["image_id"]] = v
            t0 = time.perf_counter()
            rows = explain_pedestrian(variants[v], p, jobs)
            explanations += [{k: r[k] for k in ("image_id", "target_id", "kind", "job", "method", "region_names",
                                                 "relevance", "n_forward", "seconds")} for r in rows]
            targets.append({k: p["target"][k] for k in ("image_id", "target_id", "kind", "height", "occlusion",
                                                         "found")})
            checks.append({"variant": v, "det_id": f"{p['image_id']}/{p['target']['target_id']}",
                           "height": p["target"]["height"], "plant_visible_px": int(p["plant"].sum()),
                           **plant_check(variants[v], p)})
            done[v] += 1
            print(f"{v} {done[v]}/{args.persons} {p['image_id']}/{p['target']['target_id']} "
                  f"{time.perf_counter() - t0:.1f}s", flush=True)
        if time.perf_counter() - start > args.max_seconds:
            print(f"time limit {args.max_seconds} s reached: stopping at {done}", flush=True)
            break
    visible = {tuple(c["det_id"].split("/")): c["plant_visible_px"] for c in checks}
    summary = summarise(explanations, targets, variant_of, visible)
    results["summary"] = summary
    results["verdicts"] = verdicts(summary)
    results["plant_checks"] = _plant_summary(checks, variants)
    results["per_pedestrian"] = checks
    results["explanations"] = explanations
    results["pedestrians"] = done
    results["seconds"] = round(time.perf_counter() - start, 1)
    _print(results)
    write_results(args.out, results)


def _plant_summary(checks: list[dict], variants: dict) -> dict:
    out = {}
    for v, var in variants.items():
        sel = [c for c in checks if c["variant"] == v]
        if not sel:
            continue
        intact = np.array([c["score_intact"] for c in sel])
        swapped = np.array([c["score_swapped"] for c in sel])
        out[v] = {"what": "plant removed (twin's pixels)" if v == "planted" else "plant painted on (twin's pixels)",
                  "pedestrians": len(sel), "weights_sha256_12": file_digest(weights_path(v)),
                  "scenes_scanned": var.scenes_seen, "mean_score_intact": float(intact.mean()),
                  "mean_score_swapped": float(swapped.mean()),
                  "median_score_ratio": float(np.median(swapped / np.maximum(intact, 1e-9))),
                  "still_found": float(np.mean([c["found_swapped"] for c in sel])),
                  "plant_visible": int(sum(c["plant_visible_px"] > 0 for c in sel))}
        if v == "planted":
            out[v]["decoys_detected"] = {k: {"detected": a, "decoys": b, "rate": a / b if b else None}
                                         for k, (a, b) in var.decoys.items()}
    return out


def _print(results: dict) -> None:
    print(f"\nplanted part: {PLANT.part}; pedestrians {results['pedestrians']}")
    print(f"{'job':<28}{'variant':<9}{'n':>4}{'share':>8}{'|share|':>9}{'top-1 [95 % CI]':>24}{'chance':>8}")
    for v, jobs in results["summary"].items():
        for job, c in jobs.items():
            t = c["top1"]
            print(f"{job:<28}{v:<9}{c['pedestrians']:>4}{c['share']['mean']:>8.3f}{c['abs_share']['mean']:>9.3f}"
                  f"{t['mean']:>10.3f} [{t['low']:.2f}, {t['high']:.2f}]{c['chance']:>8.3f}")
    for job, v in results["verdicts"].items():
        print(f"{job:<28} finds the plant: {v['finds_plant']}")
    print(json.dumps(results["plant_checks"], indent=1))


# ---------------------------------------------------------------------------------------------------- tables
STRONG = 0.5     # "strong reliance": the plant swapped out leaves < this share of the pedestrian's D-RISE score


def _interval(t: dict) -> str:
    return f"{t['mean']:.2f} [{max(t['low'], 0.0) + 0.0:.2f}, {min(t['high'], 1.0):.2f}]"


def _top1_by_reliance(results: dict) -> dict[str, dict[str, float]]:
    """Planted variant, per job: the top-1 rate over pedestrians whose plant swap leaves < STRONG of the score
    (the detector demonstrably relies on their plant) and over the others."""
    checks = {c["det_id"]: c["score_swapped"] / max(c["score_intact"], 1e-9) for c in results["per_pedestrian"]
              if c["variant"] == "planted"}
    out: dict[str, dict[str, list[float]]] = {}
    for e in results["explanations"]:
        ratio = checks.get(f"{e['image_id']}/{e['target_id']}")
        if ratio is None:
            continue
        rel = np.asarray(e["relevance"], float)
        first = PLANT.part in e["region_names"] and int(np.argmax(rel)) == e["region_names"].index(PLANT.part) \
            and int((rel == rel.max()).sum()) == 1
        key = "strong" if ratio < STRONG else "weak"
        out.setdefault(e["job"], {}).setdefault(key, []).append(float(first))
    return {job: {k: (float(np.mean(v)), len(v)) for k, v in by.items()} for job, by in out.items()}


def _tops(results: dict, job: str) -> dict[str, str]:
    """det_id -> the part with the largest relevance of ``job`` ('tie' when several share it)."""
    out = {}
    for e in results["explanations"]:
        if e["job"] == job:
            rel = np.asarray(e["relevance"], float)
            out[f"{e['image_id']}/{e['target_id']}"] = (e["region_names"][int(np.argmax(rel))]
                                                       if int((rel == rel.max()).sum()) == 1 else "tie")
    return out


def tables(args) -> None:
    """Print the README's tables (markdown) from the saved results: --out and, beside it, its _diagnostics file."""
    for path in (Path(args.out), Path(args.out).with_name(Path(args.out).stem + "_diagnostics.json")):
        if not path.is_file():
            continue
        r = json.loads(path.read_text())
        s, v = r["summary"], r["verdicts"]
        print(f"\n{path} ({r['written']}, {r['seconds']} s, load {r['loadavg_1_5_15_min']}, pedestrians "
              f"{r['pedestrians']})")
        print("| job | planted: share | \\|share\\| | **top-1** [95 % CI] | top-1, part a player | control: share | "
              "**top-1** [95 % CI] | chance | finds the plant | forwards | s / pedestrian |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for job in r["jobs"]:
            p, c = s["planted"][job], s.get("control", {}).get(job)
            ctrl = (f"{c['share']['mean']:.2f} | {_interval(c['top1'])} | {c['chance']:.3f}" if c else "| |")
            print(f"| {job} | {p['share']['mean']:.2f} | {p['abs_share']['mean']:.2f} | {_interval(p['top1'])} | "
                  f"{p['part_is_player']['top1']:.2f} ({p['part_is_player']['pedestrians']}) | {ctrl} | "
                  f"{'yes' if v[job]['finds_plant'] else 'no'} | {p['mean_n_forward']:.0f} | "
                  f"{p['mean_seconds']:.2f} |")
        strat = _top1_by_reliance(r)
        print(f"\ntop-1 rate on the planted variant by reliance (plant swapped out leaves < {STRONG} of the score)")
        for job, by in strat.items():
            print(f"  {job:<30}" + "  ".join(f"{k}: {m:.2f} (n={n})" for k, (m, n) in sorted(by.items())))
        print(json.dumps({k: {kk: vv for kk, vv in x.items() if kk != "weights_sha256_12"}
                          for k, x in r["plant_checks"].items()}))
        exact = "exact_shapley@parts (blur)"
        if exact in r["jobs"] and Path(args.out).is_file():
            main_tops = _tops(json.loads(Path(args.out).read_text()), MAIN_JOB)
            exact_tops = _tops(r, exact)
            for variant in VARIANTS:
                ids = [d for d in exact_tops if d.startswith(variant) and d in main_tops]
                same = np.mean([main_tops[d] == exact_tops[d] for d in ids]) if ids else float("nan")
                print(f"{variant}: {MAIN_JOB} (budget 48) ranks first the part the exact Shapley values rank first "
                      f"for {same:.2f} of {len(ids)} pedestrians")


def main() -> None:
    global WEIGHTS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["train", "explain", "tables"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--continue", dest="resume", action="store_true",
                        help="train: one more round from each variant's own weights (not the demo detector's)")
    parser.add_argument("--variants", default="planted,control")
    parser.add_argument("--persons", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-height", type=float, default=60.0)
    parser.add_argument("--max-seconds", type=float, default=float("inf"),
                        help="stop explaining after this long (both variants keep the same count)")
    parser.add_argument("--out", default="benchmarks/results/planted.json")
    parser.add_argument("--diagnostics", action="store_true",
                        help="explain: run DIAGNOSTIC_JOBS instead (exact Shapley; BayesShapley with mean colour)")
    parser.add_argument("--weights-dir", default=str(WEIGHTS), help="explain: <variant>.pt of each detector")
    args = parser.parse_args()
    args.variants = args.variants.split(",")
    WEIGHTS = Path(args.weights_dir)
    if args.stage == "tables":
        tables(args)
        return
    device = start_run(args.threads)
    if args.stage == "train":
        train(args)
        return
    explain(args, device)


if __name__ == "__main__":
    main()
