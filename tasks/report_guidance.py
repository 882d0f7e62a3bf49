"""The report's "Model guidance" section, from the guide stage's outputs (``flows.guide``; Rao et al., ICCV 2023,
https://arxiv.org/abs/2303.11932): the original classifier vs the one fine-tuned with the energy loss —

* the spurious-cue probe, P(label | no label, cue) and P(label | no label, no cue), over the paired held-out scenes
  with bootstrap 95 % intervals, and on the audited images (infer's probe);
* the RISE energy pointing game inside the label's boxes (an explainer the guidance did not train on), audited val
  images, with intervals and the chance level;
* mean and per-class F1 on the audited val split, on held-out scenes of the same generator and on the decorrelated
  set (cue independent of the label), and the label's F1 gap between the last two;
* side-by-side RISE overlays of the same audited scenes (the label present with the cue; the label absent with the
  cue, where the original's false alarms come from).

Pure functions of loaded tables: :func:`load_guidance` reads them (None when the guide stage has not run),
:func:`guidance_section` returns the HTML fragment and the summary's markdown lines, :func:`render_guidance` is the
``tasks.report`` section render function (it reads ``ctx.inputs.guidance``).
"""
from __future__ import annotations

import html
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

GUIDANCE_OVERLAYS = 3          # scenes per overlay row (each shown for both models)


@dataclass
class GuidanceInputs:
    """What the section reads: ``metrics`` (metrics/guide.json), the RISE (classes jobs') explanations of the
    original (``data/explain``) and of the guided model (``data/guide/explain``), the explain targets of each (for
    labels and cues), the audited images (image_id, uri) and both classifiers' predictions on them (model_id,
    image_id, category, score: the infer tables)."""

    metrics: dict
    original: pd.DataFrame
    guided: pd.DataFrame
    targets: pd.DataFrame
    images: pd.DataFrame
    predictions: pd.DataFrame


def load_guidance(params) -> GuidanceInputs | None:
    """The guide stage's outputs for ``params`` (a ``tasks.params.Params``), or None when ``metrics/guide.json`` is
    missing (the stage has not run, or there is no guide section)."""
    from tasks import stages
    from tasks.guide_outputs import guide

    g = getattr(params, "guide", None)
    if g is None:
        return None
    out = guide(params)
    if not out.metrics.is_file():
        return None
    metrics = json.loads(out.metrics.read_text())
    audit = out.audit_params(params)
    jobs = metrics.get("jobs", [])
    cols = ["image_id", "target_id", "job", "saliency", "saliency_height", "saliency_width"]
    exp_o, exp_g = stages.explain(params), stages.explain(audit)
    orig = exp_o.read("explanations").select(cols).to_pandas()
    guided = exp_g.read("explanations").select(cols).to_pandas()
    tcols = ["image_id", "target_id", "category", "label_present", "spurious_cue"]
    pcols = ["model_id", "image_id", "category", "score"]
    predictions = pd.concat([stages.infer(p).read("predictions").select(pcols).to_pandas() for p in (params, audit)])
    return GuidanceInputs(metrics, orig[orig["job"].isin(jobs)], guided[guided["job"].isin(jobs)],
                          exp_o.read("targets").select(tcols).to_pandas(),
                          stages.pull(params).read("images").select(["image_id", "uri"]).to_pandas(),
                          predictions[predictions["model_id"].isin([metrics["original"], metrics["guided"]])])


def _ci(d: dict | None, fmt: str = "{:.2f}") -> str:
    if not d or d.get("mean") is None:
        return "n/a"
    lo, hi = d.get("low"), d.get("high")
    if lo is None or hi is None or not np.isfinite(lo) or not np.isfinite(hi):
        return fmt.format(d["mean"])
    return f"{fmt.format(d['mean'])} [{fmt.format(lo)}, {fmt.format(hi)}]"


def _f(v, fmt: str = "{:.3f}") -> str:
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else fmt.format(v)


def probe_table(m: dict) -> pd.DataFrame:
    """Rows original / guided: the held-out probe's two arms and their paired difference (with intervals) and the
    audited images' probe (infer's, no interval: few images carry the cue without the label)."""
    label, rows = m["label"], []
    for role in ("original", "guided"):
        mid = m[role]
        p = m["models"][mid]["probe"]
        audited = (m.get("audited_probe") or {}).get(mid) or {}
        rows.append({"model": f"{role} ({mid})",
                     f"P({label} | no {label}, cue)": _ci(p["with_cue"]),
                     f"P({label} | no {label}, no cue)": _ci(p["without_cue"]),
                     "difference (paired)": _ci(p["difference"]),
                     "audited images: cue / no cue": (f"{_f(audited.get(f'p_{label}_absent_with_cue'), '{:.2f}')} / "
                                                      f"{_f(audited.get(f'p_{label}_absent_without_cue'), '{:.2f}')}")})
    return pd.DataFrame(rows)


def f1_table(m: dict) -> pd.DataFrame:
    """Rows (model, data set): mean F1 and each class's F1; the data sets are the audited val split, the held-out
    in-distribution scenes and the decorrelated set."""
    rows = []
    for role in ("original", "guided"):
        mid = m[role]
        sets = {"audited val": (m.get("audited") or {}).get(mid, {}).get("val"),
                "held-out (same generator)": m["models"][mid]["in_distribution"],
                "decorrelated (cue independent)": m["models"][mid]["decorrelated"]}
        for name, s in sets.items():
            if not s:
                continue
            rows.append({"model": role, "scenes": f"{name}, {s.get('images', '?')}", "mean F1": s["mean_f1"],
                         **{c: v for c, v in s["f1"].items()}})
    return pd.DataFrame(rows)


def summary_lines(m: dict) -> list[str]:
    """The section's findings in words (HTML-free): probe, EPG, F1, F1 gap."""
    label, o, g = m["label"], m["original"], m["guided"]
    mo, mg = m["models"][o], m["models"][g]
    t = m.get("training", {})
    cfg = t.get("config", {})
    lines = []
    if t.get("source") == "trained":
        lines.append(f"Fine-tuned with BCE + {cfg.get('lam')} x {cfg.get('loss')} loss on {cfg.get('attribution')} "
                     f"({cfg.get('layer') or 'input'}), boxes for {t.get('annotated_images')} of "
                     f"{t.get('train_images')} training scenes ({cfg.get('fraction', 0) * 100:g} %), "
                     f"{t.get('epochs_run')} epochs.")
    lines.append(f"Spurious-cue probe over {m['sets']['probe_scenes_per_arm']} held-out scenes without a {label} "
                 f"per arm: P({label} | cue) {_ci(mo['probe']['with_cue'])} -> {_ci(mg['probe']['with_cue'])}, "
                 f"without the cue {_ci(mo['probe']['without_cue'])} -> {_ci(mg['probe']['without_cue'])}.")
    for job, v in (m.get("rise_epg", {}).get(o) or {}).items():
        w = (m.get("rise_epg", {}).get(g) or {}).get(job, {})
        lines.append(f"{job} EPG inside {label} boxes (audited val, n = {v.get('n')}; chance {_f(v.get('chance'))}): "
                     f"{_ci(v)} -> {_ci(w)}.")
    for name, key in (("held-out", "in_distribution"), ("decorrelated", "decorrelated")):
        lines.append(f"Mean F1 {name}: {_f(mo[key]['mean_f1'])} -> {_f(mg[key]['mean_f1'])}; {label} F1 "
                     f"{_f(mo[key]['f1'][label])} -> {_f(mg[key]['f1'][label])}.")
    gap = f"{label}_f1_gap"
    lines.append(f"{label} F1 on the decorrelated set minus held-out: original {_f(mo[gap], '{:+.3f}')}, guided "
                 f"{_f(mg[gap], '{:+.3f}')}.")
    return lines


def overlay_keys(inp: GuidanceInputs, label: str, per_row: int) -> dict[str, list[str]]:
    """Row title -> audited image ids explained for both models: the first ``per_row`` (by id) with the label and
    the cue, and the first without the label but with the cue."""
    target = f"class:{label}"
    both = set(inp.original.loc[inp.original["target_id"] == target, "image_id"]) & set(
        inp.guided.loc[inp.guided["target_id"] == target, "image_id"])
    t = inp.targets[(inp.targets["target_id"] == target) & inp.targets["image_id"].isin(both)].drop_duplicates(
        "image_id").sort_values("image_id")
    cue = t["spurious_cue"] == True  # noqa: E712
    return {f"{label} present, cue present": list(t[(t["label_present"] == True) & cue]["image_id"][:per_row]),  # noqa: E712
            f"{label} absent, cue present": list(t[(t["label_present"] == False) & cue]["image_id"][:per_row])}  # noqa: E712


def _prob(predictions: pd.DataFrame, model_id: str, image_id: str, label: str) -> str:
    p = predictions[(predictions["model_id"] == model_id) & (predictions["image_id"] == image_id)
                    & (predictions["category"] == label)]["score"]
    return f" · P({label}) {float(p.iloc[0]):.2f}" if len(p) else ""


def overlays(inp: GuidanceInputs, label: str, per_row: int) -> str:
    """Side-by-side RISE overlays (original | guided) of the same scenes, rows of :func:`overlay_keys`."""
    from detection.datasets.imageio import ImageError, load_rgb
    from tasks.report import _img, overlay

    if per_row == 0:
        return ""
    target = f"class:{label}"
    uris = inp.images.set_index("image_id")["uri"]
    keyed = {role: df[df["target_id"] == target].set_index("image_id")
             for role, df in (("original", inp.original), ("guided", inp.guided))}
    out = []
    for title, ids in overlay_keys(inp, label, per_row).items():
        figs = []
        for image_id in ids:
            try:
                image = load_rgb(uris[image_id])
            except (ImageError, KeyError):
                continue
            for role in ("original", "guided"):
                e = keyed[role].loc[image_id]
                sal = np.asarray(e["saliency"], np.float32).reshape(e["saliency_height"], e["saliency_width"])
                caption = f"{image_id} · {role}{_prob(inp.predictions, inp.metrics[role], image_id, label)}"
                figs.append(f"<figure>{_img(overlay(image, sal, None, caption), caption)}"
                            f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        if figs:
            out.append(f"<h3>{html.escape(title)}</h3><div class='gallery'>{''.join(figs)}</div>")
    return "".join(out)


GUIDANCE_NOTE = ("Guidance (Rao et al. 2023): the classifier is fine-tuned with BCE + λ · energy loss, 1 − the share "
                 "of its positive attribution inside the boxes of a sampled ground-truth class, on the training "
                 "scenes (never the audited ones). The probe and the F1 columns other than 'audited val' use "
                 "held-out scenes rendered from seeds neither training nor the audit used; the decorrelated set draws "
                 "the cue independently of the label. Probe arms are the same scenes rendered with and without the "
                 "cue; intervals are bootstrap BCa 95 %. EPG is RISE's (an explainer the guidance did not train on) "
                 "on the audited val images with the label, against the label's boxes.")


def guidance_section(inp: GuidanceInputs, per_row: int = GUIDANCE_OVERLAYS) -> tuple[str, tuple[str, ...]]:
    """The section's HTML body and its markdown summary lines."""
    from tasks.report import _table

    m = inp.metrics
    facts = summary_lines(m)
    body = "<ul class='findings'>" + "".join(f"<li>{html.escape(f)}</li>" for f in facts) + "</ul>"
    body += _table(probe_table(m)) + _table(f1_table(m))
    epg_rows = [{"job": job, "model": role, "EPG in boxes": _ci(v), "n": v.get("n"), "chance": v.get("chance")}
                for role in ("original", "guided") for job, v in (m.get("rise_epg", {}).get(m[role]) or {}).items()]
    if epg_rows:
        body += _table(pd.DataFrame(epg_rows))
    body += f"<p class='note'>{html.escape(GUIDANCE_NOTE)}</p>"
    body += overlays(inp, m["label"], per_row)
    md = ("## Model guidance", "", *[f"- {f}" for f in facts])
    return body, md


def render_guidance(ctx):
    """``tasks.report`` section render function: the section from ``ctx.inputs.guidance`` (None: left out)."""
    from tasks.report import Rendered

    inp = getattr(ctx.inputs, "guidance", None)
    if inp is None:
        return None
    body, md = guidance_section(inp, min(ctx.per_row, GUIDANCE_OVERLAYS) if ctx.per_row else GUIDANCE_OVERLAYS)
    return Rendered(body, md)


__all__ = ["GuidanceInputs", "guidance_section", "load_guidance", "render_guidance"]
