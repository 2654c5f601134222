"""int8 static quantisation of the CNN (export/quantize.py): what is quantised, what stays float,
how close it stays to fp32, and early rejection of bad arguments."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from asc_deploy.export.quantize import FRONTEND_SCOPE, needs_reduce_range, quantize_int8
from asc_deploy.metadata import ModelMetadata
from tests.shared_data import checkpoint_path, needs_shared

pytestmark = needs_shared
QDQ = {"QuantizeLinear", "DequantizeLinear"}


def props(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


@pytest.mark.parametrize("tta", [False, True])
def test_int8_quantises_the_cnn_only(tta, int8, exported):
    fp32, quantized = onnx.load(str(exported("ce", "fp32", tta))), onnx.load(str(int8(tta)))
    nodes = {n.name: n for n in quantized.graph.node}
    qdq = [n for n in quantized.graph.node if n.op_type in QDQ]
    assert qdq and not [n.name for n in qdq if n.name.startswith(FRONTEND_SCOPE)]
    # every frontend node is still there, same op, reading no dequantised tensor
    dequantised = {n.output[0] for n in qdq if n.op_type == "DequantizeLinear"}
    for node in fp32.graph.node:
        if node.name.startswith(FRONTEND_SCOPE):
            assert nodes[node.name].op_type == node.op_type, node.name
            assert not set(nodes[node.name].input) & dequantised, node.name
    types = {i.name: i.data_type for i in quantized.graph.initializer}
    frontend = {i.name: i.data_type for i in fp32.graph.initializer if i.name.startswith("frontend.")}
    assert frontend and {name: types[name] for name in frontend} == frontend  # float32 buffers stay float32
    assert any(t == onnx.TensorProto.INT8 for t in types.values())  # the quantised convolution weights
    io = [*quantized.graph.input, *quantized.graph.output]
    assert [(v.name, v.type.tensor_type.elem_type) for v in io] == [(v.name, v.type.tensor_type.elem_type) for v in [*fp32.graph.input, *fp32.graph.output]]
    # metadata: that of the fp32 model with precision int8
    assert props(quantized) == props(fp32) | {"precision": "int8"}
    assert ModelMetadata.from_props(props(quantized)).precision == "int8"


def test_int8_outputs_stay_close_to_fp32(int8, exported, reference):
    fp32 = ort.InferenceSession(str(exported("ce")), providers=["CPUExecutionProvider"])
    quantized = ort.InferenceSession(str(int8()), providers=["CPUExecutionProvider"])
    worst = 0.0
    for name in list(reference["names"])[:4]:
        feed = {"waveform": reference[f"wave/{name}"][None]}
        a, b = fp32.run(["probs"], feed)[0], quantized.run(["probs"], feed)[0]
        assert a.argmax() == b.argmax(), name
        worst = max(worst, float(np.abs(a - b).max()))
    assert worst <= 0.1
    print(f"int8 vs fp32: max |probability difference| {worst:.4f} on 4 reference clips")


def test_int8_tta_model_runs_and_agrees(int8, exported, reference):
    from asc_deploy.stripes import tta_stripes

    wave = reference["wave/10_short1s"][None]
    time, freq = tta_stripes((128, 2, 32, 2), 3, 44, 256, 0)
    feed = {"waveform": wave, "time_stripes": time, "freq_stripes": freq}
    a = ort.InferenceSession(str(exported("ce", "fp32", True)), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    b = ort.InferenceSession(str(int8(True)), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    assert b.shape == a.shape and np.allclose(b.sum(-1), 1, atol=1e-5) and a.argmax() == b.argmax()


def test_int8_cpu_schedule_keeps_the_pass_loop(int8, exported, reference):
    """A CPU-schedule TTA model is calibrated in its batched form and looped again: the quantised
    convolutions (weights dequantised inside the body) run one pass at a time."""
    from asc_deploy.export.loop import LOOP_NODE, has_pass_loop
    from asc_deploy.export.pools import is_pool
    from asc_deploy.stripes import tta_stripes

    quantized = onnx.load(str(int8(True, "cpu")))
    assert has_pass_loop(quantized)
    loop = next(n for n in quantized.graph.node if n.name == LOOP_NODE)
    body = loop.attribute[0].g
    assert sum(n.op_type in QDQ for n in body.node) > 10 and not [n for n in quantized.graph.node if n.op_type in QDQ]
    first_block = [n for n in body.node if n.op_type == "Conv" and n.name.startswith("/scorer/cnn.conv1/")]
    # CPU_INT8_CHANNEL_GROUPS: the float first block in 4 groups, each a convolution and its pool
    assert len(first_block) == 8 and sum(is_pool(n) for n in first_block) == 4
    wave = reference["wave/10_short1s"][None]
    time, freq = tta_stripes((128, 2, 32, 2), 3, 44, 256, 0)
    feed = {"waveform": wave, "time_stripes": time, "freq_stripes": freq}
    looped = ort.InferenceSession(str(int8(True, "cpu")), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    fp32 = ort.InferenceSession(str(exported("ce", "fp32", True, "cpu")), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    assert looped.argmax() == fp32.argmax() and np.abs(looped - fp32).max() <= 0.1


def test_int8_cpu_schedule_single_pass_keeps_the_clip_loop(int8, exported, reference):
    """A CPU-schedule single-pass model is calibrated with its clips batched and looped again: the
    quantised convolutions run one clip at a time, with the fp32 model's top class."""
    from asc_deploy.export.clip_loop import CLIP_LOOP_NODE, has_clip_loop

    quantized = onnx.load(str(int8(False, "cpu")))
    assert has_clip_loop(quantized)
    body = next(n for n in quantized.graph.node if n.name == CLIP_LOOP_NODE).attribute[0].g
    assert sum(n.op_type in QDQ for n in body.node) > 10 and not [n for n in quantized.graph.node if n.op_type in QDQ]
    waves = np.stack([reference["wave/10_short1s"], reference["wave/10_short1s"][::-1]])
    looped = ort.InferenceSession(str(int8(False, "cpu")), providers=["CPUExecutionProvider"]).run(["probs"], {"waveform": waves})[0]
    fp32 = ort.InferenceSession(str(exported("ce", "fp32", False, "cpu")), providers=["CPUExecutionProvider"]).run(["probs"], {"waveform": waves})[0]
    assert looped.shape == (2, 10) and (looped.argmax(1) == fp32.argmax(1)).all() and np.abs(looped - fp32).max() <= 0.1


def test_quantize_refuses_bad_arguments_early(exported, calibration_dir, tmp_path):
    fp32 = exported("ce")
    with pytest.raises(ValueError, match="max_clips"):
        quantize_int8(fp32, tmp_path / "a.onnx", calibration_dir, max_clips=0)
    with pytest.raises(ValueError, match="fp32 export"):
        quantize_int8(exported("ce", "fp16"), tmp_path / "b.onnx", calibration_dir)
    with pytest.raises(ValueError, match="calibration data folder"):
        quantize_int8(fp32, tmp_path / "c.onnx", tmp_path / "missing")
    with pytest.raises(ValueError, match="output must differ"):
        quantize_int8(fp32, fp32, calibration_dir)
    assert not list(tmp_path.iterdir())


def test_reduce_range_only_without_vnni(monkeypatch):
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    assert needs_reduce_range({"avx2", "fma"})
    assert not needs_reduce_range({"avx2", "avx512f", "avx512_vnni"}) and not needs_reduce_range({"avx2", "avx_vnni"})
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    assert not needs_reduce_range(set())


def test_export_cli_int8_options(calibration_dir, tmp_path):
    from asc_deploy.export.cli import main

    ckpt = str(checkpoint_path("ce"))
    runner = CliRunner()
    for args, message in [(["--int8", "--fp16"], "exclude each other"), (["--int8"], "--calibration-data"),
                          (["--int8", "--format", "trt", "--calibration-data", str(calibration_dir)], "--format onnx"),
                          (["--calibration-data", str(calibration_dir)], "only applies to --int8")]:
        result = runner.invoke(main, ["--checkpoint", ckpt, "-o", str(tmp_path / "m.onnx"), *args])
        assert result.exit_code == 1 and message in result.output, (args, result.output)
    assert not (tmp_path / "m.onnx").exists()
