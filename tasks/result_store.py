"""A content-addressed store of computed results, shared across runs and dataset versions: the explain stage's rows
of each explanation group and the evaluate stage's metric rows of each (image, job) group, keyed by a digest of
everything they depend on (tasks.explain / tasks.evaluate build the keys; :func:`digest` hashes them).

Layout: ``<root>/<kind>/<name>.parquet`` (``kind``: ``explain`` or ``evaluate``), one file per batch of entries a
task computed. Each row is one entry: ``cache_key`` (str, 64 hex digits), ``seconds`` (float64, what computing it
took; 0 when unknown) and one binary column per payload table holding that table as an Arrow IPC stream (the rows
of one entry keep their schema and order exactly, e.g. the ``explanations`` rows of a shared-forward group).

Writes are atomic (temp file + rename) and content-addressed: a file's name is the digest of the keys it holds, so
two workers that computed the same entries write the same name, and either file is a whole, valid answer. Readers
list the folder, read only the ``cache_key`` column of files they have not seen (an index kept per process), then
the rows they need. A file that cannot be read (truncated, not Parquet, wrong columns) or an entry whose payload
does not decode is skipped with a :class:`CacheWarning` naming it: a miss, never a crash, never a wrong row.

The store lives outside the DVC outputs (DVC removes a stage's outputs before running it); its location is the
``explain.cache_dir`` params key (``.cache/xai-audit`` by default, gitignored; null turns reuse off). Delete the
folder to start cold; nothing else refers to it."""
from __future__ import annotations

import hashlib
import json
import threading
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from detection.datasets.tables import write_table_atomic

KEY = "cache_key"
SECONDS = "seconds"
DEFAULT_CACHE_DIR = ".cache/xai-audit"
FORMAT = 1                     # bump when the layout of stored entries changes: every key changes with it


class CacheWarning(UserWarning):
    """A store file or entry that could not be read and was ignored (its entries are recomputed)."""


def _canonical(obj):
    """JSON-able form of ``obj`` for :func:`digest`: bytes and NumPy arrays by their SHA-256 (dtype and shape
    included), tuples as lists, floats as their repr (exact)."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return {"sha256": hashlib.sha256(bytes(obj)).hexdigest()}
    if isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        return {"array": str(a.dtype), "shape": list(a.shape), "sha256": hashlib.sha256(a.tobytes()).hexdigest()}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"digest: cannot hash a {type(obj).__name__}")


def digest(obj) -> str:
    """SHA-256 (64 hex digits) of ``obj``'s canonical JSON (dict keys sorted; see :func:`_canonical` for bytes and
    arrays). Raises TypeError for an object JSON cannot spell."""
    text = json.dumps([FORMAT, obj], sort_keys=True, default=_canonical, allow_nan=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def files_digest(paths: list[str | Path]) -> str:
    """SHA-256 of the named files' bytes, each prefixed by its name (a renamed file changes the digest). Raises
    FileNotFoundError naming a missing file."""
    h = hashlib.sha256()
    for p in paths:
        h.update(str(Path(p).name).encode() + b"\0")
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


_INDEX_LOCK = threading.Lock()
_INDEXES: dict[str, dict] = {}        # folder -> {"files": {name: keys set or None (unreadable)}, "where": {key: name}}


class ResultStore:
    """The entries of one kind (``explain`` / ``evaluate``) under ``root``. ``tables``: the payload table names of
    an entry, e.g. ``("explanations", "errors", "sag")``. Safe to use from several threads and processes."""

    def __init__(self, root: str | Path, kind: str, tables: tuple[str, ...]):
        self.folder = Path(root) / kind
        self.tables = tuple(tables)

    # ------------------------------------------------------------------------------------------------ read
    def _locate(self, keys: set[str]) -> dict[str, str]:
        """cache_key -> file name for those of ``keys`` that are stored, from the process's index of every readable
        file of the folder (files already seen are not re-read; only the answer for ``keys`` is copied out)."""
        with _INDEX_LOCK:
            state = _INDEXES.setdefault(str(self.folder.resolve()), {"files": {}, "where": {}})
            names = sorted(p.name for p in self.folder.glob("*.parquet")) if self.folder.is_dir() else []
            if set(state["files"]) - set(names):          # files removed since: index again from scratch
                state["files"], state["where"] = {}, {}
            for name in names:
                if name in state["files"]:
                    continue
                try:
                    stored = pq.read_table(self.folder / name, columns=[KEY])[KEY].to_pylist()
                except Exception as exc:     # noqa: BLE001 - any unreadable file is a miss, never a crash
                    warnings.warn(f"result store: ignoring unreadable file {self.folder / name}: "
                                  f"{type(exc).__name__}: {exc}", CacheWarning, stacklevel=3)
                    state["files"][name] = None
                    continue
                state["files"][name] = True
                for k in stored:
                    state["where"].setdefault(k, name)
            where = state["where"]
            return {k: where[k] for k in keys if k in where}

    def get_many(self, keys: list[str] | set[str]) -> dict[str, dict]:
        """The stored entries among ``keys``: {key: {table name: pa.Table, ..., "seconds": float}}; a key that is
        not stored, or whose entry cannot be read, is absent (a warning names the file)."""
        wanted = set(keys)
        if not wanted:
            return {}
        by_file: dict[str, list[str]] = {}
        for k, name in self._locate(wanted).items():
            by_file.setdefault(name, []).append(k)
        found: dict[str, dict] = {}
        for name, ks in sorted(by_file.items()):
            path = self.folder / name
            try:
                t = pq.read_table(path, columns=[KEY, SECONDS, *self.tables])
                t = t.filter(pc.is_in(t[KEY], value_set=pa.array(ks, pa.string())))
                rows = t.to_pylist()
            except Exception as exc:         # noqa: BLE001
                warnings.warn(f"result store: ignoring unreadable file {path}: {type(exc).__name__}: {exc}",
                              CacheWarning, stacklevel=2)
                continue
            for r in rows:
                try:
                    entry = {n: _from_ipc(r[n]) for n in self.tables}
                except Exception as exc:     # noqa: BLE001
                    warnings.warn(f"result store: ignoring an unreadable entry of {path} ({r[KEY][:12]}…): "
                                  f"{type(exc).__name__}: {exc}", CacheWarning, stacklevel=2)
                    continue
                entry[SECONDS] = float(r[SECONDS] or 0.0)
                found.setdefault(r[KEY], entry)
        return found

    # ------------------------------------------------------------------------------------------------ write
    def put_many(self, entries: dict[str, dict]) -> Path | None:
        """Store ``entries`` ({key: {table name: pa.Table, "seconds": float}}; every name of ``self.tables``
        required) as one file named by the digest of their keys, atomically. Returns the file (None for no
        entries). Raises KeyError naming a missing table."""
        if not entries:
            return None
        keys = sorted(entries)
        for k in keys:
            missing = [n for n in self.tables if n not in entries[k]]
            if missing:
                raise KeyError(f"result store entry {k[:12]}…: missing tables {missing}")
        columns = {KEY: pa.array(keys, pa.string()),
                   SECONDS: pa.array([float(entries[k].get(SECONDS, 0.0)) for k in keys], pa.float64())}
        for n in self.tables:
            columns[n] = pa.array([_to_ipc(entries[k][n]) for k in keys], pa.binary())
        path = self.folder / f"{hashlib.sha256(chr(10).join(keys).encode()).hexdigest()[:40]}.parquet"
        return write_table_atomic(pa.table(columns), path)


class Reuse:
    """One task's use of a store: the stored entries among the keys it will need (:meth:`prefetch`), the entries it
    computed (:meth:`put`, written by :meth:`flush`) and counts of both. ``store`` None: nothing is reused or
    stored, everything is counted as computed. A key None (something it depends on could not be hashed, e.g. an
    unreadable image) is always computed and never stored."""

    def __init__(self, store: ResultStore | None):
        self.store, self.hits, self.new = store, {}, {}
        self.reused = self.computed = 0
        self.seconds_reused = self.seconds_computed = 0.0

    def prefetch(self, keys) -> None:
        if self.store is not None:
            self.hits = self.store.get_many({k for k in keys if k is not None})

    def get(self, key: str | None) -> dict | None:
        """The stored entry of ``key`` (counted as reused), or None."""
        entry = self.hits.get(key) if key is not None else None
        if entry is not None:
            self.reused += 1
            self.seconds_reused += entry[SECONDS]
        return entry

    def put(self, key: str | None, tables: dict[str, pa.Table], seconds: float) -> None:
        """Record a computed entry (counted as computed; stored at :meth:`flush` when it has a key)."""
        self.computed += 1
        self.seconds_computed += seconds
        if key is not None and self.store is not None:
            self.new[key] = {**tables, SECONDS: seconds}

    def flush(self) -> Path | None:
        """Write the computed entries as one store file; a store that cannot be written (full disk, read-only)
        only warns: the stage's own outputs do not depend on it."""
        if self.store is None or not self.new:
            return None
        try:
            return self.store.put_many(self.new)
        except OSError as exc:
            warnings.warn(f"result store: could not write to {self.store.folder}: {exc}", CacheWarning, stacklevel=2)
            return None

    def counts(self) -> dict:
        """Groups computed / reused and their seconds (reused: what computing them took when they were stored)."""
        return {"computed": self.computed, "reused": self.reused, "seconds_computed": round(self.seconds_computed, 3),
                "seconds_reused": round(self.seconds_reused, 3)}


def store_for(cache_dir: str | Path | None, kind: str, tables: tuple[str, ...]) -> ResultStore | None:
    """The store of ``kind`` under ``cache_dir``, or None when reuse is off (``cache_dir`` null)."""
    return None if cache_dir is None else ResultStore(cache_dir, kind, tables)


def cache_dir_of(params) -> str | None:
    """``explain.cache_dir`` of the params, absolute (workers of a cluster share it), or None (reuse off)."""
    value = params.explain.cache_dir
    return None if value is None else str(Path(value).resolve())


__all__ = ["DEFAULT_CACHE_DIR", "CacheWarning", "ResultStore", "Reuse", "cache_dir_of", "digest", "files_digest",
           "store_for"]
