"""Bounding glibc's malloc arenas, so a long-running multi-threaded process does not creep in memory.

glibc gives threads their own malloc arenas (up to 8 per core). In the learner, gRPC handler threads, ingest
writer threads and the trainer thread each allocate short-lived buffers (decoded episodes, batches,
checkpoint bytes) between long-lived objects (the replay's index, episode metadata); freed memory inside
each arena cannot go back to the operating system while a live object pins its pages, so resident memory
keeps rising with traffic although the live heap does not. Measured with `sop bench soak --robots 4
--minutes 6` and the replay's frame bound set low: the learner grew +4.4 MiB/min with default arenas and
+0.43 MiB/min with two (BENCHMARKS.md, "Soak"). Calling `malloc_trim(0)` every 30 s only took back a
constant ~20 MiB and did not stop the growth.

`limit_malloc_arenas(n)` is `mallopt(M_ARENA_MAX, n)`, the same as starting the process with
`MALLOC_ARENA_MAX=n` but settable from a config. It must run before the process starts its threads (arenas
already created stay). Without glibc (musl, macOS) it does nothing and returns False.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Final

logger = logging.getLogger(__name__)

M_ARENA_MAX: Final = -8  # glibc's malloc.h


def limit_malloc_arenas(count: int) -> bool:
    """Cap glibc's malloc arenas at `count` for threads that start from now on; False where not glibc."""
    if count < 1:
        raise ValueError(f"malloc arena count: {count} must be at least 1")
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc: no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied = bool(mallopt(M_ARENA_MAX, count))
    if not applied:
        logger.warning("mallopt(M_ARENA_MAX, %d) was refused; malloc arenas stay unbounded", count)
    return applied
