"""Tasks of the parts stage: body-part masks of every pedestrian in a shard of images (ground-truth persons and
person detections), and the masks' quality against the synthetic ground-truth part masks."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from prefect import task
from prefect.cache_policies import NO_CACHE

from detection.body import BODY_PARTS, PART_GROUPS
from detection.datasets.records import error_row
from detection.datasets.tables import SCHEMAS
from detection.evaluation import SIZE_BUCKETS, iou_matrix
from detection.masks import rle_decode
from detection.parts import SOURCES, Keypoints, PartsError, PersonParts, body_parts, mask_iou, paint_disjoint
from tasks.params import Params, PartsParams
from tasks.shards import RowRange, read_image_rows, read_rows, row_ranges, write_shard

GT_MODEL = "gt"          # model_id of ground-truth persons in the parts table


@dataclass(frozen=True)
class PartsShard:
    """What a parts task is given instead of rows: a row range of the images table and the files it reads its
    images' rows from (annotations, gt_parts, detections: Parquet files written in image order, so each read
    touches few row groups), with the models whose detections get parts (``wanted``, their person class in
    ``person_class``) and the pose model (``(id, person class)``, or None) whose detections lend keypoints."""

    images: RowRange
    annotations: str
    gt_parts: str
    detections: str
    person_class: dict[str, str]
    wanted: tuple[str, ...]
    pose: tuple[str, str] | None

    @classmethod
    def plan(cls, params: Params, images: str | Path, annotations: str | Path, gt_parts: str | Path,
             detections: str | Path) -> list[PartsShard]:
        """The shards of ``params.parts.shard_size`` images of the images table ``images``, in image order."""
        person_class = {d.id: d.person_class for d in params.infer.detectors}
        wanted = tuple(params.parts.detectors or person_class)
        pose = params.infer.pose
        return [cls(rows, str(annotations), str(gt_parts), str(detections), person_class, wanted,
                    (pose.id, pose.person_class) if pose is not None else None)
                for rows in row_ranges(images, params.parts.shard_size)]

    def items(self) -> list[dict]:
        """The shard's items (:func:`shard_inputs`), reading only its images' rows."""
        images = read_rows(self.images, ["image_id", "uri", "height", "width"])
        ids = images["image_id"].to_pylist()
        det_columns = [c for c in SCHEMAS["detections"].names if c != "class_probs"]
        return _items(images, read_image_rows(self.annotations, ids, schema=SCHEMAS["annotations"]),
                      read_image_rows(self.gt_parts, ids, schema=SCHEMAS["gt_parts"]),
                      read_image_rows(self.detections, ids, columns=det_columns),
                      self.person_class, set(self.wanted), self.pose)


def shard_inputs(params: Params, images: pa.Table, annotations: pa.Table, gt_parts: pa.Table,
                 detections: pa.Table) -> list[dict]:
    """One item per image, in image order: its size, GT persons (+ their GT part masks), the person detections
    to segment and the pose model's detections to borrow keypoints from."""
    person_class = {d.id: d.person_class for d in params.infer.detectors}
    pose = params.infer.pose
    return _items(images, annotations, gt_parts, detections, person_class,
                  set(params.parts.detectors or person_class),
                  (pose.id, pose.person_class) if pose is not None else None)


def _items(images: pa.Table, annotations: pa.Table, gt_parts: pa.Table, detections: pa.Table,
           person_class: dict[str, str], wanted: set[str], pose: tuple[str, str] | None) -> list[dict]:
    items = {r["image_id"]: {"image": r, "persons": [], "detections": [], "pose": [], "gt_parts": []}
             for r in images.select(["image_id", "uri", "height", "width"]).to_pylist()}
    for a in annotations.filter(pc.equal(annotations["category"], "person")).to_pylist():
        if not a["iscrowd"] and a["image_id"] in items:
            items[a["image_id"]]["persons"].append(a)
    keep = pc.equal(detections["above_conf"], True)
    detections = detections.filter(keep)
    if "class_probs" in detections.column_names:
        detections = detections.drop_columns(["class_probs"])
    for d in detections.to_pylist():
        item = items.get(d["image_id"])
        if item is None:
            continue
        if d["model_id"] in wanted and d["category"] == person_class[d["model_id"]]:
            item["detections"].append(d)
        elif pose is not None and d["model_id"] == pose[0] and d["category"] == pose[1]:
            item["pose"].append(d)
    for g in gt_parts.to_pylist():
        if g["image_id"] in items:
            items[g["image_id"]]["gt_parts"].append(g)
    return list(items.values())


def _best_match(box, candidates: list[dict], min_iou: float) -> dict | None:
    if not candidates:
        return None
    ious = iou_matrix(np.asarray(box, float)[None], np.array([c["bbox"] for c in candidates], float))[0]
    best = int(np.argmax(ious))
    return candidates[best] if ious[best] >= min_iou else None


def _gt_keypoints(person: dict | None, cfg: PartsParams) -> Keypoints | None:
    if person is None or person["keypoints"] is None:
        return None
    kps = Keypoints.from_coco(person["keypoints"])
    return kps if kps.count >= cfg.min_keypoints else None


def _pose_keypoints(box, pose: list[dict], cfg: PartsParams) -> Keypoints | None:
    match = _best_match(box, pose, cfg.match_iou)
    if match is None or match["keypoints"] is None:
        return None
    kps = Keypoints.from_pose(match["keypoints"], cfg.keypoint_conf)
    return kps if kps.count >= cfg.min_keypoints else None


def choose_keypoints(box, own_gt: dict | None, item: dict, cfg: PartsParams) -> tuple[Keypoints, str]:
    """Keypoints in order of preference: ground truth (the person's own, or the GT person a detection matches),
    the pose model's detection that best matches the box, the template stretched over the box."""
    if own_gt is None:
        own_gt = _best_match(box, item["persons"], cfg.match_iou)
    kps = _gt_keypoints(own_gt, cfg)
    if kps is not None:
        return kps, "gt"
    kps = _pose_keypoints(box, item["pose"], cfg)
    if kps is not None:
        return kps, "pose"
    return Keypoints.template(box), "template"


def _rows(image: dict, det_id: str, model_id: str, parts: PersonParts) -> list[dict]:
    areas = parts.areas.tolist()
    return [{"image_id": image["image_id"], "det_id": det_id, "model_id": model_id, "part": name,
             "height": image["height"], "width": image["width"], "rle": rle, "area": area,
             "visible": bool(vis), "source": parts.source, "person_height": parts.height}
            for name, rle, area, vis in zip(parts.names, parts.rles(), areas, parts.visible.tolist())]


def _quality_rows(item: dict, person: dict, cfg: PartsParams, built: PersonParts) -> list[dict]:
    """IoU of the masks each source gives for this GT person against its GT part masks; ``built`` are the parts
    already made for it from its preferred source (reused, not rebuilt)."""
    image = item["image"]
    H, W = image["height"], image["width"]
    by_part = {g["part"]: g for g in item["gt_parts"] if g["ann_id"] == person["ann_id"]}
    if set(by_part) != set(BODY_PARTS):
        return []
    amodal = np.stack([rle_decode(by_part[p]["rle"], H, W) for p in BODY_PARTS])
    disjoint = paint_disjoint(amodal)
    groups = [[BODY_PARTS.index(m) for m in members] for members in PART_GROUPS[cfg.grouping].values()]
    gt_group = np.stack([disjoint[g].any(0) for g in groups])
    gt_group_amodal = np.stack([amodal[g].any(0) for g in groups])
    candidates = {"gt": lambda: _gt_keypoints(person, cfg),
                  "pose": lambda: _pose_keypoints(person["bbox"], item["pose"], cfg),
                  "template": lambda: Keypoints.template(person["bbox"])}
    rows = []
    for source in SOURCES:
        try:
            if source == built.source:
                parts = built
            else:
                kps = candidates[source]()
                if kps is None:
                    continue
                parts = body_parts(kps, person["bbox"], (H, W), source)
            pred = parts.grouped(cfg.grouping).full()
        except PartsError:            # that source's keypoints are unusable here: nothing to measure
            continue
        for name, iou, iou_a in zip(PART_GROUPS[cfg.grouping], mask_iou(pred, gt_group),
                                    mask_iou(pred, gt_group_amodal)):
            if not np.isnan(iou_a):
                rows.append({"image_id": image["image_id"], "ann_id": person["ann_id"], "source": source,
                             "part": name, "iou": None if np.isnan(iou) else float(iou), "iou_amodal": float(iou_a),
                             "box_height": person["bbox"][3] - person["bbox"][1], "occlusion": person["occlusion"]})
    return rows


@task(cache_policy=NO_CACHE, retries=1)
def parts_shard(items: list[dict] | PartsShard, cfg: PartsParams, shard_dir: str) -> str:
    """Parts of every GT person and person detection of these images (a :class:`PartsShard`, whose rows are read
    here, or its items); bad boxes / keypoints go to ``errors``."""
    if isinstance(items, PartsShard):
        items = items.items()
    parts, quality, errors = [], [], []
    for item in items:
        image = item["image"]
        targets = [(p["ann_id"], GT_MODEL, p["bbox"], p) for p in item["persons"]]
        targets += [(d["det_id"], d["model_id"], d["bbox"], None) for d in item["detections"]]
        for det_id, model_id, box, own_gt in targets:
            try:
                kps, source = choose_keypoints(box, own_gt, item, cfg)
                person = body_parts(kps, box, (image["height"], image["width"]), source)
                parts += _rows(image, det_id, model_id, person.grouped(cfg.grouping, cfg.context))
                if own_gt is not None and item["gt_parts"]:
                    quality += _quality_rows(item, own_gt, cfg, person)
            except PartsError as exc:
                errors.append(error_row("parts", image["uri"], exc.error_type, f"{model_id} {det_id}: {exc}",
                                        image["image_id"]))
    return write_shard(shard_dir, parts=parts, part_iou=quality, errors=errors)


class PartIouStats:
    """The part masks' quality (:func:`quality_metrics`) accumulated shard by shard from pieces of the part_iou
    table: per source, counts and float64 sums of IoU (null counts as 0), amodal IoU, per part, per person size and
    on tall persons. Persons are distinct ``ann_id`` per piece, summed (ids are unique across images' shards)."""

    def __init__(self, min_height: float):
        self.min_height = min_height
        self._stats: dict[str, dict] = {}

    def add(self, part_iou: pa.Table) -> None:
        for source in SOURCES:
            sel = part_iou.filter(pc.equal(part_iou["source"], source))
            if not sel.num_rows:
                continue
            st = self._stats.setdefault(source, {"persons": 0, "n": 0, "iou": 0.0, "amodal": 0.0, "tall": [0.0, 0],
                                                 "per_part": {}, "by_size": {}})
            iou = pc.fill_null(sel["iou"], 0.0).to_numpy().astype(float)
            height = sel["box_height"].to_numpy().astype(float)
            st["persons"] += len(pc.unique(sel["ann_id"]))
            st["n"] += len(iou)
            st["iou"] += float(iou.sum())
            st["amodal"] += float(sel["iou_amodal"].to_numpy().astype(float).sum())
            st["tall"] = [st["tall"][0] + float(iou[height >= self.min_height].sum()),
                          st["tall"][1] + int((height >= self.min_height).sum())]
            names = sel["part"].to_numpy(zero_copy_only=False)
            for part in dict.fromkeys(names.tolist()):
                s_n = st["per_part"].setdefault(part, [0.0, 0])
                m = names == part
                s_n[0], s_n[1] = s_n[0] + float(iou[m].sum()), s_n[1] + int(m.sum())
            for b, (lo, hi) in SIZE_BUCKETS.items():
                m = (height >= lo) & (height < hi)
                if m.any():
                    s_n = st["by_size"].setdefault(b, [0.0, 0])
                    s_n[0], s_n[1] = s_n[0] + float(iou[m].sum()), s_n[1] + int(m.sum())

    def result(self) -> dict:
        """Per source: persons, mean IoU (overall, amodal, tall persons: None when none), per part, per size."""
        out = {}
        for source in SOURCES:
            st = self._stats.get(source)
            if st is None:
                continue
            out[source] = {
                "persons": st["persons"],
                "mean_iou": st["iou"] / st["n"],
                "mean_iou_amodal": st["amodal"] / st["n"],
                "mean_iou_tall": st["tall"][0] / st["tall"][1] if st["tall"][1] else None,
                "per_part": {p: v / n for p, (v, n) in st["per_part"].items()},
                "by_size": {b: st["by_size"][b][0] / st["by_size"][b][1] for b in SIZE_BUCKETS if b in st["by_size"]},
            }
        return out


def quality_metrics(part_iou: pa.Table, min_height: float) -> dict:
    """Mean IoU per source: overall (over every person x part), per part, per person size, and on persons at least
    ``min_height`` px tall (:class:`PartIouStats` over the whole table)."""
    stats = PartIouStats(min_height)
    stats.add(part_iou)
    return stats.result()
