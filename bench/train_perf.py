"""Training speed on the CPU: asc-train's step and epoch against SP4ASC's own eager ones and against
the machine's compute floor, measured in ONE run on the same clips.

``python -m asc_deploy.bench.train_perf [--config demo] [--data DIR]`` prints two tables.

Steps (one optimiser step each: forward, backward, AdamW; the config's loss, dropout, SpecAugment
and mixup; ``batch`` clips of ``seconds`` s; every row from the same initial weights, on the same
batch):

1. ``SP4ASC eager``: SP4ASC's step: its torchlibrosa frontend inside the step
   (:func:`asc_deploy.bench.perf.sp4asc_frontend`), Cnn6 in SP4ASC's block form, float32, under
   glibc's default malloc (as SP4ASC runs) and, the baseline of the speed-ups, with freed memory
   kept (:mod:`asc_deploy.allocator`, as asc-train runs);
2. ``SP4ASC form, own frontend``: asc-train's step before the CROSS form (the frontend of
   :class:`LogMelFrontend` in the step, SP4ASC's block form, float32);
3. ``asc-train, from waveform``: the CROSS form (:class:`BlockForm`), frontend in the step, under
   the config's mixed precision (bfloat16 autocast on a CPU with native bf16 arithmetic:
   :func:`~asc_deploy.train.trainer.autocast_dtype`);
4. ``asc-train, cached log-mel, float32`` and ``asc-train, cached log-mel``: the CROSS form on
   log-mel computed once per clip before the first epoch (:class:`LogMelBatches`), so no frontend
   in the step, in float32 and under the config's mixed precision (what every asc-train step does).
   Honest only because nothing augments the waveform: the cache costs one frontend pass per clip,
   counted in the epoch table;
5. ``floor``: 3 x the CNN's forward flops (forward, and backward as twice the forward) of the
   batch divided by the best fp32 GEMM throughput measured in the same run
   (:func:`~asc_deploy.bench.perf.gemm_gflops`); rows 1-3 also run the frontend, whose flops the
   floor leaves out. The floor stays float32's for the bfloat16 rows: a CPU's bf16 GEMM peak is
   higher (about 2x on AVX512-BF16), so those rows' "x floor" flatters them by up to that much.

Everything runs under the OpenMP wait policy of the environment, as asc-train and SP4ASC's scripts
do (unset: libgomp's worker threads spin a while before they sleep). OMP_WAIT_POLICY=PASSIVE,
which suits a loaded machine, is not what a training run gets, and costs asc-train's step of 4
clips 20-40 % here (68-81 against 86-131 ms, alternating processes), where a step is a few
hundred short parallel regions.

Rows are measured round-robin (``rounds`` rounds of ``iterations / rounds`` calls after warm-up)
so that a change of machine load hits all of them alike; ``spread`` is the slowest round median
over the fastest.

Epochs (the data set's train split in the config's batches and sampler order, then the
evaluate split scored; ``epoch_rounds`` epochs of each, alternating): SP4ASC's eager loop
(DataLoader reading the waveforms, torchlibrosa frontend every step and every evaluation, SP4ASC's
block form, default malloc; evaluation in the training batch, as SP4ASC's train.py builds its test
loader) against asc-train's (:func:`asc_deploy.train.trainer.train_epoch` and
:func:`~asc_deploy.train.trainer.predict` on :class:`LogMelBatches`, CROSS form, freed memory
kept, evaluation in :func:`~asc_deploy.train.trainer.evaluation_batch_size`'s batches). The
log-mel cache's one-off cost is its own row, and the last row spreads it over the config's epochs.

"Default malloc" rows run after asc-train's rows have left
:func:`~asc_deploy.allocator.freed_memory_kept` in the same process, so malloc is then in the
state that block leaves (blocks up to 32 MiB from the heap: an untuned process's once its dynamic
mmap threshold has settled; SP4ASC's demo epoch in such a process and in a fresh one: 57 and 64 s
against 57 and 84 s of training, alternating).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from asc_deploy.bench.perf import NOISY_SPREAD, gemm_gflops, machine, make_clips, measure, openmp_wait_policy, work_flops
from asc_deploy.errors import AscError
from asc_deploy.extras import require_extras
from asc_deploy.labels import NUM_CLASSES

BASELINE = "SP4ASC eager"


@dataclass(frozen=True)
class TrainRow:
    """One measured row: times in ms (steps) or s (epochs) per call."""

    label: str
    median: float
    p95: float
    runs: int
    round_medians: tuple[float, ...]
    note: str = ""
    speedup: float | None = None  # the baseline's median / this median
    floor: float | None = None  # steps: the floor in ms

    @property
    def spread(self) -> float | None:
        return max(self.round_medians) / min(self.round_medians) if len(self.round_medians) > 1 else None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self) | {"spread": self.spread}


def _row(label: str, rounds: list[list[float]], note: str, **extra) -> TrainRow:
    every = [t for calls in rounds for t in calls]
    return TrainRow(label, float(np.median(every)), float(np.percentile(every, 95)), len(every),
                    tuple(float(np.median(calls)) for calls in rounds), note, **extra)


def _allocator(kept: bool) -> contextlib.AbstractContextManager:
    from asc_deploy.allocator import freed_memory_kept

    return freed_memory_kept() if kept else contextlib.nullcontext()


def _models(config, forms: Sequence) -> list:
    """One (model, optimiser) per block form, all from the config's seed (the same weights)."""
    import torch

    from asc_deploy.models.cnn6 import Cnn6

    made = []
    for form in forms:
        torch.manual_seed(config.seed)
        model = Cnn6(dropout=config.dropout, spec_aug=config.spec_aug, block_form=form).train()
        made.append((model, torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)))
    return made


# ------------------------------------------------------------------------------------- steps
def measure_steps(config, batch: int = 16, seconds: float = 3.0, threads: int = 2, iterations: int = 9, warmup: int = 2,
                  rounds: int = 3, gemm_sizes: Sequence[int] = (512, 1024, 2048),
                  progress: Callable[[str], None] = lambda m: None) -> tuple[list[TrainRow], list[float], int]:
    """The step rows of the module doc (floor last); also every GEMM measurement and the CNN's
    MACs per clip."""
    import torch

    from asc_deploy.bench.perf import sp4asc_frontend
    from asc_deploy.models.cnn6 import BlockForm, Cnn6
    from asc_deploy.models.complexity import complexity_report
    from asc_deploy.models.frontend import LogMelFrontend
    from asc_deploy.train.trainer import precision_name, train_step

    torch.set_num_threads(threads)
    waveform = torch.from_numpy(make_clips(batch, seconds))
    labels = torch.arange(batch) % NUM_CLASSES
    ours, theirs = LogMelFrontend(), sp4asc_frontend()
    with torch.no_grad():
        logmel = ours(waveform)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    cnn_macs = complexity_report(Cnn6(), clip_samples=waveform.shape[1]).cnn_macs
    sp4asc, sp4asc_kept, main_form, cross, cached_fp32, cached = _models(config, [BlockForm.SP4ASC] * 3 + [BlockForm.CROSS] * 3)
    fp32 = dataclasses.replace(config, mixed_precision="off")
    precision = precision_name(torch.device("cpu"), config.mixed_precision)

    def step(model_optimizer, recipe, frontend=None) -> Callable[[], object]:
        model, optimizer = model_optimizer

        def call() -> object:
            if frontend is None:
                return train_step(model, optimizer, scaler, logmel, labels, recipe)
            with torch.no_grad():
                features = frontend(waveform)
            return train_step(model, optimizer, scaler, features, labels, recipe)

        return call

    rows = [  # (label, call, freed memory kept, note)
        (f"{BASELINE}, default malloc", step(sp4asc, fp32, theirs), False, "torchlibrosa frontend in the step, SP4ASC block form, float32"),
        (BASELINE, step(sp4asc_kept, fp32, theirs), True, "the same, freed memory kept: the baseline"),
        ("SP4ASC form, own frontend", step(main_form, fp32, ours), True, "asc-train's step before the CROSS form, float32"),
        ("asc-train, from waveform", step(cross, config, ours), True, f"CROSS form, frontend in the step, {precision}"),
        ("asc-train, cached log-mel, float32", step(cached_fp32, fp32), True, "CROSS form; log-mel computed once per clip (epoch table)"),
        ("asc-train, cached log-mel", step(cached, config), True, f"the same, {precision}: what asc-train runs here"),
    ]
    times: dict[str, list[list[float]]] = {label: [] for label, *_ in rows}
    gemm: list[float] = []
    per_round = max(1, math.ceil(iterations / rounds))
    for index in range(rounds):
        gemm.append(gemm_gflops(threads, gemm_sizes))
        progress(f"round {index + 1}/{rounds}: GEMM fp32 on {threads} threads {gemm[-1]:.0f} GFLOP/s")
        for label, call, kept, _ in rows:
            with _allocator(kept):
                calls, _ = measure(call, per_round, warmup if index == 0 else 1)
            times[label].append(calls)
            progress(f"{label}: {np.median(calls):.0f} ms")
    gemm.append(gemm_gflops(threads, gemm_sizes))
    floor_ms = work_flops(cnn_macs, waveform.shape[1], batch, 3, frontend=False) / (max(gemm) * 1e9) * 1e3
    baseline = float(np.median([t for calls in times[BASELINE] for t in calls]))
    measured = [_row(label, times[label], note) for label, _, _, note in rows]
    measured = [dataclasses.replace(r, speedup=baseline / r.median, floor=floor_ms) for r in measured]
    floor = TrainRow("floor", floor_ms, floor_ms, 0, (), "3 x CNN forward flops / best GEMM", baseline / floor_ms, floor_ms)
    return measured + [floor], gemm, cnn_macs


# ------------------------------------------------------------------------------------ epochs
def measure_epochs(config, data: Path, threads: int = 2, epoch_rounds: int = 2,
                   progress: Callable[[str], None] = lambda m: None) -> list[TrainRow]:
    """The epoch rows of the module doc, in seconds."""
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    from asc_deploy.bench.perf import sp4asc_frontend
    from asc_deploy.models.cnn6 import BlockForm
    from asc_deploy.models.frontend import LogMelFrontend
    from asc_deploy.train.dataset import SceneDataset, load_clip, read_split
    from asc_deploy.train.trainer import (LogMelBatches, Runtime, TrainingState, evaluation_batch_size, precision_name, predict,
                                          train_epoch, train_step)

    torch.set_num_threads(threads)
    device = torch.device("cpu")
    train_clips, eval_clips = read_split(data, "train"), read_split(data, "evaluate")
    samples = load_clip(train_clips[0]).shape[0]
    train_set, eval_set = SceneDataset(train_clips, samples), SceneDataset(eval_clips, samples)
    sampler = DistributedSampler(train_set, num_replicas=1, rank=0, shuffle=True, seed=config.seed)
    eval_batch = evaluation_batch_size(config, samples)
    theirs = sp4asc_frontend()
    (sp4asc, sp4asc_optimizer), = _models(config, [BlockForm.SP4ASC])
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    workers = config.num_workers
    fp32 = dataclasses.replace(config, mixed_precision="off")

    def sp4asc_epoch(epoch: int) -> None:
        sampler.set_epoch(epoch)
        torch.manual_seed(epoch)
        for waveform, labels, _ in DataLoader(train_set, batch_size=config.batch_size, sampler=sampler, num_workers=workers):
            with torch.no_grad():
                features = theirs(waveform)
            train_step(sp4asc, sp4asc_optimizer, scaler, features, labels, fp32)
        sp4asc.eval()
        with torch.no_grad():
            for waveform, _, _ in DataLoader(eval_set, batch_size=config.batch_size, num_workers=workers):
                torch.softmax(sp4asc(theirs(waveform)), dim=-1)
        sp4asc.train()

    with _allocator(True):
        started = time.perf_counter()
        frontend = LogMelFrontend()
        train_batches = LogMelBatches(train_set, frontend, config, device, sampler)
        eval_batches = LogMelBatches(eval_set, frontend, config, device, batch_size=eval_batch)
        cache_s = time.perf_counter() - started
    progress(f"log-mel cache of {len(train_set)} + {len(eval_set)} clips: {cache_s:.1f} s")
    state = TrainingState.create(config, device)
    runtime = Runtime(device, 0, 1)

    def asc_train_epoch(epoch: int) -> None:
        sampler.set_epoch(epoch)
        torch.manual_seed(epoch)
        train_epoch(state.model, state, train_batches, config, runtime, f"asc-train epoch {epoch}")
        predict(state.model, eval_batches, device, config.mixed_precision)

    times: dict[str, list[list[float]]] = {"sp4asc": [], "ours": []}
    for epoch in range(1, epoch_rounds + 1):
        for key, run, kept in (("sp4asc", sp4asc_epoch, False), ("ours", asc_train_epoch, True)):
            with _allocator(kept):
                started = time.perf_counter()
                run(epoch)
                times[key].append([time.perf_counter() - started])
            progress(f"epoch {epoch} {key}: {times[key][-1][0]:.1f} s")
    work = f"{len(train_set)} train and {len(eval_set)} evaluate clips in batches of {config.batch_size}"
    sp4asc_row = _row(f"{BASELINE} loop, epoch", times["sp4asc"], f"{work}; frontend every step, default malloc, float32", speedup=1.0)
    ours = _row("asc-train epoch", times["ours"], f"the same steps ({precision_name(device, config.mixed_precision)}) and evaluation "
                f"(in batches of {eval_batch}) on cached log-mel", speedup=sp4asc_row.median / max(float(np.median(times["ours"])), 1e-9))
    amortised = ours.median + cache_s / config.epochs
    return [
        sp4asc_row, ours,
        TrainRow("asc-train log-mel cache (once)", cache_s, cache_s, 1, (), "frontend once per clip, both splits"),
        TrainRow(f"asc-train epoch + cache / {config.epochs}", amortised, amortised, 0, (),
                 f"the config's {config.epochs} epochs share the cache", sp4asc_row.median / amortised),
    ]


# ------------------------------------------------------------------------------------ report
def table(steps: Sequence[TrainRow], epochs: Sequence[TrainRow], gemm: Sequence[float], threads: int, batch: int,
          seconds: float, load: tuple[float, float]) -> list[str]:
    lines = [f"machine: {machine()}; threads: {threads}; load average {load[0]:.1f} -> {load[1]:.1f}; "
             f"OMP_WAIT_POLICY {openmp_wait_policy()}; GEMM fp32 best "
             f"{max(gemm):.0f} GFLOP/s (measured {len(gemm)}x: {', '.join(f'{g:.0f}' for g in gemm)})",
             f"training step: {batch} clips of {seconds:g} s, forward + backward + AdamW",
             f"{'row':<38} {'median ms':>10} {'p95 ms':>9} {'runs':>4} {'spread':>6} {'speed-up':>8} {'x floor':>7}  note"]
    lines.append("-" * len(lines[-1]))
    for r in steps:
        spread = f"{r.spread:.2f}" if r.spread is not None else "-"
        lines.append(f"{r.label:<38} {r.median:>10.1f} {r.p95:>9.1f} {r.runs:>4} {spread:>6} {r.speedup:>7.2f}x "
                     f"{r.median / r.floor:>7.2f}  {r.note}")
    if epochs:
        lines += ["", f"{'epoch':<38} {'median s':>10} {'p95 s':>9} {'runs':>4} {'spread':>6} {'speed-up':>8}  note"]
        lines.append("-" * len(lines[-1]))
        for r in epochs:
            spread = f"{r.spread:.2f}" if r.spread is not None else "-"
            speedup = f"{r.speedup:.2f}x" if r.speedup is not None else "-"
            lines.append(f"{r.label:<38} {r.median:>10.2f} {r.p95:>9.2f} {r.runs:>4} {spread:>6} {speedup:>8}  {r.note}")
    noisy = [r for r in [*steps, *epochs] if r.spread is not None and r.spread > NOISY_SPREAD]
    if noisy:
        lines.append(f"warning: the machine's speed changed during the run: {len(noisy)} row(s) have round medians more than "
                     f"{NOISY_SPREAD}x apart (worst {max(r.spread for r in noisy):.2f}x)")
    return lines


def _load_average() -> float:
    from asc_deploy.bench.perf import _load_average as load_average

    return load_average()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_name", default="demo", show_default=True, help="asc-train config (built-in name or YAML file).")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data set of the epoch table [default: the cached synthetic set of asc-bench].")
@click.option("--batch", default=16, show_default=True, type=click.IntRange(min=1), help="Clips per measured step.")
@click.option("--seconds", default=3.0, show_default=True, type=click.FloatRange(min=1.0), help="Clip length of the steps.")
@click.option("--threads", default=2, show_default=True, type=click.IntRange(min=1), help="torch intra-op threads and the GEMM's.")
@click.option("--iterations", default=9, show_default=True, type=click.IntRange(min=1), help="Timed steps per row (all rounds).")
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(min=1), help="Step rows are measured round-robin in this many rounds.")
@click.option("--epoch-rounds", default=2, show_default=True, type=click.IntRange(min=0), help="Epochs of each loop (0: no epoch table).")
@click.option("--gemm-sizes", default="512,1024,2048", show_default=True, help="Square GEMM sizes measured for the floor.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None, help="Also write the rows as JSON here.")
def main(config_name: str, data: Path | None, batch: int, seconds: float, threads: int, iterations: int, rounds: int,
         epoch_rounds: int, gemm_sizes: str, report_path: str | None) -> None:
    """asc-train's training step and epoch against SP4ASC's eager ones and the compute floor."""
    try:
        require_extras("the training benchmark", "bench", "train")
        from asc_deploy.bench.perf import _int_list
        from asc_deploy.train.config import load_config

        config = load_config(config_name)
        sizes = _int_list(gemm_sizes)
        load_start = _load_average()
        progress = lambda message: click.echo(message, err=True)  # noqa: E731
        steps, gemm, cnn_macs = measure_steps(config, batch, seconds, threads, iterations, rounds=rounds, gemm_sizes=sizes,
                                              progress=progress)
        epochs = []
        if epoch_rounds:
            if data is None:
                from asc_deploy.bench.cli import default_data_dir

                data = default_data_dir()
            epochs = measure_epochs(config, data, threads, epoch_rounds, progress)
    except (AscError, click.BadParameter) as err:
        click.echo(f"train_perf: error: {err.format_message() if isinstance(err, click.BadParameter) else err}", err=True)
        sys.exit(1)
    lines = table(steps, epochs, gemm, threads, batch, seconds, (load_start, _load_average()))
    click.echo("\n".join(lines))
    if report_path:
        from asc_deploy.atomic import atomic_open

        with atomic_open(report_path) as f:
            json.dump({"machine": machine(), "threads": threads, "config": config_name, "batch": batch, "seconds": seconds,
                       "cnn_macs_per_clip": cnn_macs, "gemm_gflops": gemm, "steps": [r.as_dict() for r in steps],
                       "epochs": [r.as_dict() for r in epochs], "table": lines}, f, indent=1)
            f.write("\n")
        click.echo(f"wrote {report_path}")


if __name__ == "__main__":
    main()
