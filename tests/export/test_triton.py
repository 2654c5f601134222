"""Triton model repository: config.pbtxt parsed with Triton's own protobuf schema (tritonclient)."""

from __future__ import annotations

import hashlib
import json
import shutil

import onnx
import pytest

from asc_deploy.errors import AscError
from asc_deploy.export.triton import MAX_QUEUE_DELAY_US, write_triton_repository

model_config_pb2 = pytest.importorskip(
    "tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] (Triton's model config schema) is not installed"
)
text_format = pytest.importorskip("google.protobuf.text_format")


@pytest.fixture(scope="module")
def onnx_model(exported):
    return exported()


def labels_of(onnx_path) -> list[str]:
    props = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    return json.loads(props["labels"])


def fake_sidecar(onnx_path, onnx_sha256=None, max_batch=32) -> dict:
    """The keys of export/tensorrt.py's engine sidecar that the Triton writer reads."""
    return {
        "tensorrt_version": "10.0.1", "gpu_name": "NVIDIA L4", "compute_capability": "8.9", "fp16": False,
        "profile": {"shapes": {"waveform": [[1, 44100], [8, 441000], [max_batch, 441000]]}},
        "onnx_sha256": onnx_sha256 or hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
    }


def parse_config(model_dir):
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def test_onnx_repository(onnx_model, tmp_path):
    model_dir = write_triton_repository(onnx_model, tmp_path / "repo", max_batch_size=8)
    assert model_dir == tmp_path / "repo" / "asc_sp4asc"
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["asc_sp4asc"]  # no staging left
    assert sorted(str(p.relative_to(model_dir)) for p in model_dir.rglob("*")) == [
        "1", "1/model.onnx", "config.pbtxt", "labels.txt",
    ]
    assert (model_dir / "1" / "model.onnx").read_bytes() == onnx_model.read_bytes()
    labels = labels_of(onnx_model)
    assert len(labels) == 10
    assert (model_dir / "labels.txt").read_text().splitlines() == labels

    c = parse_config(model_dir)
    assert c.name == "asc_sp4asc"
    assert c.platform == "onnxruntime_onnx" and c.backend == ""
    assert c.default_model_filename == "model.onnx"
    assert not c.cc_model_filenames
    assert c.max_batch_size == 8
    assert [(i.name, i.data_type, list(i.dims)) for i in c.input] == [("waveform", model_config_pb2.TYPE_FP32, [-1])]
    assert [(o.name, o.data_type, list(o.dims), o.label_filename) for o in c.output] == [
        ("logits", model_config_pb2.TYPE_FP32, [10], ""),
        ("probs", model_config_pb2.TYPE_FP32, [10], "labels.txt"),
    ]
    assert c.HasField("dynamic_batching")
    assert list(c.dynamic_batching.preferred_batch_size) == [4, 8]
    assert c.dynamic_batching.max_queue_delay_microseconds == MAX_QUEUE_DELAY_US > 0
    assert [(g.count, g.kind) for g in c.instance_group] == [(1, model_config_pb2.ModelInstanceGroup.KIND_CPU)]
    assert not c.HasField("optimization")
    assert json.loads(c.parameters["labels"].string_value) == labels  # what asc_deploy.client reads


@pytest.mark.parametrize("fp16, precision", [(True, "FP16"), (False, "FP32")])
def test_tensorrt_accelerator(onnx_model, tmp_path, fp16, precision):
    c = parse_config(write_triton_repository(onnx_model, tmp_path, model_name="asc-trt.v1", fp16=fp16, trt_accelerator=True))
    assert c.name == "asc-trt.v1" and c.platform == "onnxruntime_onnx" and c.max_batch_size == 32
    assert list(c.dynamic_batching.preferred_batch_size) == [16, 32]
    assert [(g.count, g.kind) for g in c.instance_group] == [(1, model_config_pb2.ModelInstanceGroup.KIND_GPU)]
    assert not c.optimization.execution_accelerators.cpu_execution_accelerator
    [acc] = c.optimization.execution_accelerators.gpu_execution_accelerator
    assert acc.name == "tensorrt"
    assert dict(acc.parameters) == {
        "precision_mode": precision,
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": "/tmp/triton_trt_cache/asc-trt.v1",
    }


def test_tensorrt_engine(onnx_model, tmp_path):
    engine = tmp_path / "asc.engine"
    engine.write_bytes(b"not really a TensorRT engine")
    sidecar = fake_sidecar(onnx_model)
    (tmp_path / "asc.engine.json").write_text(json.dumps(sidecar))
    model_dir = write_triton_repository(onnx_model, tmp_path / "repo", engine_path=engine)
    assert (model_dir / "1" / "model.plan").read_bytes() == engine.read_bytes()
    assert (model_dir / "1" / "model.onnx").read_bytes() == onnx_model.read_bytes()
    c = parse_config(model_dir)
    assert c.platform == "tensorrt_plan"
    assert c.default_model_filename == "model.plan"
    assert dict(c.cc_model_filenames) == {"8.9": "model.plan"}
    assert [(g.count, g.kind) for g in c.instance_group] == [(1, model_config_pb2.ModelInstanceGroup.KIND_GPU)]
    assert not c.HasField("optimization")
    assert [o.label_filename for o in c.output] == ["", "labels.txt"]


def test_engine_sidecar_checks(onnx_model, tmp_path):
    engine = tmp_path / "asc.engine"
    engine.write_bytes(b"plan")
    sidecar = tmp_path / "asc.engine.json"
    sidecar.write_text(json.dumps(fake_sidecar(onnx_model, onnx_sha256="0" * 64)))
    with pytest.raises(AscError, match="another ONNX file"):
        write_triton_repository(onnx_model, tmp_path / "repo", engine_path=engine)
    sidecar.write_text(json.dumps(fake_sidecar(onnx_model, max_batch=16)))
    with pytest.raises(AscError, match="batches up to 16, below max_batch_size 32"):
        write_triton_repository(onnx_model, tmp_path / "repo", engine_path=engine)
    assert write_triton_repository(onnx_model, tmp_path / "repo", engine_path=engine, max_batch_size=16).is_dir()
    sidecar.write_text(json.dumps({"compute_capability": "9.0"}))  # minimal sidecar: only the architecture
    c = parse_config(write_triton_repository(onnx_model, tmp_path / "repo", engine_path=engine, overwrite=True))
    assert dict(c.cc_model_filenames) == {"9.0": "model.plan"}


def test_overwrite(onnx_model, tmp_path):
    model_dir = write_triton_repository(onnx_model, tmp_path)
    with pytest.raises(AscError, match="not empty"):
        write_triton_repository(onnx_model, tmp_path, max_batch_size=4)
    assert parse_config(model_dir).max_batch_size == 32  # untouched
    (model_dir / "stale.txt").write_text("old")
    write_triton_repository(onnx_model, tmp_path, max_batch_size=4, overwrite=True)
    assert parse_config(model_dir).max_batch_size == 4
    assert not (model_dir / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["asc_sp4asc"]
    shutil.rmtree(model_dir)
    model_dir.mkdir()  # an empty directory is fine without overwrite
    write_triton_repository(onnx_model, tmp_path)
    assert (model_dir / "config.pbtxt").is_file()


def test_bad_inputs(onnx_model, tmp_path):
    with pytest.raises(AscError, match="no such ONNX file"):
        write_triton_repository(tmp_path / "missing.onnx", tmp_path / "repo")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff\x00 not a protobuf")
    with pytest.raises(AscError, match="not an ONNX model"):
        write_triton_repository(garbage, tmp_path / "repo")

    model = onnx.load(str(onnx_model))
    del model.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(model, str(foreign))
    with pytest.raises(AscError, match="not an asc-deploy model"):
        write_triton_repository(foreign, tmp_path / "repo")

    model = onnx.load(str(onnx_model))
    next(p for p in model.metadata_props if p.key == "variant").value = "tta"
    tta = tmp_path / "tta.onnx"
    onnx.save(model, str(tta))
    with pytest.raises(AscError, match="variant is not supported"):
        write_triton_repository(tta, tmp_path / "repo")

    with pytest.raises(AscError, match="max_batch_size"):
        write_triton_repository(onnx_model, tmp_path / "repo", max_batch_size=0)
    with pytest.raises(AscError, match="model name"):
        write_triton_repository(onnx_model, tmp_path / "repo", model_name="../escape")
    engine = tmp_path / "asc.engine"
    with pytest.raises(AscError, match="no such TensorRT engine"):
        write_triton_repository(onnx_model, tmp_path / "repo", engine_path=engine)
    engine.write_bytes(b"plan")
    with pytest.raises(AscError, match="sidecar"):
        write_triton_repository(onnx_model, tmp_path / "repo", engine_path=engine)
    (tmp_path / "asc.engine.json").write_text(json.dumps({"compute_capability": "sm_89"}))
    with pytest.raises(AscError, match="bad compute_capability"):
        write_triton_repository(onnx_model, tmp_path / "repo", engine_path=engine)
    with pytest.raises(AscError, match="not both"):
        write_triton_repository(onnx_model, tmp_path / "repo", engine_path=engine, trt_accelerator=True)
    assert not (tmp_path / "repo").exists()  # nothing written for refused inputs
