"""Tasks of the infer stage: batched inference of the configured models over one shard of images at a time, and
the quality of those models against the ground truth."""
from __future__ import annotations

import functools
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from detection.body import NUM_KEYPOINTS
from detection.datasets.imageio import ImageError, load_rgb, to_batch
from detection.datasets.records import error_row
from detection.evaluation import (
    OCCLUSION_BUCKETS,
    SIZE_BUCKETS,
    ImageEval,
    average_precision,
    coco_ap,
    match,
    multilabel_f1,
    pck,
    recall_by,
)
from detection.models.keypoints import load_keypoint_model
from detection.models.specs import (
    ClassifierSpec,
    DetectorSpec,
    build_classifier,
    build_detector,
    file_sha256,
    model_sha256,
)
from tasks.params import InferParams
from tasks.shards import write_shard

EVAL_CONF = 0.001      # detections are stored down to this score so that AP sees the whole PR curve


@functools.lru_cache(maxsize=8)
def _detector(spec_json: str, device: str, batch_size: int):
    """One adapter per (spec, device) and process: tasks in the same worker share it."""
    spec = DetectorSpec.model_validate_json(spec_json)
    return build_detector(spec.model_copy(update={"conf": min(spec.conf, EVAL_CONF)}), device, batch_size)


@functools.lru_cache(maxsize=4)
def _classifier(spec_json: str, device: str, batch_size: int):
    return build_classifier(ClassifierSpec.model_validate_json(spec_json), device, batch_size)


@functools.lru_cache(maxsize=4)
def _keypoint_model(path: str, device: str, batch_size: int):
    return load_keypoint_model(path, device=device, batch_size=batch_size)


def run_id_for(infer: InferParams) -> tuple[str, dict[str, str]]:
    """A content id for this inference run (options + weights) and each model's weights hash."""
    specs = [*infer.detectors, *(m for m in (infer.pose, infer.classifier) if m is not None)]
    hashes = {s.id: model_sha256(s) for s in specs}
    for spec in specs:
        keypoints = getattr(spec, "keypoints", None)        # detector specs only
        if keypoints:
            if not Path(keypoints).is_file():
                raise FileNotFoundError(f"infer model {spec.id!r}: keypoints: keypoint model not found: {keypoints}")
            hashes[f"{spec.id}/keypoints"] = file_sha256(keypoints)
    blob = json.dumps([infer.model_dump(mode="json"), hashes], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16], hashes


def _batches(rows: list[dict], batch_size: int, errors: list[dict]):
    """Decoded images grouped by size, in fixed-size batches: (rows, float tensor [B, 3, H, W])."""
    by_size: dict[tuple[int, int], list[tuple[dict, np.ndarray]]] = {}
    for row in rows:
        try:
            img = load_rgb(row["uri"])
        except ImageError as exc:
            errors.append(error_row("infer", row["uri"], exc.error_type, str(exc), row["image_id"]))
            continue
        by_size.setdefault(img.shape[:2], []).append((row, img))
    for items in by_size.values():
        for s in range(0, len(items), batch_size):
            chunk = items[s:s + batch_size]
            x = to_batch([im for _, im in chunk])
            yield [r for r, _ in chunk], x


@task(cache_policy=NO_CACHE, retries=1)
def infer_shard(rows: list[dict], infer: InferParams, run_id: str, hashes: dict[str, str], shard_dir: str) -> str:
    """Detections of every detector (and the pose model) and the classifier's class probabilities."""
    detections, predictions, errors = [], [], []
    det_specs = [*infer.detectors, *([infer.pose] if infer.pose is not None else [])]
    for batch_rows, x in _batches(rows, infer.batch_size, errors):
        for spec in det_specs:
            model = _detector(spec.model_dump_json(), infer.device, infer.batch_size)
            dets = [d.to("cpu") for d in model.detect(x)]
            placed = _place_keypoints(spec, dets, x, model.class_names, infer) if spec.keypoints else None
            for b, (row, det) in enumerate(zip(batch_rows, dets)):
                scores, labels, boxes = det.scores.tolist(), det.labels.tolist(), det.boxes.tolist()
                probs = det.class_probs.tolist() if det.class_probs is not None else [None] * len(scores)
                kpts = det.keypoints.flatten(1).tolist() if det.keypoints is not None else [None] * len(scores)
                if placed is not None:
                    kpts = placed[b]
                detections.extend({
                    "run_id": run_id, "model_id": spec.id, "weights_sha256": hashes[spec.id],
                    "image_id": row["image_id"], "det_id": f"{spec.id}:{row['image_id']}:{k:03d}",
                    "category": model.class_names[labels[k]], "score": scores[k], "above_conf": scores[k] >= spec.conf,
                    "bbox": boxes[k], "class_probs": probs[k], "keypoints": kpts[k]} for k in range(len(scores)))
        if infer.classifier is not None:
            clf = _classifier(infer.classifier.model_dump_json(), infer.device, infer.batch_size)
            probs = clf.classify(x).cpu().numpy()
            for row, p in zip(batch_rows, probs):
                predictions.extend({"run_id": run_id, "model_id": infer.classifier.id,
                                    "weights_sha256": hashes[infer.classifier.id], "image_id": row["image_id"],
                                    "category": c, "score": float(v)} for c, v in zip(clf.class_names, p))
    return write_shard(shard_dir, detections=detections, predictions=predictions, errors=errors)


def _place_keypoints(spec: DetectorSpec, dets: list, images: torch.Tensor, class_names: list[str],
                     infer: InferParams) -> list[list]:
    """Keypoints of each image's person boxes above ``spec.conf`` from the spec's top-down keypoint model, in one
    batched call; other rows get None (they are below the threshold every consumer applies)."""
    person = class_names.index(spec.person_class) if spec.person_class in class_names else -1
    wanted = [(d.scores >= spec.conf) & (d.labels == person) for d in dets]
    boxes = torch.cat([d.boxes[w] for d, w in zip(dets, wanted)])          # a batch always holds an image
    index = torch.cat([torch.full((int(w.sum()),), b) for b, w in enumerate(wanted)])
    model = _keypoint_model(spec.keypoints, infer.device, infer.batch_size * 8)
    placed = iter(model.predict(images, boxes, index).flatten(1).tolist() if len(boxes) else [])
    return [[next(placed) if keep else None for keep in w.tolist()] for w in wanted]


# ---------------------------------------------------------------------------------------------------- quality
def _clean(value):
    """JSON-safe: NaN -> None, recursively (DVC cannot read NaN)."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def detector_quality(images: list[dict], gt: dict[str, list[dict]], dets: dict[str, list[dict]],
                     conf: float, infer: InferParams, with_pose: bool) -> dict:
    """AP50 / AP (all persons and the reasonable subset), recall by size and occlusion at ``conf``, PCK@0.2 of the
    persons found at ``conf`` against the detection each is matched to (``detection.evaluation.match``: one
    detection, one person - the rule explain's found / missed uses too). ``iscrowd`` annotations are ignore regions
    (COCO's rule): a detection on a crowd is neither a true nor a false positive, and a crowd is never missed."""
    rs = infer.reasonable
    every, reasonable = [], []
    correct = total = 0
    for img in images:
        g, d = gt.get(img["image_id"], []), dets.get(img["image_id"], [])
        g_boxes = np.array([a["bbox"] for a in g], float).reshape(-1, 4)
        crowd = np.array([bool(a["iscrowd"]) for a in g], bool)
        d_boxes = np.array([x["bbox"] for x in d], float).reshape(-1, 4)
        scores = np.array([x["score"] for x in d], float)
        heights = g_boxes[:, 3] - g_boxes[:, 1]
        occl = np.array([np.nan if a["occlusion"] is None else a["occlusion"] for a in g], float)
        attrs = {"height": heights, "occlusion": occl}
        every.append(ImageEval(d_boxes, scores, g_boxes, crowd, attrs))
        hard = crowd | (heights < rs.min_height) | (np.nan_to_num(occl) > rs.max_occlusion)
        reasonable.append(ImageEval(d_boxes, scores, g_boxes, hard, attrs))
        if with_pose and len(g) and len(d):          # keypoints of the found persons, vs their matched detection
            matching = match(every[-1])
            for gi in np.flatnonzero(matching.found(conf)):
                if g[gi]["keypoints"] is None:
                    continue
                kp = np.array(d[matching.gt_det[gi]]["keypoints"], float).reshape(NUM_KEYPOINTS, 3)
                c, t = pck(kp, np.array(g[gi]["keypoints"]), g_boxes[gi])
                correct, total = correct + c, total + t
    out = {"ap50": average_precision(every), "ap": coco_ap(every), "ap50_reasonable": average_precision(reasonable),
           "recall_by_size": recall_by(every, "height", SIZE_BUCKETS, min_score=conf),
           "recall_by_occlusion": recall_by(every, "occlusion", OCCLUSION_BUCKETS, min_score=conf),
           "persons": sum(not a["iscrowd"] for i in images for a in gt.get(i["image_id"], [])),
           "crowd_regions": sum(bool(a["iscrowd"]) for i in images for a in gt.get(i["image_id"], [])),
           "images": len(images)}
    if with_pose:
        out["pck02"] = correct / total if total else float("nan")
        out["pck02_keypoints"] = total
    return out


def classifier_quality(images: list[dict], probs: dict[str, dict[str, float]], classes: list[str]) -> dict:
    """Per-class and mean F1 at 0.5, and the probability of the cue label with and without the spurious cue."""
    rows = [i for i in images if i["labels"] is not None and i["image_id"] in probs]
    if not rows:
        return {}
    p = np.array([[probs[r["image_id"]][c] for c in classes] for r in rows])
    truth = np.array([[c in r["labels"] for c in classes] for r in rows])
    f1 = multilabel_f1(p, truth)
    return {"mean_f1": float(f1.mean()), "f1": {c: float(v) for c, v in zip(classes, f1)}, "images": len(rows)}


def spurious_probe(images: list[dict], probs: dict[str, dict[str, float]], label: str) -> dict:
    """Mean P(label) on images *without* the label, with vs without the spurious cue: a gap means the cue is used."""
    rows = [i for i in images if i["spurious_cue"] is not None and i["image_id"] in probs
            and label not in (i["labels"] or [])]
    by_cue = {cue: [probs[r["image_id"]][label] for r in rows if r["spurious_cue"] == cue] for cue in (True, False)}
    return {f"p_{label}_absent_with_cue": float(np.mean(by_cue[True])) if by_cue[True] else float("nan"),
            f"p_{label}_absent_without_cue": float(np.mean(by_cue[False])) if by_cue[False] else float("nan"),
            "images_with_cue": len(by_cue[True]), "images_without_cue": len(by_cue[False])}


def quality(images: pa.Table, annotations: pa.Table, detections: pa.Table, predictions: pa.Table,
            infer: InferParams, spurious_label: str | None) -> dict:
    """Quality of every model on the val split and on all images (the demo models never train on these)."""
    img_rows = images.to_pylist()
    splits = {"val": [r for r in img_rows if r["split"] == "val"], "all": img_rows}
    metrics: dict = {}
    det_rows, ann_rows = detections.to_pylist(), annotations.to_pylist()
    for spec in [*infer.detectors, *([infer.pose] if infer.pose is not None else [])]:
        gt: dict[str, list[dict]] = {}
        for a in ann_rows:
            if a["category"] == spec.person_class:          # crowd regions too: ignore regions of the AP
                gt.setdefault(a["image_id"], []).append(a)
        dets: dict[str, list[dict]] = {}
        for d in det_rows:
            if d["model_id"] == spec.id and d["category"] == spec.person_class:
                dets.setdefault(d["image_id"], []).append(d)
        metrics[spec.id] = {name: detector_quality(rows, gt, dets, spec.conf, infer, spec is infer.pose)
                            for name, rows in splits.items() if rows}
    if infer.classifier is not None and predictions.num_rows:
        probs: dict[str, dict[str, float]] = {}
        for r in predictions.to_pylist():
            probs.setdefault(r["image_id"], {})[r["category"]] = r["score"]
        classes = list(next(iter(probs.values())).keys())
        metrics[infer.classifier.id] = {name: classifier_quality(rows, probs, classes)
                                        for name, rows in splits.items() if rows}
        if spurious_label is not None and spurious_label in classes:
            metrics[infer.classifier.id]["spurious"] = spurious_probe(img_rows, probs, spurious_label)
    return _clean(metrics)
