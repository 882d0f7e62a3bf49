"""Handing freed memory back to the OS between the phases of a long table computation (glibc's ``malloc_trim`` and
the unused memory of Arrow's pool): a process whose malloc keeps freed blocks (``flows.keep_freed_memory``, or
just a fragmented heap) otherwise stays at the sum of its phases' peaks, not their maximum."""
from __future__ import annotations

import ctypes
import functools
import platform
import sys


@functools.cache
def glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc on Linux (its malloc tunables apply), else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def release_freed_memory() -> None:
    """Return the free pages of every malloc arena to the OS (``malloc_trim(0)``: ms, nothing freed that is in use)
    and Arrow's pool's unused memory, where they exist (glibc; pyarrow imported); nothing elsewhere."""
    libc = glibc()
    if libc is not None:
        libc.malloc_trim(0)
    if "pyarrow" in sys.modules:
        sys.modules["pyarrow"].default_memory_pool().release_unused()
