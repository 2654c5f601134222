"""ONNX export of the official checkpoints against SP4ASC's golden outputs."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from asc_deploy.errors import AscError
from asc_deploy.export.onnx_export import export_onnx
from asc_deploy.metadata import ModelMetadata
from asc_deploy.models import load_checkpoint
from tests.shared_data import TAGS, checkpoint_path, needs_shared

pytestmark = needs_shared
FP32_FILE_LIMIT = 1.2 * 1024 * 1024  # bytes, frontend included
FP16_FILE_LIMIT = 600 * 1024


def session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def same_length_batch(wave: np.ndarray) -> np.ndarray:
    """Four different clips of one length: the clip, quieter, reversed, negated."""
    return np.stack([wave, 0.5 * wave, wave[::-1], -wave]).astype(np.float32)


@pytest.mark.parametrize("tag", TAGS)
def test_fp32_matches_reference_at_batch_1_and_4(tag, reference, exported):
    run = session(exported(tag)).run
    for name in reference["names"]:
        wave, expected = reference[f"wave/{name}"], reference[f"logits_fp32/{tag}/{name}"]
        logits, probs = run(None, {"waveform": wave[None]})
        assert np.abs(logits[0] - expected).max() <= 1e-3, name
        assert np.allclose(probs.sum(-1), 1, atol=1e-6)
        batch = same_length_batch(wave)
        batch_logits = run(["logits"], {"waveform": batch})[0]
        assert np.abs(batch_logits[0] - expected).max() <= 1e-3, name
        alone = np.stack([run(["logits"], {"waveform": clip[None]})[0][0] for clip in batch])
        assert np.abs(batch_logits - alone).max() <= 1e-4, name  # nothing leaks across the batch


@pytest.mark.parametrize("tag", TAGS)
def test_fp16_keeps_top1_and_stays_close(tag, reference, exported):
    fp32, fp16 = session(exported(tag)).run, session(exported(tag, "fp16")).run
    worst = 0.0
    for name in reference["names"]:
        feed = {"waveform": reference[f"wave/{name}"][None]}
        a, b = fp32(["logits"], feed)[0], fp16(["logits"], feed)[0]
        assert a.argmax() == b.argmax(), name
        worst = max(worst, np.abs(a - b).max())
    assert worst <= 0.35
    print(f"{tag}: fp16 vs fp32 max abs logit difference {worst:.4f}")


def test_fp16_graph_types(exported):
    model = onnx.load(str(exported("ce", "fp16")))
    types = {i.name: i.data_type for i in model.graph.initializer}
    assert types["cnn.conv2.ch_convs.0.weight"] == onnx.TensorProto.FLOAT16
    frontend = {name: kind for name, kind in types.items() if name.startswith("frontend.")}
    assert frontend["frontend.dft_outer"] == onnx.TensorProto.FLOAT and onnx.TensorProto.FLOAT16 not in frontend.values()
    io = [*model.graph.input, *model.graph.output]
    assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in io)


def test_fp16_finite_under_true_fp16_arithmetic(exported):
    """onnx's reference evaluator computes fp16 nodes in fp16 (onnxruntime on CPU upcasts)."""
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(str(exported("ce", "fp16")))
    t = np.arange(44_100) / 44_100
    hard = {
        "full-scale 1 kHz sine": np.sin(2 * np.pi * 1000 * t),
        "full-scale noise": np.random.default_rng(0).uniform(-1, 1, t.size),
        "digital silence": np.zeros(t.size),
    }
    for label, wave in hard.items():
        logits, probs = evaluator.run(None, {"waveform": wave.astype(np.float32)[None]})
        assert np.isfinite(logits).all() and np.isfinite(probs).all(), label
        assert abs(probs.sum() - 1) < 1e-3, label


def test_frontend_would_overflow_in_fp16():
    """Why the frontend stays float32: a full-scale sine's power exceeds fp16's 65,504 and amin
    1e-10 underflows to 0 in fp16."""
    from asc_deploy.models import LogMelFrontend

    wave = torch.sin(2 * torch.pi * 1000 * torch.arange(44_100) / 44_100)[None]
    assert LogMelFrontend().power_spectrogram(wave).max() > np.finfo(np.float16).max
    assert np.float16(1e-10) == 0


@pytest.mark.parametrize("tag", TAGS)
def test_tta_graph_matches_recorded_stripes(tag, reference, tta_reference, exported):
    run = session(exported(tag, tta=True)).run
    time, freq = tta_reference[f"time_stripes/{tag}"], tta_reference[f"freq_stripes/{tag}"]
    names = [str(n) for n in tta_reference["names"]][: None if tag == "ce" else 3]  # every clip for ce, 3 for the others
    waves = np.stack([reference[f"wave/{n}"] for n in names])
    expected = np.stack([tta_reference[f"probs_tta/{tag}/{n}"] for n in names])
    for i in range(len(names)):  # one clip x 30 passes: ~1.5 GB of activations per call
        probs = run(None, {"waveform": waves[i : i + 1], "time_stripes": time, "freq_stripes": freq})[0]
        assert np.abs(probs - expected[i : i + 1]).max() <= 1e-4, names[i]


def test_tta_graph_with_one_empty_pass_equals_single_pass(reference, exported):
    wave = reference["wave/10_short1s"][None]
    empty = np.zeros((1, 2, 2), np.int64)
    tta = session(exported("ce", tta=True)).run(None, {"waveform": wave, "time_stripes": empty, "freq_stripes": empty})[0]
    single = session(exported("ce")).run(["probs"], {"waveform": wave})[0]
    assert np.abs(tta - single).max() <= 1e-6


def test_file_sizes_meet_targets(exported):
    fp32, fp16 = exported("ce").stat().st_size, exported("ce", "fp16").stat().st_size
    print(f"ONNX sizes, frontend included: fp32 {fp32 / 1024:.1f} KiB, fp16 {fp16 / 1024:.1f} KiB")
    assert fp32 <= FP32_FILE_LIMIT and fp16 <= FP16_FILE_LIMIT


def test_contract_metadata_and_checker(exported):
    path = exported("mixup")
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    (waveform,) = model.graph.input
    dims = [d.dim_param for d in waveform.type.tensor_type.shape.dim]
    assert waveform.name == "waveform" and dims == ["batch", "samples"]
    assert [o.name for o in model.graph.output] == ["logits", "probs"]
    props = {p.key: p.value for p in model.metadata_props}
    meta = ModelMetadata.from_props(props)
    assert meta.labels[0] == "airport" and len(meta.labels) == 10
    assert (meta.sample_rate, meta.n_fft, meta.hop_length, meta.mel_bins) == (44100, 2048, 1024, 256)
    assert meta.clip_seconds == 10.0 and meta.precision == "fp32" and meta.variant == "single"
    assert meta.spec_aug == (128, 2, 16, 2)
    assert meta.checkpoint_sha256 == load_checkpoint(checkpoint_path("mixup")).sha256
    assert json.loads(props["labels"]) == list(meta.labels)


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
    out = tmp_path / "model.onnx"
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"junk")
    with pytest.raises(AscError):
        export_onnx(bad, out)

    def broken_check(*args, **kwargs):
        raise onnx.checker.ValidationError("simulated")

    monkeypatch.setattr(onnx.checker, "check_model", broken_check)
    with pytest.raises(onnx.checker.ValidationError):
        export_onnx(checkpoint_path("ce"), out)
    assert list(tmp_path.iterdir()) == [bad]


def test_export_cli_schedule(tmp_path):
    from click.testing import CliRunner

    from asc_deploy.export.cli import main
    from asc_deploy.export.clip_loop import has_clip_loop
    from asc_deploy.export.loop import has_pass_loop

    ckpt, out = str(checkpoint_path("ce")), tmp_path / "m.onnx"
    result = CliRunner().invoke(main, ["--checkpoint", ckpt, "--format", "trt", "--schedule", "cpu", "-o", str(out)])
    assert result.exit_code == 1 and "--schedule cpu only applies to --format onnx" in result.output
    assert not out.exists()
    result = CliRunner().invoke(main, ["--checkpoint", ckpt, "--fp16", "--schedule", "cpu", "-o", str(out)])
    assert result.exit_code == 1 and "cpu schedule is for fp32 and int8" in result.output
    result = CliRunner().invoke(main, ["--checkpoint", ckpt, "--tta", "--schedule", "cpu", "-o", str(out)])
    assert result.exit_code == 0 and "TTA, cpu schedule" in result.output, result.output
    model = onnx.load(str(out))
    assert has_pass_loop(model) and not has_clip_loop(model)  # a TTA model's clips stay batched inside the pass loop
    assert {p.key: p.value for p in model.metadata_props}["schedule"] == "cpu"


def test_metadata_schedule_defaults_to_gpu_and_is_checked(exported):
    props = {p.key: p.value for p in onnx.load(str(exported("ce"))).metadata_props}
    assert props["schedule"] == "gpu"
    del props["schedule"]  # a file written before the key existed
    assert ModelMetadata.from_props(props).schedule == "gpu"
    with pytest.raises(AscError, match="unknown schedule 'tpu'"):
        ModelMetadata.from_props(props | {"schedule": "tpu"}, "x.onnx")


def test_metadata_says_which_graphs_loop_over_passes(exported):
    from asc_deploy.runtime import read_model_metadata

    assert read_model_metadata(exported("ce", "fp32", True, "cpu")).loops_over_passes
    assert not read_model_metadata(exported("ce", "fp32", True, "gpu")).loops_over_passes
    assert not read_model_metadata(exported("ce", "fp32", False, "cpu")).loops_over_passes


def test_stream_graphs_contract(stream_model, tmp_path):
    """asc-export --stream: M.onnx unchanged in contract, plus the frontend graph (waveform -> log-mel
    without padding) and the log-mel classifier, whose composition equals M.onnx on a clip."""

    from asc_deploy.metadata import stream_cnn_paths, stream_graph_paths

    model = stream_model()
    frontend, logmel = stream_graph_paths(model)
    assert (frontend.name, logmel.name) == (f"{model.stem}.frontend.onnx", f"{model.stem}.logmel.onnx")
    graphs = {path: onnx.load(str(path)) for path in (model, frontend, logmel)}
    for path, proto in graphs.items():
        onnx.checker.check_model(proto, full_check=True)
    metas = {path: ModelMetadata.from_props({p.key: p.value for p in proto.metadata_props}) for path, proto in graphs.items()}
    assert [metas[p].graph for p in (model, frontend, logmel)] == ["waveform", "frontend", "logmel"]
    assert metas[frontend].labels == metas[model].labels and metas[logmel].checkpoint_sha256 == metas[model].checkpoint_sha256
    assert [i.name for i in graphs[frontend].graph.input] == ["waveform"] and [o.name for o in graphs[frontend].graph.output] == ["logmel"]
    assert [i.name for i in graphs[logmel].graph.input] == ["logmel"]
    assert [o.name for o in graphs[logmel].graph.output] == ["logits", "probs"]
    wave = np.random.default_rng(0).uniform(-0.3, 0.3, (1, 3 * 44_100)).astype(np.float32)
    run = {p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in graphs}
    padded = np.pad(wave, ((0, 0), (1024, 1024)), mode="reflect")
    frames = run[frontend].run(["logmel"], {"waveform": padded})[0]
    assert frames.shape == (1, 1, 3 * 44_100 // 1024 + 1, 256)  # the centred frames of the clip
    direct = run[model].run(["probs"], {"waveform": wave})[0]
    assert np.abs(run[logmel].run(["probs"], {"logmel": frames})[0] - direct).max() < 1e-6
    # a single-pass model's CNN split at its last feature map composes to the same probabilities
    features_path, head_path = stream_cnn_paths(model)
    features = ort.InferenceSession(str(features_path), providers=["CPUExecutionProvider"]).run(["features"], {"logmel": frames})[0]
    assert features.shape == (1, 128, frames.shape[2] // 16, 16)
    head = ort.InferenceSession(str(head_path), providers=["CPUExecutionProvider"]).run(["probs"], {"features": features})[0]
    assert np.abs(head - direct).max() < 1e-6
    assert [ModelMetadata.from_props({p.key: p.value for p in onnx.load(str(path)).metadata_props}).graph
            for path in (features_path, head_path)] == ["features", "head"]
    assert not any(path.exists() for path in stream_cnn_paths(stream_model(tta=True)))  # TTA: nothing to share
    from click.testing import CliRunner

    from asc_deploy.export.cli import main

    result = CliRunner().invoke(main, ["--checkpoint", str(checkpoint_path("ce")), "--format", "trt", "--stream",
                                       "-o", str(tmp_path / "m.engine")])
    assert result.exit_code == 1 and "--stream applies to --format onnx" in result.output


def test_any_length_equals_torch_including_whole_hops(exported):
    """torch.export traced the waveform length symbolically: lengths that are whole multiples of the
    hop (where the frontend's chunking slice ends exactly at the padded signal's end), one sample
    more, the shortest the four poolings allow (15 frames: 15,360 samples) and 10 s all match the
    torch pipeline."""
    from asc_deploy.models import LogMelFrontend, WaveformClassifier, build_model, fold_batchnorm

    model = WaveformClassifier(LogMelFrontend(), fold_batchnorm(build_model(load_checkpoint(checkpoint_path("ce"))))).eval()
    run = session(exported("ce")).run
    rng = np.random.default_rng(0)
    for samples in (15_360, 43 * 1024, 43 * 1024 + 1, 441_000):
        wave = rng.uniform(-0.3, 0.3, (2, samples)).astype(np.float32)
        with torch.no_grad():
            expected = model(torch.from_numpy(wave))[0].numpy()
        assert np.abs(run(["logits"], {"waveform": wave})[0] - expected).max() <= 1e-4, samples


def test_frontend_slices_the_whole_hops(exported):
    """The signal's whole hops are a Slice, not a Gather of every sample's index
    (:mod:`asc_deploy.export.slices`): the only Gather left reads the last hop's 1,024 indices."""
    frontend = [node for node in onnx.load(str(exported("ce"))).graph.node if node.name.startswith("/frontend/")]
    assert not any(node.op_type == "Range" for node in frontend)
    assert [node.name for node in frontend if node.op_type == "Gather"] == ["/frontend/index_select_1"]
    assert next(node for node in frontend if node.name == "/frontend/index_select").op_type == "Slice"


def test_composed_waveform_graph_equals_the_whole_program(reference, exported):
    """asc-export writes the waveform graph as the frontend graph composed with the log-mel
    classifier (each lowered from its own program, the frontend's once per process); lowering the
    whole waveform classifier's program (export_graph_program's default)
    computes the same logits."""
    from asc_deploy.export.onnx_export import lower_to_onnx
    from asc_deploy.export.program import export_graph_program, signature
    from asc_deploy.metadata import Graph

    whole = lower_to_onnx(export_graph_program(load_checkpoint(checkpoint_path("ce"))), signature(Graph.WAVEFORM, False))
    runs = [session(exported("ce")).run, ort.InferenceSession(whole.SerializeToString(), providers=["CPUExecutionProvider"]).run]
    for name in ("10_short1s", "11_long12s"):
        composed, direct = (run(["logits"], {"waveform": reference[f"wave/{name}"][None]})[0] for run in runs)
        assert np.abs(composed - direct).max() <= 1e-5, name
