import platform
import sys

from asc_deploy.train.allocator import keep_freed_memory


def test_applies_on_glibc_only():
    on_glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory() is on_glibc
