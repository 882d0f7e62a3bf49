"""The one shard convention of every sharded stage, and the stages' small JSON outputs (metrics, manifests).

**Plan.** A flow cuts its ordered items into :func:`shard_ranges`; shard ``i`` covers ``items[range_i]`` and is
named :func:`shard_name` ``(i)`` (``shard-00042``; pull names its shards by first row instead).

**Done.** A shard task writes each of its Parquet files atomically (temp file + rename), then its done marker
``<root>/_done/<shard name>`` (:func:`mark_done`, a small JSON of counts) last. Readers take only shards whose marker
exists (:func:`is_done`), so a shard cut short by a crash is never read, whatever files it left.

**Collect**, one of two ways:

- *staged, published in one swap* (pull, infer, parts, evaluate): shards are folders ``<root>/<shard name>/`` of
  ``<table>.parquet`` files (:func:`write_shard`) under ``<out>.staging/_shards`` (:func:`fresh_staging`,
  :func:`staged_shard_dir`); the flow streams them in shard order into one file per table in the staging folder
  (:func:`write_staged`: :class:`TableWriter`, fixed row groups of :data:`ROW_GROUP_ROWS` rows, so memory stays
  flat and the bytes depend on the rows only, not on the shard size; evaluate still concatenates them in memory
  with :func:`collect_staged`) and replaces the output with it in two renames (:func:`publish`). A crash leaves
  the previous output whole; a re-run starts over.

**Read your own rows.** Tasks get shard descriptions, not rows: :class:`RowRange` (a file and a row range, read
with :func:`read_rows`, which touches only the row groups that overlap it) or a list of image ids
(:func:`read_image_rows`, which skips the row groups whose ``image_id`` statistics cannot hold them).
- *persistent, resumed after a crash* (explain): shard files stay in the output folder as Parquet datasets
  (``<table>/…/shard-NNNNN.parquet``, read with :func:`read_sharded`); :func:`keep_if_same_config` keeps them
  when the manifest's config hash is unchanged, so a re-run submits only the shards that are not done."""
from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from detection.datasets.tables import SCHEMAS, rows_to_table, write_table_atomic

DONE_DIR = "_done"
SHARDS_DIR = "_shards"
MANIFEST = "manifest.json"
ROW_GROUP_ROWS = 1 << 16
"""Rows per row group of a table streamed by :class:`TableWriter`. A table of at most this many rows is written as
one row group, byte for byte what ``pq.write_table`` (``write_table_atomic``) writes for the same rows."""


def shard_ranges(n: int, shard_size: int) -> list[range]:
    return [range(start, min(n, start + shard_size)) for start in range(0, n, shard_size)]


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def done_marker(root: str | Path, name: str) -> Path:
    return Path(root) / DONE_DIR / name


def mark_done(root: str | Path, name: str, info: dict | None = None) -> None:
    """Write shard ``name``'s done marker; call it after every file of the shard is written."""
    marker = done_marker(root, name)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(info or {}))


def is_done(root: str | Path, name: str) -> bool:
    return done_marker(root, name).exists()


# ---------------------------------------------------------------------------------------------------- staged
def fresh_staging(out: str | Path) -> Path:
    """An empty ``<out>.staging`` folder beside the output (leftovers of a crashed run are removed)."""
    out = Path(out)
    staging = out.with_name(out.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def staged_shard_dir(staging: str | Path, index: int) -> str:
    """The folder shard ``index`` of a staged stage writes its tables to."""
    return str(Path(staging) / SHARDS_DIR / shard_name(index))


def write_shard(shard_dir: str | Path, **rows: list[dict] | pa.Table) -> str:
    """One shard's rows (a list of row dicts or a table per name), a Parquet file per table (named as in
    ``SCHEMAS``, cast to its schema); the done marker is written last."""
    shard_dir = Path(shard_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, table_rows in rows.items():
        table = table_rows.cast(SCHEMAS[name]) if isinstance(table_rows, pa.Table) else rows_to_table(table_rows, name)
        write_table_atomic(table, shard_dir / f"{name}.parquet")
        counts[name] = table.num_rows
    mark_done(shard_dir.parent, shard_dir.name, counts)
    return str(shard_dir)


def read_shards(shard_dirs: list[str | Path], names: tuple[str, ...]) -> dict[str, pa.Table]:
    """Concatenate the named tables of finished shards, in the order given; a table no shard wrote is empty."""
    done = [Path(d) for d in shard_dirs if is_done(Path(d).parent, Path(d).name)]
    out = {}
    for name in names:
        parts = [pq.read_table(d / f"{name}.parquet", schema=SCHEMAS[name]) for d in done
                 if (d / f"{name}.parquet").exists()]
        out[name] = pa.concat_tables(parts) if parts else SCHEMAS[name].empty_table()
    return out


def collect_staged(staging: Path, shard_dirs: list[str | Path], names: tuple[str, ...]) -> dict[str, pa.Table]:
    """The named tables of the finished shards, concatenated in shard order; the shard folders are then removed."""
    tables = read_shards(shard_dirs, names)
    shutil.rmtree(staging / SHARDS_DIR, ignore_errors=True)      # absent when there were no items
    return tables


class TableWriter:
    """One Parquet file (zstd) with the schema ``SCHEMAS[name]`` (or ``schema``) written piece by piece: rows are
    buffered and written in row groups of exactly ``row_group_rows`` rows (the last one shorter), so memory holds at
    most one row group plus one piece, and the bytes depend on the rows alone (not on how they were cut into
    pieces). A table of at most ``row_group_rows`` rows is byte-identical to ``write_table_atomic``'s. Written to a
    temp file renamed over ``path`` by :meth:`close` (readers never see half a file); :meth:`abort` drops it. Use
    it as a context manager: an exception aborts."""

    def __init__(self, path: str | Path, name: str | None = None, schema: pa.Schema | None = None,
                 row_group_rows: int = ROW_GROUP_ROWS):
        if (name is None) == (schema is None):
            raise ValueError("TableWriter: give a schema name or a schema, not both or neither")
        self.path = Path(path)
        self.schema = SCHEMAS[name] if schema is None else schema
        self.row_group_rows = row_group_rows
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.parent / f".{self.path.name}.{uuid.uuid4().hex}.tmp"
        self._writer = pq.ParquetWriter(self._tmp, self.schema, compression="zstd")
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self.num_rows = 0
        self._groups = 0

    def write(self, table: pa.Table) -> None:
        """Append ``table``'s rows (cast to the writer's schema; ``ValueError`` from Arrow when it cannot be)."""
        if table.num_rows == 0:
            return
        self._buffer.append(table.cast(self.schema) if table.schema != self.schema else table)
        self._buffered += table.num_rows
        self.num_rows += table.num_rows
        while self._buffered >= self.row_group_rows:
            self._flush(self.row_group_rows)

    def _flush(self, n: int) -> None:
        rows = pa.concat_tables(self._buffer)
        self._writer.write_table(rows.slice(0, n), row_group_size=self.row_group_rows)
        rest = rows.slice(n)
        self._buffer, self._buffered = ([rest] if rest.num_rows else []), rest.num_rows
        self._groups += 1

    def close(self) -> Path:
        """Write the last rows (an empty table: one empty row group, as ``pq.write_table``) and publish the file."""
        if self._buffered or not self._groups:
            if self._buffered:
                self._flush(self._buffered)
            else:
                self._writer.write_table(self.schema.empty_table())
        self._writer.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        self._writer.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def iter_shards(shard_dirs: Iterable[str | Path], name: str) -> Iterable[pa.Table]:
    """Table ``name`` of each finished shard (done marker written), in the order given; shards that did not write
    it are skipped. One shard's table is in memory at a time."""
    for d in map(Path, shard_dirs):
        path = d / f"{name}.parquet"
        if is_done(d.parent, d.name) and path.exists():
            yield pq.read_table(path, schema=SCHEMAS[name])


def write_staged(staging: Path, shard_dirs: list[str | Path], files: dict[str, Path],
                 visit: Callable[[str, pa.Table], None] | None = None, remove: bool = True) -> dict[str, int]:
    """Stream table ``name`` of every finished shard, in shard order, into ``files[name]`` (a :class:`TableWriter`
    each: the same rows and order as :func:`collect_staged` + ``write_table_atomic``, one shard in memory at a time);
    ``visit(name, shard_table)`` sees each piece (for metrics). Returns the rows written per table; the shard
    folders are removed afterwards unless ``remove`` is false."""
    counts = {}
    for name, path in files.items():
        with TableWriter(path, name) as writer:
            for table in iter_shards(shard_dirs, name):
                if visit is not None:
                    visit(name, table)
                writer.write(table)
        counts[name] = writer.num_rows
    if remove:
        shutil.rmtree(staging / SHARDS_DIR, ignore_errors=True)
    return counts


@dataclass(frozen=True)
class RowRange:
    """Rows ``[start, stop)`` of the Parquet file ``path``: what a task is given instead of the rows themselves."""

    path: str
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


def row_ranges(path: str | Path, shard_size: int) -> list[RowRange]:
    """:func:`shard_ranges` of the rows of Parquet file ``path`` (its footer only is read)."""
    n = pq.ParquetFile(path).metadata.num_rows
    return [RowRange(str(path), r.start, r.stop) for r in shard_ranges(n, shard_size)]


def read_rows(rows: RowRange, columns: list[str] | None = None, schema: pa.Schema | None = None) -> pa.Table:
    """The rows of ``rows`` (``columns`` only, when given), reading only the row groups that overlap them;
    ``schema``: cast to it (e.g. ``SCHEMAS[name]``, selected to ``columns``)."""
    file = pq.ParquetFile(rows.path)
    meta = file.metadata
    groups, first, offset = [], None, 0
    for g in range(meta.num_row_groups):
        n = meta.row_group(g).num_rows
        if offset < rows.stop and offset + n > rows.start:
            groups.append(g)
            first = offset if first is None else first
        offset += n
    if not groups:
        table = file.schema_arrow.empty_table()
        table = table.select(columns) if columns else table
    else:
        table = file.read_row_groups(groups, columns=columns).slice(rows.start - first, len(rows))
    return table.cast(schema) if schema is not None else table


READ_BATCH_ROWS = 4096
"""Rows decoded at a time by :func:`read_image_rows` (a task's memory for reading its rows is about one batch of
the file plus the rows it keeps)."""


def _may_hold(stats, lo: str, hi: str) -> bool:
    """Whether a row group whose ``image_id`` statistics are ``stats`` may hold ids in [lo, hi]."""
    if stats is None or not stats.has_min_max:
        return True
    return not (stats.max < lo or stats.min > hi)


def read_image_rows(path: str | Path, image_ids: list[str], columns: list[str] | None = None,
                    schema: pa.Schema | None = None) -> pa.Table:
    """The rows of Parquet file ``path`` whose ``image_id`` is in ``image_ids``, in file order (``columns`` only,
    when given; ``schema``: cast to it). Row groups whose ``image_id`` min / max statistics lie outside the ids'
    range are not read, so a task reading its shard of a file written in image order touches one or two row
    groups. ``KeyError`` when the file has no ``image_id`` column."""
    file = pq.ParquetFile(path)
    names = file.schema_arrow.names
    if "image_id" not in names:
        raise KeyError(f"{path}: no image_id column (columns: {names})")
    want = pa.array(sorted(set(image_ids)), pa.string())
    col = names.index("image_id")
    lo, hi = (want[0].as_py(), want[-1].as_py()) if len(want) else ("", "")
    meta = file.metadata
    groups = [g for g in range(meta.num_row_groups)
              if len(want) and _may_hold(meta.row_group(g).column(col).statistics, lo, hi)]
    read_cols = None if columns is None else list(dict.fromkeys([*columns, "image_id"]))
    if groups:                        # batch by batch: one decoded batch in memory, not whole row groups
        batches = [b.filter(pc.is_in(b.column("image_id"), value_set=want))
                   for b in file.iter_batches(batch_size=READ_BATCH_ROWS, row_groups=groups, columns=read_cols)]
        table = pa.Table.from_batches(batches, schema=batches[0].schema) if batches else \
            file.schema_arrow.empty_table().select(read_cols or file.schema_arrow.names)
    else:
        table = file.schema_arrow.empty_table()
        table = table.select(read_cols) if read_cols else table
    table = table.select(columns) if columns is not None else table
    return table.cast(schema) if schema is not None else table


def publish(staging: Path, out: Path) -> None:
    """Replace ``out`` with ``staging`` in two renames; until then the previous output stays whole."""
    backup = out.with_name(out.name + ".previous")
    shutil.rmtree(backup, ignore_errors=True)
    if out.exists():
        os.replace(out, backup)
    os.replace(staging, out)
    shutil.rmtree(backup, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------- persistent
def keep_if_same_config(out: Path, config_hash: str) -> None:
    """Keep the finished shards of an interrupted run with the same config hash (read from the manifest);
    otherwise start from an empty folder."""
    manifest = read_json(out / MANIFEST)
    if manifest is None or manifest.get("config_hash") != config_hash:
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def read_sharded(out_dir: str | Path, pattern: str, name: str) -> pa.Table:
    """The shard files of table ``name`` matching ``pattern`` under ``out_dir``, in path order (a temp file left by
    a killed write does not match ``shard-*.parquet``); no file -> an empty table of its schema."""
    files = sorted(Path(out_dir).glob(pattern))
    tables = [pq.read_table(f, schema=SCHEMAS[name]) for f in files]
    return pa.concat_tables(tables) if tables else SCHEMAS[name].empty_table()


# ---------------------------------------------------------------------------------------------------- JSON
def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` via a temp file beside ``path`` and a rename: a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_json(path: str | Path, data: dict) -> Path:
    """Pretty, key-sorted JSON with a trailing newline (stable diffs for DVC metrics)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def read_json(path: str | Path) -> dict | None:
    """A JSON file written by :func:`write_json`, or None when it is missing or unreadable (a crashed write)."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
