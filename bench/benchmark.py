"""Run every backend on the same clips with the same seeded TTA stripes, timing batched calls.

Clips are read per batch with the runtime's audio loader (a clip that fails to load is reported
and left out for every backend alike); batches hold clips of one length. Latency is per batch
call after one untimed warm-up call; peak memory is the process's resident high-water mark,
reset before each backend (Linux).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np

from asc_deploy.audio import load_audio
from asc_deploy.errors import AscError
from asc_deploy.labels import CLASS_LABELS, SAMPLE_RATE, num_frames
from asc_deploy.metadata import INPUT_FREQ_STRIPES, INPUT_TIME_STRIPES, INPUT_WAVEFORM, OUTPUT_PROBS
from asc_deploy.stripes import tta_stripes
from asc_deploy.train.dataset import Clip


@dataclass(frozen=True)
class LoadedClips:
    """The clips that loaded, and the errors of those that did not."""

    clips: list[Clip]
    lengths: list[int]  # samples at 44.1 kHz
    errors: list[tuple[str, str]]  # (filename, message)


def scan_clips(clips: list[Clip]) -> LoadedClips:
    """Load every clip once to learn its length and catch bad files before any backend runs."""
    good, lengths, errors = [], [], []
    for clip in clips:
        try:
            lengths.append(len(load_audio(clip.path)))
            good.append(clip)
        except AscError as err:
            errors.append((clip.filename, str(err)))
    return LoadedClips(good, lengths, errors)


def batches(loaded: LoadedClips, batch_size: int) -> list[list[int]]:
    """Indices into ``loaded.clips`` grouped into batches of at most ``batch_size`` clips of one length."""
    by_length: dict[int, list[int]] = {}
    for index, length in enumerate(loaded.lengths):
        by_length.setdefault(length, []).append(index)
    return [group[i : i + batch_size] for group in by_length.values() for i in range(0, len(group), batch_size)]


def make_feed(waveforms: np.ndarray, nb_aug: int, spec_aug: tuple[int, ...], seed: int) -> dict[str, np.ndarray]:
    """Inputs for (batch, samples) waveforms: stripes depend on the clip length and seed only."""
    feed = {INPUT_WAVEFORM: waveforms}
    if nb_aug > 0:
        time_stripes, freq_stripes = tta_stripes(spec_aug, nb_aug, num_frames(waveforms.shape[1]), 256, seed)
        feed |= {INPUT_TIME_STRIPES: time_stripes, INPUT_FREQ_STRIPES: freq_stripes}
    return feed


def reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


@dataclass
class BackendRun:
    """Probabilities and timings of one backend at one precision over all batches."""

    probs: np.ndarray  # (clips, classes) in ``LoadedClips.clips`` order
    latencies_ms: list[float] = field(default_factory=list)  # per batch call
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # further outputs asked for, by name, (clips, ...) in clip order
    peak_rss_mb: float | None = None

    def timing(self, total_audio_seconds: float, clips: int) -> dict[str, float]:
        lat = np.asarray(self.latencies_ms)
        compute_s = lat.sum() / 1000
        return {
            "latency_p50_ms": float(np.percentile(lat, 50)),
            "latency_p95_ms": float(np.percentile(lat, 95)),
            "throughput_clips_per_s": clips / compute_s if compute_s else float("inf"),
            "real_time_factor": compute_s / total_audio_seconds,
        }


def iter_batch_waveforms(loaded: LoadedClips, groups: list[list[int]]) -> Iterator[tuple[list[int], np.ndarray]]:
    for group in groups:
        yield group, np.stack([load_audio(loaded.clips[i].path) for i in group])


def run_backend(runner, loaded: LoadedClips, groups: list[list[int]], nb_aug: int, spec_aug: tuple[int, ...], seed: int,
                label: str, extra: tuple[str, ...] = ()) -> BackendRun:
    """Run ``runner`` (activated here) over every batch; one untimed warm-up call first. ``extra``:
    outputs to keep besides ``probs`` (in :attr:`BackendRun.extra`)."""
    probs = np.zeros((len(loaded.clips), len(CLASS_LABELS)), np.float32)
    run = BackendRun(probs)
    reset_peak_rss()
    with runner:
        first = True
        with click.progressbar(iter_batch_waveforms(loaded, groups), length=len(groups), label=f"{label:<28}", file=None) as bar:
            for group, waveforms in bar:
                feed = make_feed(waveforms, nb_aug, spec_aug, seed)
                if first:
                    runner.infer(feed, [OUTPUT_PROBS])
                    first = False
                start = time.perf_counter()
                out = runner.infer(feed, [OUTPUT_PROBS, *extra])
                run.latencies_ms.append((time.perf_counter() - start) * 1000)
                probs[group] = out[OUTPUT_PROBS]
                for name in extra:
                    if name not in run.extra:
                        run.extra[name] = np.full((len(loaded.clips), *out[name].shape[1:]), np.nan, out[name].dtype)
                    run.extra[name][group] = out[name]
    run.peak_rss_mb = peak_rss_mb()
    return run


def total_seconds(loaded: LoadedClips) -> float:
    return sum(loaded.lengths) / SAMPLE_RATE
