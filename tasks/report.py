"""The audit report: tables of the explain / evaluate stages turned into a self-contained HTML page (figures as
embedded PNG, no external URL) and a markdown summary. Pure functions of the tables; the flow does the I/O."""
from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from detection.body import BODY_PARTS  # noqa: E402
from detection.datasets.imageio import ImageError, load_rgb  # noqa: E402
from detection.evaluation import MATCH_IOU, OCCLUSION_BUCKETS, SIZE_BUCKETS  # noqa: E402
from tasks.undefined import parse_undefined  # noqa: E402

PART_ORDER = [*BODY_PARTS, "context"]
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
CONFIDENCE_BUCKETS = {"< 0.05": (0.0, 0.05), "0.05-0.25": (0.05, 0.25), "0.25-0.5": (0.25, 0.5),
                      "0.5-0.75": (0.5, 0.75), "0.75-1": (0.75, 1.01)}


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


# ---------------------------------------------------------------------------------------------------- figures
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
    """Long table (target, job, part, share) with share = relevance / sum |relevance| of the target's parts, joined
    with the target's attributes and buckets (size, occlusion, detector confidence)."""
    rows = []
    for r in explanations.itertuples():
        if r.kind == "classes" or r.relevance is None or r.region_names is None or not len(r.region_names):
            continue
        rel = np.asarray(r.relevance, float)
        total = np.abs(rel).sum() or 1.0
        rows += [(r.image_id, r.target_id, r.job, n, v / total) for n, v in zip(r.region_names, rel)]
    shares = pd.DataFrame(rows, columns=["image_id", "target_id", "job", "part", "share"])
    t = targets[["image_id", "target_id", "kind", "height", "occlusion", "found", "score"]]
    shares = shares.merge(t, on=["image_id", "target_id"], how="left")
    shares["size"] = _bucket(shares["height"], SIZE_BUCKETS)
    shares["occlusion_bucket"] = _bucket(shares["occlusion"].fillna(0.0), OCCLUSION_BUCKETS)
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
    ax.boxplot([sel.loc[sel["part"] == p, "share"].values for p in parts], showfliers=False)
    ax.set_xticks(np.arange(1, len(parts) + 1), [p.replace("_", " ") for p in parts], rotation=35, ha="right")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_ylabel("share of |relevance|")
    ax.set_title(f"Spread over pedestrians ({job}; boxes: quartiles, whiskers: 1.5 IQR)")
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
    vmax = np.nanmax(np.abs(table.values)) if table.size else 1.0
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
    names = ["epg_box", "epg_objects", "epg_box_chance", "epg_objects_chance"]
    sel = metrics[(metrics["kind"] == "classes") & metrics["metric"].isin(names)]
    if not sel["metric"].isin(names[:2]).any():
        return None
    sel = sel.merge(targets[["image_id", "target_id", "category", "spurious_cue"]], on=["image_id", "target_id"])
    cats = sorted(sel["category"].unique())
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2), sharey=True)
    for ax, metric, title in zip(axes, ("epg_box", "epg_objects"),
                                 ("on the objects of the class (label present)", "on any object (every image)")):
        for k, cue in enumerate((False, True)):
            part = sel[(sel["metric"] == metric) & (sel["spurious_cue"] == cue)]
            s = part.groupby("category")["value"].mean().reindex(cats)
            x = np.arange(len(cats)) + 0.4 * k
            ax.bar(x, s.values, 0.4, label=f"spurious cue {'present' if cue else 'absent'}")
            chance = sel[(sel["metric"] == f"{metric}_chance") & (sel["spurious_cue"] == cue)]
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
    5 % of the maximum), box drawn in white."""
    H, W = image.shape[:2]
    pos = np.clip(np.asarray(saliency, np.float32), 0, None)
    pos = np.ma.masked_less(pos / (pos.max() or 1.0), 0.05)
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


QUALITY_METRICS = ["deletion_auc", "insertion_auc", "pointing_box", "epg_box", "epg_box_chance", "pointing_body",
                   "epg_body", "epg_body_chance"]


def quality_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per kind and job: the mean of each quality metric over the explanations where it is defined (EPG's chance
    level beside it), the number of explanations and of undefined headline values."""
    sel = metrics[metrics["metric"].isin(QUALITY_METRICS)]
    table = sel.pivot_table(index=["kind", "job"], columns="metric", values="value", aggfunc="mean")
    table = table.reindex(columns=[c for c in QUALITY_METRICS if c in table.columns]).reset_index()
    counts = metrics[metrics["metric"] == "n_forward"].groupby(["kind", "job"]).size().rename("explanations")
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


def cost_table(explanations: pd.DataFrame) -> pd.DataFrame:
    e = explanations.assign(fw=explanations["n_forward"] / explanations["shared_by"],
                            sec=explanations["seconds"] / explanations["shared_by"])
    g = e.groupby(["kind", "job"])
    return pd.DataFrame({"explanations": g.size(), "forwards / explanation": g["fw"].mean(),
                         "seconds / explanation": g["sec"].mean(), "total seconds": g["sec"].sum(),
                         "device": g["device"].agg(lambda d: ", ".join(sorted(set(d))))}).reset_index()


def agreement_table(metrics: pd.DataFrame) -> pd.DataFrame:
    sel = metrics[metrics["metric"].str.startswith(("agree:", "top_part_match:"))]
    if sel.empty:
        return pd.DataFrame()
    sel = sel.assign(other=sel["metric"].str.split(":").str[1], what=sel["metric"].str.split(":").str[0])
    table = sel.pivot_table(index=["job", "other"], columns="what", values="value", aggfunc=["mean", "count"])
    out = pd.DataFrame({"method A": [i[0] for i in table.index], "method B": [i[1] for i in table.index],
                        "Spearman ρ (mean)": table[("mean", "agree")].values,
                        "same top part": table[("mean", "top_part_match")].values,
                        "pedestrians": table[("count", "agree")].values.astype(int)})
    return out


# ---------------------------------------------------------------------------------------------------- findings
def findings(shares: pd.DataFrame, main_job: str | None, inp: ReportInputs) -> list[str]:
    """Plain-language observations computed from the tables (what a reviewer should read first)."""
    out = []
    sel = shares[shares["job"] == main_job]
    body = sel[sel["part"] != "context"]
    if not body.empty:
        mean = body.groupby("part")["share"].mean().sort_values(ascending=False)
        out.append(f"Across {sel['target_id'].nunique()} pedestrians ({main_job}), the detector's score rests most "
                   f"on <b>{mean.index[0].replace('_', ' ')}</b> ({mean.iloc[0]:.2f} of |relevance|), then "
                   f"{mean.index[1].replace('_', ' ')} ({mean.iloc[1]:.2f}); least on "
                   f"{mean.index[-1].replace('_', ' ')} ({mean.iloc[-1]:.2f}).")
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
                verdict = "relies on the spurious cue" if a - b > 0.2 else "does not rely much on the cue"
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


# ---------------------------------------------------------------------------------------------------- page
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


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{body}</section>'


def gallery(inp: ReportInputs, main_job: str, per_row: int) -> str:
    """Best / worst (by insertion AUC, else EPG) and most surprising (missed pedestrians with the highest score,
    or the largest disagreement between methods) explanations of the main job, as overlays."""
    if per_row == 0:
        return ""
    exps = inp.explanations[(inp.explanations["job"] == main_job)]
    if exps.empty:
        return "<p>No explanations.</p>"
    m = inp.metrics[inp.metrics["job"] == main_job]
    metric = "insertion_auc" if (m["metric"] == "insertion_auc").any() else "epg_body"
    score = m[m["metric"] == metric].set_index(["image_id", "target_id"])["value"]
    keyed = exps.set_index(["image_id", "target_id"])
    ranked = score[score.index.isin(keyed.index)].sort_values()
    rows = {f"Best ({metric}, highest)": list(ranked.index[::-1][:per_row]),
            f"Worst ({metric}, lowest)": list(ranked.index[:per_row])}
    t = inp.targets.set_index(["image_id", "target_id"])
    agree = inp.metrics[(inp.metrics["job"] == main_job) & inp.metrics["metric"].str.startswith("agree:")]
    if not agree.empty:
        rows["Most surprising (methods disagree most)"] = list(
            agree.sort_values("value").set_index(["image_id", "target_id"]).index[:per_row])
    missed = t[(t["kind"] == "persons") & (t["found"] == False)]  # noqa: E712
    missed = missed[missed.index.isin(keyed.index)].sort_values("height", ascending=False)
    if len(missed):
        rows["Missed pedestrians (largest first)"] = list(missed.index[:per_row])
    uris = inp.images.set_index("image_id")["uri"]
    out = []
    for title, keys in rows.items():
        figs = []
        for key in keys:
            e, target = keyed.loc[key], t.loc[key]
            if isinstance(e, pd.DataFrame):
                e = e.iloc[0]
            try:
                image = load_rgb(uris[key[0]])
            except ImageError:
                continue
            sal = np.asarray(e["saliency"], np.float32).reshape(e["saliency_height"], e["saliency_width"])
            box = None if target["bbox"] is None else list(target["bbox"])
            caption = (f"{key[1]} · h={target['height']:.0f}px · "
                       f"{'found' if target['found'] else 'missed'} · score {target['score']:.2f}")
            if e["relevance"] is not None and e["region_names"] is not None and len(e["region_names"]):
                top = int(np.argmax(e["relevance"]))
                caption += f" · top part: {e['region_names'][top]}"
            figs.append(f"<figure>{_img(overlay(image, sal, box, key[1]), caption)}"
                        f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        out.append(f"<h3>{html.escape(title)}</h3><div class='gallery'>{''.join(figs)}</div>")
    return "".join(out)


def build_report(inp: ReportInputs, per_row: int = 4) -> tuple[str, str]:
    """(HTML page, markdown summary) of the audit."""
    ex, tg = inp.explanations, inp.targets
    shares = part_shares(ex, tg)
    region_jobs = [j for j in dict.fromkeys(shares["job"]) if j]
    main_job = next((j for j in region_jobs if j.startswith(("bayes_shapley", "kernel_shap", "exact_shapley"))),
                    region_jobs[0] if region_jobs else None)
    person_kind = shares["kind"].dropna().iloc[0] if len(shares) else None
    ip = inp.infer_metrics.get(inp.detector_id, {})
    val = ip.get("val", ip.get("all", {}))
    clf = inp.infer_metrics.get(inp.classifier_id or "", {}).get("val", {})
    splits = inp.images["split"].value_counts().to_dict()
    summary_rows = pd.DataFrame([
        ("images", f"{len(inp.images)} ({', '.join(f'{k} {v}' for k, v in sorted(splits.items()))})"),
        ("pedestrians explained", str(tg[tg["kind"].isin(["persons", "detections"])]["target_id"].nunique())),
        ("ground-truth pedestrians", "{} explained, {} missed by the detector (found: matched one-to-one at IoU "
                                     "&ge; {} by a detection above its threshold, as in infer's recall)"
         .format(*detection_counts(tg), MATCH_IOU)),
        ("detector", f"{inp.detector_id}: AP50 {val.get('ap50', float('nan')):.3f} (val), "
                     f"reasonable {val.get('ap50_reasonable', float('nan')):.3f}"),
        ("classifier", f"{inp.classifier_id}: mean F1 {clf.get('mean_f1', float('nan')):.3f} (val)"
         if inp.classifier_id else "none"),
        ("explanations", f"{len(ex)} ({', '.join(f'{j} {n}' for j, n in ex['job'].value_counts().items())})"),
        ("errors", str(len(inp.errors))),
    ], columns=["", "value"])
    jobs = pd.DataFrame([{"job": j["method"] if j["regions"] == "none" else f"{j['method']}@{j['regions']}",
                          "targets": j["targets"], "budget": "default" if j["budget"] is None else str(j["budget"]),
                          "regions": j["regions"] + (f" ({j['n_regions']})" if j["regions"] in ("superpixels", "grid")
                                                     else ""),
                          "images": j["split"] or "all",
                          "options": ", ".join(f"{k}={v}" for k, v in j["options"].items()) or "-"}
                         for j in inp.explain_params.get("jobs", [])])
    facts = findings(shares, main_job, inp)
    sections = [
        _section("summary", "Dataset and models", _table(summary_rows) + "<h3>Explainer jobs</h3>" +
                 (_table(jobs) if not jobs.empty else "<p>none</p>")),
        _section("findings", "Key findings", "<ul class='findings'>" + "".join(f"<li>{f}</li>" for f in facts) +
                 "</ul>"),
    ]
    if main_job:
        parts_body = (_img(fig_part_bars(shares, region_jobs), "part relevance by method") +
                      _img(fig_part_boxplot(shares, main_job), "part relevance spread") +
                      "<p class='note'>Share = a part's relevance divided by the sum of |relevance| over the "
                      "pedestrian's parts (so pedestrians with different scores weigh the same). Context = the box "
                      "minus the body.</p>")
        breakdowns = "".join(_img(fig_breakdown(shares, main_job, col, list(b), title), title) for col, b, title in (
            ("size", SIZE_BUCKETS, f"by person height ({main_job})"),
            ("occlusion_bucket", OCCLUSION_BUCKETS, f"by occlusion ({main_job})"),
            ("confidence", CONFIDENCE_BUCKETS, f"by detector confidence ({main_job})")))
        sections.append(_section("parts", "Body-part relevance for pedestrians", parts_body + breakdowns))
        if person_kind == "persons":
            fm = shares[shares["job"] == main_job].copy()
            fm["status"] = np.where(fm["found"] == True, "found", "missed")  # noqa: E712
            sections.append(_section("missed", "Which parts carry missed vs found pedestrians", _img(
                fig_breakdown(fm, main_job, "status", ["found", "missed"],
                              f"found vs missed ({main_job})"), "found vs missed") +
                "<p class='note'>Ground-truth pedestrians are scored by the D-RISE similarity of the detector's "
                "candidates to their box, so a missed pedestrian's relevance shows what little evidence the "
                "detector saw and where.</p>"))
    quality = quality_table(inp.metrics)
    agreement = agreement_table(inp.metrics)
    undefined = undefined_table(inp.metrics)
    subs = inp.evaluate_summary.get("substrates", {})
    sections.append(_section("agreement", "Explanation quality and method agreement",
                             _table(quality) + f"<p class='note'>Deletion substrate: {subs.get('deletion')}; "
                             f"insertion substrate: {subs.get('insertion')}; "
                             f"{inp.evaluate_summary.get('steps')} steps, on the "
                             f"{inp.evaluate_summary.get('causal_split') or 'whole'} split. Lower deletion / higher "
                             f"insertion AUC is better; pointing game tolerance "
                             f"{inp.evaluate_summary.get('pointing_tolerance', 15.0):g} px. {EPG_NOTE} "
                             f"{REGION_NOTE}</p>" +
                             (_table(agreement) if not agreement.empty else "") +
                             f"<h3 id='undefined'>Undefined metric values</h3><p class='note'>{UNDEFINED_NOTE}</p>" +
                             (_table(undefined) if not undefined.empty else "<p>none</p>")))
    if inp.classifier_id is not None:
        fig = fig_classifier_epg(inp.metrics, tg)
        spur = inp.infer_metrics.get(inp.classifier_id, {}).get("spurious", {})
        body = (_img(fig, "classifier energy pointing game") if fig else "<p>No classifier explanations.</p>")
        if spur:
            body += _table(pd.DataFrame([(k.replace("_", " "), f"{v:.3f}" if isinstance(v, float) else str(v))
                                         for k, v in sorted(spur.items())], columns=["spurious-cue probe", "value"]))
        sections.append(_section("classifier", "Classifier: objects or spurious cue?", body))
    sections.append(_section("cost", "Cost", _table(cost_table(ex))))
    if main_job:
        sections.append(_section("gallery", "Gallery", f"<p class='note'>Positive saliency of {main_job} "
                                 f"(transparent below 5 % of each map's maximum); white: the pedestrian's box.</p>" +
                                 gallery(inp, main_job, per_row)))
    if not inp.errors.empty:
        sections.append(_section("errors", "Errors", _table(inp.errors)))
    nav = "".join(f'<a href="#{a}">{t}</a>' for a, t in (("summary", "Summary"), ("findings", "Findings"),
                                                          ("parts", "Body parts"), ("agreement", "Quality"),
                                                          ("undefined", "Undefined"),
                                                          ("classifier", "Classifier"), ("cost", "Cost"),
                                                          ("gallery", "Gallery")))
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>xai-audit report</title>"
            f"<style>{CSS}</style></head><body><h1>xai-audit: why the models decide what they decide</h1>"
            f"<p class='sub'>Detector {html.escape(inp.detector_id)} · {len(inp.images)} images · "
            f"{len(ex)} explanations</p><nav>{nav}</nav>{''.join(sections)}</body></html>")
    plain = [f.replace("<b>", "**").replace("</b>", "**").replace("<i>", "*").replace("</i>", "*") for f in facts]
    md = ["# xai-audit summary", "", *[f"- {f}" for f in plain], "", "## Explanation quality", "",
          quality.to_markdown(index=False, floatfmt=".3f") if _has_tabulate() else quality.to_string(index=False),
          "", _plain(EPG_NOTE), "", "## Undefined metric values", "", _plain(UNDEFINED_NOTE), "",
          (undefined.to_markdown(index=False) if _has_tabulate() else undefined.to_string(index=False))
          if not undefined.empty else "none",
          "", "## Cost", "", cost_table(ex).to_string(index=False)]
    return page, "\n".join(md) + "\n"


def _plain(text: str) -> str:
    """HTML note -> markdown."""
    return text.replace("<i>", "*").replace("</i>", "*").replace("&le;", "<=").replace("&ge;", ">=")


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
