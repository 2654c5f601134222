"""Shared fixtures: the SP4ASC reference material in ../shared/sp4asc (skipped where absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.shared_data import SP4ASC, checkpoint_path


@pytest.fixture(scope="session")
def reference() -> dict[str, np.ndarray]:
    if not SP4ASC.is_dir():
        pytest.skip("../shared/sp4asc is absent")
    with np.load(SP4ASC / "reference.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def tta_reference() -> dict[str, np.ndarray]:
    if not SP4ASC.is_dir():
        pytest.skip("../shared/sp4asc is absent")
    with np.load(SP4ASC / "tta_reference.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """exported(tag, precision, tta) -> path of an ONNX export of an official checkpoint (cached)."""
    if not SP4ASC.is_dir():
        pytest.skip("../shared/sp4asc is absent")
    from asc_deploy.export.onnx_export import export_onnx

    folder, cache = tmp_path_factory.mktemp("onnx"), {}

    def get(tag: str = "ce", precision: str = "fp32", tta: bool = False) -> Path:
        key = (tag, precision, tta)
        if key not in cache:
            cache[key] = export_onnx(checkpoint_path(tag), folder / f"{tag}.{precision}.{'tta' if tta else 'single'}.onnx", precision, tta)
        return cache[key]

    return get
