"""Wall times of a stage run, kept out of the stage's hashed outputs.

Why: a stage's DVC outputs must hash the same run after run (``dvc.lock`` is the audit's fingerprint), and a wall
time never repeats. So the results (explanations, metrics, the report) hold only what the inputs decide, cost
included as forward passes (``n_forward``), and the clock lives here:

- per shard: ``<output folder>/_timings/<shard name>.json`` (explainer seconds per job, pid, device). ``.dvcignore``
  lists ``_timings`` folders, so DVC neither hashes nor caches them; a resumed run keeps the finished shards' files.
- per run: one key per stage in ``timings.json`` beside the stage's metrics file (``metrics/timings.json`` by
  default), which ``dvc.yaml`` declares as a top-level metrics file (``dvc metrics show`` prints it) without making
  it any stage's output.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

TIMINGS_DIR = "_timings"
RUN_TIMINGS = "timings.json"


def shard_timing_path(root: str | Path, name: str) -> Path:
    return Path(root) / TIMINGS_DIR / f"{name}.json"


def write_shard_timing(root: str | Path, name: str, info: dict) -> None:
    """Record shard ``name``'s timing ``info`` (JSON-able; the writing process's pid is added)."""
    path = shard_timing_path(root, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**info, "pid": os.getpid()}, sort_keys=True))


def read_shard_timings(root: str | Path) -> dict[str, dict]:
    """Every shard timing under ``root`` by shard name (empty when none was written)."""
    folder = Path(root) / TIMINGS_DIR
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def record_run(stage: str, info: dict, metrics_file: str | Path) -> Path:
    """Set ``stage``'s entry of the run-timings file beside ``metrics_file`` (the stage's metrics JSON) to ``info``
    and return its path. Other stages' entries are kept; a file that does not parse is replaced rather than failing
    the stage, since it only holds timings."""
    path = Path(metrics_file).parent / RUN_TIMINGS
    try:
        current = json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        current = {}
    current = current if isinstance(current, dict) else {}
    current[stage] = info
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path
