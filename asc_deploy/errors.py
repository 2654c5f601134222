"""The one user-error type of asc-deploy.

Every problem caused by input (a file, an option, a config) raises :class:`AscError` with a
message that names the file and the problem. Command-line entry points turn it into one line on
stderr and exit code 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class AscError(Exception):
    """A problem with user input: a bad file, a bad option, a mismatching model."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)
