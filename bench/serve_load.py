"""Load benchmark of ``asc-serve``: throughput and latency percentiles of the served model at
several client concurrencies, against ``asc-predict``'s :class:`~asc_deploy.runtime.Classifier`
in one process, on the same clips, in ONE run.

Rows:

1. the baseline: ``Classifier.predict`` on each clip in turn, in this process (what
   ``asc-predict --model`` does per file, audio decoding left out);
2. ``asc-serve`` (started here on free loopback ports, gRPC: an HTTP client must stay in the thread that made it) at each concurrency ``c``: ``c``
   threads, each with its own :class:`~asc_deploy.client.TritonClassifier`, take clips from one
   queue until every clip was classified once (``TritonClassifier.predict``: windows, request,
   average, as ``asc-predict --server``).

Latency is per clip (p50, p99 over the clips, milliseconds), throughput is clips over the wall
time of the row (clips/s); ``x local`` is the row's throughput over the baseline's. Each row also
gives the largest difference of its probabilities from the baseline's on the same clips. Every
row is warmed up first. Client threads, the server and the baseline share this machine's CPUs:
read the ratios within one run, not the absolute times across runs.

    python -m asc_deploy.bench.serve_load --model model.onnx [--clips 64] [--seconds 10] [--concurrency 1,8,32]
"""

from __future__ import annotations

import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from asc_deploy.atomic import atomic_open
from asc_deploy.bench.perf import machine, make_clips
from asc_deploy.client import TritonClassifier
from asc_deploy.errors import AscError
from asc_deploy.runtime import Classifier, Prediction
from asc_deploy.serve_process import ServerProcess

DEFAULT_CONCURRENCY = (1, 8, 32)
WARMUP_CLIPS = 2


@dataclass(frozen=True)
class LoadRow:
    name: str
    concurrency: int
    clips: int
    wall_s: float
    latencies_s: tuple[float, ...]  # one per clip
    max_abs_diff: float  # largest |probability - baseline's| over the clips

    @property
    def throughput(self) -> float:
        """Clips per second."""
        return self.clips / self.wall_s

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q)) * 1e3


def run_clients(predictors: Sequence[Callable[[np.ndarray], Prediction]], clips: np.ndarray) -> tuple[float, list[float], np.ndarray]:
    """Classify every clip once, ``len(predictors)`` threads taking clips from one queue.
    Returns (wall seconds, per-clip latencies in seconds, (clips, classes) probabilities)."""
    work: queue.SimpleQueue[int] = queue.SimpleQueue()
    for i in range(len(clips)):
        work.put(i)
    latencies, probs, errors = [0.0] * len(clips), [None] * len(clips), []
    barrier = threading.Barrier(len(predictors) + 1)

    def worker(predict: Callable[[np.ndarray], Prediction]) -> None:
        barrier.wait()
        try:
            while True:
                try:
                    i = work.get_nowait()
                except queue.Empty:
                    return
                start = time.perf_counter()
                probs[i] = predict(clips[i]).probs
                latencies[i] = time.perf_counter() - start
        except Exception as err:  # noqa: BLE001 (reported after the row)
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(p,)) for p in predictors]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise AscError(f"{len(errors)} of {len(clips)} requests failed, first: {errors[0]}")
    return wall, latencies, np.stack(probs)


def measure(model: str | Path, clips: np.ndarray, concurrency: Sequence[int] = DEFAULT_CONCURRENCY,
            log_path: str | Path | None = None) -> list[LoadRow]:
    """The baseline row, then one ``asc-serve`` row per concurrency (see the module docstring)."""
    local = Classifier(model)
    for clip in clips[:WARMUP_CLIPS]:
        local.predict(clip)
    wall, latencies, baseline = run_clients([local.predict], clips)
    rows = [LoadRow("asc-predict (Classifier, in process)", 1, len(clips), wall, tuple(latencies), 0.0)]
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(model, log_path or Path(tmp) / "serve.log").start()
        try:
            for c in concurrency:
                clients = [TritonClassifier(server.grpc_url) for _ in range(c)]
                try:
                    run_clients([client.predict for client in clients], clips[: max(WARMUP_CLIPS, c)])  # connect, warm up
                    wall, latencies, probs = run_clients([client.predict for client in clients], clips)
                finally:
                    for client in clients:
                        client.close()
                diff = float(np.abs(probs - baseline).max())
                rows.append(LoadRow("asc-serve (gRPC)", c, len(clips), wall, tuple(latencies), diff))
        finally:
            server.stop()
    return rows


def table(rows: Sequence[LoadRow], header: str = "") -> str:
    """Markdown table of the rows; throughput ratios against the first (baseline) row."""
    base = rows[0].throughput
    lines = [header] if header else []
    lines += ["| path | clients | clips | clips/s | x local | p50 ms | p99 ms | max abs diff |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.name} | {r.concurrency} | {r.clips} | {r.throughput:.1f} | {r.throughput / base:.2f} | "
                     f"{r.percentile_ms(50):.1f} | {r.percentile_ms(99):.1f} | {r.max_abs_diff:.1e} |")
    return "\n".join(lines) + "\n"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model_path", required=True, type=click.Path(exists=True, dir_okay=False), help="ONNX model written by asc-export.")
@click.option("--clips", default=64, show_default=True, type=click.IntRange(min=1), help="Clips per row.")
@click.option("--seconds", default=10.0, show_default=True, type=click.FloatRange(min=1.0), help="Length of every clip.")
@click.option("--concurrency", default=",".join(map(str, DEFAULT_CONCURRENCY)), show_default=True,
              help="Comma-separated client counts, one asc-serve row each.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Also write the table (Markdown) here.")
def main(model_path: str, clips: int, seconds: float, concurrency: str, out: str | None) -> None:
    """Throughput and p50/p99 latency of asc-serve against asc-predict's Classifier, same clips, one run."""
    try:
        levels = [int(c) for c in concurrency.split(",")]
        if not levels or min(levels) < 1:
            raise ValueError
    except ValueError:
        raise click.BadParameter(f"expected comma-separated positive integers, got {concurrency!r}", param_hint="--concurrency")
    load = os.getloadavg()[0]
    try:
        rows = measure(model_path, make_clips(clips, seconds), levels)  # one length: Triton may batch them
    except AscError as err:
        click.echo(f"serve_load: error: {err}", err=True)
        raise SystemExit(1) from err
    text = table(rows, f"asc-serve load: {clips} clips of {seconds:g} s, {machine()}, "
                       f"load average {load:.1f} -> {os.getloadavg()[0]:.1f}\n")
    click.echo(text)
    if out:
        with atomic_open(out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
