"""Tasks of the evaluate stage: the metrics of ``explainers.metrics`` for every explanation of a shard of images
(deletion / insertion AUC with the model, pointing game and energy pointing game against boxes and body-part
masks, cost), and the agreement between methods on the same target."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from prefect import task
from prefect.cache_policies import NO_CACHE

from detection.masks import rle_decode
from explainers.metrics import box_masks, deletion_insertion, energy_pointing_game, pointing_game
from tasks.explain import classifier_scorer, classifier_view, detection_scorer, load_image, task_device
from tasks.params import Params
from tasks.shards import write_shard

CONTEXT = "context"
SUBSTRATES = {"deletion": "mean", "insertion": "blur"}    # RISE's reference substrates


def _saliency(row: dict, size: tuple[int, int]) -> torch.Tensor:
    """The stored float16 grid, bilinearly upsampled to the size it was computed at -> [H, W] float32."""
    grid = torch.tensor(np.asarray(row["saliency"], np.float32)).view(row["saliency_height"], row["saliency_width"])
    return F.interpolate(grid[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]


def _metric_rows(row: dict, values: dict[str, float]) -> list[dict]:
    return [{"image_id": row["image_id"], "target_id": row["target_id"], "kind": row["kind"], "job": row["job"],
             "metric": name, "value": float(v)} for name, v in values.items() if v is not None and np.isfinite(v)]


def _target_masks(target: dict, parts: list[dict], gt_boxes: dict[str, list], H: int, W: int,
                  scale: tuple[float, float]) -> dict[str, torch.Tensor]:
    """Regions a target's saliency should fall in: its box and body (persons / detections); for classes the GT
    boxes of the class (label present) and of every object (saliency off all objects = background, where a
    spurious cue lives), at the saliency's resolution."""
    out = {}
    if target["kind"] == "classes":
        sy, sx = scale
        to_mask = lambda boxes: box_masks(torch.tensor(boxes, dtype=torch.float32) *  # noqa: E731
                                          torch.tensor([sx, sy, sx, sy]), H, W).any(0)
        if gt_boxes.get(target["category"]):
            out["box"] = to_mask(gt_boxes[target["category"]])
        every = [b for boxes in gt_boxes.values() for b in boxes]
        if every:
            out["objects"] = to_mask(every)
        return out
    out["box"] = box_masks(torch.tensor([target["bbox"]]), H, W)[0]
    body = [rle_decode(p["rle"], p["height"], p["width"]) for p in parts if p["part"] != CONTEXT]
    if body:
        out["body"] = torch.from_numpy(np.any(body, 0))
    return out


def evaluate_image(item: dict, params: Params, device: str, errors: list[dict]) -> list[dict]:
    """Metrics of every explanation of one image."""
    cfg = params.evaluate
    img = item["image"]
    image = load_image(img, "evaluate", device, errors)
    if image is None:
        return []
    H, W = image.shape[-2:]
    targets = item["targets"]
    causal = cfg.causal and (cfg.causal_split is None or img["split"] == cfg.causal_split)
    rows = []
    by_job: dict[tuple[str, str], list[dict]] = {}
    for e in item["explanations"]:
        by_job.setdefault((e["job"], e["kind"]), []).append(e)
    for (job, kind), exps in by_job.items():
        ts = [targets[e["target_id"]] for e in exps]
        if kind == "classes":
            view = classifier_view(params, device, image)
            scorer = classifier_scorer(params, device, ts)
        else:
            view, scorer = image, detection_scorer(params, device, ts)
        size = tuple(view.shape[-2:])
        saliency = torch.stack([_saliency(e, size) for e in exps])
        values = [{"n_forward": e["n_forward"] / e["shared_by"], "seconds": e["seconds"] / e["shared_by"]}
                  for e in exps]
        scale = (size[0] / H, size[1] / W)
        for i, (e, t) in enumerate(zip(exps, ts)):
            masks = _target_masks(t, item["parts"].get((t["parts_model"], t["parts_id"]), []), item["gt_boxes"],
                                  size[0], size[1], scale)
            for name, m in masks.items():
                values[i][f"pointing_{name}"] = float(pointing_game(saliency[i:i + 1], m[None],
                                                                   cfg.pointing_tolerance)[0])
                values[i][f"epg_{name}"] = float(energy_pointing_game(saliency[i:i + 1], m[None])[0])
        if causal:
            for mode in ("deletion", "insertion"):
                curve = deletion_insertion(scorer, view, saliency, mode=mode, substrate=SUBSTRATES[mode],
                                           steps=cfg.steps)
                for i in range(len(exps)):
                    values[i][f"{mode}_auc"] = float(curve.auc[i])
                    for k, v in enumerate(curve.curves[i].tolist()):
                        values[i][f"{mode}_curve_{k:02d}"] = v
        for e, v in zip(exps, values):
            rows += _metric_rows(e, v)
    return rows


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
def evaluate_shard(items: list[dict], params: Params, shard_dir: str) -> str:
    device = task_device(params.explain.device)
    rows, errors = [], []
    for item in items:
        rows += evaluate_image(item, params, device, errors)
    return write_shard(shard_dir, metrics=rows, errors=errors)


# ---------------------------------------------------------------------------------------------------- agreement
def _ranks(x: np.ndarray) -> np.ndarray:
    order = x.argsort(kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    for v in np.unique(x):                   # average ranks of ties
        same = x == v
        ranks[same] = ranks[same].mean()
    return ranks


def spearman(a: list[float], b: list[float]) -> float:
    """Rank correlation of two relevance vectors over the same regions (nan when either is constant)."""
    ra, rb = _ranks(np.asarray(a, float)), _ranks(np.asarray(b, float))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def agreement_rows(explanations: pa.Table) -> list[dict]:
    """For every target explained by several jobs with relevance over the same body parts: Spearman rank
    correlation between each pair of jobs (metric ``agree:<other job>`` on the first job of the pair) and whether
    they name the same most relevant part (``top_part_match:<other job>``)."""
    by_target: dict[tuple[str, str], list[dict]] = {}
    cols = ["image_id", "target_id", "kind", "job", "region_names", "relevance"]
    for r in explanations.select(cols).to_pylist():
        if r["relevance"] is not None and r["kind"] != "classes":
            by_target.setdefault((r["image_id"], r["target_id"]), []).append(r)
    rows = []
    for exps in by_target.values():
        exps.sort(key=lambda r: r["job"])
        for i, a in enumerate(exps):
            for b in exps[i + 1:]:
                common = [n for n in a["region_names"] if n in b["region_names"]]
                if len(common) < 3:
                    continue
                va = [a["relevance"][a["region_names"].index(n)] for n in common]
                vb = [b["relevance"][b["region_names"].index(n)] for n in common]
                rows += _metric_rows(a, {f"agree:{b['job']}": spearman(va, vb),
                                         f"top_part_match:{b['job']}": float(np.argmax(va) == np.argmax(vb))})
    return rows
