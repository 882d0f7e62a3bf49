"""Prefect flows, one per pipeline stage, and the ``xai-audit`` CLI.

Importing this package sets offline, no-telemetry defaults before Prefect or ultralytics are imported; a value
already in the environment wins (e.g. ``PREFECT_API_URL`` to run against a server instead of ephemerally). It also
makes glibc keep freed memory for reuse (:func:`keep_freed_memory`): CPU forward passes run up to ~1.7x faster.
"""
import ctypes
import os
import platform

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


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed blocks of up to 32 MiB for reuse. By default it hands large freed blocks back
    to the OS, so every CPU forward pass page-faults its activations in afresh: ~8,900 faults per 16-image chunk
    of the demo classifier, 44 -> 25 ms a chunk with this (``benchmarks/README.md``). Applied to this process
    (``mallopt``) and, through ``GLIBC_TUNABLES``, to the processes it starts (Dask workers, DVC stages). Does
    nothing where the environment already tunes malloc or the C library is not glibc; returns whether it applied.
    The cost: the process keeps its peak heap."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(key in os.environ for key in ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3                        # <malloc.h>
    applied = bool(libc.mallopt(m_mmap_threshold, MMAP_THRESHOLD)) and bool(libc.mallopt(m_trim_threshold,
                                                                                          TRIM_THRESHOLD))
    if applied:
        os.environ["GLIBC_TUNABLES"] = (f"glibc.malloc.mmap_threshold={MMAP_THRESHOLD}:"
                                        f"glibc.malloc.trim_threshold={TRIM_THRESHOLD}")
    return applied


keep_freed_memory()
