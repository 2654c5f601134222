"""``asc-bench --perf``: CPU latency of every inference path, against SP4ASC's eager pipeline and
against this machine's compute floor, measured in ONE run on the same clips.

Rows:

1. the baseline, SP4ASC's way: torchlibrosa's conv-DFT ``Spectrogram`` + ``LogmelFilterBank``
   (n_fft 2048, hop 1024, centred, reflect, 256 mels 0-22050 Hz, amin 1e-10, no top_db) and the
   BatchNorm-folded Cnn6 in torch eager; TTA is a Python loop of ``passes`` full passes (frontend
   included, as SP4ASC's model computes its spectrogram inside ``forward``);
2. the exported ONNX models in onnxruntime (CPU provider) at fp32, fp16 and int8: the
   single-pass graph, and the TTA graph with all passes in one call (stripes drawn on the host),
   exported with the CPU schedule (a single-pass graph's clips and a TTA graph's passes run one
   at a time in an ONNX Loop, first blocks in channel groups) and/or the GPU schedule (whole
   tensors, passes batched), see :class:`asc_deploy.export.onnx_export.Schedule`; fp16 always
   with the GPU schedule. A batched TTA call over many clips is split into calls of fewer clips
   when its activations would exceed ``memory_budget_gb`` (the row's note says so);
3. the floor: the work of the row (2 x CNN MACs per pass, the frontend once per clip with its
   FFT counted at 5 N log2 N flops per frame (N = n_fft) and its mel filterbank at 2 x (N/2 + 1)
   x mel_bins flops per frame) divided by the best fp32 GEMM throughput measured in the same run
   (torch and numpy, square sizes 512-2048, ``threads`` threads, best of several).

Every latency is the median (and 95th percentile) of repeated calls after warm-up calls; the
rows are measured round-robin over a few rounds, so a change of machine load during the run hits
all of them alike (the table header gives the load average at start and end). Each row's
``spread`` (slowest over fastest round median) shows how much the machine's speed moved; the
table warns when it exceeds :data:`NOISY_SPREAD`. Each row also
reports the largest difference of its probabilities from the baseline's on the same clips and
stripes, so a fast row that computes something else is visible. torch runs under the OpenMP wait
policy of the environment, as SP4ASC's scripts do (the table's machine line prints it). This
benchmark once set OMP_WAIT_POLICY=PASSIVE, which slowed the eager baseline at batch 1 and
flattered those speed-ups: one 10 s clip 193-207 against 152-188 ms (16 clips: 3.7-4.3 against
3.7-4.1 s, within the noise; alternating processes, 2026-12-03). Set it yourself on a loaded
machine, where spinning waiters collapse.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import numpy as np

from asc_deploy.errors import AscError
from asc_deploy.labels import HOP_LENGTH, MEL_BINS, N_FFT, SAMPLE_RATE, num_frames

BASELINE = "eager SP4ASC"
ORT = "onnxruntime"
PRECISIONS = ("fp32", "fp16", "int8")
MIN_RUNS = 3  # a row stops early (row_budget_s) only after this many timed calls
NOISY_SPREAD = 1.25  # a row whose round medians differ by more than this ratio makes the table warn
ACTIVATION_BYTES_PER_FRAME = 2 * 64 * MEL_BINS * 4  # ~ peak live activations of one CNN pass, per frame


@dataclass(frozen=True)
class PerfRow:
    """One measured configuration. Latencies are per call over ``batch`` clips (all passes)."""

    path: str  # BASELINE or ORT
    schedule: str  # export schedule of an ORT row ("cpu" or "gpu"), "" for the baseline
    precision: str  # "fp32", "fp16" or "int8" (the CNN's; the frontend is always float32)
    passes: int  # 1: single pass; > 1: TTA
    batch: int  # clips per measured call
    median_ms: float
    p95_ms: float
    runs: int  # timed calls after warm-up
    floor_ms: float  # the row's work / the measured GEMM throughput
    speedup: float | None  # baseline median (same batch and passes) / this median
    max_prob_diff: float | None  # max |probs - baseline probs| on the same clips and stripes
    note: str = ""
    round_medians_ms: tuple[float, ...] = ()  # the median of each round's timed calls, in round order

    @property
    def spread(self) -> float | None:
        """Slowest over fastest round median (1.0: every round alike); None with fewer than 2 rounds.
        A large spread means the machine's speed changed during the run (a noisy neighbour)."""
        return max(self.round_medians_ms) / min(self.round_medians_ms) if len(self.round_medians_ms) > 1 else None

    @property
    def floor_ratio(self) -> float:
        """Latency in units of the compute floor (1.0 would be GEMM speed on every flop)."""
        return self.median_ms / self.floor_ms

    @property
    def label(self) -> str:
        schedule = f" [{self.schedule}]" if self.schedule else ""
        return f"{self.path}{schedule} {self.precision} {'single' if self.passes == 1 else f'TTA-{self.passes}'}"

    def as_dict(self) -> dict:
        return asdict(self) | {"floor_ratio": self.floor_ratio, "spread": self.spread}


# --------------------------------------------------------------------------------------- timing
def measure(fn: Callable[[], object], iterations: int, warmup: int, row_budget_s: float | None = None,
            min_runs: int = MIN_RUNS) -> tuple[list[float], object]:
    """Wall times in ms of ``iterations`` calls of ``fn`` after ``warmup`` untimed calls, and the
    last result. With ``row_budget_s``, a slow row warms up once only (a call > a quarter of the
    budget) and stops repeating once the budget is spent, after ``min_runs`` timed calls."""
    result = None
    for i in range(warmup):
        t0 = time.perf_counter()
        result = fn()
        if row_budget_s is not None and time.perf_counter() - t0 > row_budget_s / 4:
            break
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(iterations):
        t0 = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t0) * 1e3)
        if row_budget_s is not None and len(times) >= min_runs and time.perf_counter() - start > row_budget_s:
            break
    return times, result


def _threadpool_limits(threads: int):
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # numpy then uses its own default (all cores)
        return contextlib.nullcontext()
    return threadpool_limits(limits=threads)


def gemm_gflops(threads: int, sizes: Sequence[int] = (512, 1024, 2048), repeats: int = 5) -> float:
    """Best fp32 GEMM throughput (GFLOP/s) of torch and numpy on ``threads`` threads."""
    import torch

    best = 0.0
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rng = np.random.default_rng(0)
        for n in sizes:
            a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            for fn in (lambda: torch.mm(ta, tb), lambda: a @ b):
                with _threadpool_limits(threads):
                    fn()  # warm-up
                    for _ in range(repeats):
                        t0 = time.perf_counter()
                        fn()
                        best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    finally:
        torch.set_num_threads(previous)
    return best


def work_flops(cnn_macs: int, samples: int, batch: int, passes: int, n_fft: int = N_FFT, mel_bins: int = MEL_BINS,
               frontend: bool = True) -> float:
    """The floor's flops for ``batch`` clips of ``samples`` samples with ``passes`` CNN passes each
    (and, unless ``frontend`` is False, the frontend once per clip)."""
    frontend_flops = num_frames(samples) * (5 * n_fft * math.log2(n_fft) + 2 * (n_fft // 2 + 1) * mel_bins) if frontend else 0.0
    return batch * (passes * 2 * cnn_macs + frontend_flops)


# --------------------------------------------------------------------------------------- inputs
def make_clips(batch: int, seconds: float, seed: int = 0) -> np.ndarray:
    """(batch, samples) float32 test clips at 44.1 kHz: coloured noise, a few tones and clicks."""
    rng = np.random.default_rng(seed)
    samples = int(round(seconds * SAMPLE_RATE))
    t = np.arange(samples) / SAMPLE_RATE
    clips = []
    for _ in range(batch):
        noise = np.cumsum(rng.standard_normal(samples)) * 0.002
        noise -= np.convolve(noise, np.ones(441) / 441, mode="same")  # drop the random walk's drift
        tones = sum(rng.uniform(0.01, 0.1) * np.sin(2 * np.pi * rng.uniform(50, 8000) * t + rng.uniform(0, 6)) for _ in range(4))
        clicks = (rng.random(samples) < 2e-4) * rng.standard_normal(samples) * 0.3
        clips.append(noise + tones + clicks + 0.01 * rng.standard_normal(samples))
    return np.stack(clips).astype(np.float32)


# ------------------------------------------------------------------------------------- baseline
def sp4asc_frontend():
    """SP4ASC's frontend, torchlibrosa's conv-DFT ``Spectrogram`` then ``LogmelFilterBank`` (see
    the module doc): waveform (batch, samples) -> log-mel (batch, 1, frames, mel_bins), an
    eval-mode ``nn.Sequential``."""
    from torch import nn
    from torchlibrosa.stft import LogmelFilterBank, Spectrogram

    return nn.Sequential(
        Spectrogram(n_fft=N_FFT, hop_length=HOP_LENGTH, win_length=N_FFT, window="hann", center=True, pad_mode="reflect",
                    freeze_parameters=True),
        LogmelFilterBank(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=MEL_BINS, fmin=0.0, fmax=SAMPLE_RATE / 2, ref=1.0, amin=1e-10,
                         top_db=None, freeze_parameters=True),
    ).eval()


class EagerSP4ASC:
    """SP4ASC's inference: torchlibrosa frontend + folded Cnn6, torch eager, TTA as a loop."""

    def __init__(self, checkpoint: str | Path, threads: int) -> None:
        import torch

        from asc_deploy.models import build_model, fold_batchnorm, load_checkpoint

        self.torch = torch
        torch.set_num_threads(threads)
        self.frontend = sp4asc_frontend()
        self.cnn = fold_batchnorm(build_model(load_checkpoint(checkpoint))).eval()

    def _features(self, waveforms):
        return self.cnn.normalize(self.frontend(waveforms))

    def single(self, waveforms: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            x = self._features(torch.from_numpy(waveforms))
            return torch.softmax(self.cnn.forward_head(self.cnn.forward_features(x)), dim=-1).numpy()

    def tta(self, waveforms: np.ndarray, time_stripes: np.ndarray, freq_stripes: np.ndarray) -> np.ndarray:
        """Mean softmax of one full pass (frontend included) per pass, each with its stripes zeroed."""
        from asc_deploy.models.spec_augment import stripe_keep_mask

        torch = self.torch
        with torch.inference_mode():
            wave = torch.from_numpy(waveforms)
            time_keep = stripe_keep_mask(torch.from_numpy(time_stripes), num_frames(waveforms.shape[1]))
            freq_keep = stripe_keep_mask(torch.from_numpy(freq_stripes), MEL_BINS)
            total = 0
            for p in range(time_keep.shape[0]):
                x = self._features(wave) * time_keep[p][None, None, :, None] * freq_keep[p][None, None, None, :]
                total = total + torch.softmax(self.cnn.forward_head(self.cnn.forward_features(x)), dim=-1)
            return (total / time_keep.shape[0]).numpy()


# ------------------------------------------------------------------------------------ the run
def _export_models(checkpoint: Path, folder: Path, schedules: Sequence[str], precisions: Sequence[str], variants: Sequence[bool],
                   given: Mapping, calibration_dir: Path | None, calibration_clips: int, seconds: float,
                   progress: Callable[[str], None]) -> dict[tuple[str, str, bool], Path]:
    """ONNX file per (schedule, precision, tta): those ``given``, the others exported (int8:
    quantised) here."""
    from asc_deploy.export.onnx_export import export_onnx

    files = {key: Path(path) for key, path in given.items()}

    def onnx_file(schedule: str, precision: str, tta: bool) -> Path:
        if (schedule, precision, tta) not in files:
            name = folder / f"{schedule}.{precision}.{'tta' if tta else 'single'}.onnx"
            if precision == "int8":
                from asc_deploy.export.quantize import export_int8

                nonlocal calibration_dir
                if calibration_dir is None:
                    from asc_deploy.train.synth import make_dataset

                    progress("no calibration data given: writing a small synthetic data set to calibrate int8 on")
                    calibration_dir = make_dataset(folder / "calibration", 1, max(seconds, 1.0), 0)
                files[schedule, precision, tta] = export_int8(checkpoint, name, calibration_dir, tta, schedule, calibration_clips)
            else:
                files[schedule, precision, tta] = export_onnx(checkpoint, name, precision, tta, schedule)
        return files[schedule, precision, tta]

    return {(s, p, tta): onnx_file(s, p, tta) for s, p in schedule_precisions(schedules, precisions) for tta in variants}


def schedule_precisions(schedules: Sequence[str], precisions: Sequence[str]) -> list[tuple[str, str]]:
    """(schedule, precision) of the ONNX rows, each once: fp16 asked under the cpu schedule runs
    under the gpu one (:func:`asc_deploy.export.onnx_export.schedule_for`)."""
    from asc_deploy.export.onnx_export import schedule_for

    pairs = []
    for s in schedules:
        for p in precisions:
            pair = (schedule_for(p, s).value, p) if p in ("fp32", "fp16") else (s, p)
            if pair not in pairs:
                pairs.append(pair)
    return pairs


def _ort_call(session, waveforms: np.ndarray, stripes: tuple[np.ndarray, np.ndarray] | None, clips_per_call: int):
    from asc_deploy.metadata import INPUT_FREQ_STRIPES, INPUT_TIME_STRIPES, INPUT_WAVEFORM, OUTPUT_PROBS

    def call() -> np.ndarray:
        out = []
        for start in range(0, len(waveforms), clips_per_call):
            feed = {INPUT_WAVEFORM: waveforms[start : start + clips_per_call]}
            if stripes is not None:
                feed |= {INPUT_TIME_STRIPES: stripes[0], INPUT_FREQ_STRIPES: stripes[1]}
            out.append(session.run([OUTPUT_PROBS], feed)[0])
        return np.concatenate(out)

    return call


@dataclass(frozen=True)
class PerfRun:
    """All rows of one run and the basis of their floor."""

    rows: list[PerfRow]
    gemm_gflops: list[float]  # every GEMM measurement of the run; the floor uses the best
    threads: int
    clip_seconds: float
    cnn_macs: int  # per pass over one clip
    load_average: tuple[float, float] = (float("nan"), float("nan"))  # 1-minute load at start and end

    def table(self) -> list[str]:
        return table(self.rows, self.gemm_gflops, self.threads, self.load_average)


def run_perf(checkpoint: str | Path, iterations: int, warmup: int, batch_sizes: Sequence[int] = (1, 16), passes: int = 30,
             out: str | Path | None = None, **options) -> list[PerfRow]:
    """Measure every row (see the module doc) and return them; ``out``: also write a JSON report
    there (atomically). ``options`` are those of :func:`measure_all`."""
    run = measure_all(checkpoint, iterations, warmup, batch_sizes, passes, **options)
    if out is not None:
        write_report(out, run)
    return run.rows


def measure_all(checkpoint: str | Path, iterations: int, warmup: int, batch_sizes: Sequence[int] = (1, 16), passes: int = 30, *,
                seconds: float = 10.0, threads: int = 2, precisions: Sequence[str] = PRECISIONS, schedules: Sequence[str] = ("cpu",),
                calibration_dir: str | Path | None = None, calibration_clips: int = 64, memory_budget_gb: float = 2.0,
                row_budget_s: float | None = 120.0, seed: int = 0, model_files: Mapping[tuple[str, str, bool], str | Path] | None = None,
                gemm_sizes: Sequence[int] = (512, 1024, 2048), baseline: bool = True, rounds: int = 3,
                progress: Callable[[str], None] | None = None) -> PerfRun:
    """Measure every row of the module doc in one run.

    ``batch_sizes``: clips per call; ``passes``: TTA passes (the TTA rows are skipped for 1);
    ``seconds``: clip length; ``threads``: torch and onnxruntime intra-op threads, and the GEMM's;
    ``schedules``: export schedules of the ONNX rows ("cpu", "gpu");
    ``calibration_dir``: data set whose training split calibrates int8 (a small synthetic one is
    written when None); ``row_budget_s``: a row stops repeating after this long (>= 3 calls);
    ``model_files``: ONNX files already exported from ``checkpoint``, by (schedule, precision, tta);
    ``gemm_sizes``: square GEMM sizes whose best throughput sets the floor; ``baseline``: False
    skips the eager rows (then no speed-ups); ``rounds``: the rows are measured round-robin in
    this many rounds of ``iterations / rounds`` calls each (after ``warmup`` calls each round), so
    that a change of machine load during the run affects every row alike.
    """
    import onnx
    import onnxruntime as ort

    from asc_deploy.export.clip_loop import has_clip_loop
    from asc_deploy.export.onnx_export import Schedule, checkpoint_spec_aug
    from asc_deploy.models import build_model, load_checkpoint
    from asc_deploy.models.complexity import complexity_report
    from asc_deploy.ort_runner import SessionConfig
    from asc_deploy.runtime import read_model_metadata
    from asc_deploy.stripes import tta_stripes

    progress = progress or (lambda message: None)
    if iterations < 1 or warmup < 0:
        raise ValueError(f"iterations must be >= 1 and warmup >= 0, got {iterations} and {warmup}")
    if passes < 1 or threads < 1 or rounds < 1 or not batch_sizes or min(batch_sizes) < 1 or seconds < 1.0:
        raise ValueError("passes, threads, rounds and batch sizes must be >= 1, seconds >= 1")
    unknown = set(precisions) - set(PRECISIONS)
    if unknown:
        raise ValueError(f"unknown precision(s) {sorted(unknown)}, choose from {PRECISIONS}")
    if not schedules or set(schedules) - {s.value for s in Schedule}:
        raise ValueError(f"schedules must be among {[s.value for s in Schedule]}, got {list(schedules)}")
    checkpoint = Path(checkpoint)
    loaded = load_checkpoint(checkpoint)
    spec_aug = checkpoint_spec_aug(loaded)
    waveforms = make_clips(max(batch_sizes), seconds, seed)
    samples = waveforms.shape[1]
    cnn_macs = complexity_report(build_model(loaded), clip_samples=samples).cnn_macs
    stripes = tta_stripes(spec_aug, passes, num_frames(samples), MEL_BINS, seed)
    configs = [(1, b) for b in batch_sizes] + ([(passes, b) for b in batch_sizes] if passes > 1 else [])

    load_start = _load_average()
    gemm: list[float] = []
    # row key: (path, schedule, precision, passes, batch)
    round_times: dict[tuple[str, str, str, int, int], list[list[float]]] = {}  # per round, its timed calls
    results: dict[tuple[str, str, str, int, int], np.ndarray] = {}
    notes: dict[tuple[str, str, str, int, int], str] = {}
    per_round = max(1, math.ceil(iterations / rounds))
    round_budget = None if row_budget_s is None else row_budget_s / rounds
    round_min_runs = max(1, math.ceil(MIN_RUNS / rounds))

    def timed(key: tuple[str, str, str, int, int], fn: Callable[[], np.ndarray], note: str) -> None:
        # later rounds warm up once: enough for a fresh session's allocations
        new_times, results[key] = measure(fn, per_round, warmup if key not in round_times else min(warmup, 1), round_budget, round_min_runs)
        round_times.setdefault(key, []).append(new_times)
        notes[key] = note
        progress(f"{' '.join(str(k) for k in key if k != '')}: {np.median(new_times):.1f} ms (median of {len(new_times)})")

    with tempfile.TemporaryDirectory(prefix="asc-perf-") as tmp:
        variants = (False, True) if passes > 1 else (False,)
        files = _export_models(checkpoint, Path(tmp), schedules, precisions, variants, model_files or {},
                               Path(calibration_dir) if calibration_dir else None, calibration_clips, seconds, progress)
        # from each file's metadata, as the runtime decides: a looped TTA graph gets all passes in one call
        loops_over_passes = {key: read_model_metadata(path).loops_over_passes for key, path in files.items()}
        loops_over_clips = {key: has_clip_loop(onnx.load(str(path))) for key, path in files.items()}
        eager = EagerSP4ASC(checkpoint, threads) if baseline else None
        options = SessionConfig(intra_op_threads=threads)
        per_pass_clip = ACTIVATION_BYTES_PER_FRAME * num_frames(samples)
        for round_index in range(rounds):  # every row once per round: load drift hits all rows alike
            gemm.append(gemm_gflops(threads, gemm_sizes))
            progress(f"round {round_index + 1}/{rounds}: GEMM fp32 on {threads} threads {gemm[-1]:.0f} GFLOP/s")
            for p, b in configs if baseline else []:
                fn = (lambda b=b: eager.single(waveforms[:b])) if p == 1 else (lambda b=b: eager.tta(waveforms[:b], *stripes))
                timed((BASELINE, "", "fp32", p, b), fn, "torchlibrosa + folded Cnn6" + (", Python loop over passes" if p > 1 else ""))
            for schedule, precision, tta in files:
                # one session alive at a time: idle onnxruntime thread pools slow a running one down
                looped = loops_over_passes[schedule, precision, tta]
                session = ort.InferenceSession(str(files[schedule, precision, tta]), options.session_options(),
                                               providers=["CPUExecutionProvider"])
                for p, b in [c for c in configs if (c[0] > 1) == tta]:
                    per_call = b if looped else max(1, min(b, int(memory_budget_gb * 2**30 // (p * per_pass_clip))))
                    loops = [what for what, loop in (("clips", loops_over_clips[schedule, precision, tta]), ("TTA passes", looped)) if loop]
                    note = (f"one call, {' and '.join(loops)} one at a time in {'Loops' if len(loops) > 1 else 'a Loop'}" if loops
                            else "TTA batched in one call" if tta else "one call")
                    if per_call < b:
                        note = f"{b} clips as {math.ceil(b / per_call)} calls of {per_call} (memory), TTA batched"
                    note += ", stripes from the host" if tta else ""
                    timed((ORT, schedule, precision, p, b), _ort_call(session, waveforms[:b], stripes if tta else None, per_call), note)
                del session
                gc.collect()
        gemm.append(gemm_gflops(threads, gemm_sizes))
    measured = [(*key, [t for calls in per_round_calls for t in calls], results[key], notes[key],
                 tuple(float(np.median(calls)) for calls in per_round_calls)) for key, per_round_calls in round_times.items()]

    best = max(gemm)
    baseline_ms = {(p, b): float(np.median(t)) for path, _, _, p, b, t, *_ in measured if path == BASELINE}
    baseline_probs = {(p, b): probs for path, _, _, p, b, _, probs, *_ in measured if path == BASELINE}
    rows = []
    for path, schedule, precision, p, b, row_times, probs, note, medians in measured:
        median = float(np.median(row_times))
        rows.append(PerfRow(
            path=path, schedule=schedule, precision=precision, passes=p, batch=b, median_ms=median, p95_ms=float(np.percentile(row_times, 95)),
            runs=len(row_times), floor_ms=work_flops(cnn_macs, samples, b, p) / (best * 1e9) * 1e3,
            speedup=baseline_ms[p, b] / median if (p, b) in baseline_ms else None,
            max_prob_diff=float(np.abs(probs - baseline_probs[p, b]).max()) if (p, b) in baseline_probs else None, note=note,
            round_medians_ms=medians,
        ))
    return PerfRun(rows=rows, gemm_gflops=gemm, threads=threads, clip_seconds=seconds, cnn_macs=cnn_macs,
                   load_average=(load_start, _load_average()))


# ------------------------------------------------------------------------------------ report
def openmp_wait_policy() -> str:
    """OMP_WAIT_POLICY as torch's OpenMP sees it from the environment ("unset" when absent)."""
    return os.environ.get("OMP_WAIT_POLICY", "unset")


def machine() -> str:
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name}, {os.cpu_count()} CPUs"


def _load_average() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return float("nan")


def table(rows: Sequence[PerfRow], gemm: Sequence[float] | None = None, threads: int | None = None,
          load_average: tuple[float, float] | None = None) -> list[str]:
    """The printed table: one line per row, preceded by the floor's basis."""
    lines = []
    if gemm:
        load = f"; load average {load_average[0]:.1f} -> {load_average[1]:.1f}" if load_average else ""
        lines.append(f"machine: {machine()}; threads: {threads}{load}; OMP_WAIT_POLICY {openmp_wait_policy()}; GEMM fp32 best {max(gemm):.0f} GFLOP/s "
                     f"(measured {len(gemm)}x in this run: {', '.join(f'{g:.0f}' for g in gemm)})")
        lines.append("floor = (2 x CNN MACs x passes + frontend (5 N log2 N FFT + 2 x 1025 x 256 mel) per frame) / best GEMM")
    header = (f"{'path':<34} {'batch':>5} {'median ms':>10} {'p95 ms':>9} {'runs':>4} {'spread':>6} {'speed-up':>8} "
              f"{'floor ms':>9} {'x floor':>7} {'max|dp|':>8}  note")
    lines += [header, "-" * len(header)]
    for r in rows:
        speedup = f"{r.speedup:.1f}x" if r.speedup is not None else "-"
        diff = f"{r.max_prob_diff:.1e}" if r.max_prob_diff is not None else "-"
        spread = f"{r.spread:.2f}" if r.spread is not None else "-"
        lines.append(f"{r.label:<34} {r.batch:>5} {r.median_ms:>10.1f} {r.p95_ms:>9.1f} {r.runs:>4} {spread:>6} {speedup:>8} "
                     f"{r.floor_ms:>9.1f} {r.floor_ratio:>7.2f} {diff:>8}  {r.note}")
    noisy = [r for r in rows if r.spread is not None and r.spread > NOISY_SPREAD]
    if noisy:
        worst = max(noisy, key=lambda r: r.spread)
        lines.append(f"warning: the machine's speed changed during the run: {len(noisy)} row(s) have round medians more than "
                     f"{NOISY_SPREAD}x apart (worst {worst.spread:.2f}x, {worst.label} batch {worst.batch}); measure again "
                     f"before trusting small differences")
    return lines


def write_report(out: str | Path, run: PerfRun) -> Path:
    """The run as JSON (rows, GEMM measurements, the printed table), written atomically."""
    from asc_deploy.atomic import atomic_open

    report = {
        "machine": machine(), "threads": run.threads, "clip_seconds": run.clip_seconds, "cnn_macs_per_pass": run.cnn_macs,
        "load_average": list(run.load_average),
        "gemm_gflops": run.gemm_gflops, "gemm_gflops_best": max(run.gemm_gflops), "rows": [r.as_dict() for r in run.rows],
        "table": run.table(),
    }
    with atomic_open(out) as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    return Path(out)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from err
    if not values or min(values) < 1:
        raise click.BadParameter(f"expected positive integers, got {text!r}")
    return values


@click.command("perf", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--checkpoint", required=True, type=click.Path(), help="SP4ASC ckpt.pth or an asc-train checkpoint.")
@click.option("--iterations", default=20, show_default=True, help="Timed calls per row (after warm-up).")
@click.option("--warmup", default=3, show_default=True, help="Untimed calls per row first.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None, help="Also write the rows as JSON here.")
@click.option("--batch-sizes", default="1,16", show_default=True, help="Clips per call, comma-separated.")
@click.option("--passes", default=30, show_default=True, help="TTA passes (1: single-pass rows only).")
@click.option("--seconds", default=10.0, show_default=True, help="Clip length.")
@click.option("--threads", default=2, show_default=True, help="Intra-op threads of torch, onnxruntime and the GEMM.")
@click.option("--precisions", default=",".join(PRECISIONS), show_default=True, help="ONNX precisions to measure.")
@click.option("--schedules", default="cpu", show_default=True,
              help="Export schedules of the ONNX rows, comma-separated: cpu (cache-sized: clips or TTA passes in a Loop), gpu (batched).")
@click.option("--calibration-data", type=click.Path(file_okay=False), default=None,
              help="Data set folder whose training split calibrates int8 (default: a small synthetic one).")
@click.option("--row-budget-s", default=120.0, show_default=True, help="A row stops repeating after this long (>= 3 calls).")
@click.option("--gemm-sizes", default="512,1024,2048", show_default=True, help="Square GEMM sizes measured for the floor.")
@click.option("--baseline/--no-baseline", default=True, show_default=True, help="Measure the eager SP4ASC rows.")
@click.option("--rounds", default=3, show_default=True, help="Rows are measured round-robin in this many rounds.")
def perf_command(checkpoint: str, iterations: int, warmup: int, report_path: str | None, batch_sizes: str, passes: int,
                 seconds: float, threads: int, precisions: str, schedules: str, calibration_data: str | None, row_budget_s: float,
                 gemm_sizes: str, baseline: bool, rounds: int) -> None:
    """Latency of SP4ASC's eager pipeline and of the ONNX models (fp32, fp16, int8; single pass and
    TTA) on CPU, with the speed-up over the baseline and the distance to the compute floor."""
    try:
        run = measure_all(checkpoint, iterations, warmup, _int_list(batch_sizes), passes, seconds=seconds, threads=threads,
                          precisions=[p.strip() for p in precisions.split(",") if p.strip()],
                          schedules=[s.strip() for s in schedules.split(",") if s.strip()], calibration_dir=calibration_data,
                          row_budget_s=row_budget_s, gemm_sizes=_int_list(gemm_sizes), baseline=baseline, rounds=rounds,
                          progress=lambda m: click.echo(m, err=True))
    except (AscError, ValueError) as err:
        click.echo(f"asc-bench --perf: error: {err}", err=True)
        sys.exit(1)
    for line in run.table():
        click.echo(line)
    if report_path:
        write_report(report_path, run)
        click.echo(f"wrote {report_path}")


main = perf_command

if __name__ == "__main__":
    main()
