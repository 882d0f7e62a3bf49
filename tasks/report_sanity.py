"""The report's "Sanity checks" section, from ``metrics/evaluate.json``'s ``sanity`` entry (tasks.sanity): for every
explain job, Adebayo et al.'s cascading model-parameter randomisation ("Sanity Checks for Saliency Maps", NeurIPS
2018, https://arxiv.org/abs/1810.03292) on the audited model — the median rank correlation of the job's maps with
the trained model's as more and more of the model is randomised, and whether the job passes (its maps no longer
resemble the trained model's once every layer is random: they depend on what the model learned).

A job that does not pass explains something other than the model (an edge detector, its own sampling pattern): its
maps and body-part relevance should not be read as the model's reasons. Pure functions of the summary;
:func:`render_sanity` is the section's render function (``tasks.report.SECTIONS``)."""
from __future__ import annotations

import pandas as pd

SANITY_NOTE = ("Cascading model-parameter randomisation (Adebayo et al. 2018): each job re-explains its first "
               "{targets} on copies of the audited model whose parameterised layers are redrawn at random "
               "from the output down, in {steps} stages; ρ is Spearman's rank correlation of the map (body-part / "
               "region relevance for region jobs, the saliency grid for pixel jobs) with the trained model's, median "
               "over the targets, of the signed and of the absolute values. A job <b>passes</b> when both are at most "
               "{max_correlation:g} with every layer randomised: its explanations depend on what the model learned. "
               "A map that turns constant on the random model counts as ρ = 0. A verdict is <i>unsettled</i> when the "
               "95 % bootstrap interval of a median (over the targets) crosses the limit: more targets, or float "
               "rounding of the model, could flip it (benchmarks/bench_sanity.py measures the check on more).")


def sanity_table(summary: dict) -> pd.DataFrame:
    """One row per job: model, layers randomised at each stage with ρ (signed / absolute), verdict. Empty when the
    summary has no ``sanity`` entry (an evaluate run before the check existed, or ``evaluate.sanity.targets: 0``)."""
    jobs = summary.get("sanity", {}).get("jobs", {})
    rows = []
    for job, entry in jobs.items():
        if entry.get("status") != "checked" or not entry.get("stages"):
            rows.append({"job": job, "model": entry.get("model", ""), "targets": 0, "ρ by randomised layers": "",
                         "ρ all random (signed / abs)": "", "verdict": entry.get("status", "")})
            continue
        stages = entry["stages"]
        path = " → ".join(f"{s['randomised']}/{s['layers']}: {_rho(s['spearman'])}" for s in stages[1:])
        verdict = ("passes" if entry["passes"] else
                   "does not pass: no correlation (every map failed or was constant on the trained model)"
                   if entry.get("spearman_full") is None or entry.get("spearman_abs_full") is None else
                   "does not pass: its maps survive randomising the model")
        if entry.get("settled") is False:
            verdict += f" (unsettled: {_interval(entry)})"
        rows.append({"job": job, "model": entry["model"], "targets": entry["targets"], "ρ by randomised layers": path,
                     "ρ all random (signed / abs)": f"{_rho(entry['spearman_full'])} / "
                                                    f"{_rho(entry['spearman_abs_full'])}",
                     "verdict": verdict})
    return pd.DataFrame(rows)


def passing_jobs(summary: dict) -> set[str]:
    """The jobs whose sanity check passed (checked and passed; not-applicable jobs are not among them)."""
    return {job for job, e in summary.get("sanity", {}).get("jobs", {}).items() if e.get("passes")}


NO_INTERVAL = "no interval (fewer than 2 targets with a correlation)"     # the report's and the gate's words


def _interval(entry: dict) -> str:
    """The medians' 95 % intervals at full randomisation, or why there are none."""
    signed, absolute = entry.get("spearman_full_interval"), entry.get("spearman_abs_full_interval")
    if signed is None or absolute is None:
        return NO_INTERVAL
    return (f"95 % interval of the median {signed[0]:+.2f}…{signed[1]:+.2f} / {absolute[0]:+.2f}…{absolute[1]:+.2f} "
            f"crosses the limit")


def _targets_phrase(cfg: dict, table: pd.DataFrame) -> str:
    """How many targets a job re-explained: the configured first ones, and the extension of unsettled verdicts
    (``evaluate.sanity.max_targets``) when it is on; the table's largest count for a summary that predates them."""
    first, most = cfg.get("targets"), cfg.get("max_targets")
    if first is None:
        return f"{max([int(t) for t in table['targets']] + [0])} targets"
    if most is None or most <= first:
        return f"{first} targets"
    return (f"{first} targets, and up to its first {most} when its first {first} leave the verdict unsettled "
            f"(the table's targets column),")


def _rho(value) -> str:
    return "n/a" if value is None else f"{value:+.2f}"


def render_sanity(ctx):
    """The section (``tasks.report.Rendered``), or None when the evaluate summary has no sanity check."""
    from tasks.report import Rendered, _markdown_table, _plain, _table

    summary = ctx.inputs.evaluate_summary
    table = sanity_table(summary)
    if table.empty:
        return None
    cfg = summary["sanity"]
    note = SANITY_NOTE.format(targets=_targets_phrase(cfg, table), steps=cfg.get("steps"),
                              max_correlation=cfg.get("max_correlation"))
    body = _table(table) + f"<p class='note'>{note}</p>"
    failing = [j for j in table["job"] if j not in passing_jobs(summary)
               and summary["sanity"]["jobs"][j].get("status") == "checked"]
    lines = ["## Sanity checks", "", _markdown_table(table), "", _plain(note)]
    if failing:
        warn = (f"Jobs that did not pass: {', '.join(failing)} — read their maps with care: they change little when "
                f"the model is destroyed.")
        body = f"<p><b>{warn}</b></p>" + body
        lines += ["", warn]
    return Rendered(body, tuple(lines))


__all__ = ["SANITY_NOTE", "passing_jobs", "render_sanity", "sanity_table"]
