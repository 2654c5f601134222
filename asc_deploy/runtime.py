"""The embeddable classifier: audio in, scene label and calibrated probabilities out (no torch).

``Classifier(path)`` reads and checks an exported ONNX model, takes a file path or a waveform
array, cuts long audio into 10 s windows (see :mod:`asc_deploy.audio`) and averages the windows'
probabilities. A TTA model draws its SpecAugment stripes on the host from ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from asc_deploy.audio import iter_windows, split_windows, validate_waveform
from asc_deploy.errors import AscError
from asc_deploy.labels import CLIP_SAMPLES, SAMPLE_RATE, num_frames
from asc_deploy.metadata import (
    INPUT_FREQ_STRIPES,
    INPUT_LOGMEL,
    INPUT_TIME_STRIPES,
    INPUT_WAVEFORM,
    OUTPUT_LOGITS,
    OUTPUT_PROBS,
    Graph,
    ModelMetadata,
    is_executorch_program,
)
from asc_deploy.ort_runner import OnnxRuntimeRunner, SessionConfig, is_ort_format
from asc_deploy.stripes import tta_stripes

DEFAULT_TTA_PASSES = 30  # SP4ASC's published setting
DEFAULT_PASSES_PER_CALL = 2  # 10 s CNN passes per onnxruntime call, see Classifier.probabilities


@dataclass(frozen=True)
class Prediction:
    """Result for one clip: the label with the highest mean probability, and all probabilities."""

    label: str
    probs: np.ndarray  # (classes,) float32, sums to 1, in ``labels`` order
    labels: tuple[str, ...]
    windows: int  # 10 s windows averaged

    def as_dict(self) -> dict[str, float]:
        return {label: float(p) for label, p in zip(self.labels, self.probs)}


def read_model_metadata(path: str | Path) -> ModelMetadata:
    """Check an ONNX or ORT-format file and read its asc-deploy metadata; :class:`AscError` naming it otherwise."""
    path = Path(path)
    if not path.is_file():
        raise AscError("no such model file" if not path.exists() else "not a file", path)
    if is_executorch_program(path):
        raise AscError("an ExecuTorch program: this runtime runs ONNX and ORT-format models only (ExecuTorch's Python runtime needs torch); "
                       "run it with ExecuTorch on the device, or here with asc-bench --backends executorch", path)
    if is_ort_format(path):
        return _read_ort_metadata(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(model)
    except Exception as err:  # protobuf DecodeError, ValidationError...
        raise AscError(f"not a valid ONNX model ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})", path) from err
    return ModelMetadata.from_props({p.key: p.value for p in model.metadata_props}, path)


def _read_ort_metadata(path: Path) -> ModelMetadata:
    """The asc-deploy metadata of an ORT-format file (onnxruntime reads it: no protobuf inside)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.load_model_format", "ORT")
    options.log_severity_level = 3
    try:
        meta = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).get_modelmeta()
    except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph types
        raise AscError(f"not a valid ORT-format model ({str(err).splitlines()[0] if str(err) else type(err).__name__})", path) from err
    return ModelMetadata.from_props(dict(meta.custom_metadata_map), path)


class Classifier:
    """Acoustic scene classifier over an exported ONNX model.

    Args:
        model_path: an ``asc-export`` ONNX or ORT-format file (single-pass or TTA variant; the
            format is read from the file, not its name), or the log-mel graph
            of its streaming pair (``M.logmel.onnx``), which only :meth:`probabilities` takes.
        provider: onnxruntime provider short name: "cpu", "cuda" or "tensorrt".
        tta_passes: SpecAugment passes of a TTA model (ignored by a single-pass model).
        seed: seed of the TTA stripes.
        hop_seconds: hop between the 10 s windows of long files.
        session: onnxruntime session options.
        passes_per_call: CNN passes over 10 s of audio given to onnxruntime per call (windows of a
            long file, or passes of a TTA model); bounds peak memory. Measured for a TTA-30 model
            on one 10 s clip (2 threads): 2 per call 364 ms, 10 per call 256 ms, all 30 in one
            call 225 ms but 1.2 GB peak resident memory instead of 182 MB. A TTA model exported
            with the CPU schedule runs its passes one at a time inside the graph, so all its
            passes go in one call and only windows count against this bound.
    """

    def __init__(self, model_path: str | Path, provider: str = "cpu", tta_passes: int = DEFAULT_TTA_PASSES, seed: int = 0,
                 hop_seconds: float = 10.0, session: SessionConfig = SessionConfig(),
                 passes_per_call: int = DEFAULT_PASSES_PER_CALL) -> None:
        if tta_passes < 1:
            raise ValueError(f"tta_passes must be >= 1, got {tta_passes}")
        if passes_per_call < 1:
            raise ValueError(f"passes_per_call must be >= 1, got {passes_per_call}")
        # The windowing's own check (asc_deploy.audio) would only fire per file, and NaN or inf
        # would escape it as ValueError/OverflowError from round().
        if not (math.isfinite(hop_seconds) and 0 < round(hop_seconds * SAMPLE_RATE) <= CLIP_SAMPLES):
            raise ValueError(f"hop_seconds must be in (0, {CLIP_SAMPLES / SAMPLE_RATE:g}] s, got {hop_seconds}")
        self.model_path = Path(model_path)
        self.metadata = read_model_metadata(model_path)
        self.labels = self.metadata.labels
        self.sample_rate = self.metadata.sample_rate
        self.tta_passes, self.seed, self.hop_seconds = tta_passes, seed, hop_seconds
        self.pass_samples_per_call = passes_per_call * CLIP_SAMPLES
        if self.metadata.graph == Graph.FRONTEND.value:
            raise AscError("this is the frontend graph of a streaming pair (waveform -> log-mel), not a classifier; "
                           "give the model file it was written beside", self.model_path)
        self.input_name = INPUT_LOGMEL if self.metadata.graph == Graph.LOGMEL.value else INPUT_WAVEFORM
        self._runner = OnnxRuntimeRunner(model_path, provider, session)
        self._runner.activate()
        self._check_graph()

    def _check_graph(self) -> None:
        """Refuse a graph whose inputs/outputs break the model contract (metadata copied onto
        another graph), instead of failing at the first ``infer`` with onnxruntime's message."""
        session = self._runner.session
        inputs = sorted(i.name for i in session.get_inputs())
        outputs = sorted(o.name for o in session.get_outputs())
        need = sorted([self.input_name] + ([INPUT_TIME_STRIPES, INPUT_FREQ_STRIPES] if self.metadata.variant == "tta" else []))
        if inputs != need or not set(self.output_names) <= set(outputs):
            raise AscError(f"not an asc-deploy {self.metadata.variant} model graph: inputs {inputs}, outputs {outputs} "
                           f"(need inputs {need} and outputs {list(self.output_names)})", self.model_path)

    @property
    def output_names(self) -> tuple[str, ...]:
        """What :meth:`infer` returns: ``logits`` and ``probs`` for a single-pass model, ``probs``
        (mean softmax over the passes) for a TTA model."""
        return (OUTPUT_PROBS,) if self.metadata.variant == "tta" else (OUTPUT_LOGITS, OUTPUT_PROBS)

    @property
    def passes(self) -> int:
        """CNN passes per clip: ``tta_passes`` for a TTA model, 1 for a single-pass model."""
        return self.tta_passes if self.metadata.variant == "tta" else 1

    @property
    def passes_in_memory(self) -> int:
        """CNN passes per clip whose activations are live at once in a call: 1 when the graph
        loops over the TTA passes itself (CPU schedule), else :attr:`passes`."""
        return 1 if self.metadata.loops_over_passes else self.passes

    def feed(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """The model inputs (all passes) for (batch, samples) float32 waveforms of one length, or
        for a log-mel graph (batch, 1, frames, mel_bins) float32 log-mel in dB."""
        feed = {self.input_name: np.ascontiguousarray(inputs, dtype=np.float32)}
        if self.metadata.variant == "tta":
            frames = inputs.shape[2] if self.input_name == INPUT_LOGMEL else num_frames(inputs.shape[1])
            time, freq = tta_stripes(self.metadata.spec_aug, self.tta_passes, frames, self.metadata.mel_bins, self.seed)
            feed |= {INPUT_TIME_STRIPES: time, INPUT_FREQ_STRIPES: freq}
        return feed

    def probabilities(self, inputs: np.ndarray, samples: int | None = None) -> np.ndarray:
        """(batch, samples) float32 waveforms at 44.1 kHz, one length -> (batch, classes) probabilities.

        A log-mel graph takes (batch, 1, frames, mel_bins) log-mel instead, and ``samples``: the
        clip length in samples the frames come from (it sets the pass groups below, as for the
        waveform). The passes of a TTA model go to onnxruntime in groups of at most
        ``passes_per_call x 10 s / (batch x samples)`` passes (at least one), and the groups' mean
        probabilities are averaged weighted by their sizes: the same result as one call with
        every pass, with peak memory bounded (a 10 s clip with 30 passes in one call took
        1.2 GB). A CPU-schedule TTA model gets every pass in one call (its graph runs them one at
        a time).
        """
        feed = self.feed(inputs)
        if self.metadata.variant != "tta":
            return self._runner.infer(feed, [OUTPUT_PROBS])[OUTPUT_PROBS]
        size = inputs.size if samples is None else len(inputs) * samples
        group = self.tta_passes if self.metadata.loops_over_passes else max(1, self.pass_samples_per_call // size)
        total = 0.0
        for start in range(0, self.tta_passes, group):
            part = {name: value[start : start + group] if name != self.input_name else value for name, value in feed.items()}
            probs = self._runner.infer(part, [OUTPUT_PROBS])[OUTPUT_PROBS].astype(np.float64)
            total = total + probs * len(part[INPUT_TIME_STRIPES])
        return (total / self.tta_passes).astype(np.float32)

    def infer(self, waveforms: np.ndarray) -> dict[str, np.ndarray]:
        """(batch, samples) float32 waveforms at 44.1 kHz, one length -> each of
        :attr:`output_names` as a (batch, classes) float32 array (what ``asc-serve`` returns)."""
        if self.metadata.variant == "tta":
            return {OUTPUT_PROBS: self.probabilities(waveforms)}
        return self._runner.infer(self.feed(waveforms), list(self.output_names))

    def _predict_windows(self, windows: Iterable[np.ndarray], name: str | Path) -> Prediction:
        return predict_windows(windows, self.probabilities, self.labels, name,
                               self.pass_samples_per_call // self.passes_in_memory)

    def predict(self, source: str | Path | np.ndarray) -> Prediction:
        """Classify an audio file (any rate or channel count; streamed) or a waveform array
        (mono float at 44.1 kHz, shape (samples,))."""
        if self.input_name != INPUT_WAVEFORM:
            raise AscError("a log-mel graph classifies log-mel frames (probabilities), not audio; give the model file "
                           "it was written beside", self.model_path)
        if isinstance(source, np.ndarray):
            return self._predict_windows(split_windows(validate_waveform(source), hop_seconds=self.hop_seconds), "<array>")
        return self._predict_windows(iter_windows(source, hop_seconds=self.hop_seconds), source)


def predict_windows(windows: Iterable[np.ndarray], probabilities: Callable[[np.ndarray], np.ndarray],
                    labels: tuple[str, ...], name: str | Path, samples_per_call: int) -> Prediction:
    """Average the class probabilities of a file's windows (float32, 44.1 kHz).

    Consecutive windows of one length go to ``probabilities`` ((batch, samples) -> (batch,
    classes)) together, at most ``samples_per_call`` samples at a time (at least one window); the
    mean over windows is taken in float64. Shared by :class:`Classifier` and the Triton client
    (:mod:`asc_deploy.client`), so that both give the same result for the same windows.
    """
    total, count, pending, peak = None, 0, [], 0.0

    def flush() -> None:
        nonlocal total, count
        probs = probabilities(np.stack(pending)).astype(np.float64)
        total = probs.sum(axis=0) if total is None else total + probs.sum(axis=0)
        count += len(pending)
        pending.clear()

    for window in windows:
        if pending and window.shape != pending[0].shape:
            flush()
        pending.append(window)
        peak = max(peak, float(np.abs(window).max()))
        if (len(pending) + 1) * window.size > samples_per_call:
            flush()
    if pending:
        flush()
    probs = (total / count).astype(np.float32)
    if not np.isfinite(probs).all():  # e.g. float PCM near 1e17: the power spectrum overflows float32
        hint = "; audio is expected within [-1, 1]" if peak > 1 else ""
        raise AscError(f"the model gave non-finite probabilities (peak sample amplitude {peak:.3g}{hint})", name)
    return Prediction(label=labels[int(np.argmax(probs))], probs=probs, labels=labels, windows=count)
