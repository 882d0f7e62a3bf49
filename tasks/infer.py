"""Tasks of the infer stage: batched inference of the configured models over one shard of images at a time, and
the quality of those models against the ground truth."""
from __future__ import annotations

import functools
import hashlib
import json
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from detection.body import NUM_KEYPOINTS
from detection.datasets.imageio import ImageError, load_rgb, to_batch
from detection.datasets.records import error_row
from detection.datasets.tables import rows_to_table
from detection.evaluation import (
    COCO_IOUS,
    MATCH_IOU,
    OCCLUSION_BUCKETS,
    SIZE_BUCKETS,
    ImageEval,
    ap_from_matches,
    match,
    multilabel_f1,
    pck,
    recall_from_hits,
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
from tasks.shards import RowRange, is_done, read_image_rows, read_rows, write_shard

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
def infer_shard(rows: RowRange | list[dict], infer: InferParams, run_id: str, hashes: dict[str, str],
                shard_dir: str, annotations: str | None = None) -> str:
    """Detections of every detector (and the pose model) and the classifier's class probabilities of one shard of
    images: a :class:`~tasks.shards.RowRange` of the images table (read here: ``image_id, uri, split``) or its
    rows. With ``annotations`` (the pulled annotations table) and a row range, the shard's share of the detection
    metrics (:func:`shard_quality_partials`) is written to :data:`QUALITY_FILE` beside its tables."""
    images = read_rows(rows, ["image_id", "uri", "split"]) if isinstance(rows, RowRange) else None
    rows = images.to_pylist() if images is not None else rows
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
    if annotations is not None and images is not None:
        partial = shard_quality_partials(images.select(["image_id", "split"]), annotations, detections, infer)
        Path(shard_dir).mkdir(parents=True, exist_ok=True)
        tmp = Path(shard_dir) / f".{QUALITY_FILE}.tmp"
        tmp.write_bytes(pickle.dumps(partial))
        tmp.replace(Path(shard_dir) / QUALITY_FILE)
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


@dataclass
class _ImageRows:
    """One image's ground truth and detections as arrays: boxes [G, 4] / [D, 4] (xyxy px, float64), crowd flags
    [G], occlusion [G] (NaN: unknown), scores [D]; keypoints (flat 51 floats, COCO order) per GT and per detection,
    None where absent."""

    g_boxes: np.ndarray
    crowd: np.ndarray
    occl: np.ndarray
    d_boxes: np.ndarray
    scores: np.ndarray
    g_kps: list = field(default_factory=list)
    d_kps: list = field(default_factory=list)

    @classmethod
    def from_dicts(cls, g: list[dict], d: list[dict]) -> _ImageRows:
        return cls(np.array([a["bbox"] for a in g], float).reshape(-1, 4),
                   np.array([bool(a["iscrowd"]) for a in g], bool),
                   np.array([np.nan if a["occlusion"] is None else a["occlusion"] for a in g], float),
                   np.array([x["bbox"] for x in d], float).reshape(-1, 4),
                   np.array([x["score"] for x in d], float),
                   [a.get("keypoints") for a in g], [x.get("keypoints") for x in d])


def detector_quality(images: list[dict], gt: dict[str, list[dict]], dets: dict[str, list[dict]],
                     conf: float, infer: InferParams, with_pose: bool) -> dict:
    """AP50 / AP (all persons and the reasonable subset), recall by size and occlusion at ``conf``, PCK@0.2 of the
    persons found at ``conf`` against the detection each is matched to (``detection.evaluation.match``: one
    detection, one person - the rule explain's found / missed uses too). ``iscrowd`` annotations are ignore regions
    (COCO's rule): a detection on a crowd is neither a true nor a false positive, and a crowd is never missed.
    ``gt`` / ``dets``: annotation / detection rows by image id (rows of the dataset tables)."""
    per_image = [_ImageRows.from_dicts(gt.get(img["image_id"], []), dets.get(img["image_id"], [])) for img in images]
    return _detector_quality(per_image, conf, infer, with_pose)


def _detector_quality(per_image: list[_ImageRows], conf: float, infer: InferParams, with_pose: bool) -> dict:
    """:func:`detector_quality` over images given as :class:`_ImageRows`."""
    return finish_quality([match_partial(per_image, conf, infer, with_pose)], conf, with_pose)


def _image_partial(im: _ImageRows, conf: float, infer: InferParams, with_pose: bool) -> dict:
    """One image's share of the detection metrics: per COCO IoU threshold the scores and true-positive flags of
    its detections not matched to an ignore region (as ``average_precision`` collects them), the same at 0.5 with
    the reasonable subset's ignore flags, the found flags / heights / occlusions of its real GT at
    ``detection.evaluation.MATCH_IOU`` and ``conf`` (``recall_by``), PCK counts and GT counts."""
    rs = infer.reasonable
    heights = im.g_boxes[:, 3] - im.g_boxes[:, 1]
    attrs = {"height": heights, "occlusion": im.occl}
    every = ImageEval(im.d_boxes, im.scores, im.g_boxes, im.crowd, attrs)
    hard = im.crowd | (heights < rs.min_height) | (np.nan_to_num(im.occl) > rs.max_occlusion)
    reasonable = ImageEval(im.d_boxes, im.scores, im.g_boxes, hard, attrs)
    out: dict = {"n_gt": int((~every.gt_ignore).sum()), "n_gt_reasonable": int((~reasonable.gt_ignore).sum()),
                 "correct": 0, "total": 0, "persons": int((~im.crowd).sum()), "crowd": int(im.crowd.sum()),
                 "images": 1}
    for i, thr in enumerate(COCO_IOUS):
        m = match(every, thr)
        out[f"scores{i}"], out[f"tps{i}"] = every.det_scores[~m.det_ignored], m.det_tp[~m.det_ignored]
        if thr == MATCH_IOU:
            keep = ~every.gt_ignore
            out["hits"], out["height"], out["occlusion"] = m.found(conf)[keep], heights[keep], im.occl[keep]
            if with_pose and len(im.g_boxes) and len(im.d_boxes):   # keypoints of the found persons
                for gi in np.flatnonzero(m.found(conf)):
                    if im.g_kps[gi] is None:
                        continue
                    kp = np.array(im.d_kps[m.gt_det[gi]], float).reshape(NUM_KEYPOINTS, 3)
                    c, t = pck(kp, np.array(im.g_kps[gi]), im.g_boxes[gi])
                    out["correct"], out["total"] = out["correct"] + c, out["total"] + t
    m = match(reasonable, 0.5)
    out["scores_r"], out["tps_r"] = reasonable.det_scores[~m.det_ignored], m.det_tp[~m.det_ignored]
    return out


def match_partial(per_image: list[_ImageRows], conf: float, infer: InferParams, with_pose: bool) -> dict:
    """The detection metrics' sufficient statistics of these images (in order): :func:`_image_partial`'s arrays
    concatenated and its counts summed. Partials of consecutive image sets combine with :func:`combine_partials`
    and give the metrics with :func:`finish_quality`; numbers only (about 11 bytes per stored detection per
    IoU threshold), so a flow can hold a whole dataset's."""
    return combine_partials([_image_partial(im, conf, infer, with_pose) for im in per_image])


_EMPTY = {"bool": np.zeros(0, bool), "float": np.zeros(0, float)}


def combine_partials(partials: list[dict]) -> dict:
    """Partials of consecutive image sets -> the partial of their union (arrays concatenated in order)."""
    keys = [*(f"{k}{i}" for i in range(len(COCO_IOUS)) for k in ("scores", "tps")), "scores_r", "tps_r", "hits",
            "height", "occlusion"]
    out = {k: np.concatenate([p[k] for p in partials]) if partials else
           _EMPTY["bool" if k.startswith(("tps", "hits")) else "float"] for k in keys}
    for k in ("n_gt", "n_gt_reasonable", "correct", "total", "persons", "crowd", "images"):
        out[k] = int(sum(p[k] for p in partials))
    return out


def finish_quality(partials: list[dict], conf: float, with_pose: bool) -> dict:
    """:func:`detector_quality`'s metrics from the partials of consecutive image sets (:func:`match_partial`)."""
    p = combine_partials(partials)
    zero = COCO_IOUS.tolist().index(MATCH_IOU)
    out = {"ap50": ap_from_matches(p[f"scores{zero}"], p[f"tps{zero}"], p["n_gt"]),
           "ap": float(np.mean([ap_from_matches(p[f"scores{i}"], p[f"tps{i}"], p["n_gt"])
                                for i in range(len(COCO_IOUS))])),
           "ap50_reasonable": ap_from_matches(p["scores_r"], p["tps_r"], p["n_gt_reasonable"]),
           "recall_by_size": recall_from_hits(p["hits"], p["height"], SIZE_BUCKETS),
           "recall_by_occlusion": recall_from_hits(p["hits"], p["occlusion"], OCCLUSION_BUCKETS),
           "persons": p["persons"], "crowd_regions": p["crowd"], "images": p["images"]}
    if with_pose:
        out["pck02"] = p["correct"] / p["total"] if p["total"] else float("nan")
        out["pck02_keypoints"] = p["total"]
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


def _fixed(column: pa.ChunkedArray, width: int) -> np.ndarray:
    """A fixed-size list column as a float64 array [n, width]; null rows are NaN."""
    arr = column.combine_chunks()
    out = np.full((len(arr), width), np.nan)
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    if valid.any():
        out[valid] = arr.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
    return out


def _codes(values: pa.ChunkedArray, value_set: pa.Array) -> np.ndarray:
    """Each value's position in ``value_set`` (int64; -1 where absent)."""
    return pc.fill_null(pc.index_in(values, value_set=value_set), -1).to_numpy(zero_copy_only=False).astype(np.int64)


def _group(image_ids: pa.ChunkedArray, ids: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Rows grouped by image: (row order, start of each image's rows in it [len(ids) + 1]); within an image, rows
    keep table order; rows of images not in ``ids`` are dropped."""
    code = _codes(image_ids, ids)
    keep = np.flatnonzero(code >= 0)
    order = keep[np.argsort(code[keep], kind="stable")]
    starts = np.searchsorted(code[order], np.arange(len(ids) + 1))
    return order, starts


def _kps_list(kps: np.ndarray | None, rows: np.ndarray) -> list:
    if kps is None:
        return [None] * len(rows)
    return [None if np.isnan(kps[r, 0]) else kps[r] for r in rows]


def _image_rows(ids: pa.Array, annotations: pa.Table, detections: pa.Table, with_kps: bool) -> list[_ImageRows]:
    """:class:`_ImageRows` of every image of ``ids`` (in that order) from its annotations / detections (rows of
    one model and category, in table order), built from Arrow columns without per-row Python objects."""
    g_order, g_start = _group(annotations["image_id"], ids)
    d_order, d_start = _group(detections["image_id"], ids)
    g_boxes, d_boxes = _fixed(annotations["bbox"], 4), _fixed(detections["bbox"], 4)
    crowd = annotations["iscrowd"].to_numpy(zero_copy_only=False).astype(bool)
    occl = pc.fill_null(annotations["occlusion"].cast(pa.float64()), np.nan).to_numpy(zero_copy_only=False)
    scores = detections["score"].to_numpy(zero_copy_only=False).astype(float)
    g_kps = _fixed(annotations["keypoints"], 3 * NUM_KEYPOINTS) if with_kps else None
    d_kps = _fixed(detections["keypoints"], 3 * NUM_KEYPOINTS) if with_kps else None
    out = []
    for i in range(len(ids)):
        g, d = g_order[g_start[i]:g_start[i + 1]], d_order[d_start[i]:d_start[i + 1]]
        out.append(_ImageRows(g_boxes[g], crowd[g], occl[g], d_boxes[d], scores[d],
                              _kps_list(g_kps, g), _kps_list(d_kps, d)))
    return out


def _class_probs(images: pa.Table, predictions: pa.Table) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(classes in the order of the first predicted image's rows, probabilities [N images, C] with NaN where an
    image has no prediction, and whether each image has any)."""
    first = predictions["image_id"][0]
    classes = predictions.filter(pc.equal(predictions["image_id"], first))["category"].to_pylist()
    ids = images["image_id"].combine_chunks()
    image = _codes(predictions["image_id"], ids)
    cls = _codes(predictions["category"], pa.array(classes, pa.string()))
    score = predictions["score"].to_numpy(zero_copy_only=False).astype(float)
    sel = (image >= 0) & (cls >= 0)
    probs = np.full((len(ids), len(classes)), np.nan)
    probs[image[sel], cls[sel]] = score[sel]
    has = np.zeros(len(ids), bool)
    has[image[image >= 0]] = True
    return classes, probs, has


def _specs(infer: InferParams) -> list:
    """The detectors, then the pose model: every model whose detections are measured."""
    return [*infer.detectors, *([infer.pose] if infer.pose is not None else [])]


def detector_partials(images: pa.Table, annotations: pa.Table, detections: pa.Table,
                      infer: InferParams) -> dict[str, dict[str, dict]]:
    """Per model id and split (``val``, ``all``): :func:`match_partial` of these images (``images``: ``image_id,
    split``; annotations / detections: the columns of :data:`QUALITY_COLUMNS`), grouped per image with Arrow."""
    ids = images["image_id"].combine_chunks()
    val = np.flatnonzero(pc.equal(images["split"], "val").to_numpy(zero_copy_only=False))
    out = {}
    for spec in _specs(infer):
        with_pose = spec is infer.pose
        gt = annotations.filter(pc.equal(annotations["category"], spec.person_class))   # crowds: ignore regions
        dets = detections.filter(pc.and_(pc.equal(detections["model_id"], spec.id),
                                         pc.equal(detections["category"], spec.person_class)))
        per_image = _image_rows(ids, gt, dets, with_pose)
        out[spec.id] = {"val": match_partial([per_image[i] for i in val], spec.conf, infer, with_pose),
                        "all": match_partial(per_image, spec.conf, infer, with_pose)}
    return out


def detector_metrics(partials: list[dict[str, dict[str, dict]]], infer: InferParams) -> dict:
    """Every model's detection metrics per split from :func:`detector_partials` of consecutive image sets (the
    shards, in order); a split without images is left out."""
    metrics = {}
    for spec in _specs(infer):
        metrics[spec.id] = {}
        for split in ("val", "all"):
            parts = [p[spec.id][split] for p in partials]
            if sum(p["images"] for p in parts):
                metrics[spec.id][split] = finish_quality(parts, spec.conf, spec is infer.pose)
    return metrics


def classifier_metrics(images: pa.Table, predictions: pa.Table, infer: InferParams,
                       spurious_label: str | None) -> dict:
    """The classifier's F1 per split and the spurious-cue probe (``images``: ``image_id, split, labels,
    spurious_cue``; predictions: ``image_id, category, score``); empty without a classifier or predictions."""
    if infer.classifier is None or not predictions.num_rows:
        return {}
    ids = images["image_id"].combine_chunks()
    val = np.flatnonzero(pc.equal(images["split"], "val").to_numpy(zero_copy_only=False))
    classes, probs, has = _class_probs(images, predictions)
    labels = images["labels"].to_pylist()
    cues = images["spurious_cue"].to_pylist()
    rows = {name: [i for i in sel if has[i]] for name, sel in (("val", val), ("all", range(len(ids)))) if len(sel)}
    out = {name: _classifier_quality(probs, labels, sel, classes) for name, sel in rows.items()}
    if spurious_label is not None and spurious_label in classes:
        out["spurious"] = _spurious_probe(probs, labels, cues, has, classes.index(spurious_label), spurious_label)
    return {infer.classifier.id: out}


def quality(images: pa.Table, annotations: pa.Table, detections: pa.Table, predictions: pa.Table,
            infer: InferParams, spurious_label: str | None) -> dict:
    """Quality of every model on the val split and on all images (the demo models never train on these).

    The tables need only these columns: images ``image_id, split`` (+ ``labels, spurious_cue`` with a classifier),
    annotations ``image_id, category, bbox, iscrowd, occlusion`` (+ ``keypoints`` with a pose model), detections
    ``model_id, image_id, category, score, bbox`` (+ ``keypoints``), predictions ``image_id, category, score``.
    Rows are grouped per image with Arrow, so no per-row Python objects are made. The infer flow computes the same
    numbers from per-shard partials (:func:`shard_quality_partials`, :func:`detector_metrics`)."""
    metrics = detector_metrics([detector_partials(images, annotations, detections, infer)], infer)
    return _clean({**metrics, **classifier_metrics(images, predictions, infer, spurious_label)})


def _classifier_quality(probs: np.ndarray, labels: list, rows: list[int], classes: list[str]) -> dict:
    """:func:`classifier_quality` over image rows ``rows`` of the probability matrix."""
    rows = [i for i in rows if labels[i] is not None]
    if not rows:
        return {}
    truth = np.array([[c in labels[i] for c in classes] for i in rows])
    f1 = multilabel_f1(probs[rows], truth)
    return {"mean_f1": float(f1.mean()), "f1": {c: float(v) for c, v in zip(classes, f1)}, "images": len(rows)}


def _spurious_probe(probs: np.ndarray, labels: list, cues: list, has: np.ndarray, c: int, label: str) -> dict:
    """:func:`spurious_probe` over the probability matrix (column ``c`` is ``label``)."""
    rows = [i for i in range(len(labels)) if cues[i] is not None and has[i] and label not in (labels[i] or [])]
    by_cue = {cue: [float(probs[i, c]) for i in rows if cues[i] == cue] for cue in (True, False)}
    return {f"p_{label}_absent_with_cue": float(np.mean(by_cue[True])) if by_cue[True] else float("nan"),
            f"p_{label}_absent_without_cue": float(np.mean(by_cue[False])) if by_cue[False] else float("nan"),
            "images_with_cue": len(by_cue[True]), "images_without_cue": len(by_cue[False])}


QUALITY_COLUMNS = {
    "images": ["image_id", "split", "labels", "spurious_cue"],
    "annotations": ["image_id", "category", "bbox", "iscrowd", "occlusion", "keypoints"],
    "detections": ["model_id", "image_id", "category", "score", "bbox", "keypoints"],
    "predictions": ["image_id", "category", "score"],
}
"""The columns :func:`quality` reads (:func:`quality_from_files`)."""


def _read(path: Path, columns: list[str], categories: list[str] | None) -> pa.Table:
    """``columns`` of Parquet file ``path``, row group by row group, keeping rows whose ``category`` is in
    ``categories`` (all when None); file order."""
    file = pq.ParquetFile(path)
    keep = None if categories is None else pa.array(categories, pa.string())
    pieces = []
    for g in range(file.metadata.num_row_groups):
        t = file.read_row_group(g, columns=columns)
        pieces.append(t if keep is None else t.filter(pc.is_in(t["category"], value_set=keep)))
    return pa.concat_tables(pieces) if pieces else file.schema_arrow.empty_table().select(columns)


def quality_from_files(files: dict[str, Path], infer: InferParams, spurious_label: str | None) -> dict:
    """:func:`quality` reading only :data:`QUALITY_COLUMNS` of the Parquet files ``files`` (keyed as there; the
    annotations and detections of the models' person classes only); keypoints only with a pose model.
    ``FileNotFoundError`` names a missing file."""
    persons = sorted({s.person_class for s in [*infer.detectors, *([infer.pose] if infer.pose is not None else [])]})
    tables = {}
    for name, columns in QUALITY_COLUMNS.items():
        cols = [c for c in columns if c != "keypoints" or infer.pose is not None]
        tables[name] = _read(files[name], cols, persons if name in ("annotations", "detections") else None)
    return quality(tables["images"], tables["annotations"], tables["detections"], tables["predictions"], infer,
                   spurious_label)


QUALITY_FILE = "quality.pkl"
"""A shard's :func:`detector_partials`, pickled beside its tables by :func:`infer_shard`."""


def shard_quality_partials(images: pa.Table, annotations: str | Path, detections: list[dict],
                           infer: InferParams) -> dict:
    """:func:`detector_partials` of one shard: its images (``image_id, split``), its images' annotations read from
    ``annotations`` (the pulled table) and its detection rows."""
    persons = sorted({s.person_class for s in _specs(infer)})
    cols = [c for c in QUALITY_COLUMNS["annotations"] if c != "keypoints" or infer.pose is not None]
    ann = read_image_rows(annotations, images["image_id"].to_pylist(), columns=cols)
    ann = ann.filter(pc.is_in(ann["category"], value_set=pa.array(persons, pa.string())))
    return detector_partials(images, ann, rows_to_table(detections, "detections"), infer)


def read_quality_partials(shard_dirs: list[str | Path]) -> list[dict]:
    """The :data:`QUALITY_FILE` partials of the finished shards, in the order given."""
    out = []
    for d in map(Path, shard_dirs):
        if is_done(d.parent, d.name):
            with open(d / QUALITY_FILE, "rb") as f:
                out.append(pickle.load(f))
    return out


def quality_from_partials(partials: list[dict], files: dict[str, Path], infer: InferParams,
                          spurious_label: str | None) -> dict:
    """:func:`quality` from the shards' partials (detectors; :func:`read_quality_partials`) and the files
    ``images`` / ``predictions`` (classifier; :data:`QUALITY_COLUMNS` only): the flow's path, equal to
    :func:`quality_from_files`."""
    metrics = detector_metrics(partials, infer)
    if infer.classifier is not None:
        images = _read(files["images"], QUALITY_COLUMNS["images"], None)
        predictions = _read(files["predictions"], QUALITY_COLUMNS["predictions"], None)
        metrics.update(classifier_metrics(images, predictions, infer, spurious_label))
    return _clean(metrics)
