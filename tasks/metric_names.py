"""The evaluate stage's metric names, declared once: every row name of the metrics table (``metric`` column), with
its direction (lower / higher is better), unit, substrate and meaning. Evaluate builds names with the functions
here, the summary (``metrics/evaluate.json``), the DVC plots and the report select and read them from here.

Three kinds of names:

* fixed names (:data:`METRICS`): ``deletion_auc``, ``pointing_box``, ``epg_body_chance``, ``n_forward``, ...;
* families (:data:`FAMILIES`), one name per curve step or per other job: ``deletion_curve_03``
  (:func:`curve_point`), ``agree:<other job>`` and ``top_part_match:<other job>`` (:func:`agreement`);
* undefined rows ``undefined:<metric>:<reason>`` of any of them (``tasks.undefined``).

:func:`lookup` resolves any emitted name to its :class:`Metric`. No heavy imports: the report stage reads it.
Adding a metric: declare it here, compute it in ``tasks/evaluate.py``.

Sources: deletion / insertion and their substrates, RISE (Petsiuk et al. 2018, https://arxiv.org/abs/1806.07421);
pointing game (Zhang et al. 2016, https://arxiv.org/abs/1608.00507); energy pointing game, Score-CAM (Wang et al.
2020, https://arxiv.org/abs/1910.01279).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SUBSTRATES = {"deletion": "mean", "insertion": "blur"}    # RISE's reference substrates: what hides pixels
REGIONS = {                                               # regions a saliency map is checked against
    "box": "the target's box (pedestrians); the boxes of the class's objects (classes, label present)",
    "body": "the pedestrian's body parts (box minus context)",
    "objects": "every object's box in the image (classes): saliency off them is background",
}
QUALITY_REGIONS = ("box", "body")                         # in the quality table; "objects" in the classifier figure

AGREE, TOP_PART_MATCH = "agree", "top_part_match"         # the agreement families' stems
Direction = Literal["lower", "higher"]
Table = Literal["quality", "cost", "agreement"]


@dataclass(frozen=True)
class Metric:
    """One metric of the metrics table (a row per explanation and metric).

    name: the row name (fixed metrics) or the family's stem (``deletion_curve``, ``agree``); direction: "lower" /
    "higher" is better, None where neither is (chance levels); unit: of ``value``; substrate: what hides pixels
    (deletion / insertion); table: the headline table it is averaged in (``metrics/evaluate.json`` and the report's
    quality / cost / agreement tables), None if none."""

    name: str
    direction: Direction | None
    unit: str
    description: str
    substrate: str | None = None
    table: Table | None = None

    @property
    def better(self) -> str:
        """``"lower is better"`` / ``"higher is better"``; empty where neither is."""
        return f"{self.direction} is better" if self.direction else ""


def _declare(*metrics: Metric) -> dict[str, Metric]:
    return {m.name: m for m in metrics}


METRICS: dict[str, Metric] = _declare(
    *(Metric(f"{mode}_auc", direction, "target score x fraction of pixels",
             f"area under the target score while the most salient pixels are {verb} ({substrate} substrate), "
             f"pixel fraction 0..1", substrate, "quality")
      for (mode, substrate), direction, verb in zip(SUBSTRATES.items(), ("lower", "higher"), ("hidden", "revealed"))),
    *(m for region in REGIONS for m in (
        Metric(f"pointing_{region}", "higher", "hit (1) / miss (0)",
               f"the saliency maximum lies within evaluate.pointing_tolerance px of {REGIONS[region]}",
               table="quality" if region in QUALITY_REGIONS else None),
        Metric(f"epg_{region}", "higher", "share of positive saliency",
               f"energy pointing game: positive saliency on {REGIONS[region]} over all positive saliency",
               table="quality" if region in QUALITY_REGIONS else None),
        Metric(f"epg_{region}_chance", None, "share of the image's pixels",
               f"EPG of a uniform map: the area share of {REGIONS[region]}",
               table="quality" if region in QUALITY_REGIONS else None))),
    Metric("n_forward", "lower", "forward passes", "model evaluations per explanation (shared ones divided)",
           table="cost"),
)

FAMILIES: dict[str, Metric] = _declare(
    *(Metric(f"{mode}_curve", METRICS[f"{mode}_auc"].direction, "target score",
             f"the {mode} curve: target score at step k of evaluate.steps ({mode}_curve_<kk>)", substrate)
      for mode, substrate in SUBSTRATES.items()),
    Metric(AGREE, None, "Spearman rank correlation (-1..1)",
           "rank agreement of two jobs' body-part relevance (agree:<other job>, on the first job of the pair)",
           table="agreement"),
    Metric(TOP_PART_MATCH, None, "match (1) / no match (0)",
           "two jobs name the same most relevant body part (top_part_match:<other job>)", table="agreement"),
)
PAIR_SEPARATOR = ":"
_CURVE = "_curve"


def names(table: Table) -> tuple[str, ...]:
    """The fixed metrics of a headline table, in declaration order."""
    return tuple(m.name for m in METRICS.values() if m.table == table)


def causal_auc(mode: str) -> str:
    """``deletion_auc`` / ``insertion_auc``. Raises KeyError on another mode."""
    return METRICS[f"{mode}_auc"].name


def curve_point(mode: str, step: int) -> str:
    """``<mode>_curve_<step, 2 digits>``, e.g. ``deletion_curve_03``. Raises KeyError on another mode."""
    return f"{FAMILIES[mode + _CURVE].name}_{step:02d}"


def parse_curve_point(name: str) -> tuple[str, int] | None:
    """``deletion_curve_03`` -> ("deletion", 3); None for any other name."""
    stem, sep, step = name.rpartition("_")
    mode = stem.removesuffix(_CURVE)
    if not sep or not step.isdigit() or mode == stem or stem not in FAMILIES:
        return None
    return mode, int(step)


def pointing(region: str) -> str:
    """``pointing_<region>``. Raises KeyError on an undeclared region."""
    return METRICS[f"pointing_{region}"].name


def epg(region: str) -> str:
    """``epg_<region>``. Raises KeyError on an undeclared region."""
    return METRICS[f"epg_{region}"].name


def epg_chance(region: str) -> str:
    """``epg_<region>_chance``. Raises KeyError on an undeclared region."""
    return METRICS[f"epg_{region}_chance"].name


def agreement(what: str, other_job: str) -> str:
    """``agree:<other job>`` / ``top_part_match:<other job>``. Raises KeyError on another ``what``."""
    if FAMILIES[what].table != "agreement":
        raise KeyError(what)
    return f"{what}{PAIR_SEPARATOR}{other_job}"


def parse_agreement(name: str) -> tuple[str, str] | None:
    """``agree:kernel_shap@parts`` -> ("agree", "kernel_shap@parts"); None for any other name."""
    what, sep, other = name.partition(PAIR_SEPARATOR)
    if not sep or what not in FAMILIES or FAMILIES[what].table != "agreement":
        return None
    return what, other


def lookup(name: str) -> Metric | None:
    """The declared metric of a row name (a fixed name, a curve point or an agreement; not an ``undefined:`` row:
    parse it with ``tasks.undefined.parse_undefined`` first); None if undeclared."""
    if name in METRICS:
        return METRICS[name]
    curve = parse_curve_point(name)
    if curve is not None:
        return FAMILIES[curve[0] + _CURVE]
    pair = parse_agreement(name)
    return None if pair is None else FAMILIES[pair[0]]


def in_table(name: str, *tables: Table) -> bool:
    """Whether a row name is averaged in one of these headline tables."""
    metric = lookup(name)
    return metric is not None and metric.table in tables
