"""A calibrated checkpoint exports with its temperature in the graph (logits / T before every
softmax) and in metadata_props; every graph form then equals the calibrated torch model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from asc_deploy.errors import AscError
from asc_deploy.export.onnx_export import export_onnx
from asc_deploy.metadata import ModelMetadata
from asc_deploy.models import LogMelFrontend, TTAClassifier, WaveformClassifier, build_model, load_checkpoint
from asc_deploy.runtime import Classifier, read_model_metadata
from asc_deploy.stripes import tta_stripes
from asc_deploy.train.dataset import load_clip, read_split

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TEMPERATURE, TTA_TEMPERATURE = 2.0, 3.0
PASSES = 4


@pytest.fixture(scope="module")
def calibrated(held_out_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The held-out model with a calibration record as asc-calibrate writes it (fixed temperatures)."""
    payload = torch.load(held_out_model, map_location="cpu", weights_only=True)
    payload["calibration"] = {"method": "temperature", "temperature": TEMPERATURE, "tta_temperature": TTA_TEMPERATURE, "nb_aug": PASSES}
    path = tmp_path_factory.mktemp("calibrated") / "calibrated.pth"
    torch.save(payload, path)
    return path


@pytest.fixture(scope="module")
def waves(calibration_dir: Path) -> np.ndarray:
    """Four 1 s evaluate clips of different classes, (4, 44100) float32."""
    clips = read_split(calibration_dir, "evaluate")
    return np.stack([load_clip(clips[i]) for i in (0, 25, 50, 80)])


def stripes(waves: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return tta_stripes((8, 1, 16, 1), PASSES, waves.shape[1] // 1024 + 1, 256, 0)


def run(path: Path, feed: dict[str, np.ndarray], output: str = "probs") -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run([output], feed)[0]


def torch_reference(checkpoint: Path, waves: np.ndarray, tta: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """(probs, logits) of the calibrated model as trained (nothing folded), in torch; logits for single pass only."""
    loaded = load_checkpoint(checkpoint)
    with torch.no_grad():
        if tta:
            model = TTAClassifier(LogMelFrontend(), build_model(loaded), temperature=loaded.temperature(True)).eval()
            time, freq = (torch.from_numpy(s) for s in stripes(waves))
            return model(torch.from_numpy(waves), time, freq).numpy(), None
        model = WaveformClassifier(LogMelFrontend(), build_model(loaded), temperature=loaded.temperature(False)).eval()
        logits, probs = model(torch.from_numpy(waves))
        return probs.numpy(), logits.numpy()


@pytest.mark.parametrize("tta, schedule", [(False, "gpu"), (False, "cpu"), (True, "gpu"), (True, "cpu")])
def test_calibrated_onnx_equals_calibrated_torch(calibrated: Path, held_out_model: Path, waves: np.ndarray, tmp_path: Path,
                                                 tta: bool, schedule: str) -> None:
    path = export_onnx(calibrated, tmp_path / "model.onnx", "fp32", tta, schedule)
    feed = {"waveform": waves} | (dict(zip(("time_stripes", "freq_stripes"), stripes(waves))) if tta else {})
    probs = run(path, feed)
    expected, logits = torch_reference(calibrated, waves, tta)
    assert np.abs(probs - expected).max() <= 1e-5
    uncalibrated, _ = torch_reference(held_out_model, waves, tta)
    assert np.abs(probs - uncalibrated).max() > 0.05  # the temperature is really applied (confidence drops)
    assert (probs.max(axis=1) < uncalibrated.max(axis=1)).all()
    assert read_model_metadata(path).temperature == (TTA_TEMPERATURE if tta else TEMPERATURE)
    if not tta:  # logits output: the scaled logits, softmax(logits) == probs; raw = logits x T
        scaled = run(path, feed, "logits")
        assert np.abs(scaled - logits).max() <= 1e-4
        raw = run(export_onnx(held_out_model, tmp_path / "raw.onnx", "fp32", tta, schedule), feed, "logits")
        assert np.abs(scaled * TEMPERATURE - raw).max() <= 1e-4


def test_calibrated_fp16_and_runtime(calibrated: Path, waves: np.ndarray, tmp_path: Path) -> None:
    path = export_onnx(calibrated, tmp_path / "fp16.onnx", "fp16", True)
    feed = {"waveform": waves} | dict(zip(("time_stripes", "freq_stripes"), stripes(waves)))
    expected, _ = torch_reference(calibrated, waves, True)
    assert np.abs(run(path, feed) - expected).max() <= 0.01
    meta = read_model_metadata(path)
    assert (meta.precision, meta.temperature, meta.calibrated) == ("fp16", TTA_TEMPERATURE, True)
    single = export_onnx(calibrated, tmp_path / "single.onnx")
    expected, _ = torch_reference(calibrated, waves, False)
    runtime = Classifier(single).probabilities(waves)  # asc-predict's path reports calibrated probabilities
    assert np.abs(runtime - expected).max() <= 1e-5


def test_triton_repository_serves_the_calibrated_graph(calibrated: Path, tmp_path: Path) -> None:
    from asc_deploy.export.triton import write_triton_repository

    model_dir = write_triton_repository(export_onnx(calibrated, tmp_path / "model.onnx"), tmp_path / "repo")
    assert read_model_metadata(model_dir / "1" / "model.onnx").temperature == TEMPERATURE


def test_calibrated_int8_divides_the_same_logits(calibrated: Path, held_out_model: Path, calibration_dir: Path, waves: np.ndarray,
                                                  tmp_path: Path) -> None:
    """The temperature stays a float Div after the (float) head: the int8 graph of the calibrated
    checkpoint gives the uncalibrated int8 graph's logits divided by T."""
    from asc_deploy.export.quantize import export_int8

    path = export_int8(calibrated, tmp_path / "int8.onnx", calibration_dir, max_clips=4)
    meta = read_model_metadata(path)
    assert (meta.precision, meta.temperature) == ("int8", TEMPERATURE)
    raw = run(export_int8(held_out_model, tmp_path / "raw.int8.onnx", calibration_dir, max_clips=4), {"waveform": waves}, "logits")
    scaled = run(path, {"waveform": waves}, "logits")
    assert np.abs(scaled * TEMPERATURE - raw).max() <= 1e-4
    probs = run(path, {"waveform": waves})
    assert np.allclose(probs, np.exp(scaled) / np.exp(scaled).sum(axis=1, keepdims=True), atol=1e-6)


def test_uncalibrated_export_is_unchanged(held_out_model: Path, tmp_path: Path) -> None:
    for tta in (False, True):
        model = onnx.load(str(export_onnx(held_out_model, tmp_path / f"{tta}.onnx", tta=tta)))
        assert not [n for n in model.graph.node if "calibration" in n.name or n.op_type == "Div" and "scorer" in n.name]
        assert not [i for i in model.graph.initializer if "temperature" in i.name]
        props = {p.key: p.value for p in model.metadata_props}
        assert props["temperature"] == "1.0" and not ModelMetadata.from_props(props).calibrated


def test_tta_export_of_a_single_pass_calibration_is_refused(held_out_model: Path, tmp_path: Path) -> None:
    payload = torch.load(held_out_model, map_location="cpu", weights_only=True)
    payload["calibration"] = {"temperature": 1.5, "tta_temperature": None}
    torch.save(payload, tmp_path / "single-only.pth")
    assert read_model_metadata(export_onnx(tmp_path / "single-only.pth", tmp_path / "ok.onnx")).temperature == 1.5
    with pytest.raises(AscError, match="calibrated for the single-pass model only"):
        export_onnx(tmp_path / "single-only.pth", tmp_path / "tta.onnx", tta=True)
    assert not (tmp_path / "tta.onnx").exists()


def test_temperature_metadata_round_trip_and_bad_values() -> None:
    base = dict(labels=tuple("abcdefghij"), sample_rate=44100, n_fft=2048, hop_length=1024, mel_bins=256, clip_seconds=10.0,
                precision="fp32", variant="single", spec_aug=(), targets=(), checkpoint_sha256="0", package_version="0")
    for temperature in (1.0, 0.731, tuple(np.linspace(0.5, 2, 10).tolist())):
        meta = ModelMetadata(**base, temperature=temperature)
        assert ModelMetadata.from_props(meta.to_props()) == meta
    props = ModelMetadata(**base).to_props()
    assert props["temperature"] == "1.0"
    del props["temperature"]  # files written before the key existed
    assert ModelMetadata.from_props(props).temperature == 1.0
    for bad in ("0", "-2", "NaN", "[1, 2]", "\"hot\"", "true"):
        with pytest.raises(AscError, match="temperature must be"):
            ModelMetadata.from_props(props | {"temperature": bad}, "m.onnx")
