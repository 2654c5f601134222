"""Streaming benchmark: the cost of one hop of :class:`asc_deploy.streaming.StreamClassifier`
against a full single pass over a 10 s window, measured in ONE run, at batch 1.

Rows (each the median of ``rounds x iterations`` timed calls, one call of each row in turn, so
that a change of machine load hits them alike; every session with the stream classifier's
options, :func:`~asc_deploy.streaming.stream_session`):

- ``full pass``: :class:`~asc_deploy.runtime.Classifier` on a 10 s clip (the waveform graph:
  frontend and CNN), what a stream classifier that recomputes its window does at every hop;
- ``stream hop (48 frames, CNN reused)``: one steady-state hop (10 s window) of the stream
  classifier at its default hop for a single-pass model, 48 frames (3 feature columns): 48 new
  frames and 2 edge frames through the frontend graph, the CNN's features graph over the 3 new
  columns and the 5 columns at the window's edges (with their context), the head, the flags;
- ``stream hop (43 frames)``: the hop closest to 1 s on the frame grid, which shares log-mel
  frames but not CNN columns (43 is not a multiple of 16): the CNN runs on all 431 frames;
- ``stream hop, off-grid``: the same with a hop of exactly 1 s (44,100 samples, not a multiple of
  the frame hop), which recomputes every frame of the window;
- ``frontend 10 s`` and ``CNN 10 s``: the two graphs alone over a whole window, to show where a
  hop's time goes.

``python -m asc_deploy.bench.stream --checkpoint CKPT [--threads 2] [--schedule cpu]`` prints the
table with each row's ratio to the full pass.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from asc_deploy.bench.perf import make_clips, measure
from asc_deploy.errors import AscError
from asc_deploy.extras import require_extras
from asc_deploy.labels import CLIP_SAMPLES, SAMPLE_RATE
from asc_deploy.metadata import INPUT_LOGMEL, INPUT_WAVEFORM, OUTPUT_LOGMEL, OUTPUT_PROBS, stream_graph_paths
from asc_deploy.ort_runner import OnnxRuntimeRunner
from asc_deploy.runtime import Classifier
from asc_deploy.streaming import StreamClassifier, stream_session

FULL = "full pass"


@dataclass(frozen=True)
class StreamRow:
    name: str
    median_ms: float
    p95_ms: float
    runs: int
    ratio: float  # median / the full pass's median (same run)


def _hop_fn(model: Path, hop: int, threads: int, seconds: float):
    """A call that feeds one hop of new audio to a stream classifier past its growing windows."""
    classifier = StreamClassifier(model, hop=hop, session=stream_session(threads))
    audio = make_clips(1, seconds, seed=1)[0]
    classifier.push(audio[: CLIP_SAMPLES + hop])
    position = [CLIP_SAMPLES + hop]

    def call() -> None:
        if position[0] + hop > len(audio):
            position[0] = 0  # the signal starts again: still one prediction per hop
        (prediction,) = classifier.push(audio[position[0] : position[0] + hop])
        position[0] += hop
        return prediction

    return call


def measure_stream(model: Path, threads: int = 2, iterations: int = 10, warmup: int = 2, rounds: int = 3) -> list[StreamRow]:
    """The rows of the module docstring for an ``asc-export --stream`` single-pass model."""
    session = stream_session(threads)  # every row alike: spinning off (see stream_session)
    clip = make_clips(1, CLIP_SAMPLES / SAMPLE_RATE, seed=0)
    full = Classifier(model, session=session)
    frontend_path, logmel_path = stream_graph_paths(model)
    frontend = OnnxRuntimeRunner(frontend_path, config=session)
    cnn = OnnxRuntimeRunner(logmel_path, config=session)
    frontend.activate(), cnn.activate()
    padded = np.pad(clip, ((0, 0), (1024, 1024)), mode="reflect")
    logmel = frontend.infer({INPUT_WAVEFORM: padded}, [OUTPUT_LOGMEL])[OUTPUT_LOGMEL]
    seconds = 4 * CLIP_SAMPLES / SAMPLE_RATE
    calls = {
        FULL: lambda: full.probabilities(clip),
        "stream hop (48 frames, CNN reused)": _hop_fn(model, 48 * 1024, threads, seconds),
        "stream hop (43 frames)": _hop_fn(model, 43 * 1024, threads, seconds),
        "stream hop, off-grid (1 s)": _hop_fn(model, SAMPLE_RATE, threads, seconds),
        "frontend 10 s": lambda: frontend.infer({INPUT_WAVEFORM: padded}, [OUTPUT_LOGMEL]),
        "CNN 10 s": lambda: cnn.infer({INPUT_LOGMEL: logmel}, [OUTPUT_PROBS]),
    }
    times: dict[str, list[float]] = {name: [] for name in calls}
    for name, call in calls.items():
        measure(call, 0, warmup)
    for _ in range(rounds * iterations):  # one call of each row in turn: load changes hit every row alike
        for name, call in calls.items():
            times[name] += measure(call, 1, 0)[0]
    base = float(np.median(times[FULL]))
    return [StreamRow(name, float(np.median(t)), float(np.percentile(t, 95)), len(t), float(np.median(t)) / base)
            for name, t in times.items()]


def table(rows: list[StreamRow], threads: int) -> list[str]:
    lines = [f"streaming, batch 1, {threads} threads, one run (ratios against the full pass of the same run)",
             "| row | median ms | p95 ms | runs | x full pass |", "|---|---:|---:|---:|---:|"]
    return lines + [f"| {r.name} | {r.median_ms:.2f} | {r.p95_ms:.2f} | {r.runs} | {r.ratio:.2f} |" for r in rows]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--checkpoint", type=click.Path(), default=None, help="Checkpoint to export (with --stream) for the run.")
@click.option("--model", type=click.Path(), default=None, help="An asc-export --stream model instead of a checkpoint.")
@click.option("--schedule", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True)
@click.option("--threads", default=2, show_default=True)
@click.option("--iterations", default=10, show_default=True, help="Timed calls per row and round.")
@click.option("--rounds", default=3, show_default=True)
def main(checkpoint: str | None, model: str | None, schedule: str, threads: int, iterations: int, rounds: int) -> None:
    """Per-hop cost of the stream classifier against a full 10 s single pass."""
    if (checkpoint is None) == (model is None):
        raise click.UsageError("give --checkpoint or --model")
    try:
        with tempfile.TemporaryDirectory(prefix="asc-stream-bench-") as tmp:
            if model is None:
                require_extras("the streaming benchmark with --checkpoint", "train")
                from asc_deploy.export.onnx_export import export_onnx

                model = export_onnx(checkpoint, Path(tmp) / "model.onnx", schedule=schedule, stream=True)
            for line in table(measure_stream(Path(model), threads, iterations, rounds=rounds), threads):
                click.echo(line)
    except AscError as err:
        click.echo(f"asc_deploy.bench.stream: error: {err}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
