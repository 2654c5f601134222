"""Streaming scene classification that equals the offline runtime (no torch).

:class:`StreamClassifier` takes blocks of samples of any size and, every ``hop`` samples, returns
a :class:`StreamPrediction` for the last ``window`` samples (default the model's 10 s). The first
prediction comes once 1 s has arrived, over what has arrived; prediction k covers the samples
``[max(0, end - window), end)`` with ``end = 1 s + k * hop`` (samples at 44.1 kHz counted from the
start of the stream). Each equals :class:`~asc_deploy.runtime.Classifier` on those samples cut
out as a clip (same stripes for a TTA model: they depend on the window's frame count only), to
float32 rounding (tested to 1e-5 in every probability).

Incremental work (``asc-export --stream`` writes the graphs used here, see
:mod:`asc_deploy.metadata`): log-mel frames whose 2048 samples lie inside the window are
computed once, by the frontend graph without padding, and cached by their absolute sample
position; only the first and last frame of each window, whose reflect padding depends on the
window's edges, are recomputed at every hop (padded here exactly as the offline frontend pads).
Consecutive windows share frames when they start on the same 1,024-sample grid, i.e. when the
hop is a whole number of frame hops. A single-pass model also shares the columns of its CNN's
last feature map (one column per 16 frames, through the features and head graphs) when the hop
is a whole number of columns: each column depends on frames [16 j - 30, 16 j + 45] only, so the
columns away from the window's edges are computed once (from runs with two columns of context)
and only the 2 first and 3 last columns are recomputed at every hop. Default hop: 48 frames
(49,152 samples, 1.115 s, the multiple of 16 frames closest to 1 s) for a single-pass model, 43
frames (44,032 samples, 0.998 s, the whole number of frames closest to 1 s) for a TTA model,
whose stripes differ per window so that nothing of its CNN is shared. Any other hop is still
exact, and recomputes what it cannot share. Measured per-hop cost against a full 10 s pass:
bench/stream.py.

Input quality (:class:`QualityThresholds`) is flagged on every prediction, over the window's
samples: ``silence`` (digital silence), ``clipping`` and ``dead_channel``. Optional smoothing
(:class:`Smoothing`) trades the equality with offline for steadier labels; it is off by default.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

from asc_deploy.audio import MIN_SAMPLES, RESAMPLE_QUALITY
from asc_deploy.errors import AscError
from asc_deploy.metadata import (
    INPUT_FEATURES,
    INPUT_LOGMEL,
    INPUT_WAVEFORM,
    OUTPUT_FEATURES,
    OUTPUT_LOGMEL,
    OUTPUT_PROBS,
    Graph,
    stream_cnn_paths,
    stream_graph_paths,
)
from asc_deploy.ort_runner import OnnxRuntimeRunner, SessionConfig
from asc_deploy.runtime import DEFAULT_PASSES_PER_CALL, DEFAULT_TTA_PASSES, Classifier, read_model_metadata

DEFAULT_HOP_FRAMES = 43  # frame hops per prediction hop: 43 x 1,024 = 44,032 samples, the closest to 1 s
COLUMN_FRAMES = 16  # frames per column of the CNN's last feature map (its four 2x2 poolings)
DEFAULT_REUSE_HOP_FRAMES = 48  # the multiple of COLUMN_FRAMES closest to 1 s: 49,152 samples (1.115 s)
# A feature column j depends on frames [16 j - 30, 16 j + 45] (four dilated 3x3 convolutions, each
# followed by a 2x2 pool): columns are computed from frames with this many whole columns around them.
CONTEXT_COLUMNS = 2  # left: 30 <= 2 x 16 frames
RIGHT_EDGE_COLUMNS = 3  # columns whose fields reach the last (edge) frame or past the window's end


@dataclass(frozen=True)
class QualityThresholds:
    """When a window's input is flagged (amplitudes in full scale, 1.0 = 0 dBFS).

    ``silence``: every sample of the window within ``silence_peak`` of zero (default 2**-15, one
    step of 16-bit PCM: digital silence, which a model would otherwise score as a confident scene).
    ``clipping``: at least ``clip_fraction`` of the window's samples (in any channel) at or above
    ``clip_level`` in magnitude (default 0.1 % at 0.999, within 33 steps of 16-bit full scale).
    ``dead_channel``: a channel of multichannel input silent (as above) over the whole window
    while another channel is not.
    """

    silence_peak: float = 2.0**-15
    clip_level: float = 0.999
    clip_fraction: float = 1e-3


class Smoothing(str, enum.Enum):
    """Smoothing of the emitted probabilities across hops (off by default: raw output equals offline).

    EMA: exponential moving average of the probabilities, ``s = a * p + (1 - a) * s_prev``, label
    the argmax of ``s``: fewer label flips on short events, at the price of lag (a change of scene
    takes about ``1 / a`` hops to show) and of probabilities no longer those of the window.
    HYSTERESIS: probabilities stay raw, but the label only changes when another class's
    probability beats the current label's by more than ``margin``: no flicker between two close classes,
    at the price of keeping a stale label while they stay close.
    """

    NONE = "none"
    EMA = "ema"
    HYSTERESIS = "hysteresis"


@dataclass(frozen=True)
class StreamPrediction:
    """One hop's result for the window ``[start, end)`` (seconds of input from the stream start)."""

    start: float
    end: float
    label: str
    probs: np.ndarray  # (classes,) float32 in ``labels`` order (smoothed when smoothing is on)
    labels: tuple[str, ...]
    flags: tuple[str, ...]  # input quality: "silence", "clipping", "dead_channel"
    compute_seconds: float  # wall time spent computing this prediction

    @property
    def top(self) -> float:
        return float(self.probs[self.labels.index(self.label)])

    def as_dict(self) -> dict:
        """JSON-ready fields: start, end (s), label, probs (label -> probability), flags (list)."""
        return {"start": round(self.start, 6), "end": round(self.end, 6), "label": self.label,
                "probs": {label: float(p) for label, p in zip(self.labels, self.probs)}, "flags": list(self.flags)}


def stream_session(threads: int = 0) -> SessionConfig:
    """The default session options of a :class:`StreamClassifier`: spinning off. A hop makes
    several short calls to different sessions (frontend, CNN, head), each with its own thread
    pool; spinning idle threads of one pool would take the cores from the next."""
    return SessionConfig(intra_op_threads=threads, allow_spinning=False)


class _Tail:
    """The last ``size`` rows of a stream of (samples, channels) float32 blocks, amortised O(1) per sample."""

    def __init__(self, size: int, channels: int) -> None:
        self.size, self.data, self.fill = size, np.zeros((2 * size, channels), np.float32), 0

    def append(self, block: np.ndarray) -> None:
        if len(block) >= self.size:
            self.data[: self.size], self.fill = block[len(block) - self.size :], self.size
            return
        if self.fill + len(block) > len(self.data):
            keep = self.size - len(block)
            self.data[:keep] = self.data[self.fill - keep : self.fill]
            self.fill = keep
        self.data[self.fill : self.fill + len(block)] = block
        self.fill += len(block)

    def last(self, count: int) -> np.ndarray:
        """A view of the last ``count`` rows (``count`` <= rows held)."""
        return self.data[self.fill - count : self.fill]


class StreamClassifier:
    """Scene predictions every ``hop`` samples over the last ``window`` samples of a stream.

    Args:
        model_path: an ``asc-export --stream`` model ``M.onnx``; its streaming graphs
            ``M.frontend.onnx`` and ``M.logmel.onnx`` must lie beside it.
        hop: samples (44.1 kHz) between predictions; default 48 frames (49,152 samples, 1.115 s) for a
            single-pass model with its features and head graphs, else 43 frames (44,032 samples, 0.998 s).
        window: samples per prediction window, from 1 s up to the model's clip length (default).
        channels: channels of the blocks given to :meth:`push` (averaged to mono, as offline).
        tta_passes, seed, passes_per_call, provider: as for :class:`Classifier`.
        session: onnxruntime options of every session; default :func:`stream_session` (no spinning).
        smoothing, smoothing_value: see :class:`Smoothing`; the EMA's weight ``a`` in (0, 1] or
            the hysteresis margin in [0, 1].
        quality: thresholds of the input-quality flags.
    """

    def __init__(self, model_path: str | Path, hop: int | None = None, window: int | None = None, channels: int = 1,
                 provider: str = "cpu", tta_passes: int = DEFAULT_TTA_PASSES, seed: int = 0,
                 session: SessionConfig | None = None, passes_per_call: int = DEFAULT_PASSES_PER_CALL,
                 smoothing: Smoothing | str = Smoothing.NONE, smoothing_value: float = 0.3,
                 quality: QualityThresholds = QualityThresholds()) -> None:
        metadata = read_model_metadata(model_path)
        if metadata.graph != Graph.WAVEFORM.value:
            raise AscError(f"give the model file M.onnx, not its {metadata.graph} graph", model_path)
        frontend_path, logmel_path = stream_graph_paths(model_path)
        for path in (frontend_path, logmel_path):
            if not path.is_file():
                raise AscError(f"streaming needs {path.name} beside the model: export it with asc-export --stream", model_path)
        self.frame_hop, self.n_fft = metadata.hop_length, metadata.n_fft
        clip = round(metadata.clip_seconds * metadata.sample_rate)
        has_cnn_split = metadata.variant == "single" and all(p.is_file() for p in stream_cnn_paths(model_path))
        default = DEFAULT_REUSE_HOP_FRAMES if has_cnn_split else DEFAULT_HOP_FRAMES
        self.hop = default * self.frame_hop if hop is None else int(hop)
        # CNN columns are shared between windows whose starts differ by whole columns.
        self.reuses_cnn = has_cnn_split and self.hop % (COLUMN_FRAMES * self.frame_hop) == 0
        self.window = clip if window is None else int(window)
        if not MIN_SAMPLES <= self.window <= clip:
            raise ValueError(f"window must be {MIN_SAMPLES} to {clip} samples, got {self.window}")
        if self.hop < 1:
            raise ValueError(f"hop must be >= 1 sample, got {self.hop}")
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.smoothing = Smoothing(smoothing)
        limits = {Smoothing.EMA: (0.0, 1.0, False), Smoothing.HYSTERESIS: (0.0, 1.0, True)}.get(self.smoothing)
        if limits and not (limits[0] < smoothing_value <= limits[1] or (limits[2] and smoothing_value == 0)):
            raise ValueError(f"{self.smoothing.value} value must be in {'[' if limits[2] else '('}0, 1], got {smoothing_value}")
        self.smoothing_value, self.quality, self.channels = smoothing_value, quality, channels
        self.sample_rate = metadata.sample_rate
        session = stream_session() if session is None else session
        self.classifier = Classifier(logmel_path, provider, tta_passes, seed, session=session, passes_per_call=passes_per_call)
        self.labels = self.classifier.labels
        self.metadata = metadata
        self._frontend = OnnxRuntimeRunner(frontend_path, provider, session)
        self._frontend.activate()
        self._features = self._head = None
        if self.reuses_cnn:
            self._features, self._head = (OnnxRuntimeRunner(path, provider, session) for path in stream_cnn_paths(model_path))
            self._features.activate(), self._head.activate()
        self.reset()

    def reset(self) -> None:
        """Forget the stream: the next block starts at time 0."""
        self.total = 0  # samples received
        self.next_end = MIN_SAMPLES  # where the next window ends
        self.last_end = 0  # where the last emitted window ended
        self._mono = _Tail(self.window, 1)
        self._multi = _Tail(self.window, self.channels) if self.channels > 1 else None
        self._frames: dict[int, np.ndarray] = {}  # absolute start sample -> interior log-mel frame (bins,)
        self._columns: dict[int, np.ndarray] = {}  # absolute first sample -> interior feature column (channels, bins)
        self._smoothed: np.ndarray | None = None
        self._label: int | None = None

    def push(self, block: np.ndarray) -> list[StreamPrediction]:
        """Add float32 samples at the model's rate, shape (samples,) or (samples, channels);
        return the predictions whose windows end inside the block (possibly none)."""
        block = np.asarray(block, dtype=np.float32)
        if block.ndim == 1:
            block = block[:, None]
        if block.ndim != 2 or block.shape[1] != self.channels:
            raise AscError(f"block of shape {block.shape}, need (samples, {self.channels})")
        bad = ~np.isfinite(block).all(axis=1)
        if bad.any():
            raise AscError(f"NaN or infinite samples in the stream at {(self.total + int(np.argmax(bad))) / self.sample_rate:.3f} s")
        mono = block if self.channels == 1 else block.astype(np.float64).mean(axis=1, keepdims=True).astype(np.float32)
        out, done = [], 0
        while done < len(block):
            take = min(len(block) - done, self.next_end - self.total)
            self._mono.append(mono[done : done + take])
            if self._multi is not None:
                self._multi.append(block[done : done + take])
            done += take
            self.total += take
            if self.total == self.next_end:
                out.append(self._predict())
                self.next_end += self.hop
        return out

    def finish(self) -> list[StreamPrediction]:
        """End of stream: a last prediction for the window ending at the last sample, if samples
        arrived since the last prediction (and at least 1 s in all); as offline, nothing is lost."""
        if self.total > self.last_end and self.total >= MIN_SAMPLES:
            return [self._predict()]
        return []

    def _interior(self, start: int, first: int, count: int) -> np.ndarray:
        """Interior frames ``first .. first + count - 1`` of the window starting at absolute sample
        ``start`` (frame t covers [start + (t - 1) * hop, start + (t + 1) * hop)), from the cache
        or computed in one call of the frontend graph; (count, bins)."""
        hop = self.frame_hop
        keys = [start + (t - 1) * hop for t in range(first, first + count)]
        missing = [k for k in keys if k not in self._frames]
        if missing:
            lo, hi = missing[0], missing[-1] + self.n_fft  # absolute samples to frame (one span)
            held = self.total - self._mono.fill
            span = self._mono.data[lo - held : hi - held, 0]
            frames = self._frontend.infer({INPUT_WAVEFORM: span[None]}, [OUTPUT_LOGMEL])[OUTPUT_LOGMEL][0, 0]
            for index, frame in enumerate(frames):
                self._frames[lo + index * hop] = frame
        # Keep this window's frames only: the next window shares them if it starts on the same grid.
        self._frames = {k: self._frames[k] for k in keys}
        return np.stack(list(self._frames.values()))

    def _feature_map(self, logmel: np.ndarray, start: int) -> np.ndarray:
        """The CNN's last feature map (1, channels, columns, bins) of a window's log-mel (frames,
        bins) starting at absolute sample ``start``. Columns near the window's edges come from
        runs of the features graph that include the edge (and so its padding); interior columns
        come from the cache, or from one run over the missing ones with CONTEXT_COLUMNS whole
        columns of frames on each side. Every run starts on a column boundary of the window, so
        its poolings group the frames as the whole window's do: the same values."""
        frames = len(logmel)
        count = frames // COLUMN_FRAMES
        span = COLUMN_FRAMES * self.frame_hop  # samples per column

        def run(lo: int, hi: int) -> np.ndarray:  # columns of frames [lo, hi) -> (columns, channels, bins)
            out = self._features.infer({INPUT_LOGMEL: logmel[None, None, lo:hi]}, [OUTPUT_FEATURES])[OUTPUT_FEATURES][0]
            return out.transpose(1, 0, 2)

        ctx = CONTEXT_COLUMNS
        columns: list[np.ndarray | None] = [None] * count
        left = run(0, min(frames, COLUMN_FRAMES * 2 * ctx))[:ctx]
        columns[: len(left)] = list(left)
        right_first = max(ctx, count - RIGHT_EDGE_COLUMNS)
        if right_first < count:
            columns[right_first:] = list(run(COLUMN_FRAMES * (right_first - ctx), frames)[ctx:])
        keys = {j: start + j * span for j in range(ctx, right_first)}
        missing = [j for j, key in keys.items() if key not in self._columns]
        if missing:
            a, b = missing[0], missing[-1] + 1
            for j, column in zip(range(a, b), run(COLUMN_FRAMES * (a - ctx), COLUMN_FRAMES * (b + ctx))[ctx:]):
                self._columns[keys[j]] = column
        self._columns = {key: self._columns[key] for key in keys.values()}  # this window's only
        for j, key in keys.items():
            columns[j] = self._columns[key]
        return np.stack(columns, axis=1)[None]

    def _edges(self, clip: np.ndarray) -> np.ndarray:
        """The first and last frame of ``clip`` (the only ones whose reflect padding reaches into
        them), padded as the offline frontend pads: (2, bins)."""
        half, length = self.n_fft // 2, len(clip)
        last = length // self.frame_hop  # index of the last frame
        index = np.concatenate([np.arange(-half, half), np.arange(last * self.frame_hop - half, last * self.frame_hop + half)])
        index = np.abs(index)  # reflect at the start (no repeat of sample 0)
        index = np.where(index >= length, 2 * (length - 1) - index, index)  # reflect at the end
        segments = clip[index].reshape(2, self.n_fft)
        return self._frontend.infer({INPUT_WAVEFORM: segments}, [OUTPUT_LOGMEL])[OUTPUT_LOGMEL][:, 0, 0]

    def _flags(self, length: int) -> tuple[str, ...]:
        q, flags = self.quality, []
        mono = self._mono.last(length)[:, 0]
        if float(np.abs(mono).max()) <= q.silence_peak:
            flags.append("silence")
        channels = self._multi.last(length) if self._multi is not None else self._mono.last(length)
        if np.count_nonzero(np.abs(channels) >= q.clip_level) >= q.clip_fraction * channels.size / channels.shape[1]:
            flags.append("clipping")
        if self._multi is not None:
            peaks = np.abs(channels).max(axis=0)
            if (peaks <= q.silence_peak).any() and (peaks > q.silence_peak).any():
                flags.append("dead_channel")
        return tuple(flags)

    def _predict(self) -> StreamPrediction:
        began = time.perf_counter()
        end = self.total
        length = min(end, self.window)
        start = end - length
        clip = self._mono.last(length)[:, 0]
        frames = length // self.frame_hop + 1
        edges = self._edges(clip)
        logmel = np.concatenate([edges[:1], self._interior(start, 1, frames - 2), edges[1:]])
        if self.reuses_cnn:
            probs = self._head.infer({INPUT_FEATURES: self._feature_map(logmel, start)}, [OUTPUT_PROBS])[OUTPUT_PROBS][0]
        else:
            probs = self.classifier.probabilities(logmel[None, None], samples=length)[0]
        if not np.isfinite(probs).all():
            peak = float(np.abs(clip).max())
            raise AscError(f"the model gave non-finite probabilities for {start / self.sample_rate:.3f}-{end / self.sample_rate:.3f} s "
                           f"(peak sample amplitude {peak:.3g}{'; audio is expected within [-1, 1]' if peak > 1 else ''})")
        probs, label = self._smooth(probs)
        self.last_end = end
        return StreamPrediction(start=start / self.sample_rate, end=end / self.sample_rate, label=self.labels[label],
                                probs=probs, labels=self.labels, flags=self._flags(length),
                                compute_seconds=time.perf_counter() - began)

    def _smooth(self, probs: np.ndarray) -> tuple[np.ndarray, int]:
        """(probabilities, label index) after the configured smoothing."""
        if self.smoothing is Smoothing.EMA:
            a = self.smoothing_value
            self._smoothed = probs if self._smoothed is None else (a * probs + (1 - a) * self._smoothed).astype(np.float32)
            return self._smoothed, int(np.argmax(self._smoothed))
        best = int(np.argmax(probs))
        if self.smoothing is Smoothing.HYSTERESIS and self._label is not None and probs[best] <= probs[self._label] + self.smoothing_value:
            return probs, self._label
        self._label = best
        return probs, best


class StreamResampler:
    """Streaming rate conversion of (samples, channels) float32 blocks to the model's rate with
    soxr's stream API (``soxr.ResampleStream``), at the offline runtime's quality; a pass-through
    at the model's rate. The channels stay separate (the classifier averages them, and needs
    them apart to flag a dead one)."""

    def __init__(self, rate: int, channels: int = 1, target: int = 44_100) -> None:
        if rate < 1 or channels < 1:
            raise ValueError(f"need a positive rate and channel count, got {rate} Hz and {channels} channels")
        self.channels = channels
        self._stream = None if rate == target else soxr.ResampleStream(rate, target, channels, dtype="float32",
                                                                       quality=RESAMPLE_QUALITY)

    def push(self, block: np.ndarray) -> np.ndarray:
        """(samples, channels) float32 at the input rate -> (samples', channels) at the model's rate."""
        block = np.ascontiguousarray(block, dtype=np.float32).reshape(-1, self.channels)
        return block if self._stream is None else self._stream.resample_chunk(block).reshape(-1, self.channels)

    def finish(self) -> np.ndarray:
        """The samples soxr still holds at the end of the stream, (samples, channels)."""
        empty = np.zeros((0, self.channels), np.float32)
        return empty if self._stream is None else self._stream.resample_chunk(empty, last=True).reshape(-1, self.channels)
