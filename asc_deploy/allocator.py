"""glibc malloc settings for torch on the CPU (training, and the torch reference of asc-bench).

PyTorch's CPU tensors come from the C library's malloc. glibc serves blocks above its mmap
threshold (dynamic, at most 32 MB on 64-bit) with a fresh ``mmap`` and unmaps them on free, so
every training step faults its activation and gradient buffers in page by page again. Measured
on the 2-core development machine (Cnn6, 16 clips of 3 s, forward + backward + AdamW): 128 ms
per clip by default, 62-72 ms per clip with freed memory kept for reuse; half of the default
run's time was system time spent in page faults. Pure ctypes: importing this needs no torch.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
from collections.abc import Iterator

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
DEFAULT_MMAP_MAX = 65536  # glibc's default, restored on exit
# Where glibc's dynamic mmap threshold settles once blocks of up to its maximum (32 MiB on 64-bit,
# DEFAULT_MMAP_THRESHOLD_MAX) have been freed, and the trim threshold it sets beside it (twice).
SETTLED_MMAP_THRESHOLD = 32 * 2**20
SETTLED_TRIM_THRESHOLD = 2 * SETTLED_MMAP_THRESHOLD
KEPT_TRIM_THRESHOLD = 2**31 - 1  # bytes: in effect never trim


def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (it has mallopt and malloc_trim), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return None
    return libc


@contextlib.contextmanager
def freed_memory_kept() -> Iterator[bool]:
    """Within the block, glibc's malloc serves every block from its heap and keeps freed memory
    for reuse instead of giving it back to the kernel (``M_MMAP_MAX`` 0, ``M_TRIM_THRESHOLD``
    2 GiB), for the whole process. Peak resident memory stays what the work needs at its peak.

    On exit the free memory is returned (``malloc_trim``) and malloc behaves as an untuned
    process does once it has freed a 32 MiB block (its dynamic mmap threshold settled there):
    blocks up to 32 MiB from the heap, larger ones mmapped (``M_MMAP_MAX`` back to its default,
    ``M_MMAP_THRESHOLD`` 32 MiB, ``M_TRIM_THRESHOLD`` 64 MiB). glibc's defaults themselves
    cannot come back: any of these mallopt calls turns the dynamic threshold off for good, and
    its fixed 128 KiB start would then mmap and fault in every tensor afresh (the demo's SP4ASC
    epoch on 2 CPU threads: 98-113 s of training after such a block against 72-79 s in a
    process that never entered one).

    Yields True when applied, False where the C library is not glibc (then nothing changes).
    """
    libc = _glibc()
    if libc is None or not (libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, KEPT_TRIM_THRESHOLD)):
        yield False
        return
    try:
        yield True
    finally:
        libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
        libc.mallopt(M_MMAP_THRESHOLD, SETTLED_MMAP_THRESHOLD)
        libc.mallopt(M_TRIM_THRESHOLD, SETTLED_TRIM_THRESHOLD)
        libc.malloc_trim(0)
