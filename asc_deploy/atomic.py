"""Atomic file writes: a temporary file in the destination folder, then a rename.

An interrupted writer (exception, SIGINT, SIGKILL) leaves either the previous file or the
complete new one at the destination, never a partial file.
"""

from __future__ import annotations

import contextlib
import os
import stat
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
        # mkstemp creates 0600; give the result the mode a plain open() would (or the old file's).
        os.chmod(tmp, _mode_for(dest))
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _mode_for(dest: Path) -> int:
    """Permission bits for ``dest``: those of the file it replaces, else 0666 less the umask."""
    try:
        return stat.S_IMODE(dest.stat().st_mode)
    except OSError:
        umask = os.umask(0o022)  # reading the umask means setting it; put it straight back
        os.umask(umask)
        return 0o666 & ~umask


@contextlib.contextmanager
def atomic_open(dest: str | Path, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``dest`` for writing; rename it onto ``dest`` on success."""
    with atomic_path(dest) as tmp, open(tmp, mode, **kwargs) as f:
        yield f
