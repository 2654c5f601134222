import platform
import sys
from pathlib import Path

import numpy as np
import pytest

from asc_deploy.allocator import freed_memory_kept

ON_GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_applies_on_glibc_only():
    with freed_memory_kept() as applied:
        assert applied is ON_GLIBC


@pytest.mark.skipif(not ON_GLIBC, reason="glibc malloc only")
def test_freed_memory_is_kept_inside_and_returned_on_exit():
    with freed_memory_kept():
        before = _rss_mb()
        block = np.ones(64 * 2**20, np.uint8)  # 64 MiB, above any mmap threshold
        del block
        kept = _rss_mb() - before
    returned = _rss_mb() - before
    assert kept > 48 and returned < 16, (kept, returned)
