"""Optional extras: a command checks that the extras it needs are installed before it does any work.

The packages of each extra are read from this distribution's own metadata (``Requires-Dist`` lines
with an ``extra == "name"`` marker, i.e. pyproject.toml), so the check cannot drift from what
``pip install 'asc-deploy[name]'`` installs. Only presence is checked, not versions.
"""

from __future__ import annotations

import importlib.util
import re
from importlib import metadata

from asc_deploy.errors import AscError

DISTRIBUTION = "asc-deploy"
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_EXTRA_MARKER = re.compile(r"""extra\s*==\s*['"]([^'"]+)['"]""")


def extra_requirements(extra: str) -> list[str]:
    """Distribution names that ``asc-deploy[extra]`` installs ([] when the project is not installed)."""
    try:
        requires = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:  # run from a source tree: nothing to check against
        return []
    names = []
    for requirement in requires:
        requirement_part, _, marker = requirement.partition(";")
        if extra in _EXTRA_MARKER.findall(marker) and (name := _NAME.match(requirement_part)):
            names.append(name.group(1))
    return names


def _installed(name: str) -> bool:
    """A distribution pip knows, or a module of that name (TensorRT from Debian packages on a Jetson has no
    pip metadata)."""
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return importlib.util.find_spec(name.replace("-", "_")) is not None
    return True


def missing_distributions(extra: str) -> list[str]:
    """The distributions of ``extra`` that are not installed."""
    return [name for name in extra_requirements(extra) if not _installed(name)]


def require_extras(command: str, *extras: str) -> None:
    """Raise :class:`AscError` naming the extras to install when any of their packages is missing."""
    missing = {extra: names for extra in extras if (names := missing_distributions(extra))}
    if missing:
        packages = ", ".join(name for names in missing.values() for name in names)
        raise AscError(f"{command} needs the optional extra{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                       f"({packages} not installed): pip install -c constraints.txt 'asc-deploy[{','.join(missing)}]'")
