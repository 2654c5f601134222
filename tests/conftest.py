"""Shared fixtures: the SP4ASC reference material in ../shared/sp4asc (skipped where absent)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.shared_data import SP4ASC, checkpoint_path

RANDOM_MODEL_SEED = 20240607


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One torch thread: tests share the machine's cores, and oversubscribed threads stall."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
def ort_model(exported, tmp_path_factory) -> Path:
    """The fp32 single-pass ONNX export of the official "ce" checkpoint in ORT format (asc-export --format ort)."""
    from asc_deploy.export.ort_format import convert_to_ort

    return convert_to_ort(exported("ce"), tmp_path_factory.mktemp("ort") / "ce.fp32.ort")


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


HOLDOUT_FRACTION = 0.3


@pytest.fixture(scope="session")
def held_out_model(calibration_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An asc-deploy checkpoint with a calibration hold-out of ``calibration_dir``'s training split
    and some skill, made in seconds: a seeded random Cnn6 whose last layer is fitted by ridge
    regression on the other training clips (about 38 % held-out accuracy, overconfident: the
    fitted temperature is about 4). Trained with SpecAugment [8, 1, 16, 1], as recorded."""
    import torch

    from asc_deploy.models import Cnn6, LogMelFrontend
    from asc_deploy.train.dataset import load_clip, read_split
    from asc_deploy.train.holdout import holdout_split

    split = holdout_split(read_split(calibration_dir, "train"), HOLDOUT_FRACTION, 0)
    torch.manual_seed(RANDOM_MODEL_SEED)
    cnn, frontend = Cnn6().eval(), LogMelFrontend()
    with torch.no_grad():
        logmel = frontend(torch.from_numpy(np.stack([load_clip(c) for c in split.train])))
        pooled = cnn.forward_features(cnn.normalize(logmel)).mean(dim=3)
        hidden = torch.relu(cnn.fc1(pooled.amax(dim=2) + pooled.mean(dim=2))).double()
        mean, std = hidden.mean(0), hidden.std(0) + 1e-6
        z = (hidden - mean) / std
        targets = 10 * torch.nn.functional.one_hot(torch.tensor([c.label for c in split.train]), 10).double() - 1
        weights = torch.linalg.solve(z.T @ z + 0.01 * len(z) * torch.eye(z.shape[1], dtype=torch.float64), z.T @ targets)
        cnn.fc2.weight.copy_((weights / std[:, None]).T)
        cnn.fc2.bias.copy_(-(mean / std) @ weights)
    path = tmp_path_factory.mktemp("held-out") / "model.pth"
    torch.save({"format": "asc-deploy", "net": cnn.state_dict(), "config": {"spec_aug": [8, 1, 16, 1], "holdout": HOLDOUT_FRACTION},
                "holdout": split.record()}, path)
    return path
