"""Classifier's memory bound: passes and windows go to onnxruntime in bounded groups, same result."""

import numpy as np
import pytest

from asc_deploy.labels import CLIP_SAMPLES
from asc_deploy.metadata import INPUT_TIME_STRIPES, INPUT_WAVEFORM, OUTPUT_PROBS
from asc_deploy.runtime import DEFAULT_PASSES_PER_CALL, Classifier


def _spy_on_calls(classifier: Classifier, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Record (clips, passes) of every onnxruntime call the classifier makes."""
    calls, infer = [], classifier._runner.infer

    def spy(feed, names):
        passes = len(feed[INPUT_TIME_STRIPES]) if INPUT_TIME_STRIPES in feed else 1
        calls.append((len(feed[INPUT_WAVEFORM]), passes))
        return infer(feed, names)

    monkeypatch.setattr(classifier._runner, "infer", spy)
    return calls


def test_tta_passes_are_grouped_and_averaged_exactly(exported, monkeypatch):
    classifier = Classifier(exported("ce", "fp32", True), tta_passes=7)
    waveform = np.random.default_rng(0).uniform(-0.3, 0.3, (1, CLIP_SAMPLES)).astype(np.float32)
    whole = classifier._runner.infer(classifier.feed(waveform), [OUTPUT_PROBS])[OUTPUT_PROBS]  # all 7 passes in one call
    calls = _spy_on_calls(classifier, monkeypatch)
    grouped = classifier.probabilities(waveform)
    assert DEFAULT_PASSES_PER_CALL == 2
    assert calls == [(1, 2), (1, 2), (1, 2), (1, 1)]  # groups of 2 passes of 10 s, the remainder last
    np.testing.assert_allclose(grouped, whole, rtol=0, atol=1e-6)
    assert abs(grouped.sum() - 1) < 1e-5


def test_long_audio_windows_are_grouped(random_model, monkeypatch):
    classifier = Classifier(random_model)
    waveform = np.random.default_rng(1).uniform(-0.3, 0.3, 5 * CLIP_SAMPLES).astype(np.float32)
    calls = _spy_on_calls(classifier, monkeypatch)
    prediction = classifier.predict(waveform)
    assert prediction.windows == 5 and calls == [(2, 1), (2, 1), (1, 1)]
    windows = waveform.reshape(5, CLIP_SAMPLES)
    one_by_one = np.mean([classifier.probabilities(w[None])[0] for w in windows], axis=0)
    np.testing.assert_allclose(prediction.probs, one_by_one, rtol=0, atol=1e-6)


def test_passes_per_call_is_configurable_and_checked(exported, monkeypatch):
    classifier = Classifier(exported("ce", "fp32", True), tta_passes=7, passes_per_call=3)
    calls = _spy_on_calls(classifier, monkeypatch)
    classifier.probabilities(np.zeros((2, CLIP_SAMPLES // 2), np.float32))  # 2 clips of 5 s: 3 passes per call
    assert calls == [(2, 3), (2, 3), (2, 1)]
    with pytest.raises(ValueError, match="passes_per_call"):
        Classifier(exported("ce", "fp32", True), passes_per_call=0)


def test_cpu_schedule_tta_gets_every_pass_in_one_call(exported, monkeypatch):
    """Its graph loops over the passes itself: one call, same probabilities as the batched model."""
    looped = Classifier(exported("ce", "fp32", True, "cpu"), tta_passes=7)
    batched = Classifier(exported("ce", "fp32", True, "gpu"), tta_passes=7)
    waveform = np.random.default_rng(2).uniform(-0.3, 0.3, (1, CLIP_SAMPLES)).astype(np.float32)
    calls = _spy_on_calls(looped, monkeypatch)
    probs = looped.probabilities(waveform)
    assert calls == [(1, 7)] and looped.passes_in_memory == 1 and batched.passes_in_memory == 7
    np.testing.assert_allclose(probs, batched.probabilities(waveform), rtol=0, atol=1e-6)
    calls.clear()
    looped.predict(np.tile(waveform[0], 3))  # three 10 s windows: 2 per call, as for single-pass models
    assert calls == [(2, 7), (1, 7)]
