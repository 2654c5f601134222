"""The clip loop (export/clip_loop.py): every node of a classifier graph runs in an ONNX Loop over
the clips of a call, each clip's outputs those of a call with that clip alone (the CPU schedule's
single-pass graphs; a TTA graph's pass loop nests inside it); the transformation is exactly
invertible and refuses graphs without a batch axis."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from asc_deploy.export.clip_loop import CLIP_LOOP_NODE, CLIP_SCOPE, batch_clips, has_clip_loop, loop_over_clips
from asc_deploy.export.loop import has_pass_loop
from asc_deploy.labels import num_frames
from asc_deploy.stripes import tta_stripes
from tests.shared_data import needs_shared


def session(model: str | onnx.ModelProto) -> ort.InferenceSession:
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


def clips(reference) -> np.ndarray:
    """Three different 1 s clips: a reference clip, its negation scaled, and white noise."""
    wave = reference["wave/10_short1s"]
    noise = 0.1 * np.random.default_rng(0).standard_normal(wave.shape)
    return np.stack([wave, -0.5 * wave, noise]).astype(np.float32)


@needs_shared
@pytest.mark.parametrize("tta", [False, True], ids=["cpu-schedule-single", "around-the-pass-loop"])
def test_each_clip_runs_as_alone(tta, exported, reference):
    """A call of three clips gives every output of the three one-clip calls, bit for bit, and the
    batched graph's outputs to float rounding; the whole graph (frontend included) is in the body.
    The CPU schedule loops the clips of its single-pass graph; around its TTA graph's pass loop
    (which the schedule leaves with batched clips) the clip loop nests it."""
    cpu = onnx.load(str(exported("ce", "fp32", tta, "cpu")))
    assert has_clip_loop(cpu) != tta and has_pass_loop(cpu) == tta
    looped = loop_over_clips(cpu) if tta else cpu
    assert has_clip_loop(looped) and [n.op_type for n in looped.graph.node].count("Loop") == 1
    assert all(n.name.startswith(CLIP_SCOPE) for n in looped.graph.node)  # nothing of the model runs outside the loop
    assert not looped.graph.initializer[1:]  # the weights travel with the body; only the Squeeze axis is outside
    waves = clips(reference)
    feed = {"waveform": waves}
    if tta:
        time, freq = tta_stripes((128, 2, 32, 2), 3, num_frames(waves.shape[1]), 256, 0)
        feed |= {"time_stripes": time, "freq_stripes": freq}
    runner, batched = session(looped), session(batch_clips(looped))
    names = [o.name for o in runner.get_outputs()]
    together = runner.run(names, feed)
    alone = [runner.run(names, feed | {"waveform": waves[i:i + 1]}) for i in range(len(waves))]
    for k, output in enumerate(together):
        assert output.shape == (3, 10)
        assert np.array_equal(output, np.concatenate([a[k] for a in alone]))
    for output, expected in zip(together, batched.run(names, feed)):
        assert np.abs(output - expected).max() <= 1e-5


@needs_shared
def test_batch_clips_inverts_loop_over_clips(exported, reference):
    batched = onnx.load(str(exported("ce", "fp32", True, "gpu")))
    looped = loop_over_clips(batched)
    onnx.checker.check_model(looped, full_check=True)
    back = batch_clips(looped)
    assert [n.name for n in back.graph.node] == [n.name for n in batched.graph.node]
    assert [n.input for n in back.graph.node] == [n.input for n in batched.graph.node]
    assert sorted(i.name for i in back.graph.initializer) == sorted(i.name for i in batched.graph.initializer)
    assert not has_pass_loop(looped) and has_clip_loop(looped) and not has_clip_loop(back)
    waves = clips(reference)
    time, freq = tta_stripes((128, 2, 32, 2), 2, num_frames(waves.shape[1]), 256, 1)
    feed = {"waveform": waves, "time_stripes": time, "freq_stripes": freq}
    expected = session(batched).run(["probs"], feed)[0]
    assert np.abs(session(looped).run(["probs"], feed)[0] - expected).max() <= 1e-5
    assert np.array_equal(session(back).run(["probs"], feed)[0], expected)


def small_graph(output_dims: list, input_dims: list) -> onnx.ModelProto:
    """y = x * 2 + s: x batched (or not, by ``input_dims``), s a shared input without a batch axis."""
    nodes = [helper.make_node("Mul", ["x", "two"], ["m"]), helper.make_node("Add", ["m", "s"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_dims),
                                           helper.make_tensor_value_info("s", TensorProto.FLOAT, [3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, output_dims)],
                              initializer=[helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def test_shared_inputs_reach_every_clip():
    looped = loop_over_clips(small_graph(["batch", 3], ["batch", 3]))
    onnx.checker.check_model(looped, full_check=True)
    loop = next(n for n in looped.graph.node if n.name == CLIP_LOOP_NODE)
    assert [n.op_type for n in loop.attribute[0].g.node].count("Slice") == 1  # x only: s has no batch axis
    x, s = np.arange(12, dtype=np.float32).reshape(4, 3), np.array([1, -1, 0.5], np.float32)
    assert np.array_equal(session(looped).run(["y"], {"x": x, "s": s})[0], 2 * x + s)
    assert session(looped).run(["y"], {"x": x[:0], "s": s})[0].shape == (0, 3)  # no clips: no iteration


def test_loop_over_clips_refuses_graphs_without_a_batch_axis():
    with pytest.raises(ValueError, match="same named batch axis"):
        loop_over_clips(small_graph([4, 3], [4, 3]))
    with pytest.raises(ValueError, match="no input has the outputs' batch axis 'batch'"):
        loop_over_clips(small_graph(["batch", 3], ["clips", 3]))
    with pytest.raises(ValueError, match="not a graph made by loop_over_clips"):
        batch_clips(small_graph(["batch", 3], ["batch", 3]))
