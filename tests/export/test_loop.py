"""The CPU schedule (export/loop.py, ExportBlock channel groups): the TTA passes run one at a time
in an ONNX Loop and compute what the batched graph computes; the transformation is exactly
invertible and refuses graphs it was not made for."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from asc_deploy.export.loop import LOOP_NODE, SCORER_SCOPE, batch_passes, has_pass_loop, loop_over_passes
from asc_deploy.export.pools import is_pool
from asc_deploy.labels import num_frames
from asc_deploy.metadata import ModelMetadata
from asc_deploy.stripes import tta_stripes
from tests.shared_data import needs_shared

pytestmark = needs_shared


def run(model: str | onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(["probs"], feed)[0]


def tta_feed(waves: np.ndarray, passes: int, seed: int = 0) -> dict[str, np.ndarray]:
    time, freq = tta_stripes((128, 2, 32, 2), passes, num_frames(waves.shape[1]), 256, seed)
    return {"waveform": waves.astype(np.float32), "time_stripes": time, "freq_stripes": freq}


def loop_body(model: onnx.ModelProto) -> onnx.GraphProto:
    loop = next(n for n in model.graph.node if n.name == LOOP_NODE)
    return next(a.g for a in loop.attribute if a.name == "body")


def test_cpu_schedule_tta_equals_the_batched_graph(exported, reference):
    looped, batched = onnx.load(str(exported("ce", "fp32", True, "cpu"))), onnx.load(str(exported("ce", "fp32", True, "gpu")))
    assert has_pass_loop(looped) and not has_pass_loop(batched)
    assert not [n.name for n in looped.graph.node if n.name.startswith(SCORER_SCOPE)]  # the whole scorer runs per pass
    body = loop_body(looped)
    # channel groups (2, 4, 1, 1): 2 convolutions in the first block (1x1 folded), 2 x 4 in the second, 2 + 2 after,
    # and one pool (a depthwise 2x2 convolution) per group
    assert sum(n.op_type == "Conv" and not is_pool(n) for n in body.node) == 14
    assert sum(is_pool(n) for n in body.node) == 8 and not [n for n in body.node if n.op_type == "AveragePool"]
    assert {i.name for i in body.initializer} >= {"scorer.cnn.fc2.weight"}  # weights travel with the body
    assert ModelMetadata.from_props({p.key: p.value for p in looped.metadata_props}).schedule == "cpu"
    wave = reference["wave/10_short1s"]
    for waves, passes in ((wave[None], 5), (np.stack([wave, -0.5 * wave]), 3), (wave[None], 1)):
        feed = tta_feed(waves, passes, seed=passes)
        a, b = run(looped, feed), run(batched, feed)
        assert a.shape == (len(waves), 10) and np.abs(a - b).max() <= 1e-6


def test_cpu_schedule_matches_recorded_tta_stripes(reference, tta_reference, exported):
    """SP4ASC's golden TTA outputs (30 recorded passes) on every reference clip, as the batched graph."""
    path = exported("ce", "fp32", True, "cpu")
    time, freq = tta_reference["time_stripes/ce"], tta_reference["freq_stripes/ce"]
    for name in [str(n) for n in tta_reference["names"]]:
        probs = run(path, {"waveform": reference[f"wave/{name}"][None], "time_stripes": time, "freq_stripes": freq})
        assert np.abs(probs - tta_reference[f"probs_tta/ce/{name}"]).max() <= 1e-4, name


def test_cpu_schedule_single_pass_matches_golden_logits(reference, exported):
    session = ort.InferenceSession(str(exported("ce", "fp32", False, "cpu")), providers=["CPUExecutionProvider"])
    for name in reference["names"]:
        logits = session.run(["logits"], {"waveform": reference[f"wave/{name}"][None]})[0]
        assert np.abs(logits[0] - reference[f"logits_fp32/ce/{name}"]).max() <= 1e-3, name


def test_batch_passes_inverts_loop_over_passes(exported, reference):
    batched = onnx.load(str(exported("ce", "fp32", True, "gpu")))
    looped = loop_over_passes(batched)
    onnx.checker.check_model(looped, full_check=True)
    back = batch_passes(looped)
    assert sorted(n.name for n in back.graph.node) == sorted(n.name for n in batched.graph.node)
    assert sorted(i.name for i in back.graph.initializer) == sorted(i.name for i in batched.graph.initializer)
    feed = tta_feed(reference["wave/10_short1s"][None], 4)
    expected = run(batched, feed)
    assert np.abs(run(looped, feed) - expected).max() <= 1e-6 and np.abs(run(back, feed) - expected).max() == 0


def test_loop_transformations_refuse_other_graphs(exported):
    with pytest.raises(ValueError, match="no pass scorer"):
        loop_over_passes(onnx.load(str(exported("ce"))))  # a single-pass graph has no scorer
    with pytest.raises(ValueError, match="not a graph made by loop_over_passes"):
        batch_passes(onnx.load(str(exported("ce", "fp32", True))))


def test_cpu_schedule_refuses_fp16(tmp_path):
    """onnxruntime's fp16 convolutions on CPUs are slower than fp32 (TTA-30 in the Loop: 446 ms
    against 209 ms), so the cpu schedule is for fp32 and int8 only."""
    from asc_deploy.export.onnx_export import export_onnx
    from tests.shared_data import checkpoint_path

    with pytest.raises(ValueError, match="cpu schedule is for fp32 and int8"):
        export_onnx(checkpoint_path("ce"), tmp_path / "m.onnx", "fp16", True, "cpu")
    assert not list(tmp_path.iterdir())
