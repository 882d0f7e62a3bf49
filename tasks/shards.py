"""Shard folders shared by every stage: each task writes one folder of Parquet tables, marked done last; the flow
concatenates them in shard order into a staging folder and publishes it over the stage's output in one swap.
Also the stages' small JSON outputs (metrics, manifests)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from detection.datasets.tables import SCHEMAS, rows_to_table, write_table_atomic

DONE = "_done"


def shard_ranges(n: int, shard_size: int) -> list[range]:
    return [range(start, min(n, start + shard_size)) for start in range(0, n, shard_size)]


def fresh_staging(out: str | Path) -> Path:
    """An empty ``<out>.staging`` folder beside the output (leftovers of a crashed run are removed)."""
    out = Path(out)
    staging = out.with_name(out.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging



def write_shard(shard_dir: str | Path, **rows: list[dict]) -> str:
    """One shard's rows, a Parquet file per table (named as in ``SCHEMAS``); the done marker is written last."""
    shard_dir = Path(shard_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)
    for name, table_rows in rows.items():
        write_table_atomic(rows_to_table(table_rows, name), shard_dir / f"{name}.parquet")
    (shard_dir / DONE).touch()
    return str(shard_dir)


def read_shards(shard_dirs: list[str | Path], names: tuple[str, ...]) -> dict[str, pa.Table]:
    """Concatenate the named tables of finished shards, in the order given; a table no shard wrote is empty."""
    done = [Path(d) for d in shard_dirs if (Path(d) / DONE).exists()]
    out = {}
    for name in names:
        parts = [pq.read_table(d / f"{name}.parquet", schema=SCHEMAS[name]) for d in done
                 if (d / f"{name}.parquet").exists()]
        out[name] = pa.concat_tables(parts) if parts else SCHEMAS[name].empty_table()
    return out


def write_json(path: str | Path, data: dict) -> Path:
    """Pretty, key-sorted JSON with a trailing newline (stable diffs for DVC metrics)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def publish(staging: Path, out: Path) -> None:
    """Replace ``out`` with ``staging`` in two renames; until then the previous output stays whole."""
    backup = out.with_name(out.name + ".previous")
    shutil.rmtree(backup, ignore_errors=True)
    if out.exists():
        os.replace(out, backup)
    os.replace(staging, out)
    shutil.rmtree(backup, ignore_errors=True)


def read_json(path: str | Path) -> dict | None:
    """A JSON file written by :func:`write_json`, or None when it is missing or unreadable (a crashed write)."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
