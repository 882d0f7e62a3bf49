"""A progress bar over a stage's shard futures (rich, on stderr), finishing when every shard has."""
from __future__ import annotations

import sys

from prefect.futures import as_completed
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def progress(futures: list, label: str) -> list:
    """Results of ``futures`` in submission order; a bar advances as each completes. A failed shard raises after
    the others have finished (their files are kept for the re-run)."""
    if not futures:
        return []
    columns = (TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    failed = None
    with Progress(*columns, disable=not sys.stderr.isatty(), transient=False) as bar:
        task = bar.add_task(label, total=len(futures))
        for future in as_completed(futures):
            if future.state.is_failed() and failed is None:
                failed = future
            bar.advance(task)
    if failed is not None:
        failed.result()                      # re-raises the shard's exception
    return [f.result() for f in futures]
