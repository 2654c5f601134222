"""Temperature scaling inside the model: logits divided by a temperature before the softmax.

A calibrated checkpoint (written by ``asc-calibrate``) carries a ``calibration`` record with
the temperature fitted for the single-pass model (``temperature``) and, when fitted with test-time
augmentation, the one for the TTA model (``tta_temperature``, applied to each pass's logits
before its softmax). A temperature is a positive number, or a list of one positive number per
class (class-wise temperatures: the diagonal of vector scaling, without its bias).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from asc_deploy.errors import AscError
from asc_deploy.labels import NUM_CLASSES
from asc_deploy.metadata import parse_temperature

Temperature = float | tuple[float, ...]  # one temperature, or one per class


class TemperatureScale(nn.Module):
    """logits (..., classes) -> logits / temperature, in float32; ``temperature`` () or (classes,)."""

    def __init__(self, temperature: Temperature) -> None:
        super().__init__()
        self.register_buffer("temperature", torch.tensor(temperature, dtype=torch.float32))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits / self.temperature


def logit_scale(temperature: Temperature | None) -> nn.Module:
    """The module a classifier applies to its float32 logits: identity for None (uncalibrated:
    the graph gains no node), else :class:`TemperatureScale`."""
    return nn.Identity() if temperature is None else TemperatureScale(temperature)


def check_temperature(value: object, source: str | Path, num_classes: int = NUM_CLASSES) -> Temperature:
    """A temperature read from a checkpoint (:func:`asc_deploy.metadata.parse_temperature`);
    AscError naming ``source`` when it is not one."""
    try:
        return parse_temperature(value, num_classes)
    except ValueError as err:
        raise AscError(f"bad calibration: {err}", source) from err


def checkpoint_temperature(calibration: dict | None, tta: bool, source: str | Path) -> Temperature | None:
    """The temperature of the single-pass (``tta`` False) or TTA model from a checkpoint's
    ``calibration`` record; None for an uncalibrated checkpoint. A checkpoint calibrated for the
    single pass only has no TTA temperature: AscError (never a silent T = 1)."""
    if calibration is None:
        return None
    key = "tta_temperature" if tta else "temperature"
    if calibration.get(key) is None:
        raise AscError("this checkpoint was calibrated for the single-pass model only; the TTA model needs its own temperature "
                       "(asc-calibrate --nb-aug A fits both)", source)
    return check_temperature(calibration[key], source)


def format_temperature(temperature: Sequence[float] | float) -> str:
    """One line for logs: "1.234" or "[0.91 .. 1.52] (10 classes)"."""
    if isinstance(temperature, (int, float)):
        return f"{temperature:.4g}"
    return f"[{min(temperature):.3g} .. {max(temperature):.3g}] ({len(temperature)} classes)"
