"""More targets where the sanity check's verdict is in doubt: a job whose verdict its first ``evaluate.sanity.targets``
targets leave *unsettled* (the bootstrap interval of a median at full randomisation crosses the limit, or there is
none: :func:`tasks.sanity.verdict_settled`) is checked again on its next targets, up to its first
``evaluate.sanity.max_targets``; a settled verdict costs nothing more.

Deciding how many targets to look at after seeing the first ones is optional stopping: the intervals of an extended
job are a little less than 95 % sure than the same count fixed in advance would be. The extension only decides where
the targets go; a verdict still unsettled after it is reported as unsettled.

Kept apart from :mod:`tasks.sanity` on purpose: a sanity row's store key covers the code :mod:`tasks.sanity` imports,
so an edit here leaves every stored row valid. Pure functions (no Prefect): the evaluate flow passes the check."""
from __future__ import annotations

import json
from collections.abc import Callable

from tasks.sanity import sanity_summary


def unsettled_jobs(checked: dict, max_correlation: float) -> list[str]:
    """The checked jobs of ``checked`` (a :func:`tasks.sanity.sanity_check` result) whose verdict is unsettled, in
    the order of the result's status."""
    summary = sanity_summary(checked["rows"], checked["status"], max_correlation)
    return [job for job, e in summary.items() if e["status"] == "checked" and e.get("settled") is False]


def extend_unsettled(checked: dict, targets: int, max_targets: int, max_correlation: float,
                     check_more: Callable[[list[str], int, int], dict | None]) -> dict:
    """``checked`` (the check on each job's first ``targets`` targets: a :func:`tasks.sanity.sanity_check` result)
    with every job it left unsettled checked again on its targets ``targets`` .. ``max_targets`` - 1:
    ``check_more(jobs, targets, max_targets)`` returns that check's result, or None when none of those jobs has a
    target beyond its first ``targets``. Its rows follow each job's first rows (jobs in their first order), its
    errors rows and its reused / computed counts are added (also when it produced no rows: every chosen image
    unreadable), and ``extended`` maps each job that got rows to its target count. The summary counts a job's
    targets from its rows. An errors row the first check already holds (an unreadable image whose targets straddle
    ``targets`` fails in both passes) is kept once. Returns ``checked`` itself when ``max_targets <= targets``,
    nothing was checked, or every verdict is settled."""
    if max_targets <= targets or not checked["rows"]:
        return checked
    unsettled = unsettled_jobs(checked, max_correlation)
    more = check_more(unsettled, targets, max_targets) if unsettled else None
    if more is None:
        return checked
    both = [*checked["rows"], *more["rows"]]
    first = {job: i for i, job in enumerate(dict.fromkeys(r["job"] for r in both))}
    rows = sorted(both, key=lambda r: first[r["job"]])              # stable: a job's first rows, then its new ones
    grown = dict.fromkeys(r["job"] for r in more["rows"])
    seen = {_error_key(e) for e in checked["errors"]}
    errors = checked["errors"] + [e for e in more["errors"] if _error_key(e) not in seen]
    return {"rows": rows, "errors": errors, "status": checked["status"],
            "reused": checked["reused"] + more["reused"], "computed": checked["computed"] + more["computed"],
            "extended": {job: len({(r["image_id"], r["target_id"]) for r in rows if r["job"] == job})
                         for job in grown}}


def _error_key(row: dict) -> str:
    """An errors row's identity: every field, in key order."""
    return json.dumps(row, sort_keys=True, default=str)


__all__ = ["extend_unsettled", "unsettled_jobs"]
