"""The report's "Sufficient part sets" section, from the explain stage's ``sag`` table (a ``sag`` job:
:class:`explainers.sag.Sag`, structured attention graphs after Shitole et al. 2021, https://arxiv.org/abs/2011.06733):

* how often each of the most common **minimal sufficient part sets** (a set of parts that, shown alone with every
  other part hidden, keeps ≥ the threshold, 90 %, of the pedestrian's score, and none of whose parts can go) is one
  of a found pedestrian's, overall and by pedestrian height and occlusion bucket, in words ("head + torso alone
  keeps ≥ 90 % of the score for 62 % of found pedestrians") and as a table;
* the size of each pedestrian's smallest sufficient set, by occlusion;
* a small DAG per gallery pedestrian (matplotlib only): its diverse roots and their one-part deletions, each node
  with its part names and the share of the score it keeps, each edge with the part removed and the score it drops.

A set counts for a pedestrian when the beam search found it (``element`` 'root'): the search keeps at most about
10 roots and may stop at its budget (``status`` 'budget'), so the shares are lower bounds on how often the set is
minimal sufficient. Pure functions of the tables; :func:`render_sag` is the section's render function
(``tasks.report.SECTIONS``)."""
from __future__ import annotations

import html

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from detection.body import BODY_PARTS, PART_GROUPS  # noqa: E402
from detection.evaluation import OCCLUSION_BUCKETS, SIZE_BUCKETS  # noqa: E402
from tasks.params import job_name  # noqa: E402

SAG_SETS = 5                  # most common minimal sufficient sets in the table
SAG_SENTENCES = 3             # ... and in words
SAG_LEVELS = 3                # DAG figure: deletion levels drawn below the largest root (down to the smallest root)
SAG_NODES_PER_LEVEL = 5       # ... and nodes per level (roots always drawn; the rest by score kept)
_ORDER = {p: i for i, p in enumerate(dict.fromkeys([*BODY_PARTS, *(n for g in PART_GROUPS.values() for n in g),
                                                    "context"]))}
SAG_NOTE = ("A <i>minimal sufficient part set</i> keeps ≥ {threshold:.0f} % of the pedestrian's score when shown "
            "alone (every other part hidden as the job hides them), and loses that when any one of its parts is "
            "hidden too: structured attention graphs (Shitole et al. 2021), found by beam search (width {width}, "
            "{successors} successors) ranked by BayesShapley values. A set counts for a pedestrian when the search "
            "found it among that pedestrian's sets: the search stops after about {max_roots} sets or at its budget, "
            "so every share is a lower bound. Buckets: pedestrian height (px) and ground-truth occlusion.")


NOTHING = "(nothing)"          # the label of the empty set: the score stays when every part is hidden


def set_label(parts) -> str:
    """'head + torso' for a part set, in body order (parts10, groupings, context); :data:`NOTHING` for the empty set
    (explainers.sag's one root when hiding every part keeps the threshold)."""
    if not len(parts):
        return NOTHING
    return " + ".join(p.replace("_", " ") for p in sorted(parts, key=lambda p: (_ORDER.get(p, len(_ORDER)), p)))


def _bucket(values: pd.Series, buckets: dict[str, tuple[float, float]]) -> pd.Series:
    out = pd.Series([None] * len(values), index=values.index, dtype=object)
    for name, (lo, hi) in buckets.items():
        out[(values >= lo) & (values < hi)] = name
    return out


def sag_targets(sag: pd.DataFrame, targets: pd.DataFrame, job: str) -> pd.DataFrame:
    """One row per target of ``job`` in the ``sag`` table: image_id, target_id, kind, status, full_score, ``roots``
    (the found minimal sufficient sets, frozensets of part names), ``smallest`` (parts in the smallest, NaN when
    none), with the target's found / height / occlusion / score and its ``size`` and ``occlusion_bucket``."""
    rows = sag[sag["job"] == job]
    keys = ["image_id", "target_id"]
    per = rows[rows["element"] == "target"][[*keys, "kind", "status", "full_score"]].drop_duplicates(keys)
    roots = rows[rows["element"] == "root"]
    found_sets = roots.assign(set=roots["parts"].map(frozenset)).groupby(keys)["set"].agg(list)
    per = per.merge(found_sets.rename("roots").reset_index(), on=keys, how="left")
    per["roots"] = per["roots"].map(lambda r: r if isinstance(r, list) else [])
    per["smallest"] = per["roots"].map(lambda r: min(map(len, r)) if r else np.nan)
    cols = [c for c in ("found", "height", "occlusion", "score") if c in targets.columns]
    per = per.merge(targets[[*keys, *cols]].drop_duplicates(keys), on=keys, how="left")
    per["size"] = _bucket(per["height"].astype(float), SIZE_BUCKETS)
    per["occlusion_bucket"] = _bucket(per["occlusion"].astype(float), OCCLUSION_BUCKETS)
    return per


def population(per: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """(the targets the shares are over, their name): found pedestrians (true positives for detections) where found
    is known, else every explained pedestrian (no ground truth)."""
    known = per["found"].notna() if "found" in per else pd.Series(False, index=per.index)
    if known.any():
        return per[per["found"] == True], "found pedestrians"  # noqa: E712
    return per, "explained pedestrians"


def common_sets(pop: pd.DataFrame, limit: int = SAG_SETS) -> list[frozenset]:
    """The ``limit`` part sets that are a found minimal sufficient set of the most targets of ``pop`` (ties: fewer
    parts, then the label)."""
    counts: dict[frozenset, int] = {}
    for roots in pop["roots"]:
        for s in set(roots):
            counts[s] = counts.get(s, 0) + 1
    return sorted(counts, key=lambda s: (-counts[s], len(s), set_label(s)))[:limit]


def _share(has: pd.Series) -> str:
    return f"{has.mean() * 100:.0f} %" if len(has) else "–"


def sets_table(pop: pd.DataFrame, sets: list[frozenset]) -> pd.DataFrame:
    """Per common set: its parts, and the share of ``pop`` for which it is a found minimal sufficient set, overall
    and per height / occlusion bucket that has targets (column 'bucket (n)')."""
    columns = [("all", pop.index)]
    for col, buckets in (("size", SIZE_BUCKETS), ("occlusion_bucket", OCCLUSION_BUCKETS)):
        prefix = "occl. " if col == "occlusion_bucket" else "h "
        columns += [(f"{prefix}{b}", pop.index[pop[col] == b]) for b in buckets if (pop[col] == b).any()]
    rows = []
    for s in sets:
        has = pop["roots"].map(lambda roots, s=s: s in roots)
        rows.append({"part set": set_label(s), "parts": len(s),
                     **{f"{name} (n={len(idx)})": _share(has.loc[idx]) for name, idx in columns}})
    return pd.DataFrame(rows)


def smallest_table(pop: pd.DataFrame) -> pd.DataFrame:
    """Share of ``pop`` whose smallest found sufficient set has 1, 2, 3 or ≥ 4 parts (or none was found: budget
    spent or a flat score), overall and per occlusion bucket; a '0 parts' column first when some target's one root
    is the empty set (hiding every part keeps the threshold)."""
    groups = [("all", pop)] + [(f"occl. {b}", pop[pop["occlusion_bucket"] == b]) for b in OCCLUSION_BUCKETS
                               if (pop["occlusion_bucket"] == b).any()]
    zero = bool((pop["smallest"] == 0).any())
    rows = []
    for name, g in groups:
        k = g["smallest"]
        rows.append({"pedestrians": f"{name} (n={len(g)})", **({"0 parts": _share(k == 0)} if zero else {}),
                     "1 part": _share(k == 1), "2 parts": _share(k == 2), "3 parts": _share(k == 3),
                     "≥ 4 parts": _share(k >= 4), "none found": _share(k.isna())})
    return pd.DataFrame(rows)


def sag_sentences(pop: pd.DataFrame, who: str, sets: list[frozenset], threshold: float,
                  limit: int = SAG_SENTENCES) -> list[str]:
    """In words (HTML): each of the ``limit`` most common sets and the share of ``pop`` it keeps ≥ ``threshold`` of
    the score for (with the occlusion buckets' shares where more than one has targets), then the median size of the
    smallest set and how many targets have none."""
    if pop.empty:
        return [f"No {who} have a structured attention graph."]
    out = []
    occl = [b for b in OCCLUSION_BUCKETS if (pop["occlusion_bucket"] == b).any()]
    for s in sets[:limit]:
        has = pop["roots"].map(lambda roots, s=s: s in roots)
        keeps = (f"<b>{html.escape(set_label(s))}</b> alone keeps ≥ {threshold * 100:.0f} % of the score" if s else
                 f"With every part hidden the score stays ≥ {threshold * 100:.0f} % of the full score")
        text = f"{keeps} for {has.mean() * 100:.0f} % of {who} ({int(has.sum())} of {len(pop)})"
        if len(occl) > 1:
            text += " — by occlusion: " + ", ".join(
                f"{b} {has[pop['occlusion_bucket'] == b].mean() * 100:.0f} %" for b in occl)
        out.append(text + ".")
    sizes = pop["smallest"].dropna()
    if len(sizes):
        out.append(f"The smallest sufficient part set has a median of {sizes.median():g} part"
                   f"{'s' if sizes.median() != 1 else ''} (over the {len(sizes)} {who} with one found).")
    missing = int(pop["smallest"].isna().sum())
    if missing:
        why = pop.loc[pop["smallest"].isna(), "status"].value_counts().to_dict()
        out.append(f"{missing} of {len(pop)} {who} have no sufficient set found "
                   f"({', '.join(f'{v} {k}' for k, v in sorted(why.items()))}; 'budget': the search ran out of "
                   f"forwards, 'flat': the score does not drop when every part is hidden, or is not positive).")
    return out


# ---------------------------------------------------------------------------------------------------- DAG figure
def dag_layout(rows: pd.DataFrame, levels: int = SAG_LEVELS,
               per_level: int = SAG_NODES_PER_LEVEL) -> tuple[dict[frozenset, tuple[float, float, float]], list]:
    """Nodes {set: (x, y, share)} and edges [(parent, child, removed, drop_share)] of one target's graph (its ``sag``
    rows) to draw: every diverse root and the deletions from them, ``levels`` set sizes below the largest root or
    down to the smallest root when that is lower (so a small root is never left out), at most ``per_level`` nodes
    per size besides the roots (roots first, then by share). y = the set's size; x spreads a level over [0, 1]."""
    roots = rows[(rows["element"] == "root") & (rows["diverse"] == True)]  # noqa: E712
    if roots.empty:
        return {}, []
    edges = rows[rows["element"] == "edge"]
    share: dict[frozenset, float] = {frozenset(p): float(s) for p, s in zip(roots["parts"], roots["share"])}
    root_sets = set(share)
    for p, s, c, cs in zip(edges["parts"], edges["share"], edges["child"], edges["child_share"]):
        share.setdefault(frozenset(p), float(s))
        share.setdefault(frozenset(c), float(cs))
    top = max(len(s) for s in root_sets)
    bottom = max(0, min(top - levels, min(len(s) for s in root_sets)))
    kept: dict[frozenset, tuple[float, float, float]] = {}
    for size in range(top, bottom - 1, -1):
        level = sorted((s for s in share if len(s) == size), key=lambda s: (s not in root_sets, -share[s],
                                                                            set_label(s)))
        level = level[:max(per_level, sum(s in root_sets for s in level))]
        for i, s in enumerate(level):
            kept[s] = ((i + 0.5) / len(level), float(size), share[s])
    kept_edges = [(frozenset(p), frozenset(c), r, float(d)) for p, c, r, d in
                  zip(edges["parts"], edges["child"], edges["removed"], edges["drop_share"])
                  if frozenset(p) in kept and frozenset(c) in kept]
    return kept, kept_edges


def fig_sag_dag(rows: pd.DataFrame, title: str) -> str | None:
    """One target's graph as a PNG data URL (see :func:`dag_layout`); None when it has no root."""
    from tasks.report import _png

    nodes, edges = dag_layout(rows)
    if not nodes:
        return None
    sizes = sorted({y for _, y, _ in nodes.values()})
    widest = max(sum(1 for _, y, _ in nodes.values() if y == size) for size in sizes)
    fig, ax = plt.subplots(figsize=(max(3.2, 1.9 * widest), 0.6 + 1.1 * len(sizes)))
    cmap = plt.get_cmap("viridis")
    for parent, child, removed, drop in edges:
        (x0, y0, _), (x1, y1, _) = nodes[parent], nodes[child]
        ax.annotate("", xy=(x1, y1 + 0.22), xytext=(x0, y0 - 0.22),
                    arrowprops={"arrowstyle": "->", "color": "#8a94a6", "lw": 0.8})
        ax.text((x0 + x1) / 2, (y0 + y1) / 2, f"−{removed.replace('_', ' ')}\n−{drop * 100:.0f} %", fontsize=6,
                ha="center", va="center", color="#5b6577",
                bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8})
    for s, (x, y, share) in nodes.items():
        label = set_label(s).replace(" + ", "\n")
        ax.text(x, y, f"{label}\n{share * 100:.0f} %", fontsize=6.5, ha="center", va="center",
                color="white" if share < 0.7 else "black",
                bbox={"boxstyle": "round,pad=0.3", "fc": cmap(float(np.clip(share, 0, 1))), "ec": "#333333",
                      "lw": 0.6})
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(min(sizes) - 0.6, max(sizes) + 0.6)
    ax.axis("off")
    ax.set_title(title, fontsize=8)
    return _png(fig)


def dag_targets(inp, main_job: str | None, per_target: pd.DataFrame, per_row: int) -> list[tuple[str, str]]:
    """(image_id, target_id) of the pedestrians to draw: the gallery's (``tasks.report.gallery_rows`` of the main
    job) that have a found sufficient set, in gallery order, else the tallest found ones; at most ``per_row``."""
    from tasks.report import gallery_rows

    if per_row == 0:
        return []
    with_roots = per_target[per_target["roots"].map(len) > 0]
    if with_roots.empty:
        return []
    keys: list[tuple[str, str]] = []
    if main_job is not None:
        index = pd.MultiIndex.from_frame(with_roots[["image_id", "target_id"]])
        for row in gallery_rows(inp, main_job, per_row, index).values():
            keys += [k for k in row if k not in keys]
    if not keys:
        tallest = with_roots.sort_values(["found", "height"], ascending=False, na_position="last")
        keys = list(zip(tallest["image_id"], tallest["target_id"]))
    return keys[:per_row]


def render_sag(ctx):
    """The section (``tasks.report.Rendered``), or None without ``sag`` rows."""
    from tasks.report import Rendered, _img, _markdown_table, _plain, _table, status_word

    inp = ctx.inputs
    sag = getattr(inp, "sag", None)
    if sag is None or sag.empty:
        return None
    body, md = "", ["## Sufficient part sets", ""]
    for job in dict.fromkeys(sag["job"]):
        per = sag_targets(sag, inp.targets, job)
        pop, who = population(per)
        rows = sag[sag["job"] == job]
        options = rows[rows["element"] == "target"]
        threshold = float(options["threshold"].median()) if len(options) else 0.9
        sets = common_sets(pop)
        facts = sag_sentences(pop, who, sets, threshold)
        body += (f"<h3>{html.escape(job)}</h3>" if sag["job"].nunique() > 1 else "")
        body += "<ul class='findings'>" + "".join(f"<li>{f}</li>" for f in facts) + "</ul>"
        md += [f"- {_plain(f)}" for f in facts]
        if sets:
            table = sets_table(pop, sets)
            body += _table(table)
            md += ["", _markdown_table(table)]
        if len(pop):
            body += _table(smallest_table(pop))
        explained = explain_options(inp, job)
        body += f"<p class='note'>{SAG_NOTE.format(threshold=threshold * 100, **explained)}</p>"
        figs = []
        targets = inp.targets.drop_duplicates(["image_id", "target_id"]).set_index(["image_id", "target_id"])
        full = per.set_index(["image_id", "target_id"])["full_score"]
        for key in dag_targets(inp, ctx.main_job, per, ctx.per_row):
            status = status_word(targets.loc[key]) if key in targets.index else ""
            title = f"{key[1]} · {status}full score {full.loc[key]:.2f}"
            fig = fig_sag_dag(rows[(rows["image_id"] == key[0]) & (rows["target_id"] == key[1])], title)
            if fig is not None:
                caption = (f"{key[1]}: minimal sufficient part sets (top) and one-part deletions, share of the score "
                           f"kept in each box, part removed and score dropped on each arrow")
                figs.append(f"<figure>{_img(fig, caption)}<figcaption>{html.escape(caption)}</figcaption></figure>")
        if figs:
            body += "<div class='gallery'>" + "".join(figs) + "</div>"
    return Rendered(body, tuple(md))


def explain_options(inp, job: str) -> dict:
    """The sag job's search options (width, successors, max_roots) from the explain params, defaults where unset."""
    defaults = {"width": 3, "successors": 15, "max_roots": 10}
    for j in inp.explain_params.get("jobs", []):
        if job_name(j) == job:
            return {k: (j.get("options") or {}).get(k, v) for k, v in defaults.items()}
    return defaults


__all__ = ["NOTHING", "common_sets", "dag_layout", "fig_sag_dag", "population", "render_sag", "sag_sentences",
           "sag_targets", "set_label", "sets_table", "smallest_table"]
