"""Every pipeline stage's outputs, declared once: where a stage writes (its ``out_dir`` and metrics file from
params), which Parquet tables it writes there (each named after its schema in
``detection.datasets.tables.SCHEMAS``) and how to read them back. Flows write through these paths, the next
stage and the report read through them, and ``tests/test_stage_outputs.py`` checks that the ``outs`` / ``metrics``
/ ``plots`` of each ``dvc.yaml`` stage are exactly the ones declared here.

One module rather than one per stage: the declarations are a few lines each, and a reader wants them side by side
(the explain stage's inputs are the pull, infer and parts stages' outputs).

A table is either one file ``<out_dir>/<name>.parquet`` (a stage that publishes in one swap) or a Parquet dataset
of shard files kept across runs (``explain``: ``explanations/job=<job>/shard-NNNNN.parquet``); see
``tasks.shards`` for the shard / done / resume convention. Reading a table a stage has not written raises
``FileNotFoundError``; a sharded table with no finished shard reads as an empty table of its schema."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
import pyarrow.parquet as pq

from detection.datasets.tables import SCHEMAS, DatasetTables, write_table_atomic
from tasks.params import Params
from tasks.shards import MANIFEST, read_sharded, shard_name

ATTRIBUTE_TABLES = ("attributes", "computed_attributes")
PULL, TRAIN_DATA, INFER, PARTS, EXPLAIN, EVALUATE, REPORT = (
    "pull", "train_data", "infer", "parts", "explain", "evaluate", "report")


@dataclass(frozen=True)
class StageOutputs:
    """A stage's output folder (a DVC ``outs`` entry), its DVC metrics file, and the tables it writes there.

    ``TABLES`` maps a schema name to the table's file (relative to ``out_dir``) or, for a sharded table, to the glob
    of its shard files. ``persist``: the folder is kept across runs (``persist: true`` in dvc.yaml)."""

    out_dir: Path
    metrics: Path
    TABLES: ClassVar[dict[str, str]] = {}
    SHARDED: ClassVar[frozenset[str]] = frozenset()
    persist: ClassVar[bool] = False

    def path(self, name: str) -> Path:
        """The file of a one-file table (``KeyError`` for a table this stage does not write)."""
        if name in self.SHARDED:
            raise KeyError(f"{name} of {type(self).__name__} is sharded: read it with .read({name!r})")
        return self.out_dir / self.TABLES[name]

    def read(self, name: str) -> pa.Table:
        """The table ``name`` with its schema from ``SCHEMAS`` (shards concatenated in file order)."""
        if name in self.SHARDED:
            return read_sharded(self.out_dir, self.TABLES[name], name)
        return pq.read_table(self.path(name), schema=SCHEMAS[name])

    def write(self, folder: Path, tables: dict[str, pa.Table]) -> None:
        """Write one-file tables into ``folder`` (the staging folder published over ``out_dir``) by their names."""
        for name, table in tables.items():
            write_table_atomic(table, folder / self.TABLES[name])

    @property
    def manifest(self) -> Path:
        return self.out_dir / MANIFEST

    def dvc_outs(self) -> list[Path]:
        return [self.out_dir]

    def dvc_metrics(self) -> list[Path]:
        return [self.metrics]

    def dvc_plots(self) -> list[Path]:
        return []


@dataclass(frozen=True)
class PullOutputs(StageOutputs):
    """The pulled dataset (``pull`` and, with the training-scene params, ``train_data``): the four dataset tables,
    the per-pedestrian attributes (``attributes``: what the synthetic generator drew, empty for other sources;
    ``computed_attributes``: from boxes and pixels, every source) and, when ``pull.attributes`` names files, the
    user's own per-object columns joined into one file (:data:`USER_ATTRIBUTES`, its columns are the user's, so it
    has no fixed schema)."""

    TABLES: ClassVar[dict[str, str]] = {n: f"{n}.parquet" for n in (*DatasetTables.names(), *ATTRIBUTE_TABLES)}
    USER_ATTRIBUTES: ClassVar[str] = "user_attributes.parquet"

    def dataset(self) -> DatasetTables:
        return DatasetTables.read(self.out_dir)

    def user_attributes(self) -> pa.Table | None:
        """The user's per-object attribute columns keyed by ``image_id, ann_id`` (None when none were given)."""
        path = self.out_dir / self.USER_ATTRIBUTES
        return pq.read_table(path) if path.is_file() else None


@dataclass(frozen=True)
class InferOutputs(StageOutputs):
    """Every model's detections / predictions over the pulled images, and unreadable images."""

    TABLES: ClassVar[dict[str, str]] = {n: f"{n}.parquet" for n in ("detections", "predictions", "errors")}


@dataclass(frozen=True)
class PartsOutputs(StageOutputs):
    """Body-part masks per (pedestrian, part), their IoU with the ground-truth part masks, and errors."""

    TABLES: ClassVar[dict[str, str]] = {n: f"{n}.parquet" for n in ("parts", "part_iou", "errors")}


@dataclass(frozen=True)
class ExplainOutputs(StageOutputs):
    """The targets table, and explanations / errors as shard files kept across runs (resume after a crash); with a
    ``sag`` job, the structured attention graphs of its targets (``sag``: one file per shard, rows of every sag job,
    keyed by ``job``; an empty table when no sag job ran)."""

    TABLES: ClassVar[dict[str, str]] = {"targets": "targets.parquet",
                                        "explanations": "explanations/job=*/shard-*.parquet",
                                        "errors": "errors/shard-*.parquet",
                                        "sag": "sag/shard-*.parquet"}
    SHARDED: ClassVar[frozenset[str]] = frozenset({"explanations", "errors", "sag"})
    persist: ClassVar[bool] = True

    def shard_files(self, shard: int, jobs: list[str]) -> dict[str, Path]:
        """Where shard ``shard`` writes: one explanations file per job (keyed by job name), ``errors`` and ``sag``
        (written only when a sag job runs)."""
        name = f"{shard_name(shard)}.parquet"
        files = {job: self.out_dir / "explanations" / f"job={job}" / name for job in jobs}
        files["errors"] = self.out_dir / "errors" / name
        files["sag"] = self.out_dir / "sag" / name
        return files


@dataclass(frozen=True)
class EvaluateOutputs(StageOutputs):
    """The metrics table (one row per explanation and metric), errors, the slices where the detector fails or its
    relevance shifts (``slices``), why each ground-truth pedestrian was missed (``misses``) and every job's sanity
    check under model randomisation (``sanity``, tasks.sanity); plots for ``dvc plots``."""

    plots_dir: Path = Path("plots")
    TABLES: ClassVar[dict[str, str]] = {n: f"{n}.parquet" for n in ("metrics", "errors", "slices", "misses",
                                                                     "sanity")}
    PLOTS: ClassVar[tuple[str, ...]] = ("causal_curves.png", "part_relevance.png", "part_relevance.csv",
                                          "mr_fppi.csv")

    def dvc_plots(self) -> list[Path]:
        return [self.plots_dir / p for p in self.PLOTS]


@dataclass(frozen=True)
class ReportOutputs:
    """The self-contained HTML report and its markdown summary (DVC outs, not cached)."""

    html: Path
    summary: Path

    def dvc_outs(self) -> list[Path]:
        return [self.html, self.summary]

    def dvc_metrics(self) -> list[Path]:
        return []

    def dvc_plots(self) -> list[Path]:
        return []


def pull(params: Params) -> PullOutputs:
    return PullOutputs(Path(params.pull.out_dir), Path(params.pull.metrics))


def train_data(params: Params) -> PullOutputs:
    cfg = params.models.train_data
    return PullOutputs(Path(cfg.out_dir), Path(cfg.metrics))


def infer(params: Params) -> InferOutputs:
    return InferOutputs(Path(params.infer.out_dir), Path(params.infer.metrics))


def parts(params: Params) -> PartsOutputs:
    return PartsOutputs(Path(params.parts.out_dir), Path(params.parts.metrics))


def explain(params: Params) -> ExplainOutputs:
    return ExplainOutputs(Path(params.explain.out_dir), Path(params.explain.metrics))


def evaluate(params: Params) -> EvaluateOutputs:
    cfg = params.evaluate
    return EvaluateOutputs(Path(cfg.out_dir), Path(cfg.metrics), Path(cfg.plots_dir))


def report(params: Params) -> ReportOutputs:
    return ReportOutputs(Path(params.report.out), Path(params.report.summary))


STAGES = {PULL: pull, TRAIN_DATA: train_data, INFER: infer, PARTS: parts, EXPLAIN: explain, EVALUATE: evaluate,
          REPORT: report}
"""The stages whose outputs are declared here, by dvc.yaml stage name (the models_* stages write model files,
declared by ``tasks.models``)."""
