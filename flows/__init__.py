"""Prefect flows, one per pipeline stage, and the ``xai-audit`` CLI.

Importing this package sets offline, no-telemetry defaults before Prefect or ultralytics are imported; a value
already in the environment wins (e.g. ``PREFECT_API_URL`` to run against a server instead of ephemerally). It also
makes glibc keep freed memory for reuse (:func:`keep_freed_memory`): CPU forward passes run up to ~1.7x faster.
"""
import contextlib
import ctypes
import os

from tasks.memory import glibc, release_freed_memory  # stdlib only: nothing imported before the defaults below

for _key, _value in {
    "DO_NOT_TRACK": "1",                                   # Prefect client telemetry off
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",           # Prefect server telemetry off
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",  # slow CI machines start the ephemeral API slowly
    "DVC_NO_ANALYTICS": "1",                               # DVC telemetry off
    "YOLO_OFFLINE": "1",                                   # ultralytics: never download
    "YOLO_AUTOINSTALL": "0",
}.items():
    os.environ.setdefault(_key, _value)

MMAP_THRESHOLD = 32 << 20          # blocks up to 32 MiB (glibc's ceiling) come from the reusable heap
TRIM_THRESHOLD = (1 << 31) - 1     # and the heap is never trimmed back
GLIBC_DEFAULT_THRESHOLD = 128 << 10  # glibc's own mmap / trim thresholds (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3                          # <malloc.h>
TUNABLES = f"glibc.malloc.mmap_threshold={MMAP_THRESHOLD}:glibc.malloc.trim_threshold={TRIM_THRESHOLD}"
_kept: ctypes.CDLL | None = None   # libc, once keep_freed_memory applied


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed blocks of up to 32 MiB for reuse. By default it hands large freed blocks back
    to the OS, so every CPU forward pass page-faults its activations in afresh: ~8,900 faults per 16-image chunk
    of the demo classifier, 44 -> 25 ms a chunk with this (``benchmarks/README.md``). Applied to this process
    (``mallopt``) and, through ``GLIBC_TUNABLES``, to the processes it starts (Dask workers, DVC stages). Does
    nothing where the environment already tunes malloc otherwise or the C library is not glibc; returns whether the
    process runs with these settings (set here, or inherited from a parent that set them). The cost: the process
    keeps its peak heap (:func:`returning_freed_memory` lifts that for a block)."""
    global _kept
    libc = glibc()
    if libc is None:
        return False
    inherited = os.environ.get("GLIBC_TUNABLES") == TUNABLES          # glibc applied them at this process's start
    if any(key in os.environ for key in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")) or (
            "GLIBC_TUNABLES" in os.environ and not inherited):
        return False
    applied = inherited or (bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
                            and bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)))
    if applied:
        os.environ["GLIBC_TUNABLES"] = TUNABLES
        _kept = libc
    return applied


@contextlib.contextmanager
def returning_freed_memory():
    """A block in which glibc hands freed memory back to the OS at its default thresholds (blocks of 128 KiB and
    more mapped on their own and unmapped when freed, fixed rather than glibc's adaptive threshold; the heap trimmed
    above 128 KiB), entered after returning what the process kept
    so far (``malloc_trim``, and the unused memory of Arrow's pool). For a flow's table phases (no forward passes),
    whose transient arrays :func:`keep_freed_memory` would otherwise keep resident phase after phase: at 20k images
    evaluate's where-it-fails sections each left ~100-140 MB of freed heap (``benchmarks/README.md``). The settings
    of :func:`keep_freed_memory` come back on exit. Process-wide while it lasts (other threads' forward passes page
    fault again, never wrong); a plain block where :func:`keep_freed_memory` did not apply."""
    libc = _kept
    if libc is None:
        yield
        return
    libc.mallopt(_M_MMAP_THRESHOLD, GLIBC_DEFAULT_THRESHOLD)
    libc.mallopt(_M_TRIM_THRESHOLD, GLIBC_DEFAULT_THRESHOLD)
    release_freed_memory()
    try:
        yield
    finally:
        release_freed_memory()
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)


keep_freed_memory()
