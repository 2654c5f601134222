"""Quieting what the exporters' libraries print that a user of asc-export cannot act on (torch's
ONNX exporter, onnxruntime's converter and quantiser, ExecuTorch's imports and native runtime,
torch.export's own deprecation notices); asc-export prints its own one-line summary instead."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator

# torch 2.13 warns from inside torch.export whenever it copies a program's tree specs
# (run_decompositions, to_edge): torch's own code, nothing an exporter can change
TREESPEC_NOTICE = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


@contextlib.contextmanager
def quiet_logger(name: str | None, level: int) -> Iterator[None]:
    """Raise logger ``name`` (None: the root logger) to ``level`` for the block, then restore it."""
    logger = logging.getLogger(name)
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


@contextlib.contextmanager
def torch_export_notices_ignored() -> Iterator[None]:
    """Ignore :data:`TREESPEC_NOTICE` (a FutureWarning) for the block; every other warning shows."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=TREESPEC_NOTICE, category=FutureWarning)
        yield


@contextlib.contextmanager
def executorch_import_quieted() -> Iterator[None]:
    """For importing ExecuTorch: torchao logs a warning per CUDA kernel library it cannot load on
    this machine, and torch a deprecation of an Enum constant that torchao registers."""
    with quiet_logger("torchao", logging.ERROR), quiet_logger("torch.utils._pytree", logging.ERROR):
        yield


@contextlib.contextmanager
def native_stderr_lines_dropped(prefix: bytes) -> Iterator[None]:
    """Lines starting with ``prefix`` that the block writes to stderr are dropped; every other line
    is written back, in order, when the block ends. Both ways native libraries reach stderr are
    caught: file descriptor 2, and Python's ``sys.stderr`` (which ExecuTorch's bindings write to,
    and which need not be descriptor 2, e.g. under pytest). For short blocks only: their stderr
    appears when they end."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture, open(capture.fileno(), "w", buffering=1, encoding="utf-8", closefd=False) as text:
        os.dup2(capture.fileno(), 2)
        try:
            with contextlib.redirect_stderr(text):
                yield
        finally:
            text.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().splitlines(keepends=True) if not line.startswith(prefix)]
            if kept:
                sys.stderr.write(b"".join(kept).decode("utf-8", "replace"))
                sys.stderr.flush()
