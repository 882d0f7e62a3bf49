"""Compare two audits (A: the reference, B: the candidate): what changed between model or dataset versions, and
whether a release gate (``--fail-on``) should stop B. Pure computation over two loaded audits
(:class:`Audit`); loading them from run directories or git revisions is ``flows/compare.py``'s, the HTML
``tasks/report_compare.py``'s.

What is compared, and where each number comes from:

* **metrics files** (``metrics/infer.json``, ``metrics/evaluate.json``): every value, flattened and diffed by DVC's
  own code (:func:`dvc.utils.diff.diff`, what ``dvc metrics diff --all --json`` prints), so the keys and numbers
  of the compare JSON are the ones ``dvc metrics diff A B`` shows;
* **detector** AP / AP50 / AP50 reasonable and recall by size / occlusion (``infer.json``, the val split when both
  audits have it, else all images) and MR⁻² per CityPersons subset (``evaluate.json`` ``where_it_fails.mr2``);
* **spurious cue** reliance of the classifier: the probe ``P(label | label absent, cue) − P(label | label absent, no
  cue)`` (``infer.json`` ``<classifier>.spurious``), the report's number (its verdict threshold
  :data:`tasks.report.CUE_RELIANCE`);
* **explanation quality** per kind and job: deletion / insertion AUC, pointing game, EPG (``evaluate.json``
  ``by_kind``), with their direction from :mod:`tasks.metric_names`;
* **sanity** verdict per job (``evaluate.json`` ``sanity.jobs``);
* **found / missed** ground-truth pedestrians (the explain targets of kind ``persons``, the one found / missed
  rule): which flipped, by id;
* **body-part relevance shift**: per job present in both audits, per part and per bucket (overall, person height
  :data:`detection.evaluation.SIZE_BUCKETS`, occlusion :data:`detection.evaluation.OCCLUSION_BUCKETS`), the mean
  share of |relevance| (:func:`tasks.report.part_shares`, the report's and ``plots/part_relevance.csv``'s number)
  in A and in B, the shift B − A and its bootstrap interval (:func:`shift_interval`).

The shift interval resamples *images*, as the report's intervals do (``tasks.report_intervals``): an image's
pedestrians share its scene and detector pass. Images are paired across the audits by ``image_id`` (when both
audits' images tables give a ``sha256`` and it differs, the two images are different units): each image ``i`` of
the union of both audits' images contributes ``z_i^B − z_i^A``, the audits' linearised ratio values
(:func:`tasks.report_intervals.linearised`, zero pedestrians where an audit lacks the image), whose mean is exactly
``R_B − R_A``; :func:`detection.slices.mean_interval` gives its BCa interval. Paired images (the same dataset, a
new model) cancel the between-image variation; disjoint ones (a new dataset) give the two-sample variance to
first order. Every cell gets a marginal 95 % interval (shown); the overall cells (job × part, the ones the
``part_shift`` gate reads) also get a simultaneous one, Bonferroni over those cells, so that a release gate over
tens of cells does not fire on chance alone.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from detection.evaluation import OCCLUSION_BUCKETS, SIZE_BUCKETS
from detection.slices import mean_interval
from tasks.bootstrap import CONFIDENCE, N_BOOT, SEED, cell_seed
from tasks.metric_names import METRICS, names
from tasks.report import CUE_RELIANCE, PART_ORDER, part_shares
from tasks.report_intervals import MIN_UNITS, linearised
from tasks.report_sanity import NO_INTERVAL

BREAKDOWNS: dict[str, tuple[str, dict]] = {   # breakdown -> (column of tasks.report.part_shares, its buckets)
    "all": ("all", {"all": None}),
    "size": ("size", SIZE_BUCKETS),
    "occlusion": ("occlusion_bucket", OCCLUSION_BUCKETS),
}
DETECTOR_METRICS = ("ap50", "ap", "ap50_reasonable")            # infer.json, higher is better; gated by ap_drop
RECALL_GROUPS = ("recall_by_size", "recall_by_occlusion")       # infer.json, shown, not gated
QUALITY_METRICS = names("quality")
MAX_SIM_BOOT = 20_000         # resamples of a simultaneous interval (its tails are Bonferroni-thin)
SIM_TAIL = 20                 # ... enough that each tail holds this many resamples, up to MAX_SIM_BOOT
CELL_COLUMNS = ["job", "breakdown", "bucket", "part", "mean_a", "mean_b", "shift", "low", "high", "n_a", "n_b",
                "images_a", "images_b", "paired_images", "significant", "sim_low", "sim_high", "sim_significant"]


class CompareError(ValueError):
    """Two audits cannot be compared as asked (a missing input, an unknown gate); the message names it."""


# ---------------------------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class Audit:
    """One audit, loaded (``flows.compare.load_audit``).

    label: how the audit is named in messages (a path or a revision); images: ``image_id`` and ``sha256`` of the
    pulled images (may be empty: no pairing by content then); targets / explanations: the explain stage's tables
    (explanations need ``image_id, target_id, kind, job, method, region_names, relevance``); metric_files: DVC
    metrics file path (as in params.yaml, e.g. ``metrics/infer.json``) -> its parsed JSON; infer_file /
    evaluate_file: which of them are infer's and evaluate's; detector_id / classifier_id: the audited models'
    ids (params: explain's detector, infer.classifier); part_plot: ``plots/part_relevance.csv`` (job, part, share)
    when the run has it."""

    label: str
    images: pd.DataFrame
    targets: pd.DataFrame
    explanations: pd.DataFrame
    metric_files: dict[str, dict]
    infer_file: str
    evaluate_file: str
    detector_id: str
    classifier_id: str | None = None
    part_plot: pd.DataFrame | None = None

    @property
    def infer_metrics(self) -> dict:
        return self.metric_files.get(self.infer_file) or {}

    @property
    def evaluate_summary(self) -> dict:
        return self.metric_files.get(self.evaluate_file) or {}


# ---------------------------------------------------------------------------------------------------- gates
GATES: dict[str, str] = {
    "part_shift": "a body part's overall mean share of |relevance| (a job in both audits) moved: 'ci' = its "
                  "simultaneous 95 % interval excludes 0; a number X = that, and |shift| > X",
    "cue_reliance_up": "the classifier's spurious-cue reliance P(label | absent, cue) - P(label | absent, no cue) "
                       "rose by more than X",
    "ap_drop": "the detector's AP50, AP or AP50 reasonable (infer.json, val split, else all images) fell by more "
               "than X",
    "mr2_up": "the detector's MR-2 on a CityPersons subset (evaluate.json where_it_fails.mr2) rose by more than X",
    "quality_drop": "a job's explanation quality (evaluate.json: deletion AUC up, insertion AUC / pointing game / "
                    "EPG down) got worse by more than X",
    "new_misses": "more than N ground-truth pedestrians found in A are missed in B",
    "sanity": "'regress': a job that passed the sanity check in A does not in B; 'fail': any job checked in B "
              "does not pass",
}
WORD_VALUES = {"part_shift": ("ci",), "sanity": ("regress", "fail")}
GATE_GRAMMAR = ("--fail-on NAME=VALUE (repeatable; each NAME once). VALUE: a number >= 0 (N: a whole number), or "
                "the word shown. Names:\n" + "\n".join(f"  {n}: {d}" for n, d in GATES.items()))


@dataclass(frozen=True)
class Gate:
    """One release threshold: ``name`` (a key of :data:`GATES`), ``value`` (a number, or a word of
    :data:`WORD_VALUES`) and the text it was given as."""

    name: str
    value: float | str
    spec: str


def parse_gates(specs: Sequence[str]) -> list[Gate]:
    """``["cue_reliance_up=0.1", "part_shift=ci"]`` -> gates. Raises :class:`CompareError` naming the spec: no
    ``=``, an unknown name (the known ones listed), a value that is neither a number >= 0 nor a word the name
    takes, a fractional ``new_misses``, a name given twice."""
    gates: dict[str, Gate] = {}
    for spec in specs:
        name, sep, raw = (s.strip() for s in spec.partition("="))
        if not sep or not name or not raw:
            raise CompareError(f"--fail-on {spec!r}: expected NAME=VALUE.\n{GATE_GRAMMAR}")
        if name not in GATES:
            raise CompareError(f"--fail-on {spec!r}: unknown threshold {name!r}; known: {', '.join(GATES)}")
        if name in gates:
            raise CompareError(f"--fail-on {spec!r}: {name} given twice ({gates[name].spec!r} before)")
        gates[name] = Gate(name, _gate_value(name, raw, spec), spec)
    return list(gates.values())


NUMERIC = frozenset(GATES) - {"sanity"}     # gates that take a number (part_shift: a number or 'ci')


def _gate_value(name: str, raw: str, spec: str) -> float | str:
    """A gate's value: one of its words (case-insensitive), else a finite number >= 0 (a whole one for
    new_misses). Raises :class:`CompareError` naming the spec and what the name takes."""
    words = WORD_VALUES.get(name, ())
    if raw.lower() in words:
        return raw.lower()
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    takes = " or ".join([*map(repr, words), *(["a number >= 0"] if name in NUMERIC else [])])
    if name not in NUMERIC or not math.isfinite(value) or value < 0:
        raise CompareError(f"--fail-on {spec!r}: {name} takes {takes}, got {raw!r}")
    if name == "new_misses" and value != int(value):
        raise CompareError(f"--fail-on {spec!r}: new_misses takes a whole number, got {raw!r}")
    return value


# ---------------------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class MetricChange:
    """One number of a metrics file in A and in B. ``file`` and ``key_a`` / ``key_b``: where it is (the DVC
    metrics file and its flattened key, as ``dvc metrics diff`` names it; the keys differ when a model id
    changed); ``better``: "higher" / "lower" / None; ``interval_a`` / ``interval_b``: an interval the file gives
    with the value (MR⁻²)."""

    group: str
    name: str
    file: str
    key_a: str | None
    key_b: str | None
    a: float | None
    b: float | None
    better: str | None = None
    job: str | None = None
    interval_a: tuple[float, float] | None = None
    interval_b: tuple[float, float] | None = None

    @property
    def diff(self) -> float | None:
        return None if self.a is None or self.b is None else self.b - self.a

    @property
    def worse_by(self) -> float | None:
        """How much worse B is than A (negative: better); None without a direction or a value."""
        if self.diff is None or self.better is None:
            return None
        return -self.diff if self.better == "higher" else self.diff

    def to_json(self) -> dict:
        return {**asdict(self), "diff": self.diff, "worse_by": self.worse_by}


@dataclass(frozen=True)
class CueChange:
    """The classifier's spurious-cue probe in A and B: the cue label, P(label | label absent) with / without the
    cue, reliance = with − without, and the report's verdict (reliance > :data:`tasks.report.CUE_RELIANCE`)."""

    label: str | None
    rows: tuple[MetricChange, ...]
    reliance_a: float | None
    reliance_b: float | None

    @property
    def change(self) -> float | None:
        return None if self.reliance_a is None or self.reliance_b is None else self.reliance_b - self.reliance_a

    def to_json(self) -> dict:
        return {"label": self.label, "reliance_a": self.reliance_a, "reliance_b": self.reliance_b,
                "change": self.change, "relies_a": _relies(self.reliance_a), "relies_b": _relies(self.reliance_b),
                "threshold": CUE_RELIANCE, "rows": [r.to_json() for r in self.rows]}


def _relies(reliance: float | None) -> bool | None:
    return None if reliance is None else reliance > CUE_RELIANCE


@dataclass(frozen=True)
class SanityChange:
    """A job's sanity verdict in A and B (``evaluate.json`` ``sanity.jobs``): status (checked / ...), passes,
    the median |rank correlation| at full randomisation, and whether B's verdict is settled by its bootstrap
    interval (``tasks.sanity.verdict_settled``; None for an audit that predates the intervals)."""

    job: str
    status_a: str | None
    status_b: str | None
    passes_a: bool | None
    passes_b: bool | None
    rho_a: float | None
    rho_b: float | None
    settled_b: bool | None = None
    interval_b: list[float] | None = None      # B's interval of the median |rho| at full randomisation
    targets_a: int | None = None               # targets each verdict rests on (an unsettled one may have more:
    targets_b: int | None = None               # evaluate.sanity.max_targets)

    @property
    def regressed(self) -> bool:
        return self.passes_a is True and self.status_b == "checked" and not self.passes_b

    @property
    def fails_b(self) -> bool:
        return self.status_b == "checked" and not self.passes_b


@dataclass(frozen=True)
class FoundMissed:
    """Ground-truth pedestrians explained in both audits (explain targets of kind ``persons``, the same image):
    found in A / missed in B and the reverse (``image_id/target_id``), how many stayed found / missed, and how
    many are only in one audit (or whose image content changed)."""

    paired: int
    found_to_missed: tuple[str, ...]
    missed_to_found: tuple[str, ...]
    still_found: int
    still_missed: int
    only_a: int
    only_b: int

    def to_json(self) -> dict:
        return {**asdict(self), "found_to_missed": list(self.found_to_missed),
                "missed_to_found": list(self.missed_to_found)}


@dataclass(frozen=True)
class GateResult:
    gate: Gate
    failed: bool
    reasons: tuple[str, ...]

    def to_json(self) -> dict:
        return {"name": self.gate.name, "value": self.gate.value, "spec": self.gate.spec, "failed": self.failed,
                "reasons": list(self.reasons)}


@dataclass
class Comparison:
    """Everything compared (see the module docstring), and the gates' results. ``cells``: the part-shift table
    (:data:`CELL_COLUMNS`); ``warnings``: inconsistencies found on the way (stale plots, unpaired images)."""

    a: str
    b: str
    metrics_diff: dict
    detector: list[MetricChange]
    mr2: list[MetricChange]
    cue: CueChange
    quality: list[MetricChange]
    sanity: list[SanityChange]
    found_missed: FoundMissed
    cells: pd.DataFrame
    jobs: dict[str, list[str]]
    interval: dict
    gates: list[GateResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[GateResult]:
        return [g for g in self.gates if g.failed]

    @property
    def exit_code(self) -> int:
        """0: every gate holds (or none was given); 1: a gate failed."""
        return 1 if self.failed else 0

    def to_json(self) -> dict:
        """JSON-ready dict: NaN and inf become null."""
        cells = self.cells.astype(object).where(self.cells.notna(), None).to_dict(orient="records")
        out = {"a": self.a, "b": self.b, "exit_code": self.exit_code, "gates": [g.to_json() for g in self.gates],
               "warnings": self.warnings, "metrics": self.metrics_diff,
               "detector": [r.to_json() for r in self.detector], "mr2": [r.to_json() for r in self.mr2],
               "cue": self.cue.to_json(), "quality": [r.to_json() for r in self.quality],
               "sanity": [{**asdict(s), "regressed": s.regressed, "fails_b": s.fails_b} for s in self.sanity],
               "found_missed": self.found_missed.to_json(),
               "part_shift": {"jobs": self.jobs, "interval": self.interval, "cells": cells}}
        return _clean(out)


def _clean(value):
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return value


# ---------------------------------------------------------------------------------------------------- metrics files
def metrics_diff(a: Audit, b: Audit) -> dict:
    """``dvc metrics diff --all --json`` for these two audits' metrics files: ``{file: {flattened key: {"old",
    "new"[, "diff"]}}}``. The values DVC reads as metrics (:func:`dvc_metrics`), flattened and diffed by DVC's own
    code (:func:`dvc.utils.diff.diff`)."""
    from dvc.utils.diff import diff, format_dict

    def data(audit: Audit) -> dict:
        return {path: {"data": format_dict(dvc_metrics(content))} for path, content in audit.metric_files.items()
                if content}

    return diff(data(a), data(b), with_unchanged=True)


def dvc_metrics(tree):
    """What DVC keeps of a metrics file (``dvc.repo.metrics.show._extract_metrics``, DVC 3): numbers (booleans
    included) and strings, in nested dicts; lists and nulls are dropped, as are dicts left empty."""
    if isinstance(tree, (int, float, str)):
        return tree
    if not isinstance(tree, dict):
        return None
    kept = {key: dvc_metrics(value) for key, value in tree.items()}
    return {key: value for key, value in kept.items() if value not in (None, {})}


def _get(tree: dict, *keys: str):
    for key in keys:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _change(group: str, name: str, file: str, a: dict, b: dict, keys_a: Sequence[str] | None,
            keys_b: Sequence[str] | None, better: str | None, job: str | None = None) -> MetricChange:
    va = _number(_get(a, *keys_a)) if keys_a else None
    vb = _number(_get(b, *keys_b)) if keys_b else None
    return MetricChange(group, name, file, ".".join(keys_a) if keys_a else None, ".".join(keys_b) if keys_b else None,
                        va, vb, better, job)


def detector_changes(a: Audit, b: Audit) -> list[MetricChange]:
    """AP50, AP, AP50 reasonable and recall by size / occlusion of each audit's detector (``infer.json``), on the
    val split when both have one, else all images."""
    ia, ib = a.infer_metrics, b.infer_metrics
    da, db = ia.get(a.detector_id, {}), ib.get(b.detector_id, {})
    split = "val" if "val" in da and "val" in db else "all"
    rows = [_change("detector", m, a.infer_file, ia, ib, (a.detector_id, split, m), (b.detector_id, split, m),
                    "higher") for m in DETECTOR_METRICS]
    for group in RECALL_GROUPS:
        buckets = [k for k in {**(_get(da, split, group) or {}), **(_get(db, split, group) or {})}
                   if not k.endswith("_count")]
        rows += [_change("detector", f"{group}.{k}", a.infer_file, ia, ib, (a.detector_id, split, group, k),
                         (b.detector_id, split, group, k), "higher") for k in buckets]
    return rows


def mr2_changes(a: Audit, b: Audit) -> list[MetricChange]:
    """MR⁻² per CityPersons subset (``evaluate.json`` ``where_it_fails.mr2``; lower is better), with each audit's
    own image-bootstrap interval."""
    ea, eb = a.evaluate_summary, b.evaluate_summary
    ma, mb = _get(ea, "where_it_fails", "mr2") or {}, _get(eb, "where_it_fails", "mr2") or {}
    rows = []
    for subset in dict.fromkeys([*ma, *mb]):
        keys = ("where_it_fails", "mr2", subset, "mr2")
        row = _change("mr2", subset, a.evaluate_file, ea, eb, keys, keys, "lower")
        rows.append(MetricChange(**{**asdict(row), "interval_a": _pair(ma.get(subset)),
                                    "interval_b": _pair(mb.get(subset))}))
    return rows


def _pair(entry: dict | None) -> tuple[float, float] | None:
    if not entry or _number(entry.get("low")) is None or _number(entry.get("high")) is None:
        return None
    return float(entry["low"]), float(entry["high"])


def cue_change(a: Audit, b: Audit) -> CueChange:
    """The spurious-cue probe of each audit's classifier (``infer.json`` ``<classifier>.spurious``:
    ``p_<label>_absent_with_cue`` / ``..._without_cue``)."""
    ia, ib = a.infer_metrics, b.infer_metrics
    sa = _get(ia, a.classifier_id or "", "spurious") or {}
    sb = _get(ib, b.classifier_id or "", "spurious") or {}
    label = next((k[2:-len("_absent_with_cue")] for k in [*sa, *sb]
                  if k.startswith("p_") and k.endswith("_absent_with_cue")), None)
    if label is None:
        return CueChange(None, (), None, None)
    rows = tuple(_change("cue", f"p_{label}_absent_{arm}", a.infer_file, ia, ib,
                         (a.classifier_id, "spurious", f"p_{label}_absent_{arm}") if sa else None,
                         (b.classifier_id, "spurious", f"p_{label}_absent_{arm}") if sb else None, None)
                 for arm in ("with_cue", "without_cue"))

    def reliance(spurious: dict, with_, without):
        """The file's own ``reliance`` when it has one (what ``dvc metrics diff`` shows), else with − without."""
        declared = _number(spurious.get("reliance"))
        if declared is not None:
            return declared
        return None if with_ is None or without is None else with_ - without

    return CueChange(label, rows, reliance(sa, rows[0].a, rows[1].a), reliance(sb, rows[0].b, rows[1].b))


def quality_changes(a: Audit, b: Audit) -> list[MetricChange]:
    """Per kind and job (either audit), each quality metric's mean (``evaluate.json`` ``by_kind``), with its
    direction (None for chance levels)."""
    ka, kb = a.evaluate_summary.get("by_kind", {}), b.evaluate_summary.get("by_kind", {})
    rows = []
    for kind in dict.fromkeys([*ka, *kb]):
        for job in dict.fromkeys([*(ka.get(kind) or {}), *(kb.get(kind) or {})]):
            for metric in QUALITY_METRICS:
                keys = ("by_kind", kind, job, metric)
                row = _change("quality", metric, a.evaluate_file, a.evaluate_summary, b.evaluate_summary, keys, keys,
                              METRICS[metric].direction, job=f"{kind}/{job}")
                if row.a is not None or row.b is not None:
                    rows.append(row)
    return rows


def sanity_changes(a: Audit, b: Audit) -> list[SanityChange]:
    """Every job's sanity verdict in A and B (``evaluate.json`` ``sanity.jobs``)."""
    ja = _get(a.evaluate_summary, "sanity", "jobs") or {}
    jb = _get(b.evaluate_summary, "sanity", "jobs") or {}
    out = []
    for job in dict.fromkeys([*ja, *jb]):
        ea, eb = ja.get(job) or {}, jb.get(job) or {}
        out.append(SanityChange(job, ea.get("status"), eb.get("status"), ea.get("passes"), eb.get("passes"),
                                _number(ea.get("spearman_abs_full")), _number(eb.get("spearman_abs_full")),
                                eb.get("settled"), eb.get("spearman_abs_full_interval"), ea.get("targets"),
                                eb.get("targets")))
    return out


# ---------------------------------------------------------------------------------------------------- pairing
def changed_images(a: Audit, b: Audit) -> set[str]:
    """Image ids whose content differs between the audits (both images tables give a ``sha256``, and they
    differ): not the same image, so not paired."""
    def sha(audit: Audit) -> dict[str, str]:
        im = audit.images
        if im is None or im.empty or "sha256" not in im:
            return {}
        return {i: s for i, s in zip(im["image_id"], im["sha256"]) if isinstance(s, str) and s}

    sa, sb = sha(a), sha(b)
    return {i for i in sa.keys() & sb.keys() if sa[i] != sb[i]}


def found_missed(a: Audit, b: Audit, changed: set[str]) -> FoundMissed:
    """Ground-truth pedestrians (explain targets of kind ``persons``) in both audits on the same image: which
    flipped between found and missed."""
    def persons(audit: Audit) -> pd.Series:
        t = audit.targets
        t = t[(t["kind"] == "persons") & t["found"].notna() & ~t["image_id"].isin(changed)]
        return pd.Series(t["found"].astype(bool).values, index=t["image_id"] + "/" + t["target_id"]).groupby(
            level=0).first()

    fa, fb = persons(a), persons(b)
    both = fa.index.intersection(fb.index)
    fa_, fb_ = fa[both], fb[both]
    return FoundMissed(len(both), tuple(sorted(both[fa_.values & ~fb_.values])),
                       tuple(sorted(both[~fa_.values & fb_.values])), int((fa_.values & fb_.values).sum()),
                       int((~fa_.values & ~fb_.values).sum()), len(fa.index.difference(fb.index)),
                       len(fb.index.difference(fa.index)))


# ---------------------------------------------------------------------------------------------------- part shift
def shift_interval(a: pd.DataFrame, b: pd.DataFrame, rng: np.random.Generator, confidence: float = CONFIDENCE,
                   n_boot: int = N_BOOT) -> tuple[float, float]:
    """Bootstrap BCa interval of ``mean(b.share) − mean(a.share)`` resampling units (images) of the union of both,
    paired by ``unit``: ``a`` / ``b`` have columns ``unit`` and ``share`` (one row per pedestrian). Each unit's
    value is ``z_B − z_A`` (:func:`tasks.report_intervals.linearised` over the union; a unit an audit lacks
    counts zero pedestrians there). ``(nan, nan)`` when either side has fewer than
    :data:`tasks.report_intervals.MIN_UNITS` units."""
    return _unit_interval(_units(a), _units(b), rng, confidence, n_boot)


Units = tuple[np.ndarray, np.ndarray, np.ndarray]    # per unit (sorted unit ids): its ids, share sums, pedestrians


def _units(rows: pd.DataFrame) -> Units:
    per = rows.groupby("unit", sort=True)["share"].agg(["sum", "count"])
    return per.index.to_numpy(str), per["sum"].to_numpy(float), per["count"].to_numpy(float)


def _on(units: np.ndarray, part: Units) -> tuple[np.ndarray, np.ndarray]:
    """A side's sums / counts spread over the union ``units`` (zero where the side lacks the unit)."""
    sums, counts = np.zeros(units.size), np.zeros(units.size)
    where = np.searchsorted(units, part[0])
    sums[where], counts[where] = part[1], part[2]
    return sums, counts


def _unit_interval(per_a: Units, per_b: Units, rng: np.random.Generator, confidence: float,
                   n_boot: int) -> tuple[float, float]:
    """:func:`shift_interval` from each side's per-unit sums / counts."""
    if per_a[0].size < MIN_UNITS or per_b[0].size < MIN_UNITS:
        return math.nan, math.nan
    units = np.union1d(per_a[0], per_b[0])
    d = linearised(*_on(units, per_b)) - linearised(*_on(units, per_a))
    return mean_interval(d, confidence, n_boot, rng)


def _with_units(shares: pd.DataFrame, changed: set[str], side: str) -> pd.DataFrame:
    unit = shares["image_id"].where(~shares["image_id"].isin(changed), side + ":" + shares["image_id"])
    return shares.assign(unit=unit, all="all")


def _per_unit(shares: pd.DataFrame, column: str) -> dict[tuple[str, str], Units]:
    """(bucket, part) -> per-unit sums / counts of the shares (:data:`Units`), one groupby for all cells."""
    sel = shares.dropna(subset=["share", column])
    agg = sel.groupby([column, "part", "unit"], sort=True)["share"].agg(["sum", "count"])
    keys = agg.index.droplevel(2)
    units = agg.index.get_level_values(2).to_numpy(str)
    sums, counts = agg["sum"].to_numpy(float), agg["count"].to_numpy(float)
    out = {}
    for key in dict.fromkeys(keys):
        rows = keys == key if len(keys) else np.zeros(0, bool)
        out[key] = (units[rows], sums[rows], counts[rows])
    return out


def part_shift(a: Audit, b: Audit, changed: set[str], seed: int = SEED, confidence: float = CONFIDENCE,
               n_boot: int = N_BOOT) -> tuple[pd.DataFrame, dict[str, list[str]], dict]:
    """(cells, jobs, interval description): the part-shift table (:data:`CELL_COLUMNS`, one row per job in both
    audits × breakdown × bucket × part with pedestrians in A or B), the jobs with body-part relevance in both /
    only A / only B, and how the intervals were made. Cell seeds: :func:`tasks.bootstrap.cell_seed` of
    ``(seed, "compare|<job>|<breakdown>", part, bucket)`` (``|sim`` appended for the simultaneous one)."""
    sa = _with_units(part_shares(a.explanations, a.targets), changed, "a")
    sb = _with_units(part_shares(b.explanations, b.targets), changed, "b")
    ja, jb = list(dict.fromkeys(sa["job"])), list(dict.fromkeys(sb["job"]))
    jobs = {"both": [j for j in ja if j in jb], "only_a": [j for j in ja if j not in jb],
            "only_b": [j for j in jb if j not in ja]}
    rows, overall = [], {}
    empty: Units = (np.zeros(0, str), np.zeros(0), np.zeros(0))
    for job in jobs["both"]:
        ca, cb = sa[sa["job"] == job], sb[sb["job"] == job]
        present = set(ca["part"].unique()) | set(cb["part"].unique())
        parts = [p for p in PART_ORDER if p in present]
        for breakdown, (column, buckets) in BREAKDOWNS.items():
            ua, ub = _per_unit(ca, column), _per_unit(cb, column)
            for bucket in buckets:
                for part in parts:
                    xa, xb = ua.get((bucket, part), empty), ub.get((bucket, part), empty)
                    if xa[0].size or xb[0].size:
                        rows.append(_cell(job, breakdown, bucket, part, xa, xb, seed, confidence, n_boot))
                        if breakdown == "all":
                            overall[len(rows) - 1] = (xa, xb)
    m = len(overall)
    sim_conf = 1 - (1 - confidence) / max(m, 1)
    sim_boot = int(min(MAX_SIM_BOOT, max(n_boot, math.ceil(SIM_TAIL * 2 / (1 - sim_conf)))))
    for i, (xa, xb) in overall.items():
        rng = np.random.default_rng(cell_seed(seed, f"compare|{rows[i]['job']}|all|sim", rows[i]["part"], "all"))
        low, high = _unit_interval(xa, xb, rng, sim_conf, sim_boot)
        rows[i].update(sim_low=low, sim_high=high, sim_significant=_excludes_zero(low, high))
    cells = pd.DataFrame(rows, columns=CELL_COLUMNS)
    interval = {"confidence": confidence, "n_boot": n_boot, "seed": seed, "unit": "image (paired by image_id)",
                "method": "BCa of the paired difference of linearised ratios (tasks.compare.shift_interval)",
                "simultaneous": {"cells": m, "confidence": sim_conf, "n_boot": sim_boot,
                                 "method": "Bonferroni over the overall (job x part) cells"},
                "min_units": MIN_UNITS, "changed_images": len(changed)}
    return cells, jobs, interval


def _excludes_zero(low: float, high: float) -> bool:
    return bool(np.isfinite(low) and np.isfinite(high) and (low > 0 or high < 0))


def _mean(per: Units) -> float:
    return float(per[1].sum() / per[2].sum()) if per[0].size else math.nan


def _cell(job: str, breakdown: str, bucket: str, part: str, xa: Units, xb: Units, seed: int,
          confidence: float, n_boot: int) -> dict:
    """One part-shift cell from the per-unit sums / counts of A and B."""
    ma, mb = _mean(xa), _mean(xb)
    rng = np.random.default_rng(cell_seed(seed, f"compare|{job}|{breakdown}", part, bucket))
    low, high = _unit_interval(xa, xb, rng, confidence, n_boot)
    return {"job": job, "breakdown": breakdown, "bucket": bucket, "part": part, "mean_a": ma, "mean_b": mb,
            "shift": mb - ma, "low": low, "high": high, "n_a": int(xa[2].sum()), "n_b": int(xb[2].sum()),
            "images_a": int(xa[0].size), "images_b": int(xb[0].size),
            "paired_images": int(np.intersect1d(xa[0], xb[0]).size),
            "significant": _excludes_zero(low, high), "sim_low": math.nan, "sim_high": math.nan,
            "sim_significant": None}


def plot_check(audit: Audit, cells: pd.DataFrame, side: str, tolerance: float = 1e-4) -> list[str]:
    """Warnings where what DVC shows of the overall mean shares disagrees with the ones computed here from the
    audit's explain tables (the outputs are then from different runs): ``plots/part_relevance.csv`` (``dvc plots``,
    5 decimals) and, when evaluate writes it, ``evaluate.json`` ``part_shares.<job>.<part>`` (``dvc metrics``)."""
    mine = cells[cells["breakdown"] == "all"].set_index(["job", "part"])[f"mean_{side}"].dropna()
    sources = []
    if audit.part_plot is not None and not audit.part_plot.empty:
        sources.append(("plots/part_relevance.csv", audit.part_plot.set_index(["job", "part"])["share"]))
    declared = audit.evaluate_summary.get("part_shares")
    if isinstance(declared, dict) and declared:
        flat = {(job, part): v for job, parts in declared.items() if isinstance(parts, dict)
                for part, v in parts.items() if _number(v) is not None}
        sources.append((f"{audit.evaluate_file} part_shares", pd.Series(flat, dtype=float)))
    out = []
    for name, theirs in sources:
        both = mine.index.intersection(theirs.index)
        off = [(k, mine[k], theirs[k]) for k in both if abs(mine[k] - theirs[k]) > tolerance]
        if off:
            (job, part), value, shown = off[0]
            out.append(f"{audit.label}: {name} disagrees with the explain tables for {len(off)} (job, part) mean "
                       f"shares, e.g. {job} {part}: {shown:.5f} there vs {value:.5f} from the tables (outputs of "
                       f"different runs?)")
    return out


# ---------------------------------------------------------------------------------------------------- gates
def check_gates(c: Comparison, gates: Sequence[Gate]) -> list[GateResult]:
    """Each gate's verdict with the reasons it failed. A gate whose numbers are missing from either audit fails
    (``cannot check ...``): a release gate that cannot be evaluated must not pass silently."""
    return [GateResult(g, bool(reasons), tuple(reasons)) for g in gates for reasons in [_gate_reasons(c, g)]]


def _gate_reasons(c: Comparison, g: Gate) -> list[str]:
    return _GATE_CHECKS[g.name](c, g.value)


def _worse(rows: Sequence[MetricChange], limit: float, what: str) -> list[str]:
    """The gate's failures: a metric worse by more than ``limit``, a metric with a value in one audit only
    ("cannot check"), or no metric with a value in both. A metric undefined in both audits (e.g. AP50 reasonable
    of a dataset without reasonable pedestrians) is not a change and not a failure."""
    missing = [r for r in rows if r.better is not None and (r.a is None) != (r.b is None)]
    out = [f"cannot check {what} {_where(r)}: not in {'A' if r.a is None else 'B'}" for r in missing]
    if not any(r.a is not None and r.b is not None for r in rows):
        out.append(f"cannot check {what}: no values in either audit")
    return out + [f"{what} {_where(r)}: {r.a:.4f} -> {r.b:.4f} ({r.diff:+.4f}, worse by {r.worse_by:.4f} > {limit:g})"
                  for r in rows if r.worse_by is not None and r.worse_by > limit]


def _where(r: MetricChange) -> str:
    key = r.key_b if r.key_a == r.key_b or r.key_a is None else f"{r.key_a} vs {r.key_b}"
    return f"{r.job + ' ' if r.job else ''}{r.name} ({r.file}: {key})"


def _gate_ap(c: Comparison, limit: float) -> list[str]:
    return _worse([r for r in c.detector if r.name in DETECTOR_METRICS], limit, "detector")


def _gate_mr2(c: Comparison, limit: float) -> list[str]:
    return _worse(c.mr2, limit, "MR-2")


def _gate_quality(c: Comparison, limit: float) -> list[str]:
    rows = [r for r in c.quality if r.better is not None]     # a metric in one audit only: "cannot check"
    return _worse(rows, limit, "quality") if rows else ["cannot check quality: no job has quality metrics"]


def _gate_cue(c: Comparison, limit: float) -> list[str]:
    cue = c.cue
    if cue.change is None:
        side = "A" if cue.reliance_a is None else "B"
        return [f"cannot check cue reliance: no spurious-cue probe in {side} (infer.json <classifier>.spurious)"]
    if cue.change > limit:
        return [f"cue reliance ({cue.label}): {cue.reliance_a:.4f} -> {cue.reliance_b:.4f} (+{cue.change:.4f} > "
                f"{limit:g}; P({cue.label} | absent, cue) - P({cue.label} | absent, no cue), infer.json)"]
    return []


def _gate_parts(c: Comparison, value: float | str) -> list[str]:
    if not c.jobs["both"]:
        return ["cannot check part shift: no job with body-part relevance in both audits"]
    overall = c.cells[c.cells["breakdown"] == "all"]
    unchecked = [f"cannot check part shift {r.job} {r.part}: "
                 + ("absent in A" if r.mean_a != r.mean_a else "absent in B" if r.mean_b != r.mean_b else
                    "too few images for an interval")
                 for r in overall[overall["sim_low"].isna()].itertuples()]   # a part that vanished must not pass
    cells = overall[overall["sim_significant"] == True]  # noqa: E712
    if value != "ci":
        cells = cells[cells["shift"].abs() > float(value)]
    return unchecked + [f"part shift {r.job} {r.part}: {r.mean_a:.4f} -> {r.mean_b:.4f} ({r.shift:+.4f}, simultaneous "
            f"interval [{r.sim_low:+.4f}, {r.sim_high:+.4f}] excludes 0"
            + ("" if value == "ci" else f", |shift| > {float(value):g}") + ")" for r in cells.itertuples()]


def _gate_misses(c: Comparison, limit: float) -> list[str]:
    fm = c.found_missed
    if fm.paired == 0:
        return ["cannot check new misses: no ground-truth pedestrian explained in both audits on the same image"]
    if len(fm.found_to_missed) > limit:
        shown = ", ".join(fm.found_to_missed[:10]) + (" ..." if len(fm.found_to_missed) > 10 else "")
        return [f"{len(fm.found_to_missed)} pedestrians found in A are missed in B (> {limit:g}): {shown}"]
    return []


def _gate_sanity(c: Comparison, value: str) -> list[str]:
    if not c.sanity:
        return ["cannot check sanity: no sanity verdicts in either audit (evaluate.json sanity.jobs)"]
    if value == "regress":               # passed in A, not checked in B (absent, skipped): nothing shows it held
        unchecked = [f"cannot check sanity {s.job}: passes in A, {s.status_b or 'absent'} in B" for s in c.sanity
                     if s.passes_a is True and s.status_b != "checked"]
    else:
        unchecked = []
    bad = [s for s in c.sanity if (s.regressed if value == "regress" else s.fails_b)]
    return unchecked + [f"sanity {s.job}: {'passes' if s.passes_a else s.status_a or 'absent'} in A, does not pass "
                        f"in B (|rho| at full randomisation {s.rho_b}{_on_targets(s)}{_unsettled(s)})" for s in bad]


def _on_targets(s: SanityChange) -> str:
    """How many targets B's verdict rests on, and A's when it differs (the extension of unsettled verdicts can make
    them differ: a verdict on more targets is not a regression of the model), or ''."""
    if s.targets_b is None:
        return ""
    if s.targets_a is not None and s.targets_a != s.targets_b:
        return f", on {s.targets_b} targets in B, {s.targets_a} in A"
    return f", on {s.targets_b} targets"


def _unsettled(s: SanityChange) -> str:
    """Why B's failing verdict is not settled (tasks.sanity.verdict_settled), or ''."""
    if s.settled_b is not False:
        return ""
    if s.interval_b is None:
        return f"; unsettled: {NO_INTERVAL}"
    return "; unsettled: its interval crosses the limit"


_GATE_CHECKS = {"part_shift": _gate_parts, "cue_reliance_up": _gate_cue, "ap_drop": _gate_ap, "mr2_up": _gate_mr2,
                "quality_drop": _gate_quality, "new_misses": _gate_misses, "sanity": _gate_sanity}


# ---------------------------------------------------------------------------------------------------- entry
def compare(a: Audit, b: Audit, gates: Sequence[Gate] = (), seed: int = SEED, confidence: float = CONFIDENCE,
            n_boot: int = N_BOOT) -> Comparison:
    """Compare audit B against audit A (see the module docstring) and check ``gates``. Deterministic given
    ``seed``."""
    changed = changed_images(a, b)
    cells, jobs, interval = part_shift(a, b, changed, seed, confidence, n_boot)
    c = Comparison(a.label, b.label, metrics_diff(a, b), detector_changes(a, b), mr2_changes(a, b), cue_change(a, b),
                   quality_changes(a, b), sanity_changes(a, b), found_missed(a, b, changed), cells, jobs, interval)
    c.warnings += plot_check(a, cells, "a") + plot_check(b, cells, "b")
    if changed:
        c.warnings.append(f"{len(changed)} image ids have different content (sha256) in A and B: not paired")
    if a.detector_id != b.detector_id:
        c.warnings.append(f"the audited detector's id differs: {a.detector_id} (A) vs {b.detector_id} (B); its "
                          f"metrics are compared across the two keys")
    c.gates = check_gates(c, gates)
    return c
