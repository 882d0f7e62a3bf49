"""The one shard convention of every sharded stage, and the stages' small JSON outputs (metrics, manifests).

**Plan.** A flow cuts its ordered items into :func:`shard_ranges`; shard ``i`` covers ``items[range_i]`` and is
named :func:`shard_name` ``(i)`` (``shard-00042``; pull names its shards by first row instead).

**Done.** A shard task writes each of its Parquet files atomically (temp file + rename), then its done marker
``<root>/_done/<shard name>`` (:func:`mark_done`, a small JSON of counts) last. Readers take only shards whose marker
exists (:func:`is_done`), so a shard cut short by a crash is never read, whatever files it left.

**Collect**, one of two ways:

- *staged, published in one swap* (pull, infer, parts, evaluate): shards are folders ``<root>/<shard name>/`` of
  ``<table>.parquet`` files (:func:`write_shard`) under ``<out>.staging/_shards`` (:func:`fresh_staging`,
  :func:`staged_shard_dir`); the flow concatenates them in shard order (:func:`read_shards`), writes the whole
  tables into the staging folder and replaces the output with it in two renames (:func:`publish`). A crash leaves
  the previous output whole; a re-run starts over.
- *persistent, resumed after a crash* (explain): shard files stay in the output folder as Parquet datasets
  (``<table>/…/shard-NNNNN.parquet``, read with :func:`read_sharded`); :func:`keep_if_same_config` keeps them
  when the manifest's config hash is unchanged, so a re-run submits only the shards that are not done."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from detection.datasets.tables import SCHEMAS, rows_to_table, write_table_atomic

DONE_DIR = "_done"
SHARDS_DIR = "_shards"
MANIFEST = "manifest.json"


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


def write_shard(shard_dir: str | Path, **rows: list[dict]) -> str:
    """One shard's rows, a Parquet file per table (named as in ``SCHEMAS``); the done marker is written last."""
    shard_dir = Path(shard_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)
    for name, table_rows in rows.items():
        write_table_atomic(rows_to_table(table_rows, name), shard_dir / f"{name}.parquet")
    mark_done(shard_dir.parent, shard_dir.name, {name: len(table_rows) for name, table_rows in rows.items()})
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
