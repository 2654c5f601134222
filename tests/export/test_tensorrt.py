"""TensorRT engines: profile validation, sidecar checks and refusals run everywhere; building and
running engines against onnxruntime CPU needs tensorrt and a CUDA GPU (``gpu`` marker)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from asc_deploy.errors import AscError
from asc_deploy.export.tensorrt import EngineProfile, build_engine, check_sidecar, load_engine
from asc_deploy.labels import SAMPLE_RATE, num_frames
from asc_deploy.metadata import ModelMetadata
from asc_deploy.ort_runner import OnnxRuntimeRunner
from asc_deploy.stripes import tta_stripes
from asc_deploy.trt_runner import TensorRTRunner, available, cuda_device, sidecar_path

TRT_OK, TRT_REASON = available()
NOT_INSTALLED = "TensorRT is not installed: pip install 'asc-deploy[trt]'"
needs_trt = pytest.mark.skipif(not TRT_OK, reason=f"needs tensorrt and a CUDA GPU ({TRT_REASON})")
without_trt = pytest.mark.skipif(TRT_OK, reason="tensorrt and a CUDA GPU are present")

SIDECAR = {
    "tensorrt_version": "10.13.3.9",
    "gpu_name": "NVIDIA H100 80GB HBM3",
    "compute_capability": "9.0",
    "fp16": False,
    "strongly_typed": False,
    "profile": {"shapes": {"waveform": [[1, 44100], [8, 441000], [32, 1323000]]}},
    "onnx_sha256": "0" * 64,
    "engine_sha256": hashlib.sha256(b"plan").hexdigest(),
    "model": {"precision": "fp32", "variant": "single"},
}


def write_engine(folder: Path, data: bytes = b"plan", **changes: object) -> Path:
    """A fake engine file and its sidecar (SIDECAR with ``changes``)."""
    engine = folder / "model.engine"
    engine.write_bytes(data)
    sidecar_path(engine).write_text(json.dumps(SIDECAR | changes))
    return engine


# --- no TensorRT or no GPU: one clean line, nothing written ---------------------------------------

@without_trt
def test_build_without_tensorrt_or_gpu_fails_in_one_line_and_writes_nothing(tmp_path: Path) -> None:
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(b"not read: the environment is checked first")
    out = tmp_path / "engines"
    with pytest.raises(AscError) as err:
        build_engine(onnx_path, out / "model.engine", timing_cache=out / "trt.cache")
    message = str(err.value)
    assert message == TRT_REASON and "\n" not in message
    if importlib.util.find_spec("tensorrt") is None:
        assert message == NOT_INSTALLED
    assert sorted(tmp_path.rglob("*")) == [onnx_path]  # no engine, sidecar, cache or temporary file


@without_trt
def test_failed_build_keeps_the_previous_engine(tmp_path: Path) -> None:
    engine = write_engine(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(AscError):
        build_engine(tmp_path / "model.onnx", engine)
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_build_rejects_a_bad_workspace(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="workspace_mib"):
        build_engine(tmp_path / "model.onnx", tmp_path / "model.engine", workspace_mib=0)


# --- EngineProfile ------------------------------------------------------------------------------

def test_profile_defaults_and_shapes() -> None:
    profile = EngineProfile()
    assert profile.shapes(tta=False) == {"waveform": ((1, 44_100), (8, 441_000), (32, 1_323_000))}
    shapes = profile.shapes(tta=True, time_stripes=2, freq_stripes=3)
    assert shapes["time_stripes"] == ((1, 2, 2), (30, 2, 2), (30, 2, 2))
    assert shapes["freq_stripes"] == ((1, 3, 2), (30, 3, 2), (30, 3, 2))


@pytest.mark.parametrize("changes", [
    {"min_batch": 0},
    {"opt_batch": 64},
    {"min_batch": -2, "opt_batch": -1, "max_batch": -1},
    {"min_samples": 500_000},
    {"max_samples": 100_000},
    {"min_passes": 0},
    {"opt_passes": 31},
])
def test_profile_rejects_bad_bounds(changes: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="engine profile"):
        EngineProfile(**changes)


# --- sidecar checks (pure) ----------------------------------------------------------------------

def test_check_sidecar_accepts_the_same_tensorrt_and_gpu() -> None:
    check_sidecar(SIDECAR, "10.13.3.9", "9.0")


def test_check_sidecar_refuses_another_tensorrt_version() -> None:
    with pytest.raises(AscError, match=r"^m\.engine\.json: .*built with TensorRT 10\.13\.3\.9, running TensorRT 10\.14\.1\.48; rebuild"):
        check_sidecar(SIDECAR, "10.14.1.48", "9.0", source="m.engine.json")


def test_check_sidecar_refuses_another_gpu_architecture() -> None:
    with pytest.raises(AscError, match=r"built for compute capability 9\.0 \(NVIDIA H100 80GB HBM3\), this GPU has 8\.6"):
        check_sidecar(SIDECAR, "10.13.3.9", "8.6")


def test_check_sidecar_reports_every_mismatch_in_one_line() -> None:
    with pytest.raises(AscError) as err:
        check_sidecar(SIDECAR, "11.0.0", "12.0")
    assert "TensorRT 11.0.0" in str(err.value) and "this GPU has 12.0" in str(err.value) and "\n" not in str(err.value)


def test_check_sidecar_refuses_missing_keys() -> None:
    incomplete = {k: v for k, v in SIDECAR.items() if k not in ("compute_capability", "model")}
    with pytest.raises(AscError, match="lacks compute_capability, model"):
        check_sidecar(incomplete, "10.13.3.9", "9.0")


def test_load_engine_refuses_a_missing_sidecar(tmp_path: Path) -> None:
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"plan")
    with pytest.raises(AscError, match=r"model\.engine\.json: no engine sidecar"):
        load_engine(engine)


def test_load_engine_refuses_a_malformed_sidecar(tmp_path: Path) -> None:
    engine = write_engine(tmp_path)
    sidecar_path(engine).write_text("{not json")
    with pytest.raises(AscError, match="not valid JSON"):
        load_engine(engine)


def test_load_engine_refuses_an_engine_its_sidecar_does_not_describe(tmp_path: Path) -> None:
    engine = write_engine(tmp_path, data=b"another plan")
    with pytest.raises(AscError, match="sha256 differs"):
        load_engine(engine)


# --- runner without TensorRT --------------------------------------------------------------------

def test_runner_module_imports_without_tensorrt() -> None:
    code = "import sys, asc_deploy.trt_runner as r; ok, reason = r.available(); assert 'tensorrt' not in sys.modules or ok"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_available_reports_why() -> None:
    ok, reason = available()
    assert isinstance(ok, bool) and (reason == "") == ok and "\n" not in reason
    if importlib.util.find_spec("tensorrt") is None:
        assert (ok, reason) == (False, NOT_INSTALLED)


@without_trt
def test_runner_refuses_to_activate_with_the_reason(tmp_path: Path) -> None:
    runner = TensorRTRunner(write_engine(tmp_path))
    assert runner.name == "tensorrt"
    with pytest.raises(AscError) as err, runner:
        pass
    assert str(err.value) == TRT_REASON
    runner.deactivate()  # harmless when not active
    with pytest.raises(RuntimeError, match="not active"):
        runner.infer({})


# --- GPU: engines against onnxruntime CPU -------------------------------------------------------

SMALL = EngineProfile(min_batch=1, opt_batch=2, max_batch=4, min_samples=SAMPLE_RATE, opt_samples=441_000, max_samples=441_000,
                      min_passes=1, opt_passes=4, max_passes=4)


def waveforms(batch: int, seconds: float, seed: int) -> np.ndarray:
    """(batch, samples) float32: noise over a 440 Hz tone."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    noise = np.random.default_rng(seed).standard_normal((batch, t.size))
    return (0.05 * noise + 0.1 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)


def run_both(onnx_path: Path, engine_path: Path, feeds: list[dict[str, np.ndarray]]) -> list[tuple[dict, dict]]:
    with OnnxRuntimeRunner(onnx_path, "cpu") as reference, TensorRTRunner(engine_path) as engine:
        return [(reference.infer(feed), engine.infer(feed)) for feed in feeds]


FEEDS = [{"waveform": waveforms(2, 10.0, seed=0)}, {"waveform": waveforms(1, 3.0, seed=1)}, {"waveform": waveforms(4, 10.0, seed=2)}]


@pytest.fixture(scope="module")
def timing_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One timing cache file shared by the module's builds (each build reads and rewrites it)."""
    return tmp_path_factory.mktemp("trt") / "timing.cache"


@pytest.fixture(scope="module")
def fp32_engine(exported, timing_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_engine(exported("ce", "fp32"), tmp_path_factory.mktemp("trt") / "fp32.engine", SMALL, timing_cache=timing_cache)


@pytest.mark.gpu
@needs_trt
def test_fp32_engine_matches_onnxruntime(exported, fp32_engine: Path, timing_cache: Path) -> None:
    sidecar = json.loads(sidecar_path(fp32_engine).read_text())
    assert sidecar["fp16"] is False and sidecar["model"]["precision"] == "fp32"
    assert sidecar["compute_capability"] == cuda_device().compute_capability and timing_cache.is_file()
    for reference, got in run_both(exported("ce", "fp32"), fp32_engine, FEEDS):
        assert got["probs"].shape == reference["probs"].shape and got["probs"].dtype == np.float32
        assert np.abs(got["probs"] - reference["probs"]).max() <= 1e-3


@pytest.mark.gpu
@needs_trt
def test_fp16_engine_matches_onnxruntime(exported, timing_cache: Path, tmp_path: Path) -> None:
    onnx_path = exported("ce", "fp16")
    engine = build_engine(onnx_path, tmp_path / "fp16.engine", SMALL, fp16=True, timing_cache=timing_cache)
    assert json.loads(sidecar_path(engine).read_text())["fp16"] is True
    for reference, got in run_both(onnx_path, engine, FEEDS):
        np.testing.assert_array_equal(got["logits"].argmax(-1), reference["logits"].argmax(-1))
        assert np.abs(got["logits"] - reference["logits"]).max() <= 0.35


@pytest.mark.gpu
@needs_trt
def test_tta_engine_matches_onnxruntime(exported, timing_cache: Path, tmp_path: Path) -> None:
    onnx_path = exported("ce", "fp32", tta=True)
    profile = EngineProfile(min_batch=1, opt_batch=2, max_batch=2, min_samples=441_000, opt_samples=441_000, max_samples=441_000,
                            min_passes=1, opt_passes=4, max_passes=4)
    engine = build_engine(onnx_path, tmp_path / "tta.engine", profile, timing_cache=timing_cache)
    metadata = ModelMetadata.from_props(json.loads(sidecar_path(engine).read_text())["model"])
    time_stripes, freq_stripes = tta_stripes(metadata.spec_aug, 4, num_frames(441_000), metadata.mel_bins, seed=0)
    feed = {"waveform": waveforms(2, 10.0, seed=3), "time_stripes": time_stripes, "freq_stripes": freq_stripes}
    [(reference, got)] = run_both(onnx_path, engine, [feed])
    assert np.abs(got["probs"] - reference["probs"]).max() <= 1e-3


@pytest.mark.gpu
@needs_trt
def test_engine_refusals_name_the_problem(exported, fp32_engine: Path, tmp_path: Path) -> None:
    with pytest.raises(AscError, match="an fp16 engine needs an ONNX exported with precision fp16, this one is fp32"):
        build_engine(exported("ce", "fp32"), tmp_path / "x.engine", SMALL, fp16=True)
    assert not (tmp_path / "x.engine").exists()
    with TensorRTRunner(fp32_engine) as runner:
        with pytest.raises(AscError, match="outside the engine's profile"):
            runner.infer({"waveform": waveforms(5, 1.0, seed=4)})  # max_batch is 4
        with pytest.raises(AscError, match="takes inputs"):
            runner.infer({"audio": waveforms(1, 1.0, seed=4)})
