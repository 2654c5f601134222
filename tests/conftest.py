"""Shared fixtures: the SP4ASC reference material in ../shared/sp4asc (skipped where absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.shared_data import SP4ASC, checkpoint_path

RANDOM_MODEL_SEED = 20240607


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
    """exported(tag, precision, tta, schedule) -> path of an ONNX export of an official checkpoint (cached)."""
    if not SP4ASC.is_dir():
        pytest.skip("../shared/sp4asc is absent")
    from asc_deploy.export.onnx_export import export_onnx

    folder, cache = tmp_path_factory.mktemp("onnx"), {}

    def get(tag: str = "ce", precision: str = "fp32", tta: bool = False, schedule: str = "gpu") -> Path:
        key = (tag, precision, tta, schedule)
        if key not in cache:
            name = f"{tag}.{precision}.{'tta' if tta else 'single'}.{schedule}.onnx"
            cache[key] = export_onnx(checkpoint_path(tag), folder / name, precision, tta, schedule)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def stream_model(tmp_path_factory):
    """stream_model(tta, schedule) -> an asc-export --stream model of the official "ce" checkpoint (cached)."""
    if not SP4ASC.is_dir():
        pytest.skip("../shared/sp4asc is absent")
    from asc_deploy.export.onnx_export import export_onnx

    folder, cache = tmp_path_factory.mktemp("stream"), {}

    def get(tta: bool = False, schedule: str = "gpu") -> Path:
        if (tta, schedule) not in cache:
            cache[tta, schedule] = export_onnx(checkpoint_path("ce"), folder / f"ce.{tta}.{schedule}.onnx", tta=tta,
                                               schedule=schedule, stream=True)
        return cache[tta, schedule]

    return get


def _export_random(base: Path) -> tuple[Path, Path]:
    """(checkpoint, ONNX) of a seeded random Cnn6 under ``base``, exported once per session."""
    ckpt, model = base / "random.pth", base / "random.onnx"
    if not model.exists():
        import torch

        from asc_deploy.export.onnx_export import export_onnx
        from asc_deploy.models import Cnn6

        base.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(RANDOM_MODEL_SEED)
        torch.save({"net": Cnn6().state_dict()}, ckpt)
        export_onnx(ckpt, model)
    return ckpt, model


@pytest.fixture(scope="session")
def random_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An asc-export ONNX (fp32, single pass) of a seeded random Cnn6; needs no ../shared."""
    return _export_random(tmp_path_factory.getbasetemp() / "asc-random-model")[1]


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SP4ASC-layout checkpoint ``{"net": state_dict}`` the random model was exported from."""
    return _export_random(tmp_path_factory.getbasetemp() / "asc-random-model")[0]


@pytest.fixture(scope="session")
def calibration_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic data set (1 clip per class and device, 1 s) whose train split calibrates int8."""
    from asc_deploy.train.synth import make_dataset

    return make_dataset(tmp_path_factory.mktemp("calibration") / "synth", 1, 1.0, 0)


@pytest.fixture(scope="session")
def int8(calibration_dir, tmp_path_factory):
    """int8(tta, schedule) -> path of an int8 model of the official "ce" checkpoint, exported and
    quantised as asc-export --int8 does (cached)."""
    from asc_deploy.export.quantize import export_int8

    folder, cache = tmp_path_factory.mktemp("int8"), {}

    def get(tta: bool = False, schedule: str = "gpu") -> Path:
        if (tta, schedule) not in cache:
            cache[tta, schedule] = export_int8(checkpoint_path("ce"), folder / f"int8.{tta}.{schedule}.onnx", calibration_dir, tta,
                                               schedule, max_clips=8)
        return cache[tta, schedule]

    return get
