"""The audit report: tables of the explain / evaluate stages turned into a self-contained HTML page (figures as
embedded PNG, no external URL) and a markdown summary. Pure functions of the tables; the flow does the I/O."""
from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from detection.body import BODY_PARTS, PART_GROUPS  # noqa: E402
from detection.datasets.imageio import ImageError, load_rgb  # noqa: E402
from detection.evaluation import MATCH_IOU, OCCLUSION_BUCKETS, SIZE_BUCKETS  # noqa: E402
from detection.miss_rate import CURVE_FPPI  # noqa: E402
from tasks.bootstrap import CONFIDENCE, N_BOOT, SEED  # noqa: E402
from tasks.metric_names import AGREE, METRICS, TOP_PART_MATCH, causal_auc, epg, epg_chance, names, parse_agreement  # noqa: E402
from tasks.params import EvaluateParams, job_name  # noqa: E402
from tasks.part_shares import part_shares as compute_part_shares  # noqa: E402
from tasks.report_guidance import GuidanceInputs, render_guidance  # noqa: E402
from tasks.report_intervals import MIN_UNITS, breakdown_intervals, interval_text, share_intervals  # noqa: E402
from tasks.report_sag import render_sag  # noqa: E402
from tasks.report_sanity import render_sanity  # noqa: E402
from tasks.undefined import parse_undefined  # noqa: E402

# parts10 names, then the coarser groupings' own (parts6 / parts4: left_arm, arms, ...), then the context player
PART_ORDER = list(dict.fromkeys([*BODY_PARTS, *(name for groups in PART_GROUPS.values() for name in groups),
                                 "context"]))
REGION_NOTE = ("Region methods paint relevance on the person's parts and context, which lie inside the box by "
               "construction, so their box pointing / EPG are high by design: compare methods on the body columns "
               "and the causal AUCs.")
EPG_NOTE = ("EPG (energy pointing game) is reported only for maps with a pixel &le; 0 (centred / signed maps, region "
            "maps): a map positive everywhere carries an offset and its EPG mostly measures the region's area, so it "
            "is undefined (positive_everywhere). 'chance' beside each EPG is the region's share of the image, the EPG "
            "of a uniform map.")
UNDEFINED_NOTE = ("A metric that cannot mean anything on an explanation is <i>undefined</i> and left out of the means: "
                  "a constant saliency map (e.g. all zero, what D-RISE gives a pedestrian the detector never finds) "
                  "or one with NaN / inf values has no peak and no ranking, a region with no pixel in the image has "
                  "nothing to point at; pointing-game ties count as a hit if any maximal pixel is within the "
                  "tolerance. The table below counts them.")
OVERLAY_FLOOR = 0.05          # gallery overlays: saliency below this share of the map's maximum is transparent
BOX_WHISKERS = 1.5            # box plots: whiskers reach this many IQR past the quartiles
# Methods that found a known, planted body part in benchmarks/bench_planted.py (benchmarks/README.md, "Planted
# reliance": top-1 rate >= 0.5 on the planted variant and <= 2x chance on the control, per pedestrian with context
# as a player; 2026-12-01, demo detector recipe; over body parts: occlusion@parts, integrated gradients' mass per
# part): only these may turn "most relevance on X" into "relies on X", when two or more of them agree on the top
# body part of the mean shares (context excluded: a finding names a body part).
RELIANCE_VALIDATED = frozenset({"occlusion", "integrated_gradients"})
CUE_RELIANCE = 0.2            # the classifier relies on the spurious cue when it adds this much to P(label)
CONFIDENCE_BUCKETS = {"< 0.05": (0.0, 0.05), "0.05-0.25": (0.05, 0.25), "0.25-0.5": (0.25, 0.5),
                      "0.5-0.75": (0.5, 0.75), "0.75-1": (0.75, 1.01)}
NO_GT_NOTE = "No ground truth: detection quality and missed pedestrians are not measured."
NO_GT_DETAIL = ("The dataset has no annotated pedestrians, so there is no AP, no recall, no found / missed and no "
                "true / false positive here. What the report shows: the detector's detections, explanations of those "
                "above its threshold, and their body-part relevance (parts placed from the keypoint source named "
                "below).")
PART_SOURCES = {"gt": "ground-truth keypoints", "pose": "the pose model's keypoints",
                "template": "the standing template stretched over the box"}
DETECTION_ROWS = 50           # the detections table (no ground truth) lists at most this many images


@dataclass
class ReportInputs:
    """Everything the report reads, already loaded."""

    images: pd.DataFrame            # pulled images
    targets: pd.DataFrame           # explain targets (with found / score / height / occlusion)
    explanations: pd.DataFrame      # explain rows (saliency, relevance)
    metrics: pd.DataFrame           # evaluate rows (long format)
    infer_metrics: dict             # metrics/infer.json
    explain_params: dict
    evaluate_summary: dict          # metrics/evaluate.json
    errors: pd.DataFrame            # errors of the explain and evaluate stages
    detector_id: str
    classifier_id: str | None
    # The dataset has ground-truth boxes of the audited detector's person class. False: AP, recall, found / missed
    # and true / false positives are not measured; the report says so instead of showing them.
    ground_truth: bool = True
    detections: pd.DataFrame | None = None     # the audited detector's person detections (infer), for the table
    part_sources: pd.DataFrame | None = None   # (model_id, det_id, source) of every pedestrian with body parts
    slices: pd.DataFrame | None = None         # evaluate's slices table (tasks.audit_slices); None: not computed
    misses: pd.DataFrame | None = None         # evaluate's misses table (miss type per missed pedestrian)
    sag: pd.DataFrame | None = None            # explain's sag table (structured attention graphs); None: none
    guidance: GuidanceInputs | None = None     # the guide stage's outputs (tasks.report_guidance); None: no guide run

    def explanation_options(self) -> list[dict]:
        """:func:`explanation_options` of ``explanations``, parsed once per report (the cost and learned tables
        and the flow's cost artifact share them); parsed again only when ``explanations`` is another frame."""
        cached = self.__dict__.get("_explanation_options")
        if cached is None or cached[0] is not self.explanations:
            cached = self.__dict__["_explanation_options"] = (self.explanations,
                                                              explanation_options(self.explanations))
        return cached[1]


# ---------------------------------------------------------------------------------------------------- figures
LEARNED_GRID_NOTE = ("A learned saliency explainer's check stored with its trained file: on held-out training-split "
                     "scenes (never the audited images), every class, the median deletion AUC (mean colour) and "
                     "insertion AUC (blur) of its maps beside RISE's with the stated number of masks on the same "
                     "targets, and the share of held-out coalition values its estimate explains (R²).")
LEARNED_NOTE = ("A learned explainer is as good as its network: these are the accuracy checks stored with its trained "
                "file, its estimates against exact Shapley values (every coalition enumerated) on the detector's "
                "detections of persons in held-out training-split scenes, never the audited images; they say how it "
                "does on such targets (detections), not on ground-truth boxes the detector missed. The even split "
                "(the score gap shared equally among the parts) is the floor a network must beat.")


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _img(src: str, alt: str) -> str:
    return f'<img src="{src}" alt="{html.escape(alt)}">'


def _bucket(values: pd.Series, buckets: dict[str, tuple[float, float]]) -> pd.Series:
    out = pd.Series([None] * len(values), index=values.index, dtype=object)
    for name, (lo, hi) in buckets.items():
        out[(values >= lo) & (values < hi)] = name
    return out


def part_shares(explanations: pd.DataFrame, targets: pd.DataFrame) -> pd.DataFrame:
    """Long table (target, job, part, share), the share of each region in the target's |relevance|
    (:func:`tasks.part_shares.part_shares`: every target kind but ``classes``), joined with the target's attributes
    and buckets (size, occlusion, detector confidence)."""
    shares = compute_part_shares(explanations).long()
    t = targets[["image_id", "target_id", "kind", "height", "occlusion", "found", "score"]]
    shares = shares.merge(t, on=["image_id", "target_id"], how="left")
    shares["size"] = _bucket(shares["height"], SIZE_BUCKETS)
    shares["occlusion_bucket"] = _bucket(shares["occlusion"], OCCLUSION_BUCKETS)   # unknown: no bucket
    shares["confidence"] = _bucket(shares["score"].fillna(0.0), CONFIDENCE_BUCKETS)
    return shares


def _parts_present(shares: pd.DataFrame) -> list[str]:
    return [p for p in PART_ORDER if p in set(shares["part"])]


def fig_part_bars(shares: pd.DataFrame, jobs: list[str]) -> str:
    parts = _parts_present(shares)
    fig, ax = plt.subplots(figsize=(9, 3.6))
    width = 0.8 / max(1, len(jobs))
    for k, job in enumerate(jobs):
        sel = shares[shares["job"] == job].groupby("part")["share"]
        mean, sem = sel.mean().reindex(parts), (sel.std() / np.sqrt(sel.count())).reindex(parts)
        ax.bar(np.arange(len(parts)) + k * width, mean.values, width, yerr=sem.values, label=job, capsize=2)
    ax.set_xticks(np.arange(len(parts)) + width * (len(jobs) - 1) / 2, [p.replace("_", " ") for p in parts],
                  rotation=35, ha="right")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_ylabel("share of |relevance| (mean ± s.e.)")
    ax.legend(fontsize=8)
    ax.set_title("Body-part relevance for pedestrians, by method")
    return _png(fig)


def fig_part_boxplot(shares: pd.DataFrame, job: str) -> str:
    parts = _parts_present(shares)
    sel = shares[shares["job"] == job]
    fig, ax = plt.subplots(figsize=(9, 3.4))
    ax.boxplot([sel.loc[sel["part"] == p, "share"].values for p in parts], whis=BOX_WHISKERS, showfliers=False)
    ax.set_xticks(np.arange(1, len(parts) + 1), [p.replace("_", " ") for p in parts], rotation=35, ha="right")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_ylabel("share of |relevance|")
    ax.set_title(f"Spread over pedestrians ({job}; boxes: quartiles, whiskers: {BOX_WHISKERS:g} IQR)")
    return _png(fig)


def fig_breakdown(shares: pd.DataFrame, job: str, column: str, order: list[str], title: str) -> str:
    """Heat map parts x bucket of the mean share, with the number of pedestrians per bucket."""
    parts = _parts_present(shares)
    sel = shares[shares["job"] == job]
    order = [b for b in order if (sel[column] == b).any()]
    table = sel.pivot_table(index="part", columns=column, values="share", aggfunc="mean").reindex(
        index=parts, columns=order)
    counts = sel.groupby(column)["target_id"].nunique().reindex(order)
    fig, ax = plt.subplots(figsize=(1.4 + 1.25 * len(order), 4.2))
    finite = np.abs(table.values[np.isfinite(table.values)])
    vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0   # all zero / NaN: a valid colour range
    im = ax.imshow(table.values, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
    for (i, j), v in np.ndenumerate(table.values):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(order)), [f"{b}\n(n={int(c)})" for b, c in zip(order, counts.fillna(0))], fontsize=8)
    ax.set_yticks(range(len(parts)), [p.replace("_", " ") for p in parts], fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.04)
    return _png(fig)


def fig_classifier_epg(metrics: pd.DataFrame, targets: pd.DataFrame) -> str | None:
    """Per class: share of positive saliency on the class's own objects (images with the label) and on any object
    at all, with and without the spurious background cue, each bar with its chance level (the objects' share of
    the image, black tick). Little saliency on objects = the model looks elsewhere."""
    regions = ("box", "objects")
    shown = [*map(epg, regions), *map(epg_chance, regions)]
    sel = metrics[(metrics["kind"] == "classes") & metrics["metric"].isin(shown)]
    if not sel["metric"].isin(shown[:2]).any():
        return None
    sel = sel.merge(targets[["image_id", "target_id", "category", "spurious_cue"]], on=["image_id", "target_id"])
    cats = sorted(sel["category"].unique())
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2), sharey=True)
    for ax, region, title in zip(axes, regions,
                                 ("on the objects of the class (label present)", "on any object (every image)")):
        for k, cue in enumerate((False, True)):
            part = sel[(sel["metric"] == epg(region)) & (sel["spurious_cue"] == cue)]
            s = part.groupby("category")["value"].mean().reindex(cats)
            x = np.arange(len(cats)) + 0.4 * k
            ax.bar(x, s.values, 0.4, label=f"spurious cue {'present' if cue else 'absent'}")
            chance = sel[(sel["metric"] == epg_chance(region)) & (sel["spurious_cue"] == cue)]
            ax.scatter(x, chance.groupby("category")["value"].mean().reindex(cats).values, marker="_", s=200,
                       color="k", label="chance (area share)" if k == 0 else None, zorder=3)
        ax.set_xticks(np.arange(len(cats)) + 0.2, cats)
        ax.set_ylim(0, 1)
        ax.set_title(f"saliency share {title}", fontsize=9)
    axes[0].set_ylabel("energy pointing game")
    axes[0].legend(fontsize=8)
    return _png(fig)


def overlay(image: np.ndarray, saliency: np.ndarray, box: list[float] | None, title: str) -> str:
    """The image (cropped around the box with a margin) under its positive saliency (bilinear, transparent below
    OVERLAY_FLOOR of the maximum), box drawn in white."""
    H, W = image.shape[:2]
    pos = np.clip(np.asarray(saliency, np.float32), 0, None)
    pos = np.ma.masked_less(pos / (pos.max() or 1.0), OVERLAY_FLOOR)
    x0, y0, x1, y1 = 0, 0, W, H
    if box is not None:
        bw, bh = box[2] - box[0], box[3] - box[1]
        m = 0.6 * max(bw, bh)
        x0, y0 = max(0, box[0] - m), max(0, box[1] - m / 2)
        x1, y1 = min(W, box[2] + m), min(H, box[3] + m / 2)
    fig, ax = plt.subplots(figsize=(2.6, 2.6))
    ax.imshow(image, extent=(0, W, H, 0))
    ax.imshow(pos, cmap="jet", alpha=0.55, vmin=0, vmax=1, extent=(0, W, H, 0), interpolation="bilinear")
    if box is not None:
        ax.add_patch(plt.Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1], fill=False, color="white",
                                   lw=1.2))
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)
    ax.set_axis_off()
    ax.set_title(title, fontsize=7)
    return _png(fig)


# ---------------------------------------------------------------------------------------------------- tables
def _table(df: pd.DataFrame, floatfmt: str = "{:.3f}") -> str:
    def cell(v):
        if isinstance(v, (float, np.floating)):
            return "" if not np.isfinite(v) else floatfmt.format(v)
        return html.escape(str(v))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in df.itertuples(False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


QUALITY_METRICS = list(names("quality"))


def quality_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per kind and job: the mean of each quality metric over the explanations where it is defined (EPG's chance
    level beside it), the number of explanations and of undefined headline values."""
    sel = metrics[metrics["metric"].isin(QUALITY_METRICS)]
    table = sel.pivot_table(index=["kind", "job"], columns="metric", values="value", aggfunc="mean")
    table = table.reindex(columns=[c for c in QUALITY_METRICS if c in table.columns]).reset_index()
    forwards = metrics[metrics["metric"] == METRICS["n_forward"].name]
    counts = forwards.groupby(["kind", "job"]).size().rename("explanations")
    table = table.merge(counts.reset_index(), on=["kind", "job"], how="left")
    undefined = undefined_table(metrics)
    n = (undefined[undefined["metric"].isin(QUALITY_METRICS)].groupby(["kind", "job"])["values"].sum()
         .rename("undefined values"))
    table = table.merge(n.reset_index(), on=["kind", "job"], how="left")
    table["undefined values"] = table["undefined values"].fillna(0).astype(int)
    return table.rename(columns={c: c.replace("_chance", " chance") for c in table.columns})


def undefined_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """(kind, job, metric, reason, values): how many values of each metric were undefined, and why (rows
    ``undefined:<metric>:<reason>`` of the evaluate stage)."""
    parsed = [parse_undefined(m) for m in metrics["metric"]]
    mask = np.array([p is not None for p in parsed], bool)
    cols = ["kind", "job", "metric", "reason", "values"]
    if not mask.any():
        return pd.DataFrame(columns=cols)
    sel = metrics.loc[mask, ["kind", "job"]].assign(metric=[p[0] for p in parsed if p is not None],
                                                     reason=[p[1] for p in parsed if p is not None])
    return (sel.groupby(["kind", "job", "metric", "reason"]).size().rename("values").reset_index()
            .sort_values(["kind", "job", "metric", "reason"], ignore_index=True)[cols])


def detection_counts(targets: pd.DataFrame) -> tuple[int, int]:
    """(ground-truth pedestrians explained, of which missed) - found / missed as in infer's recall."""
    persons = targets[targets["kind"] == "persons"]
    return len(persons), int((persons["found"] == False).sum())  # noqa: E712


def explanation_options(explanations: pd.DataFrame) -> list[dict]:
    """Every explanation row's options (its ``options`` column of JSON text) as dicts, one per row in row order:
    ``{}`` for a row whose options are no string (missing) and for every row of a table without the column. Raises
    ValueError (json.JSONDecodeError) for text that is no JSON."""
    if "options" not in explanations:
        return [{} for _ in range(len(explanations))]
    return [json.loads(o) if isinstance(o, str) else {} for o in explanations["options"]]


def _checked_options(explanations: pd.DataFrame, options: list[dict] | None) -> list[dict]:
    """``options`` (:func:`explanation_options` already parsed by the caller) or, when None, parsed now. Raises
    ValueError when their count is not the table's rows."""
    if options is None:
        return explanation_options(explanations)
    if len(options) != len(explanations):
        raise ValueError(f"report: {len(options)} parsed options for {len(explanations)} explanation rows")
    return options


def cost_table(explanations: pd.DataFrame, options: list[dict] | None = None) -> pd.DataFrame:
    """Model forward passes per job, and the forwards of a learned explainer's own network and of the feature passes
    it reads (FastSHAP's explainer; RExL's and FastShapGrid's feature passes, added; 0 for sampling methods), both
    with shared ones divided among the targets sharing them: the cost that the inputs decide. Wall times vary run to
    run, so they stay out of the report (``metrics/timings.json``, tasks.timings). ``options``: the rows' parsed options
    (:func:`explanation_options`, e.g. ``ReportInputs.explanation_options()``; None: parsed here); ValueError when
    their count is not the rows'."""
    options = _checked_options(explanations, options)
    efw = [o.get("n_explainer_forward", 0) + o.get("n_feature_forward", 0) for o in options]
    e = explanations.assign(fw=explanations["n_forward"] / explanations["shared_by"],
                            efw=efw / explanations["shared_by"].to_numpy())
    g = e.groupby(["kind", "job"])
    return pd.DataFrame({"explanations": g.size(), "forwards / explanation": g["fw"].mean(),
                         "explainer forwards / explanation": g["efw"].mean(), "total forwards": g["fw"].sum(),
                         "device": g["device"].agg(lambda d: ", ".join(sorted(set(d))))}).reset_index()


# The column each key of a learned explainer's held-out check (explainers.fastshap.HELDOUT_KEYS,
# explainers.fastshap_grid.HELDOUT_KEYS, explainers.fastshap_grid_detector.HELDOUT_KEYS) is shown under, in this order
# (the stored options' keys are sorted); a key not named here ("scenes") is not shown.
HELDOUT_COLUMNS = {"persons": "held-out persons", "median_rel_l2": "median rel. L2 error",
                   "p90_rel_l2": "p90 rel. L2 error", "top_part_agreement": "top-part agreement",
                   "uniform_split_median_rel_l2": "even split's median error", "targets": "held-out targets",
                   "pedestrians": "held-out pedestrians", "deletion_auc_median": "deletion AUC ↓",
                   "rise_deletion_auc_median": "RISE deletion AUC", "drise_deletion_auc_median": "D-RISE deletion AUC",
                   "insertion_auc_median": "insertion AUC ↑", "rise_insertion_auc_median": "RISE insertion AUC",
                   "drise_insertion_auc_median": "D-RISE insertion AUC", "rise_budget": "RISE masks",
                   "drise_budget": "D-RISE masks", "coalition_r2": "coalition R²",
                   "shapley_median_rel_l2": "median rel. L2 error vs BayesShapley",
                   "shapley_budget": "BayesShapley forwards"}


def learned_table(explanations: pd.DataFrame, options: list[dict] | None = None) -> pd.DataFrame:
    """Per kind and job of a learned explainer whose trained file carries a held-out check (``options['heldout']``:
    FastSHAP's exact Shapley values by enumeration on held-out training-split persons): the trained file's digest
    and that check (persons, median / p90 relative L2 error, top-part agreement, the even split's median error).
    Empty when no job has one. ``options`` as :func:`cost_table`'s."""
    return _heldout_table(explanations, options, "median_rel_l2")


def learned_grid_table(explanations: pd.DataFrame, options: list[dict] | None = None) -> pd.DataFrame:
    """Per kind and job of a learned saliency explainer whose trained file carries a causal held-out check
    (``options['heldout']`` with ``deletion_auc_median``: FastShapGrid's, FastShapGridDetector's): the trained file's
    digest, the held-out targets (training-split scenes x classes; pedestrians), the median deletion and insertion AUC
    of its maps each beside RISE's (D-RISE's) at the check's budget on the same targets, and the held-out coalition
    values' R^2. Empty when no job has one."""
    return _heldout_table(explanations, options, "deletion_auc_median")


def _heldout_table(explanations: pd.DataFrame, options: list[dict] | None, marker: str) -> pd.DataFrame:
    """One row per kind and job whose rows' ``options['heldout']`` has ``marker``: kind, job, the trained file's
    digest, then the check's values under their :data:`HELDOUT_COLUMNS` names, in that order (empty where a job's
    check lacks a key another job's has)."""
    base = ["kind", "job", "trained file"]
    if "options" not in explanations:
        return pd.DataFrame(columns=base)
    rows = {}
    for kind, job, o in zip(explanations["kind"], explanations["job"], _checked_options(explanations, options)):
        h = o.get("heldout")
        if h and marker in h and (kind, job) not in rows:
            rows[(kind, job)] = {"kind": kind, "job": job, "trained file": o.get("weights_sha256") or
                                 o.get("policy_sha256"), **{HELDOUT_COLUMNS[k]: v for k, v in h.items()
                                                            if k in HELDOUT_COLUMNS}}
    shown = {c for r in rows.values() for c in r}
    return pd.DataFrame(list(rows.values()), columns=base + [c for c in HELDOUT_COLUMNS.values() if c in shown])


def agreement_table(metrics: pd.DataFrame) -> pd.DataFrame:
    pairs = metrics["metric"].map(parse_agreement)
    sel = metrics[pairs.notna()]
    if sel.empty:
        return pd.DataFrame()
    sel = sel.assign(other=pairs[pairs.notna()].str[1], what=pairs[pairs.notna()].str[0])
    table = sel.pivot_table(index=["job", "other"], columns="what", values="value", aggfunc=["mean", "count"])
    out = pd.DataFrame({"method A": [i[0] for i in table.index], "method B": [i[1] for i in table.index],
                        "Spearman ρ (mean)": table[("mean", AGREE)].values,
                        "same top part": table[("mean", TOP_PART_MATCH)].values,
                        "pedestrians": table[("count", AGREE)].values.astype(int)})
    return out


# ---------------------------------------------------------------------------------------------------- findings
def findings(shares: pd.DataFrame, main_job: str | None, inp: ReportInputs) -> list[str]:
    """Plain-language observations computed from the tables (what a reviewer should read first)."""
    out = [] if inp.ground_truth else [f"<b>{NO_GT_NOTE}</b>" + (f" {found}." if (found := detections_summary(inp))
                                                               else "")]
    sel = shares[shares["job"] == main_job]
    body = sel[sel["part"] != "context"]
    if not body.empty:
        mean = body.groupby("part")["share"].mean().sort_values(ascending=False)
        out.append(f"Across {sel['target_id'].nunique()} pedestrians, {main_job} puts the most relevance on "
                   f"<b>{mean.index[0].replace('_', ' ')}</b> ({mean.iloc[0]:.2f} of |relevance|), then "
                   f"{mean.index[1].replace('_', ' ')} ({mean.iloc[1]:.2f}); least on "
                   f"{mean.index[-1].replace('_', ' ')} ({mean.iloc[-1]:.2f}).")
        out.append(reliance_sentence(shares, inp))
        ctx = sel[sel["part"] == "context"]["share"].mean()
        if np.isfinite(ctx):
            out.append(f"The context around the body (box minus body) carries {ctx:.2f} of |relevance| on average.")
    if sel["found"].notna().any() and (sel["found"] == False).any():  # noqa: E712
        by = sel.groupby(["found", "part"])["share"].mean().unstack(0)
        if True in by.columns and False in by.columns:
            diff = (by[False] - by[True]).dropna().sort_values()
            out.append(f"Missed pedestrians ({sel.loc[sel['found'] == False, 'target_id'].nunique()}) differ most "  # noqa: E712
                       f"from found ones in <b>{diff.index[0].replace('_', ' ')}</b> ({diff.iloc[0]:+.2f}) and "
                       f"{diff.index[-1].replace('_', ' ')} ({diff.iloc[-1]:+.2f}).")
    spur = inp.infer_metrics.get(inp.classifier_id or "", {}).get("spurious")
    if spur:
        keys = [k for k in spur if k.startswith("p_") and k.endswith("_with_cue")]
        if keys:
            label = keys[0][2:-len("_absent_with_cue")]
            a, b = spur[keys[0]], spur[f"p_{label}_absent_without_cue"]
            if a is not None and b is not None:
                verdict = "relies on the spurious cue" if a - b > CUE_RELIANCE else "does not rely much on the cue"
                out.append(f"The classifier {verdict}: on scenes <i>without</i> a {label}, P({label}) is {a:.2f} with "
                           f"the background cue and {b:.2f} without it.")
    undefined = undefined_table(inp.metrics)
    if not undefined.empty:
        by_reason = undefined.groupby("reason")["values"].sum().sort_values(ascending=False)
        out.append(f"{int(by_reason.sum())} metric values are undefined and left out of the means ("
                   + ", ".join(f"{r.replace('_', ' ')} {n}" for r, n in by_reason.items()) + ").")
    if not inp.errors.empty:
        out.append(f"{len(inp.errors)} inputs failed and are listed in the errors section; everything else was "
                   f"explained.")
    return out


def reliance_sentence(shares: pd.DataFrame, inp: ReportInputs) -> str:
    """Whether the audit may say the detector *relies* on a body part: only when every job whose method found a
    planted part in the planted-reliance benchmark (:data:`RELIANCE_VALIDATED`) and that did not fail this run's
    sanity check names the same top body part (largest mean share, context excluded); jobs over superpixels or grid
    cells do not count, and one method (however many jobs) is not an agreement."""
    from tasks.report_sanity import passing_jobs

    methods = dict(zip(inp.explanations["job"], inp.explanations["method"]))
    regions = dict(zip(inp.explanations["job"], inp.explanations["regions"])) if "regions" in inp.explanations \
        else {}
    checked = inp.evaluate_summary.get("sanity", {}).get("jobs", {})
    failed = {j for j, e in checked.items() if e.get("status") == "checked" and not e.get("passes")}
    ok = passing_jobs(inp.evaluate_summary)
    # as validated: over body parts (a region job's parts, a pixel job's mass per part), not superpixels / grid cells
    jobs = [j for j in dict.fromkeys(shares["job"]) if j and methods.get(j) in RELIANCE_VALIDATED and j not in failed
            and regions.get(j, "parts") in ("parts", "none")]
    tops = {}
    for job in jobs:
        body = shares[(shares["job"] == job) & (shares["part"] != "context")]
        if not body.empty:
            tops[job] = body.groupby("part")["share"].mean().idxmax()
    if not tops:
        return ("No reliance claim: none of this run's jobs uses a method that found a planted body part in the "
                "planted-reliance benchmark (" + ", ".join(sorted(RELIANCE_VALIDATED)) + ").")
    named = ", ".join(f"{j}{' (sanity ✓)' if j in ok else ''}: {p.replace('_', ' ')}" for j, p in tops.items())
    if len({methods[j] for j in tops}) == 1:                  # one method (in one or more jobs): no agreement
        job, part = next(iter(tops.items()))
        others = ", ".join(sorted(RELIANCE_VALIDATED - {methods[job]}))
        return (f"No reliance claim yet: {named} — only one method here found a planted part in the "
                f"planted-reliance benchmark, and one method is not an agreement (add a job of {others} to confirm "
                f"{part.replace('_', ' ')}).")
    if len(set(tops.values())) == 1:
        part = next(iter(tops.values())).replace("_", " ")
        return (f"The detector relies most on <b>{part}</b>: the jobs whose methods found a planted part in the "
                f"planted-reliance benchmark agree ({named}).")
    return (f"No reliance claim: the jobs whose methods found a planted part in the planted-reliance benchmark "
            f"disagree on the top body part ({named}).")


# ---------------------------------------------------------------------------------------------------- sections
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#1d2330;line-height:1.45}
h1{margin-bottom:.1em} h2{border-bottom:2px solid #dde3ee;padding-bottom:.2em;margin-top:2em}
.sub{color:#5b6577;margin-top:0} table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
th,td{border:1px solid #dde3ee;padding:.25em .6em;text-align:right} th{background:#f2f5fa}
td:first-child,th:first-child,td:nth-child(2),th:nth-child(2){text-align:left} img{max-width:100%}
.gallery{display:flex;flex-wrap:wrap;gap:.5em} .gallery figure{margin:0;width:240px}
.gallery figcaption{font-size:.75em;color:#5b6577} .findings li{margin:.3em 0}
.note{font-size:.85em;color:#5b6577} nav a{margin-right:1em}
"""


@dataclass(frozen=True)
class ReportContext:
    """What every section reads: the loaded inputs, the part-share table derived once from them (see
    :func:`part_shares`), the jobs with body-part relevance, the main job (the first Shapley-family one, else the
    first) and the gallery's figures per row (0: no gallery images)."""

    inputs: ReportInputs
    shares: pd.DataFrame
    region_jobs: list[str]
    main_job: str | None
    per_row: int

    @classmethod
    def of(cls, inp: ReportInputs, per_row: int) -> ReportContext:
        if not inp.ground_truth:          # nothing to be found / missed or a true / false positive against
            people = inp.targets["kind"].isin(["persons", "detections"])
            inp = replace(inp, targets=inp.targets.assign(found=inp.targets["found"].astype(object).where(~people,
                                                                                                        None)))
        shares = part_shares(inp.explanations, inp.targets)
        region_jobs = [j for j in dict.fromkeys(shares["job"]) if j]
        methods = dict(zip(inp.explanations["job"], inp.explanations["method"])) if region_jobs else {}
        main_job = next((j for j in region_jobs if shapley_family(methods[j])),
                        region_jobs[0] if region_jobs else None)
        return cls(inp, shares, region_jobs, main_job, per_row)


def shapley_family(method: str) -> bool:
    """Whether a method estimates Shapley values: the explainer class's ``shapley_values`` capability."""
    from explainers.registry import METHODS  # imports every explainer (torch): only when there is a job to check

    return METHODS[method].shapley_values


@dataclass(frozen=True)
class Rendered:
    """A section's HTML body and its lines of the markdown summary (None: not in the summary)."""

    html: str
    markdown: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Section:
    """One section of the report: its anchor id, title, ``render(context) -> Rendered`` (None: nothing to show,
    the section is left out, with its navigation links) and the navigation links it contributes as (anchor,
    label). Adding a section: a render function and a line in :data:`SECTIONS`."""

    id: str
    title: str
    render: Callable[[ReportContext], Rendered | None]
    nav: tuple[tuple[str, str], ...] = ()

    def html(self, body: str) -> str:
        return f'<section id="{self.id}"><h2>{html.escape(self.title)}</h2>{body}</section>'


def _num(value, fmt: str = "{:.3f}") -> str:
    """A metric for the page: ``n/a`` for a missing, null (JSON) or NaN value, never a number it is not."""
    if value is None or (isinstance(value, (float, np.floating)) and not np.isfinite(value)):
        return "n/a"
    return fmt.format(value)


def _split_metrics(metrics: dict) -> tuple[str, dict]:
    """(split name, metrics) of a model's infer metrics: the val split's, else all images'."""
    return ("val", metrics["val"]) if "val" in metrics else ("all images", metrics.get("all", {}))


def detections_summary(inp: ReportInputs) -> str | None:
    """'N detections above the threshold in M of K images; E explained' from the infer detections (None without)."""
    if inp.detections is None:
        return None
    above = inp.detections[inp.detections["above_conf"] == True]  # noqa: E712
    explained = inp.targets[inp.targets["kind"] == "detections"]["target_id"].nunique()
    return (f"{len(above)} person detections above the detector's threshold in {above['image_id'].nunique()} of "
            f"{len(inp.images)} images; {explained} explained (tall enough: explain.min_height)")


def dataset_table(inp: ReportInputs) -> pd.DataFrame:
    """The dataset and models at a glance: images per split, pedestrians explained and missed, model quality,
    explanations per job, errors. Without ground truth: that statement instead of the missed count and the AP."""
    tg, ex = inp.targets, inp.explanations
    split, val = _split_metrics(inp.infer_metrics.get(inp.detector_id, {}))
    clf_split, clf = _split_metrics(inp.infer_metrics.get(inp.classifier_id or "", {}))
    splits = inp.images["split"].value_counts().to_dict()
    rows = [("images", f"{len(inp.images)} ({', '.join(f'{k} {v}' for k, v in sorted(splits.items()))})"),
            ("pedestrians explained", str(tg[tg["kind"].isin(["persons", "detections"])]["target_id"].nunique()))]
    if inp.ground_truth:
        rows += [("ground-truth pedestrians", "{} explained, {} missed by the detector (found: matched one-to-one at "
                                              "IoU &ge; {} by a detection above its threshold, as in infer's recall)"
                  .format(*detection_counts(tg), MATCH_IOU)),
                 ("detector", f"{inp.detector_id}: AP50 {_num(val.get('ap50'))} ({split}), "
                              f"reasonable {_num(val.get('ap50_reasonable'))}")]
    else:
        rows += [("ground truth", f"none. {NO_GT_NOTE}"),
                 ("detector", f"{inp.detector_id} (AP and recall not measured: no ground truth)")]
    if (found := detections_summary(inp)) is not None:
        rows.append(("detections", found))
    rows += [("classifier", f"{inp.classifier_id}: mean F1 {_num(clf.get('mean_f1'))} ({clf_split})"
              if inp.classifier_id else "none"),
             ("explanations", f"{len(ex)} ({', '.join(f'{j} {n}' for j, n in ex['job'].value_counts().items())})"),
             ("errors", str(len(inp.errors)))]
    return pd.DataFrame(rows, columns=["", "value"])


def jobs_table(explain_params: dict) -> pd.DataFrame:
    """The explain jobs as configured: name, targets, budget, regions (with their count), images, options."""
    return pd.DataFrame([{"job": job_name(j),
                          "targets": j["targets"], "budget": "default" if j["budget"] is None else str(j["budget"]),
                          "regions": j["regions"] + (f" ({j['n_regions']})" if j["regions"] in ("superpixels", "grid")
                                                     else ""),
                          "images": j["split"] or "all",
                          "options": ", ".join(f"{k}={v}" for k, v in j["options"].items()) or "-"}
                         for j in explain_params.get("jobs", [])])


def render_summary(ctx: ReportContext) -> Rendered:
    jobs = jobs_table(ctx.inputs.explain_params)
    note = ""
    if not ctx.inputs.ground_truth:
        note = f"<p><b>{NO_GT_NOTE}</b> {NO_GT_DETAIL}</p>"
        if not jobs.empty and (jobs["targets"] == "persons").any():
            note += ("<p class='note'>Jobs on <code>persons</code> explain ground-truth pedestrians, so they have "
                     "nothing to explain here: use <code>targets: detections</code>.</p>")
    return Rendered(note + _table(dataset_table(ctx.inputs)) + "<h3>Explainer jobs</h3>" +
                    (_table(jobs) if not jobs.empty else "<p>none</p>"))


def keypoint_sources(inp: ReportInputs) -> dict[str, int]:
    """Explained pedestrians per keypoint source of their body parts (gt / pose / template), from the parts table's
    ``source``; empty when the inputs do not say."""
    tg = inp.targets
    if inp.part_sources is None or not {"parts_model", "parts_id"} <= set(tg.columns):
        return {}
    people = tg[tg["kind"].isin(["persons", "detections"]) & tg["parts_id"].notna()]
    merged = people.merge(inp.part_sources.drop_duplicates(["model_id", "det_id"]), how="inner",
                          left_on=["parts_model", "parts_id"], right_on=["model_id", "det_id"])
    return {k: int(v) for k, v in merged["source"].value_counts().items()}


def sources_note(inp: ReportInputs) -> str:
    counts = keypoint_sources(inp)
    if not counts:
        return ""
    return ("Body parts placed from: " + "; ".join(f"{PART_SOURCES.get(k, k)} ({k}): {n} pedestrian{'s' * (n != 1)}"
                                                  for k, n in counts.items()) + ".")


def detection_tables(ctx: ReportContext) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per image: size, detections above the threshold, their scores, explained; per explained detection: score,
    height, keypoint source, top part and each part's share of |relevance| in the main job)."""
    inp = ctx.inputs
    dets = inp.detections
    above = dets[dets["above_conf"] == True].sort_values("score", ascending=False)  # noqa: E712
    explained = inp.targets[inp.targets["kind"] == "detections"]
    images = []
    for img in inp.images.head(DETECTION_ROWS).to_dict("records"):
        mine = above[above["image_id"] == img["image_id"]]
        size = f"{img['width']}x{img['height']}" if "width" in img and "height" in img else ""
        images.append({"image": img["image_id"], "size": size, "detections": len(mine),
                       "scores": ", ".join(f"{v:.2f}" for v in mine["score"]) or "-",
                       "explained": int((explained["image_id"] == img["image_id"]).sum())})
    shares = ctx.shares[ctx.shares["job"] == ctx.main_job] if ctx.main_job else ctx.shares.iloc[:0]
    table = shares.pivot_table(index=["image_id", "target_id"], columns="part", values="share", aggfunc="mean")
    table = table.reindex(columns=[p for p in PART_ORDER if p in table.columns])
    source = {}
    if inp.part_sources is not None:
        source = {(m, d): s for m, d, s in inp.part_sources[["model_id", "det_id", "source"]].itertuples(False)}
    people = []
    for t in explained.head(DETECTION_ROWS).to_dict("records"):
        row = {"image": t["image_id"], "detection": t["target_id"], "score": t["score"],
               "height (px)": round(float(t["height"])),
               "keypoints": source.get((t.get("parts_model"), t.get("parts_id")), "")}
        key = (t["image_id"], t["target_id"])
        if key in table.index:
            body = table.loc[key].drop("context", errors="ignore")
            row["top part"] = str(body.idxmax()).replace("_", " ") if body.notna().any() else ""
            row.update({p.replace("_", " "): v for p, v in table.loc[key].items()})
        people.append(row)
    return pd.DataFrame(images), pd.DataFrame(people)


def render_detections(ctx: ReportContext) -> Rendered | None:
    """Without ground truth: what the detector found per image and, per explained detection, its body-part shares
    (the main job) - the audit's evidence when nothing can be scored against annotations."""
    inp = ctx.inputs
    if inp.ground_truth or inp.detections is None:
        return None
    per_image, per_person = detection_tables(ctx)
    cut = (f"<p class='note'>First {DETECTION_ROWS} of {len(inp.images)} images.</p>"
           if len(inp.images) > DETECTION_ROWS else "")
    job = ctx.main_job or "none"
    body = (f"<p><b>{NO_GT_NOTE}</b></p><p class='note'>{detections_summary(inp)}. Scores are the detector's own; "
            f"'explained' counts the detections tall enough for explain.min_height.</p>" + _table(per_image) + cut +
            f"<h3>Body-part relevance per detected pedestrian ({html.escape(job)})</h3>" +
            (_table(per_person) if not per_person.empty else "<p>No detection was explained.</p>") +
            f"<p class='note'>Share = the part's relevance / the sum of |relevance| over the pedestrian's parts; top "
            f"part: the body part (not context) with the largest share. {sources_note(inp)}</p>")
    md = ("## Detections (no ground truth)", "", NO_GT_NOTE, "", f"{detections_summary(inp)}.", "",
          _markdown_table(per_person, floatfmt=".2f") if not per_person.empty else "No detection was explained.")
    return Rendered(body, md)


def render_findings(ctx: ReportContext) -> Rendered:
    facts = findings(ctx.shares, ctx.main_job, ctx.inputs)
    return Rendered("<ul class='findings'>" + "".join(f"<li>{f}</li>" for f in facts) + "</ul>",
                    tuple(f"- {_plain(f)}" for f in facts))


def render_parts(ctx: ReportContext) -> Rendered | None:
    if not ctx.main_job:
        return None
    shares, job = ctx.shares, ctx.main_job
    body = (_img(fig_part_bars(shares, ctx.region_jobs), "part relevance by method") +
            _img(fig_part_boxplot(shares, job), "part relevance spread") +
            "<p class='note'>Share = a part's relevance divided by the sum of |relevance| over the "
            "pedestrian's parts (so pedestrians with different scores weigh the same). Context = the box "
            f"minus the body. {sources_note(ctx.inputs)}</p>")
    breakdowns = [("size", SIZE_BUCKETS, f"by person height ({job})", "height"),
                  ("occlusion_bucket", OCCLUSION_BUCKETS, f"by occlusion ({job})", "occlusion"),
                  ("confidence", CONFIDENCE_BUCKETS, f"by detector confidence ({job})", "detector confidence")]
    known = shares[shares["job"] == job]
    shown = [b for b in breakdowns if known[b[0]].notna().any()]     # occlusion is unknown without ground truth
    return Rendered(body + "".join(_img(fig_breakdown(shares, job, col, list(b), title), title) +
                                   breakdown_intervals(known, col, list(b), _parts_present(shares), f"{job}|{col}",
                                                       name)
                                   for col, b, title, name in shown))


def render_missed(ctx: ReportContext) -> Rendered | None:
    person_kind = ctx.shares["kind"].dropna().iloc[0] if len(ctx.shares) else None
    if not ctx.main_job or person_kind != "persons":
        return None
    fm = ctx.shares[ctx.shares["job"] == ctx.main_job].copy()
    fm["status"] = np.where(fm["found"] == True, "found", "missed")  # noqa: E712
    return Rendered(_img(fig_breakdown(fm, ctx.main_job, "status", ["found", "missed"],
                                       f"found vs missed ({ctx.main_job})"), "found vs missed") +
                    breakdown_intervals(fm, "status", ["found", "missed"], _parts_present(ctx.shares),
                                        f"{ctx.main_job}|status", "found / missed") +
                    "<p class='note'>Ground-truth pedestrians are scored by the D-RISE similarity of the detector's "
                    "candidates to their box, so a missed pedestrian's relevance shows what little evidence the "
                    "detector saw and where.</p>")


def quality_note(evaluate_summary: dict) -> str:
    """How the quality metrics were computed: substrates, steps and split of the causal metrics, their directions,
    the pointing tolerance (metrics/evaluate.json; the evaluate default if it lacks one)."""
    subs = evaluate_summary.get("substrates", {})
    deletion, insertion = METRICS[causal_auc("deletion")], METRICS[causal_auc("insertion")]
    tolerance = evaluate_summary.get("pointing_tolerance", EvaluateParams.model_fields["pointing_tolerance"].default)
    return (f"Deletion substrate: {subs.get('deletion')}; insertion substrate: {subs.get('insertion')}; "
            f"{evaluate_summary.get('steps')} steps, on the {evaluate_summary.get('causal_split') or 'whole'} split. "
            f"{deletion.direction.capitalize()} deletion / {insertion.direction} insertion AUC is better; pointing "
            f"game tolerance {tolerance:g} px. {EPG_NOTE} {REGION_NOTE}")


def render_quality(ctx: ReportContext) -> Rendered:
    metrics = ctx.inputs.metrics
    quality, agreement, undefined = quality_table(metrics), agreement_table(metrics), undefined_table(metrics)
    body = (_table(quality) + f"<p class='note'>{quality_note(ctx.inputs.evaluate_summary)}</p>" +
            (_table(agreement) if not agreement.empty else "") +
            f"<h3 id='undefined'>Undefined metric values</h3><p class='note'>{UNDEFINED_NOTE}</p>" +
            (_table(undefined) if not undefined.empty else "<p>none</p>"))
    return Rendered(body, ("## Explanation quality", "", _markdown_table(quality, floatfmt=".3f"), "",
                           _plain(EPG_NOTE), "", "## Undefined metric values", "", _plain(UNDEFINED_NOTE), "",
                           _markdown_table(undefined) if not undefined.empty else "none"))


def render_classifier(ctx: ReportContext) -> Rendered | None:
    inp = ctx.inputs
    if inp.classifier_id is None:
        return None
    fig = fig_classifier_epg(inp.metrics, inp.targets)
    spur = inp.infer_metrics.get(inp.classifier_id, {}).get("spurious", {})
    body = (_img(fig, "classifier energy pointing game") if fig else "<p>No classifier explanations.</p>")
    if spur:
        body += _table(pd.DataFrame([(k.replace("_", " "), f"{v:.3f}" if isinstance(v, float) else str(v))
                                     for k, v in sorted(spur.items())], columns=["spurious-cue probe", "value"]))
    return Rendered(body)


def render_cost(ctx: ReportContext) -> Rendered:
    inp = ctx.inputs
    cost = cost_table(inp.explanations, inp.explanation_options())
    html, text = _table(cost), ["## Cost", "", cost.to_string(index=False)]
    checks = [(learned_table(inp.explanations, inp.explanation_options()), LEARNED_NOTE),
              (learned_grid_table(inp.explanations, inp.explanation_options()), LEARNED_GRID_NOTE)]
    checks = [(table, note) for table, note in checks if not table.empty]
    if checks:
        html += "<h3 id='learned'>Learned explainers' held-out check</h3>"
        text += ["", "## Learned explainers' held-out check"]
    for table, note in checks:
        html += f"<p class='note'>{note}</p>" + _table(table)
        text += ["", _plain(note), "", _markdown_table(table, floatfmt=".3f")]
    return Rendered(html, tuple(text))


def render_gallery(ctx: ReportContext) -> Rendered | None:
    if not ctx.main_job:
        return None
    return Rendered(f"<p class='note'>Positive saliency of {ctx.main_job} (transparent below "
                    f"{OVERLAY_FLOOR * 100:g} % of each map's maximum); white: the pedestrian's box.</p>" +
                    gallery(ctx.inputs, ctx.main_job, ctx.per_row))


def render_errors(ctx: ReportContext) -> Rendered | None:
    return None if ctx.inputs.errors.empty else Rendered(_table(ctx.inputs.errors))


FAILURE_SLICES = 5            # "Where it fails": significant slices listed per outcome
CONTEXT_SHIFT = 0.05          # a slice's mean context share this far from the rest's is worth a clause
NO_FAILURES = ("Where the detector fails cannot be computed: the dataset has no annotated pedestrians, so there are "
               "no misses to slice, no miss rates, no MR⁻² and no miss types.")
MISS_TYPE_WORDS = {"suppressed": "suppressed by NMS (a neighbour's box won)",
                   "below_threshold": "scored below the threshold", "mislocalised": "mislocalised (best IoU 0.1-0.5)",
                   "never_seen": "never seen (no candidate near it)"}
FP_TYPE_WORDS = {"duplicate": "duplicate (a second box on a found person)",
                 "localisation": "localisation (IoU 0.1-0.5 with a person)",
                 "confusion": "confusion (on an object of another class)",
                 "background": "background (nothing annotated near it)"}
MR_FPPI_RANGE = (1e-2, 1.0)   # the FPPI range MR⁻² averages over, shaded in the figure


def _slice_words(text: str) -> str:
    return text.replace("_", " ")


def _interval(mean: float, low: float, high: float) -> str:
    return f"{_num(mean, '{:.2f}')} [{_num(low, '{:.2f}')}, {_num(high, '{:.2f}')}]"


def slice_sentences(slices: pd.DataFrame, limit: int = FAILURE_SLICES) -> list[str]:
    """The significant slices in words, best first: the miss-rate slices ("pedestrians with facing = back and box
    height in [17, 42): miss rate 0.71 [0.62, 0.79] vs 0.38 (n = 40, q = 0.001); their relevance sits more on the
    context (0.31 vs 0.14)"), then the relevance-share slices."""
    out = []
    sig = slices[slices["significant"] == True]  # noqa: E712
    for outcome, group in sig.groupby("outcome", sort=False):
        what = "miss rate" if outcome == "missed" else f"{outcome.partition(':')[2].replace('_', ' ')} share"
        for r in group.sort_values("rank").head(limit).itertuples():
            text = (f"pedestrians with <b>{html.escape(_slice_words(r.slice))}</b>: {what} "
                    f"{_interval(r.mean, r.ci_low, r.ci_high)} vs {_num(r.rest_mean, '{:.2f}')} (n = {r.size}, "
                    f"q = {r.q_value:.2g})")
            if outcome == "missed" and np.isfinite(r.context_share) and np.isfinite(r.context_share_rest):
                shift = r.context_share - r.context_share_rest
                if abs(shift) >= CONTEXT_SHIFT:
                    text += (f"; their relevance sits more on the {'context' if shift > 0 else 'body'} (context "
                             f"share {r.context_share:.2f} vs {r.context_share_rest:.2f})")
            out.append(text)
    return out


def mr2_table(summary: dict) -> pd.DataFrame:
    rows = [{"subset": name.replace("_", " "), "MR⁻²": _num(r.get("mr2")),
             "95 % interval": f"[{_num(r.get('low'))}, {_num(r.get('high'))}]", "persons": r.get("persons")}
            for name, r in (summary.get("mr2") or {}).items()]
    return pd.DataFrame(rows)


def miss_type_table(summary: dict, misses: pd.DataFrame | None, shares: pd.DataFrame,
                    main_job: str | None) -> pd.DataFrame:
    """Per miss type: count, share of the misses, miss-rate and AP gain from fixing it, and the mean share of each
    body part and the context (main job) over the explained pedestrians of that type."""
    types = pd.DataFrame([t for t in summary.get("miss_types", []) if t.get("kind") == "miss"])
    if types.empty:
        return types
    table = pd.DataFrame({"miss type": types["type"].map(lambda t: MISS_TYPE_WORDS.get(t, t)),
                          "count": types["count"].astype(int), "share": types["share"],
                          "miss-rate gain": types["miss_rate_gain"], "AP gain": types["ap_gain"]})
    if "mr2_gain" in types:
        table["MR⁻² gain"] = types["mr2_gain"].astype(float)
    if misses is None or misses.empty or main_job is None:
        return table
    sel = shares[(shares["job"] == main_job) & (shares["kind"] == "persons")]
    typed = sel.merge(misses[["image_id", "ann_id", "miss_type"]].rename(columns={"ann_id": "target_id"}),
                      on=["image_id", "target_id"], how="inner")
    parts = [p for p in PART_ORDER if p in set(typed["part"])]
    cells = share_intervals(typed, "miss_type", list(types["type"]), parts, label=f"{main_job}|miss_type")
    text = pd.Series([interval_text(r.mean, r.low, r.high) for r in cells.itertuples()],
                     index=pd.MultiIndex.from_frame(cells[["bucket", "part"]]), dtype=object)
    explained = typed.groupby("miss_type")["target_id"].nunique()
    table["explained"] = types["type"].map(explained).fillna(0).astype(int).values
    table["images"] = types["type"].map(typed.groupby("miss_type")["image_id"].nunique()).fillna(0).astype(int).values
    for part in parts:
        table[part.replace("_", " ")] = [text.get((t, part), "") for t in types["type"]]
    return table


def fp_type_table(summary: dict) -> pd.DataFrame:
    """Per false-positive type (TIDE's: duplicate, localisation, confusion, background): count, share of the false
    positives at the detector's threshold, and the AP / MR⁻² gain from fixing that type alone (TIDE's oracle)."""
    types = pd.DataFrame([t for t in summary.get("miss_types", []) if t.get("kind") == "false_positive"])
    if types.empty:
        return types
    table = pd.DataFrame({"false positive": types["type"].map(lambda t: FP_TYPE_WORDS.get(t, t)),
                          "count": types["count"].astype(int), "share": types["share"].astype(float),
                          "AP gain": types["ap_gain"].astype(float)})
    if "mr2_gain" in types:
        table["MR⁻² gain"] = types["mr2_gain"].astype(float)
    return table


def fig_mr_fppi(curves: dict, mr2: dict) -> str | None:
    """Log-log miss rate vs false positives per image, one step curve per CityPersons subset (the summary's
    ``mr_fppi``: ``{subset: {"fppi": [...], "miss_rate": [...]}}``), the MR⁻² range [10⁻², 10⁰] shaded and each
    subset's MR⁻² in the legend. A miss rate of 0 cannot be drawn on a log axis: such points are left out, and a
    subset whose miss rate is 0 at every FPPI (no pedestrian missed) gets no curve (its MR⁻² of 0 is in the MR⁻²
    table). Nor can FPPI 0 (a subset with no false positive: its curve is that one point, the miss rate holding at
    every FPPI): it is drawn at the smallest FPPI the curves are read at (:data:`detection.miss_rate.CURVE_FPPI`),
    and a curve left with one point gets a marker so it shows. None (no figure, the report leaves it out) when no
    subset has a curve left to draw."""
    drawn = {k: c for k, c in (curves or {}).items() if c and len(c.get("fppi") or []) > 0}
    if not drawn:
        return None
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    ax.axvspan(*MR_FPPI_RANGE, color="0.93", zorder=0)
    n_drawn = 0
    for name, c in drawn.items():
        x, y = np.asarray(c["fppi"], float), np.asarray(c["miss_rate"], float)
        x = np.where(x > 0, x, CURVE_FPPI[0])                   # FPPI 0: no false positive at any threshold
        keep = y > 0
        if not keep.any():                                      # miss rate 0 everywhere: nothing on a log axis
            continue
        n_drawn += 1
        value = (mr2 or {}).get(name, {}).get("mr2")
        ax.step(x[keep], y[keep], where="post", lw=1.6, marker="o" if keep.sum() == 1 else None, ms=5,
                label=f"{name.replace('_', ' ')} (MR⁻² {_num(value, '{:.3f}')})")
    if not n_drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("false positives per image")
    ax.set_ylabel("miss rate")
    ax.grid(True, which="both", lw=0.3, alpha=0.6)
    ax.legend(fontsize=8)
    ax.set_title("Miss rate vs FPPI (shaded: the MR⁻² range)", fontsize=9)
    return _png(fig)


def render_failures(ctx: ReportContext) -> Rendered | None:
    """Where the detector fails: the significant attribute slices in words with intervals, MR⁻² with intervals and
    the log-log miss-rate-vs-FPPI curves, the miss types with counts and the mean part relevance per type, the
    false-positive types with their gains. Without ground truth: that it cannot be computed."""
    inp = ctx.inputs
    summary = inp.evaluate_summary.get("where_it_fails")
    if not inp.ground_truth or (summary is not None and not summary.get("ground_truth", True)):
        return Rendered(f"<p><b>{NO_FAILURES}</b></p>", ("## Where it fails", "", _plain(NO_FAILURES)))
    if summary is None or inp.slices is None:
        return None
    sentences = slice_sentences(inp.slices)
    mr2, types = mr2_table(summary), miss_type_table(summary, inp.misses, ctx.shares, summary.get("job"))
    fps, curve = fp_type_table(summary), fig_mr_fppi(summary.get("mr_fppi") or {}, summary.get("mr2") or {})
    n_attr = len(summary.get("attributes", []))
    intro = (f"{summary.get('persons')} ground-truth pedestrians, miss rate {_num(summary.get('miss_rate'), '{:.2f}')} "
             f"at the detector's threshold {summary.get('conf')}; slices searched over {n_attr} attributes "
             f"(SliceLine, up to 2 attributes, bins of a numeric attribute are its terciles); relevance shares from "
             f"{html.escape(str(summary.get('job')))} on the {summary.get('explained')} explained pedestrians.")
    body = (f"<p>{intro}</p>" + ("<ul class='findings'>" + "".join(f"<li>{t}</li>" for t in sentences) + "</ul>"
                                 if sentences else "<p>No slice deviates significantly.</p>") +
            "<p class='note'>Intervals: bootstrap 95 % (BCa) of the slice's mean; 'vs': the rest of the pedestrians; "
            "q: Benjamini–Hochberg over every slice of the searched lattice with at least 20 pedestrians, "
            "significant at q &le; 0.05.</p>")
    md = ["## Where it fails", "", _plain(intro), ""] + [f"- {_plain(t)}" for t in sentences]
    if not mr2.empty:
        body += ("<h3>Log-average miss rate (MR⁻²)</h3>" + _table(mr2) +
                 "<p class='note'>Miss rate averaged in log space over FPPI 10⁻² to 10⁰ (Caltech / CityPersons); "
                 "CityPersons' subsets with heights in pixels as annotated; intervals: image bootstrap 95 %.</p>")
        md += ["", _markdown_table(mr2)]
    if curve is not None:
        body += _img(curve, "miss rate vs false positives per image")
    if not types.empty:
        wide = _table(types).replace("<table>", "<table style='white-space:nowrap'>", 1)   # interval cells: 1 line
        body += ("<h3>Why pedestrians were missed</h3><div style='overflow-x:auto'>" + wide + "</div>" +
                 "<p class='note'>From the detector's candidates before NMS. Gains: how much the miss rate drops / "
                 "AP rises / MR⁻² drops if that type were fixed (TIDE's oracle: its persons leave the count). "
                 "Part columns: mean share of |relevance| of the explained pedestrians of that type "
                 f"[bootstrap {CONFIDENCE * 100:g} % interval: BCa, {N_BOOT} resamples, seed {SEED}, resampling "
                 "images (an image's pedestrians together) over the 'explained' pedestrians in 'images' images; "
                 f"n/a with fewer than {MIN_UNITS} images].</p>")
        md += ["", _markdown_table(types, floatfmt=".2f")]
    if not fps.empty:
        body += ("<h3>What the false positives are</h3>" + _table(fps) +
                 "<p class='note'>Detections at or above the threshold matched to no person (TIDE's types, in that "
                 "order). Gains: how much AP rises / MR⁻² (all persons as annotated) drops if that type were fixed "
                 "(TIDE's oracle: a localisation error moved onto its person, unless that person is already found; "
                 "every other type removed).</p>")
        md += ["", _markdown_table(fps, floatfmt=".3f")]
    return Rendered(body, tuple(md))


SECTIONS: tuple[Section, ...] = (
    Section("summary", "Dataset and models", render_summary, (("summary", "Summary"),)),
    Section("findings", "Key findings", render_findings, (("findings", "Findings"),)),
    Section("failures", "Where it fails", render_failures, (("failures", "Where it fails"),)),
    Section("detections", "Detections (no ground truth)", render_detections, (("detections", "Detections"),)),
    Section("parts", "Body-part relevance for pedestrians", render_parts, (("parts", "Body parts"),)),
    Section("missed", "Which parts carry missed vs found pedestrians", render_missed),
    Section("sag", "Sufficient part sets", render_sag, (("sag", "Sufficient parts"),)),
    Section("agreement", "Explanation quality and method agreement", render_quality,
            (("agreement", "Quality"), ("undefined", "Undefined"))),
    Section("sanity", "Sanity checks: do the explanations depend on the model?", render_sanity,
            (("sanity", "Sanity"),)),
    Section("classifier", "Classifier: objects or spurious cue?", render_classifier, (("classifier", "Classifier"),)),
    Section("guidance", "Model guidance", render_guidance, (("guidance", "Model guidance"),)),
    Section("cost", "Cost", render_cost, (("cost", "Cost"),)),
    Section("gallery", "Gallery", render_gallery, (("gallery", "Gallery"),)),
    Section("errors", "Errors", render_errors),
)


def gallery(inp: ReportInputs, main_job: str, per_row: int) -> str:
    """Best / worst (by insertion AUC, else EPG) and most surprising (missed pedestrians with the highest score,
    or the largest disagreement between methods) explanations of the main job, as overlays."""
    if per_row == 0:
        return ""
    exps = inp.explanations[(inp.explanations["job"] == main_job)]
    if exps.empty:
        return "<p>No explanations.</p>"
    keyed = exps.set_index(["image_id", "target_id"])
    out = []
    for title, keys in gallery_rows(inp, main_job, per_row, keyed.index).items():
        figs = [fig for key in keys if (fig := _gallery_figure(inp, keyed, key)) is not None]
        out.append(f"<h3>{html.escape(title)}</h3><div class='gallery'>{''.join(figs)}</div>")
    return "".join(out)


def gallery_rows(inp: ReportInputs, main_job: str, per_row: int, explained: pd.Index) -> dict[str, list]:
    """Row title -> (image_id, target_id) keys of the main job's explanations to show, at most per_row each."""
    m = inp.metrics[inp.metrics["job"] == main_job]
    metric = causal_auc("insertion") if (m["metric"] == causal_auc("insertion")).any() else epg("body")
    score = m[m["metric"] == metric].set_index(["image_id", "target_id"])["value"]
    ranked = score[score.index.isin(explained)].sort_values()
    rows = {f"Best ({metric}, highest)": list(ranked.index[::-1][:per_row]),
            f"Worst ({metric}, lowest)": list(ranked.index[:per_row])}
    t = inp.targets.set_index(["image_id", "target_id"])
    agree = m[m["metric"].map(lambda n: (parse_agreement(n) or ("",))[0] == AGREE)]
    if not agree.empty:
        rows["Most surprising (methods disagree most)"] = list(
            agree.sort_values("value").set_index(["image_id", "target_id"]).index[:per_row])
    missed = t[(t["kind"] == "persons") & (t["found"] == False)]  # noqa: E712
    missed = missed[missed.index.isin(explained)].sort_values("height", ascending=False)
    if len(missed):
        rows["Missed pedestrians (largest first)"] = list(missed.index[:per_row])
    return rows


def status_word(target) -> str:
    """'found · ' / 'missed · ' for a ground-truth pedestrian, 'true positive · ' / 'false positive · ' for a
    detection, '' where unknown (no ground truth)."""
    found = target.get("found")
    if found is None or (isinstance(found, float) and np.isnan(found)):
        return ""
    words = ("found", "missed") if target.get("kind") == "persons" else ("true positive", "false positive")
    return f"{words[0] if found else words[1]} · "


def _gallery_figure(inp: ReportInputs, keyed: pd.DataFrame, key: tuple[str, str]) -> str | None:
    """One overlay with its caption (target, height, found / missed, score, top part); None if the image is
    unreadable."""
    e, target = keyed.loc[key], inp.targets.set_index(["image_id", "target_id"]).loc[key]
    if isinstance(e, pd.DataFrame):
        e = e.iloc[0]
    try:
        image = load_rgb(inp.images.set_index("image_id")["uri"][key[0]])
    except ImageError:
        return None
    sal = np.asarray(e["saliency"], np.float32).reshape(e["saliency_height"], e["saliency_width"])
    box = None if target["bbox"] is None else list(target["bbox"])
    caption = f"{key[1]} · h={target['height']:.0f}px · " + status_word(target) + f"score {target['score']:.2f}"
    if e["relevance"] is not None and e["region_names"] is not None and len(e["region_names"]):
        top = int(np.argmax(e["relevance"]))
        caption += f" · top part: {e['region_names'][top]}"
    return (f"<figure>{_img(overlay(image, sal, box, key[1]), caption)}"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def build_report(inp: ReportInputs, per_row: int = 4) -> tuple[str, str]:
    """(HTML page, markdown summary) of the audit: every section of :data:`SECTIONS` that has something to show, in
    order, the navigation linking those, the markdown summary from their markdown lines."""
    ctx = ReportContext.of(inp, per_row)
    rendered = [(section, out) for section in SECTIONS if (out := section.render(ctx)) is not None]
    nav = "".join(f'<a href="#{anchor}">{label}</a>' for section, _ in rendered for anchor, label in section.nav)
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>xai-audit report</title>"
            f"<style>{CSS}</style></head><body><h1>xai-audit: why the models decide what they decide</h1>"
            f"<p class='sub'>Detector {html.escape(inp.detector_id)} · {len(inp.images)} images · "
            f"{len(inp.explanations)} explanations</p><nav>{nav}</nav>"
            f"{''.join(section.html(out.html) for section, out in rendered)}</body></html>")
    md = ["# xai-audit summary"]
    for _, out in rendered:
        if out.markdown is not None:
            md += ["", *out.markdown]
    return page, "\n".join(md) + "\n"


def _markdown_table(df: pd.DataFrame, **kwargs) -> str:
    """A pipe table (tabulate), else pandas' plain text."""
    return df.to_markdown(index=False, **kwargs) if _has_tabulate() else df.to_string(index=False)


def _plain(text: str) -> str:
    """HTML text (findings, notes) -> markdown."""
    for tag, mark in (("<b>", "**"), ("</b>", "**"), ("<i>", "*"), ("</i>", "*"), ("&le;", "<="), ("&ge;", ">=")):
        text = text.replace(tag, mark)
    return text


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
        return True
    except ImportError:
        return False


def load_json(path: str | Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {}
