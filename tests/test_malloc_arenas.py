"""`limit_malloc_arenas` caps glibc's arenas for threads started afterwards (counted with malloc_info)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from sop.malloc_arenas import limit_malloc_arenas

COUNT_HEAPS = textwrap.dedent(
    """
    import ctypes, ctypes.util, sys, tempfile, threading
    from sop.malloc_arenas import limit_malloc_arenas
    if sys.argv[1] != "default":
        assert limit_malloc_arenas(int(sys.argv[1]))
    barrier = threading.Barrier(8)
    def work():
        barrier.wait()  # all eight allocate at once, each from its own thread
        blocks = [bytearray(4096) for _ in range(2000)]
        barrier.wait()
        del blocks
    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads: t.start()
    for t in threads: t.join()
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.fopen.restype = ctypes.c_void_p
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    with tempfile.NamedTemporaryFile("r") as out:
        stream = libc.fopen(out.name.encode(), b"w")
        libc.malloc_info(0, stream)
        libc.fclose(stream)
        print(out.read().count("<heap nr="))
    """
)


def heaps(arena_max: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", COUNT_HEAPS, arena_max], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc arenas")
def test_threads_share_the_capped_number_of_arenas() -> None:
    assert heaps("default") > 2  # glibc's default: a new arena for each thread, up to 8 per core
    assert heaps("2") <= 2
    assert heaps("1") == 1


def test_a_count_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        limit_malloc_arenas(0)
