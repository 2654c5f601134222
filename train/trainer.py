"""Training of :class:`Cnn6` with SP4ASC's recipe, alone or under torchrun.

Per step: log-mel (batch, 1, frames, mel_bins) of the shared :class:`LogMelFrontend` (float32,
outside autocast) -> optional mixup of log-mel and one-hot targets -> Cnn6 in its CROSS block
form (:class:`BlockForm`: the same function and state dict, faster; SpecAugment inside, training
mode; under the config's mixed precision, :func:`autocast_dtype`) -> cross-entropy or focal loss on the (soft) targets -> AdamW step.
Nothing augments the waveform, so the log-mel of every clip is computed once, on the training
device, and kept there for every epoch (:class:`LogMelBatches`) when it fits
:data:`CACHE_BUDGET_BYTES`; otherwise each batch's waveforms are read and transformed again.
CosineAnnealingLR is stepped once per epoch. After each epoch (every ``eval_every``) rank 0
scores the evaluate split as DCASE does, then writes ``OUT/last.pth`` (and ``OUT/best.pth`` when
the evaluate log loss improves) atomically, a line of ``OUT/metrics.jsonl`` and TensorBoard
scalars under ``OUT/tensorboard``. With the config's ``holdout`` > 0 the calibration hold-out
(:mod:`asc_deploy.train.holdout`) is left out of training and recorded in every checkpoint (key
``holdout``) for ``asc-calibrate``.

Reproducibility: the data order and every random draw of epoch e are functions of (seed, e,
rank), so ``resume`` from last.pth repeats an interrupted epoch exactly (on CPU, with the same
number of processes). Batches are consecutive slices of the sampler's order, as a DataLoader
over the same sampler makes them, whether the log-mel comes from the cache or not.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from asc_deploy.allocator import freed_memory_kept
from asc_deploy.atomic import atomic_open, atomic_path
from asc_deploy.errors import AscError
from asc_deploy.export.forms import export_cnn
from asc_deploy.labels import MEL_BINS, NUM_CLASSES, SAMPLE_RATE, num_frames
from asc_deploy.metrics import classwise_log_loss_accuracy, groupwise
from asc_deploy.models.checkpoint import OWN_FORMAT
from asc_deploy.models.cnn6 import BlockForm, Cnn6
from asc_deploy.models.fold import fold_batchnorm
from asc_deploy.models.frontend import LogMelFrontend
from asc_deploy.train.config import TrainConfig, config_from_dict, config_to_dict
from asc_deploy.train.dataset import Clip, SceneDataset, load_clip, read_split
from asc_deploy.train.holdout import holdout_split

MACHINE_KEYS = frozenset({"num_workers"})  # config keys a resumed run may change
CACHE_BUDGET_BYTES = 2 * 2**30  # the log-mel of a split is kept on the device up to this size
# Audio per evaluation batch (no gradients, so the batch size changes nothing but speed and float
# rounding): 33 clips of 3 s or 10 of 10 s. 272 clips of 3 s, 2 CPU threads,
# inference_form: 1.48 s in batches of 4, 1.39 s of 16, 1.23 s of 34, 1.18 s of 68.
EVALUATION_BATCH_SECONDS = 100.0


# --- losses and augmentation ---------------------------------------------------------------

def focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float) -> torch.Tensor:
    """FL = -sum_c y_c (1 - p_c)^gamma ln p_c, mean over the batch (0-d float32 tensor).

    logits (batch, classes); targets (batch, classes), one-hot or mixed rows summing to 1.
    gamma 0 is the cross-entropy with soft targets.
    """
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    weights = targets if gamma == 0 else targets * (1.0 - log_probs.exp()) ** gamma
    return -(weights * log_probs).sum(dim=-1).mean()


def mixup(logmel: torch.Tensor, targets: torch.Tensor, lam: float, permutation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix each example with example ``permutation[i]`` of the same batch: lam * own + (1 - lam) * other.

    logmel (batch, 1, frames, mel_bins), targets (batch, classes), permutation (batch,) int64.
    """
    return lam * logmel + (1.0 - lam) * logmel[permutation], lam * targets + (1.0 - lam) * targets[permutation]


def autocast_dtype(device: torch.device, mixed_precision: str) -> torch.dtype | None:
    """The autocast dtype of training on ``device`` (and of evaluation on CUDA) under the config's
    ``mixed_precision``: "auto" is float16 on CUDA (with loss scaling) and bfloat16 on a CPU with
    native bf16 arithmetic (AVX512-BF16 or AMX: its convolutions run about twice as fast, and
    bfloat16 keeps float32's range, so no loss scaling); None (float32) otherwise and for "off"."""
    if mixed_precision == "off":
        return None
    if device.type == "cuda":
        return torch.float16
    native = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return torch.bfloat16 if device.type == "cpu" and native else None


def precision_name(device: torch.device, mixed_precision: str) -> str:
    """What :func:`autocast_dtype` means for training on ``device``, in words: "float32",
    "bfloat16 autocast" or "float16 autocast"."""
    dtype = autocast_dtype(device, mixed_precision)
    return "float32" if dtype is None else f"{str(dtype).removeprefix('torch.')} autocast"


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    logmel: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on log-mel (batch, 1, frames, mel_bins) float32 in dB (the frontend's
    output) and labels (batch,) int64, both on the training device. ``model`` (Cnn6 or
    DDP-wrapped) must be in training mode.

    Mixup's lambda ~ Beta(alpha, alpha) and permutation come from torch's global CPU generator.
    Returns the loss and the number of clips whose largest logit is their label (0-d tensors).
    """
    device = logmel.device
    targets = F.one_hot(labels, NUM_CLASSES).float()
    if config.mixup_alpha is not None:
        lam = float(torch.distributions.Beta(config.mixup_alpha, config.mixup_alpha).sample())
        logmel, targets = mixup(logmel, targets, lam, torch.randperm(len(labels)).to(device))
    dtype = autocast_dtype(device, config.mixed_precision)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        logits = model(logmel)
    loss = focal_loss(logits, targets, config.focal_gamma if config.loss == "focal" else 0.0)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), (logits.argmax(dim=-1) == labels).sum()


@torch.no_grad()
def predict(model: Cnn6, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
            mixed_precision: str = "auto") -> np.ndarray:
    """Class probabilities (clips, classes) float64 of batches of (log-mel, labels) on ``device``,
    in batch order, computed in eval mode by :func:`inference_form` (``model`` is left as it is):
    on CUDA under :func:`autocast_dtype`'s fp16 ("auto") or float32 ("off"); float32 on the CPU
    whatever the training precision (the scores of the model asc-export writes)."""
    dtype = autocast_dtype(device, mixed_precision) if device.type == "cuda" else None
    inference = inference_form(model)
    probs = []
    for logmel, _ in batches:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = inference(logmel.contiguous(memory_format=torch.channels_last))
        probs.append(torch.softmax(logits.float(), dim=-1).cpu().double().numpy())
    return np.concatenate(probs)


def inference_form(model: Cnn6) -> Cnn6:
    """An eval-mode copy of ``model`` computing the same function (to float rounding) faster:
    BatchNorm folded with the running statistics, each block in asc-export's form (the depthwise
    pair as one cross kernel), channels-last (oneDNN's fast layout for depthwise convolutions).
    A batch of 4 3 s clips on 2 CPU threads, float32: 25 ms in the training form, 16 ms here."""
    return export_cnn(fold_batchnorm(model)).to(memory_format=torch.channels_last)


def score(probs: np.ndarray, clips: Sequence[Clip], train_devices: frozenset[str] = frozenset()) -> dict[str, Any]:
    """DCASE scores of probabilities (clips, classes) overall, per device (key "devices") and, with
    ``train_devices``, for the devices seen in training and those not (key "device_groups")."""
    labels = np.array([clip.label for clip in clips])
    devices = [clip.device or "unknown" for clip in clips]
    scores = classwise_log_loss_accuracy(probs, labels, NUM_CLASSES)
    scores["devices"] = groupwise(probs, labels, devices, NUM_CLASSES)
    if train_devices:
        seen = ["seen" if device in train_devices else "unseen" for device in devices]
        scores["device_groups"] = groupwise(probs, labels, seen, NUM_CLASSES)
    return scores


def device_table(scores: dict[str, Any]) -> str:
    """Device-wise log loss and macro accuracy of :func:`score`'s result, as a text table (devices,
    then devices seen / unseen in training when known, then overall)."""
    groups = [(f"{name} ({'in' if name == 'seen' else 'not in'} train)", s) for name, s in scores.get("device_groups", {}).items()]
    rows = [(str(device), s) for device, s in scores["devices"].items()] + groups + [("overall", scores)]
    width = max(10, *(len(name) + 1 for name, _ in rows))
    lines = [f"{'device':<{width}}{'clips':>7}{'log loss':>10}{'accuracy':>10}"]
    lines += [f"{name:<{width}}{s['count']:>7}{s['logloss']:>10.3f}{s['accuracy']:>10.1%}" for name, s in rows]
    return "\n".join(lines)


# --- processes and devices ----------------------------------------------------------------

@dataclass(frozen=True)
class Runtime:
    """This process: its device, rank and the number of processes (1 without torchrun)."""

    device: torch.device
    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@contextlib.contextmanager
def runtime(device: str | None) -> Iterator[Runtime]:
    """The process's runtime; under torchrun (WORLD_SIZE > 1) a process group (nccl on CUDA,
    gloo on CPU) that is destroyed on exit. ``device``: "cpu", "cuda" or None (CUDA if present)."""
    world_size, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    kind = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise AscError("--device cuda: no CUDA GPU is available to this process")
    target = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if kind == "cuda" else torch.device("cpu")
    if target.type == "cuda":
        torch.cuda.set_device(target)
    if world_size > 1:
        dist.init_process_group("nccl" if target.type == "cuda" else "gloo")
    try:
        yield Runtime(target, rank, world_size)
        if world_size > 1:
            dist.barrier()  # leave together: gloo can abort a rank whose peer tore down first
    finally:
        if world_size > 1:
            dist.destroy_process_group()


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The torch seed of epoch ``epoch`` (1-based) on process ``rank``."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


# --- checkpoints and logs -----------------------------------------------------------------

def save_checkpoint(payload: dict[str, Any], path: Path) -> None:
    """torch.save ``payload`` to ``path`` atomically; on failure the previous file is unchanged
    and AscError names the file and the problem."""
    try:
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
    except OSError as exc:
        raise AscError(f"cannot write checkpoint ({exc.strerror or exc}); the previous one is unchanged", path) from exc


def read_resume_checkpoint(path: Path, config: TrainConfig) -> dict[str, Any]:
    """last.pth of an asc-train run with the same config (except MACHINE_KEYS), read with weights_only."""
    if not path.is_file():
        raise AscError("nothing to resume: no checkpoint here", path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling, zip and I/O errors of a damaged file
        raise AscError(f"cannot read checkpoint: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", path) from exc
    if not isinstance(payload, dict) or payload.get("format") != OWN_FORMAT:
        raise AscError("not a checkpoint written by asc-train", path)
    saved = config_from_dict(payload["config"], path)
    changed = [key for key in config_to_dict(config) if key not in MACHINE_KEYS and getattr(saved, key) != getattr(config, key)]
    if changed:
        shown = ", ".join(f"{key} {getattr(saved, key)!r} -> {getattr(config, key)!r}" for key in changed)
        raise AscError(f"cannot resume with a different config ({shown})", path)
    return payload


def _record_epoch(line: str) -> float:
    """The epoch of a metrics.jsonl line; infinity for a line cut short by a killed writer."""
    try:
        return json.loads(line)["epoch"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


class RunLog:
    """Rank 0's per-epoch records: OUT/metrics.jsonl (one JSON object per line) and TensorBoard.

    Records of epochs after ``completed`` (left by an interrupted run) are dropped first.
    """

    def __init__(self, out_dir: Path, completed: int) -> None:
        self.path = out_dir / "metrics.jsonl"
        if self.path.exists():
            kept = [line for line in self.path.read_text(encoding="utf-8").splitlines() if _record_epoch(line) <= completed]
            with atomic_open(self.path, "w", encoding="utf-8") as f:
                f.writelines(line + "\n" for line in kept)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            click.echo("warning: tensorboard is not installed, so TensorBoard logging is off", err=True)
            self.writer = None
        else:
            self.writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=completed + 1 if completed else None)

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "epoch" and value is not None:
                    self.writer.add_scalar(key.replace("_", "/", 1), value, record["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# --- the training run ---------------------------------------------------------------------

def evaluation_batch_size(config: TrainConfig, samples: int) -> int:
    """Clips per evaluation batch for clips of ``samples`` samples: :data:`EVALUATION_BATCH_SECONDS`
    of audio, at least the training batch."""
    return max(config.batch_size, int(EVALUATION_BATCH_SECONDS * SAMPLE_RATE // samples))


def _loader(dataset: SceneDataset, config: TrainConfig, device: torch.device, sampler: DistributedSampler | None,
            batch_size: int) -> DataLoader:
    """Batches of (waveform, label, index) in sampler order (file order without a sampler)."""
    workers = min(config.num_workers, os.cpu_count() or 1)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
    )


class LogMelBatches:
    """A split as batches of (log-mel (batch, 1, frames, mel_bins) float32, labels (batch,) int64)
    on the training device, in ``sampler`` order (file order without one), ``batch_size`` clips
    each (``config.batch_size`` unless given; the last batch may be smaller).

    With ``cache`` and when the split's log-mel fits :data:`CACHE_BUDGET_BYTES`, the frontend runs
    once per clip here (``cache_seconds`` says how long it took) and every iteration slices the
    kept tensor; otherwise every iteration reads the waveforms (DataLoader, ``config.num_workers``
    workers) and runs the frontend on each batch, as SP4ASC does every step.
    """

    def __init__(self, dataset: SceneDataset, frontend: LogMelFrontend, config: TrainConfig, device: torch.device,
                 sampler: DistributedSampler | None = None, cache: bool = True, batch_size: int | None = None) -> None:
        self.frontend, self.device, self.sampler = frontend, device, sampler
        self.batch_size = config.batch_size if batch_size is None else batch_size
        self.loader = _loader(dataset, config, device, sampler, self.batch_size)
        self.clips = len(sampler) if sampler is not None else len(dataset)
        self.logmel: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        self.cache_seconds = 0.0
        samples = dataset.expected_samples
        if cache and samples is not None and 0 < len(dataset) * num_frames(samples) * MEL_BINS * 4 <= CACHE_BUDGET_BYTES:
            started = time.perf_counter()
            in_order = DataLoader(dataset, batch_size=max(self.batch_size, 16), num_workers=self.loader.num_workers,
                                  pin_memory=device.type == "cuda")
            parts = [(self._logmel(waveform), labels.to(device)) for waveform, labels, _ in in_order]
            self.logmel, self.labels = (torch.cat(column) for column in zip(*parts))
            self.cache_seconds = time.perf_counter() - started

    @property
    def cached(self) -> bool:
        return self.logmel is not None

    @torch.no_grad()
    def _logmel(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.frontend(waveform.to(self.device, non_blocking=True))

    def __len__(self) -> int:
        return math.ceil(self.clips / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.logmel is None:
            for waveform, labels, _ in self.loader:
                yield self._logmel(waveform), labels.to(self.device, non_blocking=True)
            return
        order = torch.tensor(list(self.sampler) if self.sampler is not None else range(self.clips), device=self.device)
        for batch in order.split(self.batch_size):
            yield self.logmel.index_select(0, batch), self.labels.index_select(0, batch)


def _progress(loader: Iterable, show: bool, label: str, stats: dict[str, float]) -> contextlib.AbstractContextManager:
    """A click progress bar over ``loader`` showing the running loss and accuracy in ``stats``."""
    if not show:
        return contextlib.nullcontext(loader)

    def status(_: object) -> str:
        clips = max(stats["clips"], 1.0)
        return f"loss {stats['loss'] / clips:.3f} acc {stats['correct'] / clips:.1%}"

    return click.progressbar(loader, label=label, item_show_func=status, file=sys.stderr)


@dataclass
class TrainingState:
    """Everything a checkpoint restores besides the config: weights, optimiser, schedule, AMP scaler."""

    model: Cnn6
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler

    @classmethod
    def create(cls, config: TrainConfig, device: torch.device) -> TrainingState:
        """Fresh state: weights drawn from ``config.seed``, AdamW, cosine schedule over the epochs."""
        torch.manual_seed(config.seed)
        model = Cnn6(dropout=config.dropout, spec_aug=config.spec_aug, block_form=BlockForm.CROSS).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs, eta_min=config.eta_min)
        return cls(model, optimizer, scheduler, torch.amp.GradScaler(device.type, enabled=autocast_dtype(device, config.mixed_precision) is torch.float16))

    def payload(self, config: TrainConfig, epoch: int, best_metric: float | None) -> dict[str, Any]:
        """The checkpoint after ``epoch`` epochs: tensors and plain Python values only (weights_only)."""
        cuda = next(self.model.parameters()).device.type == "cuda"
        return {
            "format": OWN_FORMAT,
            "net": self.model.state_dict(),
            "config": config_to_dict(config),
            "epoch": epoch,
            "optim": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if cuda else []},
            "best_metric": best_metric,
        }

    def restore(self, payload: dict[str, Any]) -> None:
        """Load a :meth:`payload` (the CUDA generators only where the GPU count matches)."""
        self.model.load_state_dict(payload["net"])
        self.optimizer.load_state_dict(payload["optim"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.scaler.load_state_dict(payload["scaler"])
        torch.set_rng_state(payload["rng"]["torch"])
        if payload["rng"]["cuda"] and len(payload["rng"]["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(payload["rng"]["cuda"])


def train_epoch(net: nn.Module, state: TrainingState, loader: LogMelBatches, config: TrainConfig, rt: Runtime, label: str) -> dict[str, float]:
    """One pass over ``loader`` with :func:`train_step`; returns the summed "loss" (per clip),
    "correct" and "clips" over all processes. Rank 0 shows a progress bar."""
    stats = {"loss": 0.0, "correct": 0.0, "clips": 0.0}
    with _progress(loader, rt.is_main, label, stats) as batches:
        for logmel, labels in batches:
            loss, correct = train_step(net, state.optimizer, state.scaler, logmel, labels, config)
            stats["loss"] += loss.item() * len(labels)
            stats["correct"] += correct.item()
            stats["clips"] += len(labels)
    if rt.world_size > 1:
        totals = torch.tensor(list(stats.values()), dtype=torch.float64, device=rt.device)
        dist.all_reduce(totals)
        stats = dict(zip(stats, totals.tolist()))
    return stats


def train(config: TrainConfig, data_dir: str | Path, out_dir: str | Path, device: str | None = None, resume: bool = False) -> dict[str, Any] | None:
    """Train on ``data_dir`` (TAU 2020 Mobile layout) into ``out_dir``; see the module docstring.

    ``device``: "cpu", "cuda" or None (CUDA if present). ``resume`` continues from
    ``out_dir/last.pth``; without it an ``out_dir`` holding a run is refused. Returns rank 0's
    scores of the last epoch (:func:`score`), or None on other ranks and when nothing was left.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if not data_dir.is_dir():
        raise AscError("data folder not found", data_dir)
    if not resume and (out_dir / "last.pth").exists():
        raise AscError("already holds a training run (last.pth): pass --resume to continue it or choose another --out", out_dir)
    with runtime(device) as rt, freed_memory_kept() if rt.device.type == "cpu" else contextlib.nullcontext():
        return _run(config, data_dir, out_dir, rt, resume)  # kept freed memory: ~2x faster CPU steps (asc_deploy/allocator.py)


def _run(config: TrainConfig, data_dir: Path, out_dir: Path, rt: Runtime, resume: bool) -> dict[str, Any] | None:
    last, best = out_dir / "last.pth", out_dir / "best.pth"
    train_clips = read_split(data_dir, "train")
    holdout = holdout_split(train_clips, config.holdout, config.seed) if config.holdout else None
    if holdout is not None:
        train_clips = holdout.train
    train_devices = frozenset(clip.device for clip in train_clips if clip.device)
    samples = load_clip(train_clips[0]).shape[0]
    train_set = SceneDataset(train_clips, expected_samples=samples)
    sampler = DistributedSampler(train_set, num_replicas=rt.world_size, rank=rt.rank, shuffle=True, seed=config.seed)
    eval_clips = read_split(data_dir, "evaluate") if rt.is_main else []
    frontend = LogMelFrontend().to(rt.device)
    train_loader = LogMelBatches(train_set, frontend, config, rt.device, sampler)
    eval_loader = LogMelBatches(SceneDataset(eval_clips, expected_samples=samples), frontend, config, rt.device,
                                batch_size=evaluation_batch_size(config, samples))

    state = TrainingState.create(config, rt.device)
    completed, best_metric = 0, None
    if resume:
        payload = read_resume_checkpoint(last, config)
        state.restore(payload)
        completed, best_metric = payload["epoch"], payload["best_metric"]
    net = state.model if rt.world_size == 1 else DistributedDataParallel(state.model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    log = RunLog(out_dir, completed) if rt.is_main else None
    if rt.is_main:
        click.echo(
            f"training on {rt.device} x {rt.world_size} ({precision_name(rt.device, config.mixed_precision)}): {len(train_clips)} train and {len(eval_clips)} evaluate clips of "
            f"{samples / SAMPLE_RATE:g} s{f' ({len(holdout.calibration)} held out for calibration)' if holdout else ''}, epochs {completed + 1}-{config.epochs}, {config_to_dict(config)}",
            err=True,
        )
        cached = [f"{name} ({loader.logmel.nbytes / 2**20:.0f} MiB)" for name, loader in (("train", train_loader), ("evaluate", eval_loader)) if loader.cached]
        if cached:
            click.echo(f"log-mel computed once for every epoch and kept on {rt.device}: {', '.join(cached)}, "
                       f"{train_loader.cache_seconds + eval_loader.cache_seconds:.1f} s", err=True)
        if completed >= config.epochs:
            click.echo(f"nothing to do: {last} already holds epoch {completed} of {config.epochs}", err=True)
    scores = None
    for epoch in range(completed + 1, config.epochs + 1):
        started = time.perf_counter()
        sampler.set_epoch(epoch)
        torch.manual_seed(epoch_seed(config.seed, epoch, rt.rank))
        stats = train_epoch(net, state, train_loader, config, rt, f"epoch {epoch}/{config.epochs}")
        lr = state.scheduler.get_last_lr()[0]
        state.scheduler.step()
        if not rt.is_main:
            continue
        evaluate = epoch % config.eval_every == 0 or epoch == config.epochs
        scores = score(predict(state.model, eval_loader, rt.device, config.mixed_precision), eval_clips, train_devices) if evaluate else None
        improved = scores is not None and (best_metric is None or scores["logloss"] < best_metric)
        best_metric = scores["logloss"] if improved else best_metric
        record = {
            "epoch": epoch,
            "train_loss": stats["loss"] / stats["clips"],
            "train_accuracy": stats["correct"] / stats["clips"],
            "eval_logloss": scores["logloss"] if scores else None,
            "eval_accuracy": scores["accuracy"] if scores else None,
            "lr": lr,
            "seconds": round(time.perf_counter() - started, 3),
        }
        log.write(record)
        payload = state.payload(config, epoch, best_metric) | ({"holdout": holdout.record()} if holdout else {})
        save_checkpoint(payload, last)
        if improved:
            save_checkpoint(payload, best)
        evaluated = f", evaluate log loss {scores['logloss']:.3f} accuracy {scores['accuracy']:.1%}" if scores else ""
        click.echo(f"epoch {epoch}/{config.epochs}: train loss {record['train_loss']:.3f} accuracy {record['train_accuracy']:.1%}"
                   f"{evaluated}, lr {lr:.2e}, {record['seconds']:.1f} s", err=True)
    if log is not None:
        log.close()
    if rt.world_size > 1:
        dist.barrier()
    if scores is not None:
        click.echo(f"evaluate split after epoch {config.epochs}, by device:\n{device_table(scores)}")
    return scores
