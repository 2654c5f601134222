"""Parity of a backend against the reference backend: results as data, pass/fail against
explicit tolerances per precision.

Defaults (override with ``--tolerance PRECISION.NAME=VALUE``):

======== ============ ============= ============ =============
precision max_abs_prob min_top1_agree max_logloss  max_accuracy
======== ============ ============= ============ =============
fp32      1e-3         0.99          0.005        0.005
fp16      0.05         0.97          0.02         0.02
int8      0.25         0.97          0.03         0.03
======== ============ ============= ============ =============

``max_logloss`` and ``max_accuracy`` bound the absolute difference of the overall (DCASE, macro)
log loss and accuracy (accuracy as a fraction); ``min_top1_agree`` is the fraction of clips with
the same predicted class.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from asc_deploy.metrics import classwise_log_loss_accuracy


@dataclass(frozen=True)
class Tolerance:
    max_abs_prob: float
    min_top1_agree: float
    max_logloss: float
    max_accuracy: float


DEFAULT_TOLERANCES = {
    "fp32": Tolerance(max_abs_prob=1e-3, min_top1_agree=0.99, max_logloss=0.005, max_accuracy=0.005),
    "fp16": Tolerance(max_abs_prob=0.05, min_top1_agree=0.97, max_logloss=0.02, max_accuracy=0.02),
    "int8": Tolerance(max_abs_prob=0.25, min_top1_agree=0.97, max_logloss=0.03, max_accuracy=0.03),
}


def tolerances_with(overrides: list[str]) -> dict[str, Tolerance]:
    """Defaults updated by ``PRECISION.NAME=VALUE`` strings; ValueError names a bad one."""
    result = dict(DEFAULT_TOLERANCES)
    names = {f.name for f in fields(Tolerance)}
    for item in overrides:
        key, sep, value = item.partition("=")
        precision, _, name = key.partition(".")
        if not sep or precision not in result or name not in names:
            raise ValueError(f"bad tolerance {item!r}: expected PRECISION.NAME=VALUE with PRECISION in {sorted(result)} "
                             f"and NAME in {sorted(names)}")
        try:
            result[precision] = replace(result[precision], **{name: float(value)})
        except ValueError as err:
            raise ValueError(f"bad tolerance {item!r}: {value!r} is not a number") from err
    return result


@dataclass(frozen=True)
class Parity:
    max_abs_prob: float
    mean_abs_prob: float
    p99_abs_prob: float
    top1_agree: float
    logloss_diff: float
    accuracy_diff: float
    tolerance: Tolerance
    broken: tuple[str, ...]  # names of the broken tolerances, empty when it passes

    @property
    def passed(self) -> bool:
        return not self.broken

    def as_dict(self) -> dict:
        return asdict(self) | {"passed": self.passed}


def compare(reference: np.ndarray, probs: np.ndarray, labels: np.ndarray, tolerance: Tolerance) -> Parity:
    """Compare ``probs`` (clips, classes) with the reference backend's on the same clips."""
    diff = np.abs(np.asarray(probs, np.float64) - np.asarray(reference, np.float64))
    ours, ref = classwise_log_loss_accuracy(probs, labels), classwise_log_loss_accuracy(reference, labels)
    values = {
        "max_abs_prob": float(diff.max()),
        "top1_agree": float(np.mean(probs.argmax(1) == reference.argmax(1))),
        "logloss_diff": abs(ours["logloss"] - ref["logloss"]),
        "accuracy_diff": abs(ours["accuracy"] - ref["accuracy"]),
    }
    broken = [name for name, bad in [
        ("max_abs_prob", values["max_abs_prob"] > tolerance.max_abs_prob),
        ("min_top1_agree", values["top1_agree"] < tolerance.min_top1_agree),
        ("max_logloss", values["logloss_diff"] > tolerance.max_logloss),
        ("max_accuracy", values["accuracy_diff"] > tolerance.max_accuracy),
    ] if bad]
    return Parity(mean_abs_prob=float(diff.mean()), p99_abs_prob=float(np.quantile(diff, 0.99)), tolerance=tolerance,
                  broken=tuple(broken), **values)
