"""The evaluate stage's summaries of its metrics table: the per-kind / per-job means written to
``metrics/evaluate.json`` (:func:`summarise`, :func:`undefined_counts`, :data:`NOTES`) and the ``dvc plots`` files
(:func:`write_plots`: mean deletion / insertion curves and body-part relevance shares, PNG + CSV)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.metric_names import METRICS, causal_auc, in_table, names, parse_curve_point
from tasks.part_shares import part_shares as compute_part_shares
from tasks.undefined import parse_undefined

SUMMARY_METRICS = names("quality") + names("cost")
NOTES = {
    "undefined": "a metric that cannot mean anything on an explanation (NaN / inf or constant saliency, a region with "
                 "no pixel in the image, constant or NaN relevance) is not averaged: 'undefined' counts it per "
                 "metric and reason",
    "pointing": "hit if any pixel of the saliency maximum lies within the tolerance of the region (ties count the "
                "same for every target); a constant map is undefined",
    "epg": "energy pointing game only for maps with a pixel <= 0 (centred / signed maps, region maps): a map "
           "positive everywhere is undefined (positive_everywhere), its EPG would mostly measure the region's "
           "area; epg_*_chance is the region's share of the image, the EPG of a uniform map",
    "causal": "deletion / insertion AUC of a constant or NaN saliency map is undefined (its ranking is arbitrary)",
}


def _grouped(metrics: pa.Table, keys: list[str]) -> list[dict]:
    """Mean and count of ``value`` per ``keys`` group (Arrow ``group_by``; NaN values make the mean NaN, as
    ``np.mean`` would), as small Python rows: one per group, not per metric row."""
    g = metrics.select([*keys, "value"]).group_by(keys).aggregate(
        [("value", "mean"), ("value", "count", pc.CountOptions(mode="all"))])
    return g.select([*keys, "value_mean", "value_count"]).rename_columns([*keys, "mean", "count"]).to_pylist()


def summarise(metrics: pa.Table) -> dict:
    """Per kind and job: the mean of each headline metric over the explanations where it is defined, how many
    explanations the job has, and ``undefined``: per metric, how many explanations it was undefined for, by
    reason. Agreements (``agree:`` / ``top_part_match:``) likewise. Aggregated with Arrow (one Python row per
    (kind, job, metric), not per metric row)."""
    out: dict = {}
    groups: dict[tuple[str, str, str], tuple[float, int]] = {}
    undefined: dict[tuple[str, str, str, str], int] = {}
    headline = lambda m: in_table(m, "quality", "cost", "agreement")  # noqa: E731
    for r in _grouped(metrics, ["kind", "job", "metric"]):
        parsed = parse_undefined(r["metric"])
        if parsed is not None and headline(parsed[0]):
            key = (r["kind"], r["job"], *parsed)
            undefined[key] = undefined.get(key, 0) + r["count"]
        elif headline(r["metric"]):
            groups[(r["kind"], r["job"], r["metric"])] = (r["mean"], r["count"])
    for (kind, job, metric), (mean, count) in sorted(groups.items()):
        entry = out.setdefault(kind, {}).setdefault(job, {})
        entry[metric] = round(mean, 4)
        entry["explanations"] = max(entry.get("explanations", 0), count)
    for (kind, job, metric, reason), n in sorted(undefined.items()):
        entry = out.setdefault(kind, {}).setdefault(job, {})
        entry.setdefault("undefined", {}).setdefault(metric, {})[reason] = n
    return out


def undefined_counts(metrics: pa.Table) -> dict[str, int]:
    """How many metric values of the whole table are undefined, by reason (every metric, curves excluded)."""
    out: dict[str, int] = {}
    counts = pc.value_counts(metrics["metric"])
    for name, n in zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()):
        parsed = parse_undefined(name)
        if parsed is not None:
            out[parsed[1]] = out.get(parsed[1], 0) + n
    return dict(sorted(out.items()))


def write_plots(metrics: pa.Table, explanations: pa.Table, plots_dir: str | Path) -> dict[str, Path]:
    """For ``dvc plots``: mean deletion / insertion curves per job and mean body-part relevance share per job, as
    PNG (one series per job) and as CSV (long format, the same numbers)."""
    import matplotlib

    matplotlib.use("Agg")
    plots = Path(plots_dir)
    plots.mkdir(parents=True, exist_ok=True)
    return {"causal_curves": plot_causal_curves(metrics, plots),
            "part_relevance": plot_part_relevance(explanations, plots)}


def write_mr_fppi(where_it_fails: dict, plots_dir: str | Path) -> Path:
    """plots/mr_fppi.csv (``subset,fppi,miss_rate``, long format): the miss-rate-vs-FPPI curves of the CityPersons
    subsets as ``where_it_fails["mr_fppi"]`` holds them (tasks.audit_slices; the report draws them log-log). Just
    the header without ground truth. Returns the CSV's path."""
    path = Path(plots_dir) / "mr_fppi.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["subset,fppi,miss_rate"]
    for subset, curve in sorted((where_it_fails.get("mr_fppi") or {}).items()):
        lines += [f"{subset},{f:.6g},{m:.6g}" for f, m in zip(curve["fppi"], curve["miss_rate"])]
    path.write_text("\n".join(lines) + "\n")
    return path


def plot_causal_curves(metrics: pa.Table, plots: Path) -> Path:
    """plots/causal_curves.{png,csv}: per job, the mean target score at each step of the deletion / insertion
    curves (rows ``<mode>_curve_<kk>``), over the fraction of pixels hidden / revealed. Returns the PNG's path."""
    import matplotlib.pyplot as plt

    curves: dict[tuple[str, str, int], float] = {}
    for r in _grouped(metrics, ["job", "metric"]):
        point = parse_curve_point(r["metric"])
        if point is not None:
            curves[(r["job"], *point)] = r["mean"]
    steps = max((k[2] for k in curves), default=0) or 1
    jobs = sorted({k[0] for k in curves})
    lines = ["job,fraction,deletion,insertion"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
    for job in jobs:
        d = [curves.get((job, "deletion", s)) for s in range(steps + 1)]
        i = [curves.get((job, "insertion", s)) for s in range(steps + 1)]
        x = [s / steps for s in range(steps + 1)]
        lines += [f"{job},{f:.3f},{'' if a is None else f'{a:.5f}'},{'' if b is None else f'{b:.5f}'}"
                  for f, a, b in zip(x, d, i)]
        axes[0].plot(x, [np.nan if a is None else a for a in d], label=job)
        axes[1].plot(x, [np.nan if b is None else b for b in i], label=job)
    for ax, title in zip(axes, (f"{m} ({METRICS[causal_auc(m)].better})" for m in ("deletion", "insertion"))):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("fraction of pixels")
    axes[0].set_ylabel("mean target score")
    axes[0].legend(fontsize=7)
    fig.savefig(plots / "causal_curves.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    (plots / "causal_curves.csv").write_text("\n".join(lines) + "\n")
    return plots / "causal_curves.png"


def _part_shares(explanations: pa.Table) -> dict[tuple[str, str], float]:
    """Per (job, part): the mean over targets (every kind but ``classes``) of the part's share of the target's
    |relevance| (:func:`tasks.part_shares.part_shares`; a NaN share is skipped, a part with none defined is NaN)."""
    shares = compute_part_shares(explanations)
    if not len(shares.share):
        return {}
    g = shares.long().groupby(["job", "part"], sort=False)["share"].mean()
    return {(j, p): float(v) for (j, p), v in g.items()}


def plot_part_relevance(explanations: pa.Table, plots: Path) -> Path:
    """plots/part_relevance.{png,csv}: per job and body part, the mean share of |relevance| (relevance over the
    sum of |relevance| of the target's parts; pedestrians only). Returns the PNG's path."""
    import matplotlib.pyplot as plt

    parts = _part_shares(explanations)
    lines = ["job,part,share"] + [f"{job},{part},{v:.5f}" for (job, part), v in sorted(parts.items())]
    (plots / "part_relevance.csv").write_text("\n".join(lines) + "\n")
    names = list(dict.fromkeys(p for _, p in sorted(parts, key=lambda k: k[1])))
    part_jobs = sorted({j for j, _ in parts})
    fig, ax = plt.subplots(figsize=(9, 3.2))
    width = 0.8 / max(1, len(part_jobs))
    for k, job in enumerate(part_jobs):
        ax.bar(np.arange(len(names)) + k * width, [parts.get((job, n)) or 0.0 for n in names], width,
               label=job)
    ax.set_xticks(np.arange(len(names)) + width * (len(part_jobs) - 1) / 2, names, rotation=35, ha="right",
                  fontsize=8)
    ax.set_ylabel("mean share of |relevance|")
    ax.legend(fontsize=7)
    fig.savefig(plots / "part_relevance.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return plots / "part_relevance.png"
