"""Store entries and a writer for tests/test_incremental.py's concurrent-writer test. A module of its own, importing
only the result store: each writer process is started with 'spawn' and imports the module of its target, and the
test module imports the explain stage (torch, the explainers), seconds per process on the 2-core CI machine."""
from __future__ import annotations

import pyarrow as pa

from tasks.result_store import ResultStore, digest


def entry(i: int) -> dict:
    """A store entry of the tables ``metrics`` (values i, i + 0.5) and ``errors`` (x = i), 1 s of compute."""
    return {"metrics": pa.table({"value": pa.array([float(i), i + 0.5])}), "errors": pa.table({"x": pa.array([i])}),
            "seconds": 1.0}


def write_many(root: str, rounds: int) -> None:
    """Write the entries of keys ``digest(0) .. digest(19)`` to the store ``t`` under ``root``, ``rounds`` times."""
    store = ResultStore(root, "t", ("metrics", "errors"))
    for _ in range(rounds):
        store.put_many({digest(i): entry(i) for i in range(20)})
