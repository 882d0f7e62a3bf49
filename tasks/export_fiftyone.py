"""Export where the detector fails for interactive browsing in FiftyOne, without FiftyOne installed.

Writes a folder in FiftyOne's serialized dataset layout that ``fo.Dataset.from_dir(out,
dataset_type=fo.types.FiftyOneDataset)`` loads (https://docs.voxel51.com/user_guide/import_datasets.html,
"FiftyOneDataset"; a ``metadata.json`` without a ``version`` key is read by FiftyOne's
``LegacyFiftyOneDatasetImporter``, the sample-dict layout that FiftyOne keeps loading for backwards compatibility
and that, unlike the newer database dump, carries no version-specific MongoDB schema)::

    <out>/
        metadata.json           {"name", "media_type": "image", "info": {"xai_audit": selection, slices, counts}}
        samples.json            {"samples": [one dict per image: Sample.to_dict() layout]}
        data/                   the images (copied; --media absolute keeps absolute paths to the originals)
        fields/saliency/        per image: the saliency Heatmap PNG (uint8, range [0, 255]); its ``map_path`` is
                                absolute (the legacy importer joins only ``filepath`` onto the folder, not a
                                label's media path), so moving the folder breaks the heat maps, not the images
        maps/                   per explained pedestrian: its own saliency grid (float16 .npy, explain's grid)

Per image sample: ``ground_truth`` (Detections: the non-crowd persons of the audited detector's person class,
each with ``outcome`` found / missed, ``miss_type`` (evaluate's misses table; ``untyped`` where evaluate could not
read the image), ``score`` of its matched detection, ``slices`` (the labels ``'<outcome>: <slice>'`` of the
significant slices of data/evaluate/slices.parquet it belongs to), every pulled attribute (drawn, computed, the
user's; names made field-safe), ``share_<part>`` (the default part job's share of |relevance|) and
``saliency_map`` (its .npy, relative to the folder)), ``predictions`` (Detections: the audited detector's
detections scoring >= its conf, with ``outcome`` true_positive / false_positive / ignored (on a crowd region),
``fp_type`` of :mod:`detection.miss_types` and ``ann_id`` of the person it found) and ``saliency`` (Heatmap: per
pixel the largest of the exported pedestrians' positive saliency, each divided by its own maximum - one map per
image is what a FiftyOne Heatmap field holds; each pedestrian's own map is its ``saliency_map``).

By default only the pedestrians in at least one significant slice are written (with the images holding them and
those images' detections); ``--all`` writes every pedestrian and every image with a pedestrian or a detection.
The counts written (persons, missed, miss types, false-positive types, persons per slice) are the report's: the
slice membership is recomputed with :func:`detection.slices.slice_mask` on evaluate's outcome table, binned as
evaluate binned it, so each slice holds its ``size``; false-positive types follow
:func:`tasks.audit_slices.miss_types`. Inputs are read through :mod:`tasks.stages`.

Run: ``python -m tasks.export_fiftyone --params params.yaml --out exports/fiftyone [--all] [--media absolute]``.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from detection.attributes import KEYS
from detection.evaluation import match
from detection.miss_types import FP_TYPES, classify_errors
from detection.slices import slice_mask
from tasks import stages
from tasks.audit_slices import (
    SEEN_SCORE,
    SLICE_CONFIG,
    _by_image,
    candidate_image,
    default_part_job,
    outcome_table,
    part_shares,
)
from tasks.params import Params, load_params

GT_FIELD, PRED_FIELD, HEATMAP_FIELD = "ground_truth", "predictions", "saliency"
UNTYPED = "untyped"                      # a miss / false positive of an image evaluate could not read
MEDIA_MODES = ("copy", "absolute")
# fields a FiftyOne Detection already has (or this export sets): an attribute of that name gets an ``attr_`` prefix
RESERVED = {"id", "_id", "_cls", "tags", "label", "bounding_box", "mask", "mask_path", "confidence", "index",
            "attributes", "ann_id", "det_id", "outcome", "score", "slices", "miss_type", "fp_type", "saliency_map"}


@dataclass
class ExportCounts:
    """What an export holds: ``images`` samples; ``persons`` ground-truth pedestrians of which ``missed``, per miss
    type (``miss_types``); ``detections`` at or above conf, ``false_positives`` per type; ``slices``: per slice
    label the pedestrians tagged with it."""

    images: int = 0
    persons: int = 0
    missed: int = 0
    miss_types: dict[str, int] = field(default_factory=dict)
    detections: int = 0
    false_positives: dict[str, int] = field(default_factory=dict)
    slices: dict[str, int] = field(default_factory=dict)


def slice_label(outcome: str, text: str) -> str:
    """How a slice is named on an object: ``'missed: facing = back'``, ``'share:context: lighting in [0.5, 0.8)'``."""
    return f"{outcome}: {text}"


def slice_memberships(frame: pd.DataFrame, slices: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per significant slice of evaluate's ``slices`` table (its label -> [len(frame)] bool): the pedestrians of the
    outcome table ``frame`` in it, binned as :func:`tasks.audit_slices.slice_rows` binned them (over the rows with
    a finite outcome, with evaluate's slice config). Raises ``KeyError`` naming a slice whose outcome or attribute
    ``frame`` lacks."""
    out: dict[str, np.ndarray] = {}
    if slices.empty:
        return out
    for r in slices[slices["significant"] == True].itertuples():  # noqa: E712
        preds = json.loads(r.predicates)
        missing = [c for c in [r.outcome, *preds] if c not in frame.columns]
        if missing:
            raise KeyError(f"slices.parquet: slice {r.slice!r} needs columns {missing} the outcome table lacks "
                           "(pulled / explained data changed since evaluate ran: re-run evaluate)")
        finite = np.isfinite(frame[r.outcome].to_numpy(float))
        mask = np.zeros(len(frame), bool)
        mask[finite] = slice_mask(frame.loc[finite, list(preds)], preds, SLICE_CONFIG)
        out[slice_label(r.outcome, r.slice)] = mask
    return out


def _field_name(name: str) -> str:
    """A column name as a FiftyOne / MongoDB field name (letters, digits, underscores; not starting with one)."""
    out = re.sub(r"\W", "_", str(name)).strip("_")
    return out if out and not out[0].isdigit() else f"a_{out}"


def _plain(value):
    """A JSON value for a sample dict, None for missing (NaN, None, empty)."""
    if value is None:
        return None
    if isinstance(value, (np.ndarray, list, tuple)):
        items = [_plain(v) for v in value]
        return None if any(v is None for v in items) or not items else items
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if np.isfinite(value) else None
    return str(value)


def _rel_box(box, width: float, height: float) -> list[float]:
    """Pixel xyxy -> FiftyOne's relative [x, y, w, h] (top-left, in [0, 1])."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return [x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height]


def _positive_unit(saliency: np.ndarray) -> np.ndarray:
    pos = np.clip(np.nan_to_num(saliency.astype(np.float32), nan=0.0), 0, None)
    return pos / (pos.max() or 1.0)


# ---------------------------------------------------------------------------------------------------- the export
@dataclass
class _Inputs:
    images: pa.Table
    annotations: pa.Table
    detections: pa.Table
    explanations: pa.Table
    slices: pd.DataFrame
    misses: pd.DataFrame
    summary: dict
    frame: pd.DataFrame
    job: str | None


def read_inputs(params: Params) -> _Inputs:
    """Everything the export joins, through :mod:`tasks.stages`. Raises ``FileNotFoundError`` naming a missing
    stage output and ``ValueError`` when evaluate found no ground truth."""
    pulled, evaluated = stages.pull(params), stages.evaluate(params)
    data = pulled.dataset()
    optional = {}
    for name in ("attributes", "computed_attributes"):
        try:
            optional[name] = pulled.read(name)
        except FileNotFoundError:
            optional[name] = None
    try:
        summary = json.loads(Path(evaluated.metrics).read_text()).get("where_it_fails")
        slices, misses = evaluated.read("slices").to_pandas(), evaluated.read("misses").to_pandas()
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{exc.filename}: evaluate's output is missing: run the evaluate stage first") from None
    if summary is None:
        raise ValueError(f"{evaluated.metrics} has no where_it_fails summary: re-run the evaluate stage")
    if not summary.get("ground_truth", True):
        raise ValueError(f"{evaluated.metrics}: {summary.get('reason', 'no ground truth')}; nothing to export")
    explanations = stages.explain(params).read("explanations")
    detections = stages.infer(params).read("detections")
    job = summary.get("job") or default_part_job(explanations)
    shares = part_shares(explanations, job) if job else pd.DataFrame(columns=list(KEYS))
    spec = params.explain_detector()
    frame, _ = outcome_table(data.annotations, detections, optional["attributes"], optional["computed_attributes"],
                             pulled.user_attributes(), shares, spec.id, spec.person_class, spec.conf)
    return _Inputs(data.images, data.annotations, detections, explanations, slices, misses, summary, frame, job)


def _attribute_columns(inp: _Inputs) -> list[str]:
    """The frame's attribute columns (every pulled one, keys and outcomes left out)."""
    skip = {*KEYS, "missed", "score", "height"}
    return [c for c in inp.frame.columns if c not in skip and not c.startswith("share:")]


def _detection_types(inp: _Inputs, params: Params, untyped: set[str]) -> dict[str, tuple[list[dict], np.ndarray,
                                                                                          np.ndarray, list]]:
    """image_id -> (its audited-detector person detections (any score), det_type [D], the person index each is
    matched to [D] (-1: none), its person annotations incl. crowds), typed as :func:`tasks.audit_slices.miss_types`
    types them (false positives of images in ``untyped``: ``untyped``)."""
    spec = params.explain_detector()
    seen = min(SEEN_SCORE, spec.conf)
    anns = _by_image(inp.annotations.select(["image_id", "ann_id", "category", "bbox", "iscrowd"]))
    d_all = inp.detections
    mine = pc.and_(pc.equal(d_all["model_id"], spec.id), pc.equal(d_all["category"], spec.person_class))
    dets = _by_image(d_all.filter(mine).select(["image_id", "det_id", "score", "bbox"]))
    out = {}
    for image_id in inp.images["image_id"].to_pylist():
        d = dets.get(image_id, [])
        persons, ci = candidate_image(anns.get(image_id, []), d, spec.person_class)
        det_type = classify_errors(ci, spec.conf, seen_score=seen).det_type.copy()
        if image_id in untyped:
            det_type[np.isin(det_type, FP_TYPES)] = UNTYPED
        out[image_id] = (d, det_type, match(ci.evaluation()).det_gt, persons)
    return out


def _select(inp: _Inputs, frame: pd.DataFrame, keep: np.ndarray, det_types: dict, all_objects: bool) -> list[str]:
    """The images to write, in the images table's order: those with a selected pedestrian; with ``all_objects``
    also those with a detection at or above conf."""
    wanted = set(frame.loc[keep, "image_id"])
    if all_objects:
        wanted |= {i for i, (_, t, _, _) in det_types.items() if len(t) and (t != "below_threshold").any()}
    return [i for i in inp.images["image_id"].to_pylist() if i in wanted]


class _Writer:
    """Builds the sample dicts and writes media, maps and heat maps under ``out`` while counting what it wrote."""

    def __init__(self, out: Path, inp: _Inputs, frame: pd.DataFrame, labels: list[str], member: np.ndarray,
                 person_class: str, media: str):
        self.out, self.inp, self.frame, self.labels, self.member = out, inp, frame, labels, member
        self.person_class, self.media = person_class, media
        self.attrs = _attribute_columns(inp)
        self.shares = [c for c in frame.columns if c.startswith("share:")]
        self.saliency = _saliency_by_target(inp)
        self.miss_type = {(r.image_id, r.ann_id): r.miss_type for r in inp.misses.itertuples()}
        self.counts = ExportCounts(slices={k: 0 for k in labels})
        for sub in ("data", f"fields/{HEATMAP_FIELD}", "maps"):
            (out / sub).mkdir(parents=True, exist_ok=True)

    def _media(self, img: dict, stem: str) -> str:
        source = Path(str(img["uri"]))
        if self.media == "absolute":
            return str(source.resolve())
        target = self.out / "data" / f"{stem}{source.suffix or '.png'}"
        shutil.copyfile(source, target)
        return target.relative_to(self.out).as_posix()

    def person(self, i: int, ann: dict, size: tuple[float, float], stem: str, maps: list) -> dict:
        """The ground-truth Detection of frame row ``i`` (annotation ``ann``)."""
        r, c = self.frame.loc[i], self.counts
        missed = bool(r["missed"] > 0)
        obj = {"_cls": "Detection", "tags": [], "label": self.person_class,
               "bounding_box": _rel_box(ann["bbox"], *size), "ann_id": str(r["ann_id"]),
               "outcome": "missed" if missed else "found", "score": _plain(r["score"]),
               "slices": [k for k, m in zip(self.labels, self.member[i]) if m]}
        if missed:
            obj["miss_type"] = self.miss_type.get((r["image_id"], r["ann_id"]), UNTYPED)
            c.miss_types[obj["miss_type"]] = c.miss_types.get(obj["miss_type"], 0) + 1
        values = {_field_name(k): _plain(r[k]) for k in self.attrs}
        values = {f"attr_{k}" if k in RESERVED else k: v for k, v in values.items()}
        values |= {_field_name(f"share_{k.partition(':')[2]}"): _plain(r[k]) for k in self.shares}
        obj |= {k: v for k, v in values.items() if v is not None}
        sal = self.saliency.get((r["image_id"], str(r["ann_id"])))
        if sal is not None:
            path = Path("maps") / stem / f"{_field_name(r['ann_id'])}.npy"
            (self.out / path).parent.mkdir(parents=True, exist_ok=True)
            np.save(self.out / path, sal)
            obj["saliency_map"] = path.as_posix()
            maps.append(_positive_unit(sal))
        c.persons += 1
        c.missed += int(missed)
        for k in obj["slices"]:
            c.slices[k] += 1
        return obj

    def predictions(self, dets: list[dict], det_type: np.ndarray, det_gt: np.ndarray, persons: list[dict],
                    size: tuple[float, float]) -> list[dict]:
        """The Detections of the detections at or above conf, with outcome / fp_type / the person found."""
        out, c = [], self.counts
        for k in np.flatnonzero(det_type != "below_threshold"):
            x = dets[k]
            kind = {"tp": "true_positive", "ignored": "ignored"}.get(det_type[k], "false_positive")
            obj = {"_cls": "Detection", "tags": [], "label": self.person_class, "confidence": float(x["score"]),
                   "bounding_box": _rel_box(x["bbox"], *size), "det_id": str(x["det_id"]), "outcome": kind}
            if kind == "false_positive":
                obj["fp_type"] = str(det_type[k])
                c.false_positives[obj["fp_type"]] = c.false_positives.get(obj["fp_type"], 0) + 1
            elif kind == "true_positive":
                obj["ann_id"] = str(persons[det_gt[k]]["ann_id"])
            out.append(obj)
            c.detections += 1
        return out

    def sample(self, n: int, img: dict, rows: list[int], typed: tuple) -> dict:
        """The sample dict of image ``img`` (its ``n``-th) with the frame rows ``rows`` as ground truth."""
        size = (float(img["width"]), float(img["height"]))
        stem = f"{n:06d}_{_field_name(img['image_id'])}"
        dets, det_type, det_gt, persons = typed
        by_ann = {x["ann_id"]: x for x in persons}
        maps: list[np.ndarray] = []
        gts = [self.person(i, by_ann[self.frame.at[i, "ann_id"]], size, stem, maps) for i in rows]
        sample = {"filepath": self._media(img, stem), "tags": [], "image_id": str(img["image_id"]),
                  "metadata": {"_cls": "ImageMetadata", "width": int(size[0]), "height": int(size[1])},
                  GT_FIELD: {"_cls": "Detections", "detections": gts},
                  PRED_FIELD: {"_cls": "Detections", "detections": self.predictions(dets, det_type, det_gt, persons,
                                                                                   size)}}
        if maps:
            png = (np.max(np.stack(maps), 0) * 255).round().astype(np.uint8)
            path = Path("fields") / HEATMAP_FIELD / f"{stem}.png"
            Image.fromarray(png).save(self.out / path)
            # absolute: FiftyOne's LegacyFiftyOneDatasetImporter makes only ``filepath`` absolute
            sample[HEATMAP_FIELD] = {"_cls": "Heatmap", "map_path": str((self.out / path).resolve()),
                                     "range": [0, 255]}
        self.counts.images += 1
        return sample


def export_fiftyone(params: Params, out_dir: str | Path, all_objects: bool = False, media: str = "copy",
                    name: str = "xai-audit") -> ExportCounts:
    """Write the export folder (module docstring) to ``out_dir`` (replaced if it exists) and return its counts.
    ``media``: ``copy`` the images into ``data/`` or keep ``absolute`` paths to them. Raises ``ValueError`` for
    an unknown ``media`` and as :func:`read_inputs`."""
    if media not in MEDIA_MODES:
        raise ValueError(f"media {media!r}: use one of {MEDIA_MODES}")
    inp = read_inputs(params)
    spec = params.explain_detector()
    frame = inp.frame.reset_index(drop=True)
    members = slice_memberships(frame, inp.slices)
    labels = list(members)
    member = np.stack([members[k] for k in labels], 1) if labels else np.zeros((len(frame), 0), bool)
    keep = np.ones(len(frame), bool) if all_objects else member.any(1)
    # evaluate typed the misses of every image it could read: an image with a miss but no misses row was not
    untyped = set(frame.loc[frame["missed"] > 0, "image_id"]) - set(inp.misses["image_id"])
    det_types = _detection_types(inp, params, untyped)

    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    writer = _Writer(out, inp, frame, labels, member, spec.person_class, media)
    rows = frame.index[keep].groupby(frame.loc[keep, "image_id"]) if keep.any() else {}
    images = {r["image_id"]: r for r in inp.images.select(["image_id", "uri", "width", "height"]).to_pylist()}
    none = ([], np.zeros(0, object), np.zeros(0, int), [])
    samples = [writer.sample(n, images[i], list(rows.get(i, [])), det_types.get(i, none))
               for n, i in enumerate(_select(inp, frame, keep, det_types, all_objects))]
    counts = writer.counts
    info = {"xai_audit": {"selection": "all" if all_objects else "significant slices", "job": inp.job,
                          "detector": spec.id, "conf": spec.conf, "counts": asdict(counts),
                          "slices": _slice_info(inp.slices)}}
    (out / "metadata.json").write_text(json.dumps({"name": name, "media_type": "image", "info": info}, indent=1))
    (out / "samples.json").write_text(json.dumps({"samples": samples}))
    return counts


def _saliency_by_target(inp: _Inputs) -> dict[tuple[str, str], np.ndarray]:
    """(image_id, target_id) -> the default part job's saliency grid [h, w] (float16) of ground-truth persons."""
    if inp.job is None:
        return {}
    sel = inp.explanations.filter(pc.and_(pc.equal(inp.explanations["job"], inp.job),
                                          pc.equal(inp.explanations["kind"], "persons")))
    out = {}
    for r in sel.select(["image_id", "target_id", "saliency", "saliency_height", "saliency_width"]).to_pylist():
        if r["saliency"] is not None and r["saliency_height"] and r["saliency_width"]:
            grid = np.array([np.nan if v is None else v for v in r["saliency"]], np.float16)
            out[(r["image_id"], r["target_id"])] = grid.reshape(r["saliency_height"], r["saliency_width"])
    return out


def _slice_info(slices: pd.DataFrame) -> list[dict]:
    if slices.empty:
        return []
    sig = slices[slices["significant"] == True]  # noqa: E712
    return [{"label": slice_label(r.outcome, r.slice), "outcome": r.outcome, "slice": r.slice, "size": int(r.size),
             "mean": _plain(r.mean), "ci_low": _plain(r.ci_low), "ci_high": _plain(r.ci_high),
             "rest_mean": _plain(r.rest_mean), "q_value": _plain(r.q_value)} for r in sig.itertuples()]


# ---------------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    """``python -m tasks.export_fiftyone --params params.yaml --out <dir> [--all] [--media copy|absolute]``:
    prints the counts as JSON."""
    parser = argparse.ArgumentParser(prog="python -m tasks.export_fiftyone", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True, help="the export folder (replaced if it exists)")
    parser.add_argument("--all", action="store_true", help="every pedestrian and detection, not only the slices'")
    parser.add_argument("--media", choices=MEDIA_MODES, default="copy")
    args = parser.parse_args(argv)
    counts = export_fiftyone(load_params(args.params, check_files=False), args.out, args.all, args.media)
    print(json.dumps(asdict(counts), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
