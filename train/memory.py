"""Keep freed memory in the process: glibc's malloc would give every large buffer back to the system.

A training step of the short-chunk CNN on a batch of 32 makes activations of 32 x 16 x 128 x 128
float32 = 32 MiB each, and their gradients. glibc's malloc serves blocks that large with ``mmap``
and unmaps them when freed (its threshold rises with what it sees, to 32 MiB at most), so every
step maps them afresh and the kernel zero-fills every page again: ~26,000 page faults a step, a
quarter of its CPU time spent in the kernel (``bench/malloc.py``). :func:`keep_freed_memory`
tells malloc to serve every block from its heap and not to shrink it, so a buffer freed by one
step is reused by the next. The process keeps its peak memory until it exits, which is what a
training or scoring process does anyway.

glibc only (Linux); elsewhere nothing is changed. ``FMA_GENRE_MALLOC=default`` leaves malloc alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

LOG = logging.getLogger(__name__)

# mallopt parameters, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
NEVER_TRIM = 2**31 - 1  # the largest value mallopt takes (an int): 2 GiB of free heap kept
_applied = False


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse (no ``mmap`` for large blocks, no trimming).

    Returns
    -------
    bool
        True when applied (now or before), False where this is not glibc or
        ``FMA_GENRE_MALLOC=default`` asks to leave malloc as it is.
    """
    global _applied
    if _applied:
        return True
    if os.environ.get("FMA_GENRE_MALLOC", "") == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt symbol to speak of)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not (mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, NEVER_TRIM)):
        LOG.debug("mallopt refused; malloc left as it is")
        return False
    _applied = True
    return True
