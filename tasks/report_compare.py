"""The "Compare two audits" report section and page: a :class:`tasks.compare.Comparison` as self-contained HTML
(figures embedded as PNG, no external URL), in the style of the audit report (``tasks.report``: its CSS, tables
and figure helpers). Pure functions of the comparison."""
from __future__ import annotations

import html

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from tasks.compare import BREAKDOWNS, GATE_GRAMMAR, Comparison, MetricChange  # noqa: E402
from tasks.report import CSS, _img, _num, _png, _table  # noqa: E402

SHIFT_NOTE = ("Share = a part's relevance over the sum of |relevance| of the pedestrian's parts (the report's "
              "body-part share). Shift = mean share in B − mean share in A, with a bootstrap {conf:g} % interval "
              "(BCa, {n_boot} resamples, seed {seed}) resampling images, paired by image id (an image in both audits "
              "is resampled as one unit; its pedestrians together). Cells: mean share A → B: shift [interval] (n: "
              "pedestrians in A / B). Bold: the interval excludes 0. The overall rows also give a simultaneous "
              "interval (Bonferroni over the {m} overall cells, {sim:.4g} % each; ✱: it excludes 0), which the "
              "part_shift gate reads: with many cells, some 95 % intervals exclude 0 by chance alone.")
CLASS = "style='color:#b3261e;font-weight:600'"


def _signed(value) -> str:
    """``+0.012``; ``+0.000`` (never ``-0.000``) for what rounds to 0; ``n/a`` for a missing number."""
    return "n/a" if value is None or not np.isfinite(value) else f"{round(float(value), 3) + 0.0:+.3f}"


def _metric_table(rows: list[MetricChange], with_job: bool = False) -> pd.DataFrame:
    out = []
    for r in rows:
        row = {"job": r.job} if with_job else {}
        row.update({"metric": r.name.replace("_", " "), "A": _num(r.a), "B": _num(r.b), "B − A": _signed(r.diff),
                    "better": r.better or "", "key": r.key_b if r.key_a in (None, r.key_b) else f"{r.key_a} / "
                                                                                            f"{r.key_b}"})
        if r.interval_a or r.interval_b:
            row["A interval"] = _pair(r.interval_a)
            row["B interval"] = _pair(r.interval_b)
        out.append(row)
    return pd.DataFrame(out)


def _pair(pair) -> str:
    return "" if pair is None else f"[{pair[0]:.3f}, {pair[1]:.3f}]"


def gates_html(c: Comparison) -> str:
    if not c.gates:
        return "<p>No <code>--fail-on</code> thresholds given: nothing gated (exit code 0).</p>"
    items = []
    for g in c.gates:
        verdict = f"<span {CLASS}>FAILED</span>" if g.failed else "holds"
        reasons = "".join(f"<li>{html.escape(r)}</li>" for r in g.reasons)
        items.append(f"<li><code>{html.escape(g.gate.spec)}</code>: {verdict}" +
                     (f"<ul>{reasons}</ul>" if reasons else "") + "</li>")
    head = (f"<p><b>Release gate: {'FAILED' if c.failed else 'passed'}</b> (exit code {c.exit_code}).</p>")
    return head + "<ul class='findings'>" + "".join(items) + "</ul>"


def fig_shift(cells: pd.DataFrame, jobs: list[str]) -> str | None:
    """Overall shift per part (rows) and job (markers), marginal interval as a thick bar, simultaneous as a thin
    one; None without cells."""
    overall = cells[cells["breakdown"] == "all"]
    if overall.empty:
        return None
    parts = list(dict.fromkeys(overall["part"]))
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(parts) + 1.4))
    step = 0.7 / max(1, len(jobs))
    for k, job in enumerate(jobs):
        sel = overall[overall["job"] == job].set_index("part").reindex(parts)
        y = np.arange(len(parts)) + (k - (len(jobs) - 1) / 2) * step
        ax.hlines(y, sel["sim_low"], sel["sim_high"], lw=1, color=f"C{k}")
        ax.hlines(y, sel["low"], sel["high"], lw=3.5, color=f"C{k}", alpha=0.7)
        ax.plot(sel["shift"], y, "o", color=f"C{k}", ms=4, label=job)
    ax.axvline(0, color="k", lw=0.7)
    ax.set_yticks(range(len(parts)), [p.replace("_", " ") for p in parts], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("shift of the mean share of |relevance| (B − A)")
    ax.legend(fontsize=8)
    ax.set_title("Body-part relevance shift (thick: 95 % interval; thin: simultaneous)", fontsize=9)
    return _png(fig)


def shift_text(shift, low, high) -> str:
    """``'-0.050 [-0.051, -0.049]'`` (signed, 3 decimals; ``n/a`` for a missing bound); without ``shift`` only the
    interval."""
    interval = f"[{_signed(low)}, {_signed(high)}]"
    return interval if shift is None else f"{_signed(shift)} {interval}"


def shift_table(cells: pd.DataFrame, job: str, breakdown: str) -> pd.DataFrame:
    """part × bucket: 'A → B: shift [low, high]' per cell, for one job and breakdown (HTML-marked significant)."""
    sel = cells[(cells["job"] == job) & (cells["breakdown"] == breakdown)]
    buckets = [b for b in BREAKDOWNS[breakdown][1] if b in set(sel["bucket"])]
    rows = []
    for part in dict.fromkeys(sel["part"]):
        row = {"part": part.replace("_", " ")}
        for bucket in buckets:
            cell = sel[(sel["part"] == part) & (sel["bucket"] == bucket)]
            if cell.empty:
                row[bucket] = ""
                continue
            r = cell.iloc[0]
            text = (f"{_num(r['mean_a'])} → {_num(r['mean_b'])}: {shift_text(r['shift'], r['low'], r['high'])} "
                    f"(n {r['n_a']}/{r['n_b']})")
            if breakdown == "all":
                text += f"; simultaneous {shift_text(None, r['sim_low'], r['sim_high'])}"
                text += " ✱" if r["sim_significant"] else ""
            row[bucket] = f"<b>{html.escape(text)}</b>" if r["significant"] else html.escape(text)
        rows.append(row)
    return pd.DataFrame(rows)


def _raw_table(df: pd.DataFrame) -> str:
    """A table whose cells are already HTML (the shift tables' bold cells)."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>" for row in df.itertuples(False))
    return f"<table style='white-space:nowrap'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def parts_html(c: Comparison) -> str:
    jobs = c.jobs
    if not jobs["both"]:
        return "<p>No explain job with body-part relevance in both audits.</p>" + _only(jobs)
    iv = c.interval
    note = SHIFT_NOTE.format(conf=iv["confidence"] * 100, n_boot=iv["n_boot"], seed=iv["seed"],
                             m=iv["simultaneous"]["cells"], sim=iv["simultaneous"]["confidence"] * 100)
    fig = fig_shift(c.cells, jobs["both"])
    body = (_img(fig, "body-part relevance shift") if fig else "") + f"<p class='note'>{html.escape(note)}</p>"
    for job in jobs["both"]:
        body += f"<h3>{html.escape(job)}</h3>"
        for breakdown, title in (("all", "overall"), ("size", "by person height"),
                                 ("occlusion", "by occlusion")):
            table = shift_table(c.cells, job, breakdown)
            if not table.empty and len(table.columns) > 1:
                body += (f"<details{' open' if breakdown == 'all' else ''}><summary>{title}</summary>"
                         f"<div style='overflow-x:auto'>{_raw_table(table)}</div></details>")
    return body + _only(jobs)


def _only(jobs: dict) -> str:
    out = ""
    for side, key in (("A", "only_a"), ("B", "only_b")):
        if jobs[key]:
            out += f"<p class='note'>Only in {side} (not compared): {html.escape(', '.join(jobs[key]))}.</p>"
    return out


def found_missed_html(c: Comparison) -> str:
    fm = c.found_missed
    table = pd.DataFrame([("explained in both (same image)", fm.paired), ("found in both", fm.still_found),
                          ("missed in both", fm.still_missed), ("found in A, missed in B", len(fm.found_to_missed)),
                          ("missed in A, found in B", len(fm.missed_to_found)), ("only in A", fm.only_a),
                          ("only in B", fm.only_b)], columns=["ground-truth pedestrians", "count"])
    out = _table(table)
    for title, ids in (("Newly missed (found in A, missed in B)", fm.found_to_missed),
                       ("Newly found (missed in A, found in B)", fm.missed_to_found)):
        if ids:
            out += (f"<details><summary>{title}: {len(ids)}</summary><p><code>"
                    f"{html.escape(', '.join(ids))}</code></p></details>")
    return out + ("<p class='note'>The explain targets of kind persons (ground-truth pedestrians tall enough to "
                  "explain), found / missed by the one rule of infer's recall; ids are image_id/target_id.</p>")


def cue_html(c: Comparison) -> str:
    cue = c.cue
    if cue.label is None:
        return "<p>No spurious-cue probe in either audit (infer.json &lt;classifier&gt;.spurious).</p>"

    def verdict(v):
        return "n/a" if v is None else ("relies on the cue" if v > cue.to_json()["threshold"] else "does not rely "
                                                                                                   "much on it")
    rows = [*cue.rows, MetricChange("cue", "reliance (with − without)", "derived", None, None, cue.reliance_a,
                                    cue.reliance_b, "lower")]
    return (_table(_metric_table(rows)) +
            f"<p>A: {verdict(cue.reliance_a)}; B: {verdict(cue.reliance_b)} (the report's threshold: reliance "
            f"&gt; {cue.to_json()['threshold']:g}).</p><p class='note'>P({html.escape(cue.label)}) on scenes without "
            f"a {html.escape(cue.label)}, with and without the background cue (infer's probe).</p>")


def sanity_html(c: Comparison) -> str:
    if not c.sanity:
        return "<p>No sanity verdicts in either audit.</p>"

    def word(status, passes):
        return "absent" if status is None else ("passes" if passes else "does not pass") if status == "checked" \
            else status
    table = pd.DataFrame([{"job": s.job, "A": word(s.status_a, s.passes_a), "B": word(s.status_b, s.passes_b),
                           "|ρ| all random A": _num(s.rho_a, "{:.2f}"), "|ρ| all random B": _num(s.rho_b, "{:.2f}"),
                           "change": "regressed" if s.regressed else ""} for s in c.sanity])
    return _table(table)


def compare_section(c: Comparison) -> str:
    """The section body: gates, warnings, detector, cue, found / missed, part shift, quality, sanity."""
    warn = "".join(f"<li>{html.escape(w)}</li>" for w in c.warnings)
    detector, mr2 = _metric_table(c.detector), _metric_table(c.mr2)
    quality = _metric_table(c.quality, with_job=True)
    return (f"<p class='sub'>A: <code>{html.escape(c.a)}</code> · B: <code>{html.escape(c.b)}</code></p>" +
            gates_html(c) + (f"<ul class='note'>{warn}</ul>" if warn else "") +
            "<h3>Detector</h3>" + (_table(detector) if not detector.empty else "<p>No detector metrics.</p>") +
            (_table(mr2) + "<p class='note'>MR⁻²: each audit's own image-bootstrap interval.</p>"
             if not mr2.empty else "") +
            "<h3>Classifier: spurious cue</h3>" + cue_html(c) +
            "<h3>Found / missed pedestrians</h3>" + found_missed_html(c) +
            "<h3>Body-part relevance</h3>" + parts_html(c) +
            "<h3>Explanation quality</h3>" + (_table(quality) if not quality.empty else "<p>none</p>") +
            "<h3>Sanity checks</h3>" + sanity_html(c) +
            f"<details><summary>--fail-on grammar</summary><pre>{html.escape(GATE_GRAMMAR)}</pre></details>" +
            "<p class='note'>Keys: the metrics files' flattened keys, as <code>dvc metrics diff</code> shows them; "
            "the compare JSON holds every metric of both files.</p>")


def compare_page(c: Comparison) -> str:
    """The self-contained HTML page of the comparison (the audit report's CSS)."""
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>xai-audit compare</title>"
            f"<style>{CSS}</style></head><body><h1>xai-audit: compare two audits</h1>"
            f"<section id='compare'><h2>A vs B</h2>{compare_section(c)}</section></body></html>")
