"""``asc-stream``: live scene classification of a file or of raw PCM on standard input.

One line per hop: window start and end (seconds of input), label, top probability, flags
(``-`` for none), tab-separated under a header line; ``--json`` gives JSON lines with ``start``,
``end``, ``label``, ``probs`` (label -> probability) and ``flags`` (a list). ``--output`` writes the
file atomically at the end, or line by line with ``--follow``; standard output is flushed line by
line. At the end, per-hop latency (p50, p95) and the real-time factor go to standard error.

Ends: end of input (exit 0, after a last prediction over the final window); a closed output pipe
(exit 141, as a shell reports SIGPIPE); Ctrl-C or SIGTERM (exit 130 / 143); bad input (NaN or
infinite samples, a raw stream ending inside a frame, an unreadable file; exit 1). Each ends with
one line on standard error and no traceback, and every line written before stays valid (an
``--output`` file is still completed, with the lines so far).
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import IO

import click
import numpy as np

from asc_deploy.atomic import atomic_open
from asc_deploy.audio import file_blocks, open_audio
from asc_deploy.errors import AscError
from asc_deploy.runtime import DEFAULT_TTA_PASSES
from asc_deploy.streaming import Smoothing, StreamClassifier, StreamPrediction, StreamResampler, stream_session

FILE_BLOCK = 1 << 16  # frames per read from a file (as fast as possible)
LIVE_BLOCK = 1024  # frames per read when paced in real time, and most per read from a pipe
FORMATS = {"f32le": np.dtype("<f4"), "s16le": np.dtype("<i2")}
EXIT_PIPE, EXIT_INT, EXIT_TERM = 141, 130, 143


class Stop(Exception):
    """Ends the stream early with an exit code and a message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _terminate(signum: int, frame: object) -> None:
    raise Stop(EXIT_TERM, "terminated")


def pcm_blocks(stream: IO[bytes], fmt: str, channels: int) -> Iterator[np.ndarray]:
    """(frames, channels) float32 blocks of raw interleaved PCM, as they arrive (at most
    LIVE_BLOCK frames each); s16le is scaled by 1/32768. :class:`AscError` if the stream ends
    inside a frame."""
    dtype = FORMATS[fmt]
    frame = dtype.itemsize * channels
    pending = b""
    while True:
        data = stream.read1(LIVE_BLOCK * frame) if hasattr(stream, "read1") else stream.read(LIVE_BLOCK * frame)
        if not data:
            break
        data = pending + data
        whole = len(data) - len(data) % frame
        pending = data[whole:]
        if whole:
            values = np.frombuffer(data[:whole], dtype).reshape(-1, channels).astype(np.float32)
            yield values / 32768 if fmt == "s16le" else values
    if pending:
        raise AscError(f"the stream ended inside a frame ({len(pending)} bytes left over; a {fmt} frame of {channels} "
                       f"channels is {frame} bytes)", "<stdin>")


def paced(blocks: Iterator[np.ndarray], rate: int) -> Iterator[np.ndarray]:
    """The blocks, each released no earlier than its start time in the stream (real time)."""
    began, done = time.perf_counter(), 0
    for block in blocks:
        delay = done / rate - (time.perf_counter() - began)
        if delay > 0:
            time.sleep(delay)
        yield block
        done += len(block)


def percentile_ms(seconds: list[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of durations in seconds, in milliseconds; NaN if none."""
    if not seconds:
        return math.nan
    ordered = sorted(seconds)
    return 1e3 * ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def format_line(p: StreamPrediction, as_json: bool) -> str:
    if as_json:
        return json.dumps(p.as_dict())
    return f"{p.start:.3f}\t{p.end:.3f}\t{p.label}\t{p.top:.4f}\t{','.join(p.flags) or '-'}"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model_path", required=True, type=click.Path(), help="asc-export --stream model (M.onnx, its graphs beside).")
@click.argument("source", default="-")
@click.option("--json", "as_json", is_flag=True, help="JSON lines (start, end, label, probs, flags) instead of tab-separated text.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None, help="Write here instead of stdout (atomically at the end).")
@click.option("--follow", is_flag=True, help="With --output: write and flush line by line instead of atomically at the end.")
@click.option("--realtime", is_flag=True, help="Read a file at the pace of real time (as a live source would deliver it).")
@click.option("--format", "fmt", type=click.Choice(sorted(FORMATS)), default="f32le", show_default=True, help="Raw PCM on stdin (-).")
@click.option("--rate", default=44_100, show_default=True, type=click.IntRange(min=1), help="Sample rate of raw PCM on stdin.")
@click.option("--channels", default=1, show_default=True, type=click.IntRange(min=1), help="Interleaved channels of raw PCM on stdin.")
@click.option("--hop", "hop_seconds", type=float, default=None, help="Seconds between predictions [default: 48 frames (1.115 s) for a single-pass model, 43 (0.998 s) for TTA].")
@click.option("--window", "window_seconds", type=float, default=None, help="Seconds per window, 1 to the model's 10 [default: 10].")
@click.option("--smoothing", type=click.Choice([s.value for s in Smoothing]), default="none", show_default=True,
              help="ema: moving average of probabilities; hysteresis: the label changes only by a margin (see README).")
@click.option("--smoothing-value", default=0.3, show_default=True, help="EMA weight of the newest hop, or hysteresis margin.")
@click.option("--provider", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda", "tensorrt"]))
@click.option("--tta-passes", default=DEFAULT_TTA_PASSES, show_default=True, help="SpecAugment passes of a TTA model.")
@click.option("--seed", default=0, show_default=True, help="Seed of the TTA stripes.")
@click.option("--threads", default=0, show_default=True, type=click.IntRange(min=0), help="onnxruntime intra-op threads (0: one per core).")
def main(model_path: str, source: str, as_json: bool, output: str | None, follow: bool, realtime: bool, fmt: str, rate: int,
         channels: int, hop_seconds: float | None, window_seconds: float | None, smoothing: str, smoothing_value: float,
         provider: str, tta_passes: int, seed: int, threads: int) -> None:
    """Classify SOURCE (an audio file, or - for raw PCM on stdin) every hop, over the last window."""
    code, message, latencies, began = 0, "", [], time.perf_counter()
    signal.signal(signal.SIGTERM, _terminate)
    audio_seconds = 0.0
    try:
        with ExitStack() as stack:
            if follow and not output:
                raise AscError("--follow needs --output")
            if source == "-":
                blocks, in_rate = pcm_blocks(sys.stdin.buffer, fmt, channels), rate
            else:
                if (fmt, rate, channels) != ("f32le", 44_100, 1):
                    raise AscError("--format, --rate and --channels describe raw PCM on stdin (-); a file says its own")
                f = stack.enter_context(open_audio(Path(source)))
                channels, in_rate = f.channels, f.samplerate
                blocks = file_blocks(f, Path(source), LIVE_BLOCK if realtime else FILE_BLOCK)
            if realtime:
                blocks = paced(blocks, in_rate)
            classifier = StreamClassifier(
                model_path, hop=None if hop_seconds is None else round(hop_seconds * 44_100),
                window=None if window_seconds is None else round(window_seconds * 44_100), channels=channels,
                provider=provider, tta_passes=tta_passes, seed=seed, session=stream_session(threads),
                smoothing=smoothing, smoothing_value=smoothing_value)
            resampler = StreamResampler(in_rate, channels, classifier.sample_rate)
            if output and not follow:
                out = stack.enter_context(atomic_open(output, "w"))
            elif output:
                out = stack.enter_context(open(output, "w"))
            else:
                out = sys.stdout
            if not as_json:
                print("start\tend\tlabel\tprob\tflags", file=out, flush=True)
            try:
                for block in blocks:
                    for p in classifier.push(resampler.push(block)):
                        latencies.append(p.compute_seconds)
                        print(format_line(p, as_json), file=out, flush=True)
                for p in classifier.push(resampler.finish()) + classifier.finish():
                    latencies.append(p.compute_seconds)
                    print(format_line(p, as_json), file=out, flush=True)
            # The output so far stays valid, and an --output file is completed with it.
            except AscError as err:
                code, message = 1, str(err)
            except Stop as err:
                code, message = err.code, str(err)
            except KeyboardInterrupt:
                code, message = EXIT_INT, "interrupted"
            finally:
                audio_seconds = classifier.total / classifier.sample_rate
    except BrokenPipeError:
        # Python flushes stdout again at exit: point it at /dev/null so that no second error is printed.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code, message = EXIT_PIPE, "output closed (broken pipe)"
    except KeyboardInterrupt:
        code, message = EXIT_INT, "interrupted"
    except Stop as err:
        code, message = err.code, str(err)
    except (AscError, ValueError) as err:
        click.echo(f"asc-stream: error: {err}", err=True)
        sys.exit(1)
    except OSError as err:
        click.echo(f"asc-stream: error: cannot write the output: {err}", err=True)
        sys.exit(1)
    elapsed = time.perf_counter() - began
    if message:
        click.echo(f"asc-stream: {'error: ' if code == 1 else ''}{message}; stopped after {audio_seconds:.3f} s of input "
                   f"and {len(latencies)} predictions (all written)", err=True)
    factor = elapsed / audio_seconds if audio_seconds else float("nan")
    click.echo(f"asc-stream: {len(latencies)} predictions over {audio_seconds:.1f} s of audio in {elapsed:.1f} s; per-hop latency "
               f"p50 {percentile_ms(latencies, 50):.1f} ms, p95 {percentile_ms(latencies, 95):.1f} ms; real-time factor "
               f"{factor:.4f} ({1 / factor if factor else float('inf'):.1f}x faster than real time)", err=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
