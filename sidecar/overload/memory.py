"""The process's allocator, set for a bounded sidecar.

glibc's malloc raises its mmap threshold dynamically (up to 32 MiB) once large blocks are freed:
later large buffers then live on the heap, where growing one copies it (a decompressed body
growing past 16 MiB stalls the loop ~15 ms) and freeing it may not give the memory back. A fixed
threshold keeps every large buffer in its own mapping: it grows by mremap, and is returned to
the system the moment it is freed, so RSS follows what the budget holds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

#: mallopt's M_MMAP_THRESHOLD
_M_MMAP_THRESHOLD = -3
#: blocks at least this large get their own mapping
MMAP_THRESHOLD = 256 * 1024


def tune_malloc(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold (a no-op elsewhere); True when it was set."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(_M_MMAP_THRESHOLD, threshold))
    log.debug("malloc mmap threshold %s", threshold if done else "unchanged")
    return done
