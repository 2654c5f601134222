"""Temperature scaling fitted on the held-out calibration split, written into the checkpoint
(``asc-calibrate``, :mod:`asc_deploy.train.calibrate_cli`).

The model must have been trained with a calibration hold-out (``asc-train`` config key
``holdout``): the temperature is fitted on those clips only, which the model never saw and
which share no recording location with its training clips or the evaluate split
(:mod:`asc_deploy.train.holdout`). The split is recomputed from DIR with the recorded fraction
and seed and must equal the checkpoint's record.

The fit minimises the mean negative log-likelihood (nats per clip) of the held-out clips over
log T (so T > 0), with Newton's method in float64 on the CNN's logits computed once: for the single-pass
model p = softmax(z / T); for the TTA model (``nb_aug`` > 0) p = mean over passes of
softmax(z_pass / T), the passes drawn with the model's SpecAugment setting from ``seed`` exactly
as asc-bench and the runtime draw them. ``vector`` fits one temperature per class instead.

:func:`calibrate` is the whole job, callable from Python; the CLI wraps it.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

from asc_deploy import __version__
from asc_deploy.errors import AscError
from asc_deploy.labels import CLASS_LABELS, NUM_CLASSES, num_frames
from asc_deploy.models.calibration import Temperature, format_temperature
from asc_deploy.models.checkpoint import Checkpoint
from asc_deploy.models.cnn6 import Cnn6
from asc_deploy.stripes import tta_stripes

MIN_CLIPS = 30  # held-out clips needed to fit one temperature
MIN_CLIPS_PER_CLASS_VECTOR = 5  # and per class for class-wise temperatures
TEMPERATURE_RANGE = (1e-2, 1e2)  # an optimum outside it means the NLL has no useful minimum
MAX_ITERATIONS = 100  # Newton steps (a fit takes 5-10)
GRADIENT_TOLERANCE = 1e-10  # of the mean NLL with respect to log T
MIN_CURVATURE = 1e-6  # second derivative of the mean NLL in log T at a true minimum (real fits: 0.1-1)
PASS_SECONDS_PER_CALL = 90.0  # audio seconds x passes per CNN call: bounds torch's activation memory (~0.5 GB per 10 s pass)


@dataclass(frozen=True)
class TemperatureFit:
    """A fitted temperature and the mean NLL (nats per clip) of the fitting clips before (T = 1) and after."""

    temperature: Temperature
    nll_before: float
    nll_after: float
    iterations: int


def _as_passes(logits: np.ndarray) -> np.ndarray:
    """(clips, classes) or (clips, passes, classes) -> (clips, passes, classes) float64."""
    logits = np.asarray(logits, dtype=np.float64)
    return logits[:, None, :] if logits.ndim == 2 else logits


def probabilities(logits: np.ndarray, temperature: Temperature = 1.0) -> np.ndarray:
    """Class probabilities (clips, classes) float64 of logits (clips, classes) or (clips, passes,
    classes): the mean over passes of softmax(logits / temperature)."""
    z = _as_passes(logits) / np.asarray(temperature, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    return (p / p.sum(axis=-1, keepdims=True)).mean(axis=1)


def _nll(z: torch.Tensor, labels: torch.Tensor, log_t: torch.Tensor) -> torch.Tensor:
    """Mean -ln(mean over passes of softmax(z / exp(log_t)))[label]; z (clips, passes, classes) float64."""
    index = labels[:, None, None].expand(z.shape[0], z.shape[1], 1)
    log_p = torch.log_softmax(z / log_t.exp(), dim=-1).gather(-1, index)[..., 0]  # (clips, passes)
    return -(torch.logsumexp(log_p, dim=1) - math.log(z.shape[1])).mean()


def check_fit_inputs(logits: np.ndarray, labels: np.ndarray, vector: bool = False, names: list[str] | None = None) -> None:
    """AscError (never a silent T = 1) when a fit cannot work: non-finite logits, too few clips, a
    class without clips (or, for ``vector``, with fewer than :data:`MIN_CLIPS_PER_CLASS_VECTOR`)."""
    z = _as_passes(logits)
    bad = np.flatnonzero(~np.isfinite(z).all(axis=(1, 2)))
    if bad.size:
        example = f", e.g. {names[bad[0]]}" if names else ""
        raise AscError(f"the model gave non-finite logits for {bad.size} of the {len(z)} calibration clips{example}: cannot fit a temperature")
    if len(z) < MIN_CLIPS:
        raise AscError(f"too few calibration clips to fit a temperature: {len(z)}, need at least {MIN_CLIPS} "
                       "(hold out a larger fraction: asc-train --holdout)")
    count = np.bincount(np.asarray(labels, np.int64), minlength=NUM_CLASSES)
    missing = [CLASS_LABELS[c] for c in range(NUM_CLASSES) if count[c] == 0]
    if missing:
        raise AscError(f"the calibration split has no clip of class(es) {missing}: a temperature fitted without them would be "
                       "biased (every class must be held out)")
    thin = [CLASS_LABELS[c] for c in range(NUM_CLASSES) if count[c] < MIN_CLIPS_PER_CLASS_VECTOR]
    if vector and thin:
        raise AscError(f"class-wise temperatures need at least {MIN_CLIPS_PER_CLASS_VECTOR} calibration clips per class; "
                       f"{thin} have fewer (fit one temperature: leave out --vector)")


def fit_temperature(logits: np.ndarray, labels: np.ndarray, vector: bool = False) -> TemperatureFit:
    """The temperature T > 0 minimising the mean NLL of ``labels`` (clips,) under logits (clips,
    classes) or TTA logits (clips, passes, classes), each pass softmaxed at T then averaged.

    ``vector``: one temperature per class (logits[..., c] / T[c]). AscError when the fit cannot
    work (:func:`check_fit_inputs`), does not converge, or its optimum lies outside
    :data:`TEMPERATURE_RANGE` (the held-out clips give the NLL no minimum: e.g. every one is
    classified right with a wide margin)."""
    check_fit_inputs(logits, labels, vector)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a few small tensors: one thread was 6-25x faster than two on a busy machine
    try:
        return _fit(logits, labels, vector)
    finally:
        torch.set_num_threads(threads)


def _fit(logits: np.ndarray, labels: np.ndarray, vector: bool) -> TemperatureFit:
    """Damped Newton on log T with exact derivatives (1 or 10 unknowns), backtracking line search."""
    z = torch.from_numpy(_as_passes(logits))
    y = torch.from_numpy(np.asarray(labels, np.int64))

    def nll(log_t: torch.Tensor) -> torch.Tensor:
        return _nll(z, y, log_t)

    log_t = torch.zeros(NUM_CLASSES if vector else 1, dtype=torch.float64)
    before = value = float(nll(log_t))
    gradient = torch.full_like(log_t, math.inf)
    iterations = 0
    while iterations < MAX_ITERATIONS:
        gradient = torch.autograd.functional.jacobian(nll, log_t)
        if float(gradient.abs().max()) < GRADIENT_TOLERANCE:
            break
        hessian = torch.autograd.functional.hessian(nll, log_t)
        eigenvalues, vectors = torch.linalg.eigh(hessian)  # Newton step on the positive part of the curvature
        step = vectors @ ((vectors.T @ gradient) / eigenvalues.abs().clamp(min=1e-6))
        size = 1.0
        while size > 1e-12:
            trial = log_t - size * step
            trial_value = float(nll(trial))
            if math.isfinite(trial_value) and trial_value <= value - 1e-4 * size * float(gradient @ step):
                break
            size /= 2
        else:
            break  # no descent left: at the optimum to float precision (the gradient check below decides)
        log_t, value = trial, trial_value
        iterations += 1
        if log_t.abs().max() > 2 * math.log(TEMPERATURE_RANGE[1]):
            break  # running away: no minimum (reported below)
    temperature = log_t.exp().numpy()
    if not (np.isfinite(temperature).all() and math.isfinite(value)):
        raise AscError("the temperature fit diverged (non-finite NLL)")
    low, high = TEMPERATURE_RANGE
    if temperature.min() < low or temperature.max() > high:
        raise AscError(f"the NLL of the calibration clips has no minimum with T in [{low:g}, {high:g}] (the fit went to "
                       f"{format_temperature(temperature.tolist() if vector else float(temperature[0]))}): nothing to calibrate on")
    gradient = torch.autograd.functional.jacobian(nll, log_t)
    if float(gradient.abs().max()) > 1e-6:
        raise AscError(f"the temperature fit did not converge (gradient {float(gradient.abs().max()):.2e} after {iterations} steps)")
    curvature = float(torch.linalg.eigvalsh(torch.autograd.functional.hessian(nll, log_t)).min())
    if curvature < MIN_CURVATURE:  # a plateau, not a minimum: e.g. every clip right with a wide margin (T -> 0)
        raise AscError(f"the NLL of the calibration clips has no minimum in T (flat at T = "
                       f"{format_temperature(temperature.tolist() if vector else float(temperature[0]))}, NLL {value:.3g}): nothing to calibrate on")
    result: Temperature = tuple(float(t) for t in temperature) if vector else float(temperature[0])
    return TemperatureFit(result, before, value, iterations)


def _chunks(count: int, size: int) -> Iterator[slice]:
    for start in range(0, count, size):
        yield slice(start, min(start + size, count))


@torch.no_grad()
def pass_logits(cnn: Cnn6, batches: Iterable[tuple[list[int], np.ndarray]], clips: int, nb_aug: int, spec_aug: tuple[int, ...],
                seed: int, label: str = "logits") -> tuple[np.ndarray, np.ndarray | None]:
    """The CNN's raw logits of every clip: single pass (clips, classes) and, for ``nb_aug`` > 0, the
    TTA passes (clips, nb_aug, classes), float64, in the same pipeline as the torch reference
    (:class:`asc_deploy.models.TTAClassifier`, stripes from ``tta_stripes(spec_aug, nb_aug,
    frames, mel_bins, seed)`` as asc-bench and the runtime draw them).

    ``batches`` yields (indices into the clips, waveforms (batch, samples) float32 at 44.1 kHz of
    one length). A progress bar labelled ``label`` counts the batches on stderr."""
    from asc_deploy.allocator import freed_memory_kept
    from asc_deploy.models import LogMelFrontend, TTAClassifier

    with freed_memory_kept():  # TTA batches allocate ~0.5 GB per op: reuse it rather than fault it in per call
        return _pass_logits(TTAClassifier(LogMelFrontend(), cnn).eval(), batches, clips, nb_aug, spec_aug, seed, label)


def _pass_logits(model, batches: Iterable[tuple[list[int], np.ndarray]], clips: int, nb_aug: int, spec_aug: tuple[int, ...],
                 seed: int, label: str) -> tuple[np.ndarray, np.ndarray | None]:
    model.cnn.to(memory_format=torch.channels_last)  # torch's CPU depthwise kernels: 2.6x faster (bench/runners.py)
    single = np.full((clips, NUM_CLASSES), np.nan)
    tta = np.full((clips, nb_aug, NUM_CLASSES), np.nan) if nb_aug > 0 else None
    empty = torch.zeros(1, 0, 2, dtype=torch.int64)
    with click.progressbar(batches, label=label, file=sys.stderr) as bar:
        for indices, waveforms in bar:
            waveform = torch.from_numpy(np.ascontiguousarray(waveforms, dtype=np.float32))
            single[indices] = model.scorer.logits(model.augment(waveform, empty, empty))[0].double().numpy()
            if tta is None:
                continue
            time, freq = (torch.from_numpy(s) for s in tta_stripes(spec_aug, nb_aug, num_frames(waveform.shape[1]),
                                                                    model.frontend.mel_bins, seed))
            per_call = max(1, int(PASS_SECONDS_PER_CALL * 44_100 // waveform.numel()))
            for part in _chunks(nb_aug, per_call):
                logits = model.scorer.logits(model.augment(waveform, time[part], freq[part]))  # (passes, batch, classes)
                tta[indices, part] = logits.transpose(0, 1).double().numpy()
    return single, tta


def clip_batches(clips: list, clips_per_call: int) -> Iterator[tuple[list[int], np.ndarray]]:
    """(indices, waveforms) of the data set's clips (:func:`asc_deploy.train.dataset.load_clip`),
    at most ``clips_per_call`` clips of one length per batch."""
    from asc_deploy.train.dataset import load_clip

    waves = [load_clip(clip) for clip in clips]  # a bad file fails here, before any CNN work
    by_length: dict[int, list[int]] = {}
    for index, wave in enumerate(waves):
        by_length.setdefault(len(wave), []).append(index)
    for group in by_length.values():
        for part in _chunks(len(group), clips_per_call):
            yield group[part], np.stack([waves[i] for i in group[part]])


def heldout_clips(checkpoint: Checkpoint, data_dir: str | Path) -> Any:
    """The checkpoint's calibration hold-out recomputed from ``data_dir``'s training split
    (:class:`asc_deploy.train.holdout.HoldoutSplit`); AscError when the model was trained without
    one or ``data_dir`` is not the data set it was trained on."""
    from asc_deploy.train.dataset import SPLIT_FILES, read_split
    from asc_deploy.train.holdout import holdout_split

    record = checkpoint.holdout
    if not record:
        raise AscError("the model was trained on the whole training split, so no clip is left to fit a temperature on "
                       "without bias: train with a calibration hold-out (asc-train --holdout 0.2, or the config key 'holdout')",
                       checkpoint.path)
    try:
        fraction, seed, recorded = float(record["fraction"]), int(record["seed"]), list(record["clips"])
    except (KeyError, TypeError, ValueError) as err:
        raise AscError(f"bad 'holdout' record in the checkpoint ({type(err).__name__}: {err})", checkpoint.path) from err
    split = holdout_split(read_split(data_dir, "train"), fraction, seed)
    if [c.filename for c in split.calibration] != recorded:
        raise AscError(f"the calibration hold-out recomputed from this data set ({len(split.calibration)} clips) differs from the "
                       f"{len(recorded)} clips the model was trained without: is it the data set the model was trained on?", data_dir)
    if (Path(data_dir) / "evaluation_setup" / SPLIT_FILES["evaluate"]).is_file():
        evaluate = read_split(data_dir, "evaluate")
        shared = ({c.filename for c in split.calibration} & {c.filename for c in evaluate}
                  | set(split.locations) & {str(c.location) for c in evaluate if c.location})
        if shared:
            raise AscError(f"the evaluate split shares {len(shared)} clip(s) or location(s) with the calibration split "
                           f"(e.g. {sorted(shared)[0]}): fitting there would leak into the evaluation", data_dir)
    return split


def calibrate(model: str | Path, data_dir: str | Path, output: str | Path | None = None, nb_aug: int = 0, vector: bool = False,
              seed: int = 0) -> dict[str, Any]:
    """Fit the temperature(s) of checkpoint ``model`` on its calibration hold-out in ``data_dir``
    and write the calibrated checkpoint to ``output`` (atomically; None writes nothing).

    Args:
        model: an asc-train checkpoint trained with a calibration hold-out.
        data_dir: the data set it was trained on (TAU 2020 Mobile layout).
        output: the calibrated checkpoint: the input's payload (state dict untouched) plus
            ``calibration``, the record returned here.
        nb_aug: > 0 also fits the TTA model of that many SpecAugment passes (stripes from ``seed``).
        vector: class-wise temperatures (one per class) instead of one.
        seed: seed of the TTA stripes (asc-bench's and the runtime's default is 0).

    Returns the record: ``temperature`` (single pass), ``tta_temperature`` (None without
    ``nb_aug``), ``nb_aug``, ``tta_seed``, ``method`` ("temperature" or "vector"), ``nll`` (mean
    NLL in nats per held-out clip before and after, per model), ``split`` (fraction, seed,
    clips, locations, devices) and provenance. Raises AscError (bad input, a fit that cannot
    work) or ValueError (bad arguments), before writing anything.
    """
    from asc_deploy.export.onnx_export import checkpoint_spec_aug
    from asc_deploy.models import build_model, load_checkpoint
    from asc_deploy.models.cnn6 import BlockForm
    from asc_deploy.train.trainer import save_checkpoint

    if isinstance(nb_aug, bool) or not isinstance(nb_aug, int) or nb_aug < 0:
        raise ValueError(f"nb_aug must be an integer >= 0, got {nb_aug!r}")
    checkpoint = load_checkpoint(model)
    cnn = build_model(checkpoint, BlockForm.CROSS)  # asc-train's form: faster in torch
    split = heldout_clips(checkpoint, data_dir)
    clips = split.calibration
    labels = np.array([c.label for c in clips])
    check_fit_inputs(np.zeros((len(clips), NUM_CLASSES)), labels, vector)  # before the CNN work
    spec_aug = checkpoint_spec_aug(checkpoint)
    if nb_aug and not (spec_aug and (spec_aug[1] or spec_aug[3])):
        click.echo(f"asc-calibrate: warning: {model} was trained without SpecAugment stripes, so its {nb_aug} TTA passes are "
                   "identical single passes", err=True)
    single, tta = pass_logits(cnn, clip_batches(clips, max(1, 30 // max(1, nb_aug))), len(clips), nb_aug, spec_aug, seed,
                              f"logits of {len(clips)} held-out clips")
    names = [c.filename for c in clips]
    fits = {}
    for name, logits in (("single", single), ("tta", tta)):
        if logits is not None:
            check_fit_inputs(logits, labels, vector, names)
            fits[name] = fit_temperature(logits, labels, vector)
    record = {
        "method": "vector" if vector else "temperature",
        "temperature": _plain(fits["single"].temperature),
        "tta_temperature": _plain(fits["tta"].temperature) if "tta" in fits else None,
        "nb_aug": nb_aug, "tta_seed": seed, "spec_aug": list(spec_aug),
        "nll": {name: {"before": fit.nll_before, "after": fit.nll_after, "iterations": fit.iterations} for name, fit in fits.items()},
        "split": split.record() | {"devices": sorted({str(c.device) for c in clips})},
        "data": str(Path(data_dir)), "checkpoint_sha256": checkpoint.sha256, "package_version": __version__,
    }
    if output is not None:
        payload = {k: v for k, v in checkpoint.payload.items() if k != "calibration"} | {"calibration": record}
        save_checkpoint(payload, Path(output))
    return record


def _plain(temperature: Temperature) -> float | list[float]:
    """A temperature as plain data for ``torch.save`` (weights_only reads lists, not tuples' identity)."""
    return list(temperature) if isinstance(temperature, tuple) else float(temperature)


def summary(record: dict[str, Any]) -> list[str]:
    """Lines for the terminal: the split, then per model its temperature and NLL before and after."""
    split = record["split"]
    lines = [f"calibration split: {len(split['clips'])} held-out clips from {len(split['locations'])} locations "
             f"(fraction {split['fraction']:g}, seed {split['seed']}; devices {', '.join(split['devices'])})",
             f"{'model':<16}{'temperature':>24}{'NLL before':>12}{'NLL after':>11}"]
    for name, nll in record["nll"].items():
        temperature = record["temperature" if name == "single" else "tta_temperature"]
        title = "single pass" if name == "single" else f"TTA-{record['nb_aug']}"
        shown = format_temperature(tuple(temperature) if isinstance(temperature, list) else temperature)
        lines.append(f"{title:<16}{shown:>24}{nll['before']:>12.4f}{nll['after']:>11.4f}")
    return lines
