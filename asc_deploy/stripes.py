"""Host-side SpecAugment stripes for test-time augmentation (numpy, no torch).

Drawn with SP4ASC's distribution (width uniform in [0, W), start uniform in [0, size - width)),
with W clamped to the axis size so clips shorter than W frames work. Drawing them on the host
from a seed gives every backend the same masks: results are reproducible and do not depend on
batch composition.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def draw_stripes(rng: np.random.Generator, passes: int, num_stripes: int, max_width: int, size: int) -> np.ndarray:
    """(passes, num_stripes, 2) int64 ``[start, width]`` on an axis of ``size`` rows."""
    max_width = max(1, min(max_width, size))
    width = rng.integers(0, max_width, size=(passes, num_stripes))
    start = np.floor(rng.random((passes, num_stripes)) * (size - width)).astype(np.int64)
    return np.stack([start, width], axis=-1).astype(np.int64)


def tta_stripes(spec_aug: Sequence[int], passes: int, frames: int, mel_bins: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Time and frequency stripes for ``passes`` TTA passes over a (frames, mel_bins) log-mel.

    ``spec_aug`` is the model's ``[T, n, F, m]``. An axis without stripes (empty ``spec_aug`` or a
    count of 0) gets one zero-width stripe: the graph reduces over the stripe axis, which must not
    be empty.
    """
    time_width, time_count, freq_width, freq_count = (int(v) for v in spec_aug) if spec_aug else (0, 0, 0, 0)
    rng = np.random.default_rng(seed)

    def axis(count: int, width: int, size: int) -> np.ndarray:
        return draw_stripes(rng, passes, count, width, size) if count else np.zeros((passes, 1, 2), np.int64)

    return axis(time_count, time_width, frames), axis(freq_count, freq_width, mel_bins)
