"""Atomic file writes: a temporary file in the destination folder, then a rename.

An interrupted writer (exception, SIGINT, SIGKILL) leaves either the previous file or the
complete new one at the destination, never a partial file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it onto ``dest`` when the block succeeds.

    The temporary file is removed if the block raises. The caller writes the file itself (for
    APIs that take a path, such as ``onnx.save`` or ``torch.save``).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(dest: str | Path, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``dest`` for writing; rename it onto ``dest`` on success."""
    with atomic_path(dest) as tmp, open(tmp, mode, **kwargs) as f:
        yield f
