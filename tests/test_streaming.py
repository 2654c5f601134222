"""asc_deploy.streaming: every streamed prediction equals the offline Classifier on the same
samples cut out as a clip (1e-5 in every probability), whatever the block sizes, hop and window."""

from __future__ import annotations

import itertools
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asc_deploy.errors import AscError
from asc_deploy.labels import SAMPLE_RATE
from asc_deploy.metadata import stream_graph_paths
from asc_deploy.runtime import Classifier
from asc_deploy.streaming import DEFAULT_HOP_FRAMES, DEFAULT_REUSE_HOP_FRAMES, StreamClassifier, StreamResampler

TOLERANCE = 1e-5  # every probability, fp32
TTA_PASSES = 3  # enough to test the stripes (drawn per window length), cheap


def signal(seconds: float, seed: int) -> np.ndarray:
    """Noise with a level that changes over time and a few loud transients (float32, 44.1 kHz)."""
    rng = np.random.default_rng(seed)
    n = round(seconds * SAMPLE_RATE)
    envelope = np.repeat(rng.uniform(0.01, 0.5, n // 20_000 + 1), 20_000)[:n]
    wave = rng.standard_normal(n) * envelope
    wave[rng.integers(0, n, 20)] = rng.uniform(-1, 1, 20)
    return wave.astype(np.float32)


def stream(classifier: StreamClassifier, wave: np.ndarray, sizes) -> list:
    predictions, done = [], 0
    for size in sizes:
        if done >= len(wave):
            break
        predictions += classifier.push(wave[done : done + size])
        done += size
    return predictions + classifier.finish()


def assert_offline(predictions: list, wave: np.ndarray, offline: Classifier, window: int, hop: int) -> None:
    """Each prediction equals the offline classifier on its window, and the windows are the documented ones."""
    ends = [round(p.end * SAMPLE_RATE) for p in predictions]
    regular = list(range(SAMPLE_RATE, len(wave) + 1, hop))
    assert ends[: len(regular)] == regular
    assert ends[len(regular) :] == ([len(wave)] if regular[-1] != len(wave) else [])
    for p, end in zip(predictions, ends):
        start = round(p.start * SAMPLE_RATE)
        assert start == max(0, end - window)
        expected = offline.probabilities(wave[None, start:end])[0]
        assert np.abs(p.probs - expected).max() <= TOLERANCE, (start, end, np.abs(p.probs - expected).max())
        assert p.label == offline.labels[int(np.argmax(expected))]


# multiples of the CNN's 16-frame column (single-pass models reuse CNN columns), of the frame hop only, and of neither
HOPS = [DEFAULT_REUSE_HOP_FRAMES * 1024, 16 * 1024, 32 * 1024, DEFAULT_HOP_FRAMES * 1024, 44_100, 30_001]
blocks = st.lists(st.tuples(st.one_of(st.just(1), st.integers(2, 3000), st.integers(3000, 500_000)), st.integers(1, 40)),
                  min_size=1, max_size=5)


@pytest.mark.slow
@pytest.mark.parametrize("tta", [False, True], ids=["single", "tta"])
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(runs=blocks, last=st.integers(1000, 200_000), hop=st.sampled_from(HOPS), window_s=st.floats(1.0, 2.5),
       extra_s=st.floats(0.0, 1.5), seed=st.integers(0, 2**16))
def test_streamed_predictions_equal_offline_for_any_blocks(stream_model, tta, runs, last, hop, window_s, extra_s, seed):
    """Random block sizes (runs of 1-sample blocks, small ones, ones longer than the window), hops
    on and off the frame grid, windows of 1 to 2.5 s: the start (growing windows), the steady
    state and the final window all equal offline."""
    model = stream_model(tta)
    window = round(window_s * SAMPLE_RATE)
    wave = signal(window_s + 1.0 + extra_s, seed)
    classifier = StreamClassifier(model, hop=hop, window=window, tta_passes=TTA_PASSES, seed=seed)
    offline = Classifier(model, tta_passes=TTA_PASSES, seed=seed)
    sizes = itertools.chain((size for size, count in runs for _ in range(count)), itertools.repeat(last))
    assert_offline(stream(classifier, wave, sizes), wave, offline, window, hop)


@pytest.mark.parametrize("tta,schedule", [(False, "gpu"), (True, "cpu")], ids=["single", "tta-cpu-schedule"])
def test_ten_second_window_steady_state_equals_offline(stream_model, tta, schedule):
    """The default window (10 s) and hop (48 frames reusing CNN columns for a single-pass model,
    43 for TTA), 1-sample blocks across the first prediction and a block longer than the window."""
    model = stream_model(tta, schedule)
    wave = signal(12.5, 7)
    classifier = StreamClassifier(model, tta_passes=TTA_PASSES)
    hop = 44_032 if tta else 49_152
    assert classifier.hop == hop and classifier.window == 441_000 and classifier.reuses_cnn == (not tta)
    sizes = [44_050] + [1] * 100 + [600_000]
    assert_offline(stream(classifier, wave, sizes), wave, Classifier(model, tta_passes=TTA_PASSES), 441_000, hop)


def test_frames_are_computed_once_per_frame(stream_model, monkeypatch):
    """At a hop of 43 frames, a steady-state hop computes its 43 new frames and the 2 edge frames only."""
    classifier = StreamClassifier(stream_model(), hop=43 * 1024)
    assert not classifier.reuses_cnn
    calls = []
    infer = classifier._frontend.infer
    monkeypatch.setattr(classifier._frontend, "infer", lambda feed, out: calls.append(feed["waveform"].shape) or infer(feed, out))
    classifier.push(signal(11.0 + 2 * 44_032 / SAMPLE_RATE, 3))  # past the growing windows
    calls.clear()
    assert len(classifier.push(np.zeros(44_032, np.float32))) == 1
    # one span for the 43 new interior frames (44 chunks of 1024), one batch of the 2 edge frames
    assert sorted(calls) == [(1, 44 * 1024), (2, 2048)]
    assert len(classifier._frames) == 441_000 // 1024 - 1  # the window's interior frames, nothing older


def test_cnn_columns_are_reused(stream_model, monkeypatch):
    """At the default hop of a single-pass model (48 frames = 3 feature columns), a steady-state hop
    runs the features graph over the 3 new columns and the 5 edge columns only, each with 2
    columns of context (fewer frames than the window's 431), then the head on all 26 columns."""
    classifier = StreamClassifier(stream_model())
    assert classifier.hop == 49_152 and classifier.reuses_cnn
    frames = []
    infer = classifier._features.infer
    monkeypatch.setattr(classifier._features, "infer", lambda feed, out: frames.append(feed["logmel"].shape[2]) or infer(feed, out))
    classifier.push(signal(11.0 + 2 * 49_152 / SAMPLE_RATE, 3))
    frames.clear()
    assert len(classifier.push(np.zeros(49_152, np.float32))) == 1
    # left edge: columns 0-1 from frames [0, 64); right edge: columns 23-25 from frames [336, 431);
    # new interior columns 20-22 with 2 columns of context on each side: 7 x 16 frames
    assert sorted(frames) == [64, 95, 112] and sum(frames) < 431
    assert len(classifier._columns) == 26 - 2 - 3


def test_quality_flags(stream_model):
    model = stream_model()
    silent = StreamClassifier(model).push(np.zeros(SAMPLE_RATE, np.float32))
    assert silent[0].flags == ("silence",)
    loud = signal(1.0, 1) * 20
    clipped = StreamClassifier(model).push(np.clip(loud, -1, 1))
    assert clipped[0].flags == ("clipping",)
    assert StreamClassifier(model).push(signal(1.0, 1) * 0.2)[0].flags == ()  # peaks under 0.999
    stereo = np.stack([signal(1.0, 2), np.zeros(SAMPLE_RATE, np.float32)], axis=1)
    dead = StreamClassifier(model, channels=2).push(stereo)
    assert dead[0].flags == ("dead_channel",)
    # the two channels are averaged as offline
    expected = Classifier(model).probabilities(stereo.mean(axis=1, dtype=np.float64).astype(np.float32)[None])[0]
    assert np.abs(dead[0].probs - expected).max() <= TOLERANCE


def test_smoothing_is_off_by_default_and_documented_when_on(stream_model):
    model = stream_model()
    a = signal(1.0 + 3 * 44_032 / SAMPLE_RATE, 5)
    raw = StreamClassifier(model).push(a)
    ema = StreamClassifier(model, smoothing="ema", smoothing_value=0.25).push(a)
    expected = raw[0].probs.astype(np.float64)
    for r, e in zip(raw[1:], ema[1:]):
        expected = 0.25 * r.probs + 0.75 * expected
        assert np.abs(e.probs - expected).max() < 1e-6
    sticky = StreamClassifier(model, smoothing="hysteresis", smoothing_value=1.0).push(a)
    assert {p.label for p in sticky} == {raw[0].label}  # a margin of 1 never switches
    with pytest.raises(ValueError, match="ema value"):
        StreamClassifier(model, smoothing="ema", smoothing_value=0)


def test_bad_input_and_models(stream_model, tmp_path):
    model = stream_model()
    classifier = StreamClassifier(model)
    classifier.push(np.zeros(1000, np.float32))
    block = np.zeros(100, np.float32)
    block[40] = np.nan
    with pytest.raises(AscError, match=r"NaN or infinite samples in the stream at 0\.024 s"):
        classifier.push(block)
    with pytest.raises(AscError, match=r"need \(samples, 2\)"):
        StreamClassifier(model, channels=2).push(np.zeros((10, 3), np.float32))
    with pytest.raises(ValueError, match="window"):
        StreamClassifier(model, window=1000)
    with pytest.raises(AscError, match="not its logmel graph"):
        StreamClassifier(stream_graph_paths(model)[1])
    with pytest.raises(AscError, match="frontend graph"):
        Classifier(stream_graph_paths(model)[0])
    lonely = tmp_path / "lonely.onnx"
    lonely.write_bytes(model.read_bytes())
    with pytest.raises(AscError, match="asc-export --stream"):
        StreamClassifier(lonely)


def test_resampler_streams_like_one_call():
    """Blocks through soxr's stream API give what one call over the whole signal gives."""
    wave = np.stack([signal(1.3, 1), signal(1.3, 2)], axis=1)
    whole = StreamResampler(48_000, 2)
    one = np.concatenate([whole.push(wave), whole.finish()])
    parts = StreamResampler(48_000, 2)
    pieces = [parts.push(wave[i : i + 777]) for i in range(0, len(wave), 777)] + [parts.finish()]
    many = np.concatenate(pieces)
    assert one.shape == many.shape and one.shape[1] == 2
    assert abs(len(one) - round(len(wave) * 44_100 / 48_000)) <= 1
    assert np.abs(one - many).max() < 1e-6
    assert StreamResampler(44_100, 1).push(wave[:, 0]).shape == (len(wave), 1)


def test_calibrated_model_streams_equal_offline(random_checkpoint, tmp_path):
    """A calibrated checkpoint's temperature (one per class here) is in every streaming graph:
    the CNN-reusing hop and the log-mel hop both equal the offline classifier."""
    import torch

    from asc_deploy.export.onnx_export import export_onnx

    state = torch.load(random_checkpoint, weights_only=True)
    calibrated = tmp_path / "calibrated.pth"
    temperature = [0.5 + 0.25 * k for k in range(10)]
    torch.save({"format": "asc-deploy", "net": state["net"], "config": {}, "calibration": {"temperature": temperature}}, calibrated)
    model = export_onnx(calibrated, tmp_path / "calibrated.onnx", stream=True)
    wave = signal(11.5, 4)
    offline = Classifier(model)
    assert offline.metadata.temperature == tuple(temperature)
    for hop in (None, DEFAULT_HOP_FRAMES * 1024):
        classifier = StreamClassifier(model, hop=hop)
        assert_offline(stream(classifier, wave, [100_000] * 20), wave, offline, 441_000, classifier.hop)
