"""export/quiet.py: native stderr lines dropped by prefix, every other line kept in order."""

from __future__ import annotations

import os
import sys

import pytest

from asc_deploy.export.quiet import native_stderr_lines_dropped


def test_lines_with_the_prefix_are_dropped_and_the_rest_kept_in_order(capfd):
    with native_stderr_lines_dropped(b"[probe.cpp:"):
        os.write(2, b"[probe.cpp:71] Reading file /sys/x\nkept 1\n[probe.cpp:87] Failed to open /sys/x\nkept 2 [probe.cpp:9]\n")
    os.write(2, b"[probe.cpp:1] after the block\n")
    assert capfd.readouterr().err == "kept 1\nkept 2 [probe.cpp:9]\n[probe.cpp:1] after the block\n"


def test_python_stderr_is_filtered_too(capfd):
    """What is written through sys.stderr (ExecuTorch's bindings do; under pytest it is not
    descriptor 2) is filtered as well, in order with descriptor 2's lines."""
    with native_stderr_lines_dropped(b"[probe.cpp:"):
        print("[probe.cpp:3] from Python", file=sys.stderr)
        os.write(2, b"kept from C\n")
        print("kept from Python", file=sys.stderr)
    assert capfd.readouterr().err == "kept from C\nkept from Python\n"


def test_stderr_is_restored_when_the_block_raises(capfd):
    with pytest.raises(ValueError), native_stderr_lines_dropped(b"[probe.cpp:"):
        os.write(2, b"[probe.cpp:1] dropped\nkept\n")
        raise ValueError("inside")
    os.write(2, b"written after\n")
    assert capfd.readouterr().err == "kept\nwritten after\n"
