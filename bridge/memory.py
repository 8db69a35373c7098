"""The C allocator's setting for a long-running process that handles bursts of large buffers.

glibc serves a request of 128 KiB or more with a mapping of its own, given back to the system
when freed, but it raises that threshold to the size of each such block freed (up to 32 MiB).
After a burst of large buffers (a bulk import's 50 KB payloads, a group's joined jsonl lines
and worker frames) the same sizes then come from the heap, whose freed parts stay resident:
an intake drained of 2,000 bulk envelopes kept 119 MB, against 79 MB with the threshold held
at its start value (docs/performance.md). Fixing it turns the adjustment off.
"""

from __future__ import annotations

import contextlib
import ctypes
import os

M_MMAP_THRESHOLD = -3  # malloc.h
MMAP_THRESHOLD = 128 * 1024
ENVIRONMENT = "MALLOC_MMAP_THRESHOLD_"
"""glibc's own variable: an operator who sets it keeps their value."""


def fix_mmap_threshold(size: int = MMAP_THRESHOLD) -> bool:
    """Hold glibc's mmap threshold at `size` bytes; whether it was set (False: another C
    library, or the operator set `MALLOC_MMAP_THRESHOLD_`)."""
    if ENVIRONMENT in os.environ:
        return False
    with contextlib.suppress(OSError, AttributeError):
        mallopt = ctypes.CDLL(None).mallopt
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
        return bool(mallopt(M_MMAP_THRESHOLD, size))
    return False
