"""SpecAugment stripes as SP4ASC draws and applies them (torchlibrosa's DropStripes).

A stripe is ``[start, width]``: rows ``start:start + width`` of one axis are set to zero. Widths
are uniform in [0, W) and starts uniform in [0, size - width), with W clamped to the axis size so
short clips (fewer frames than W) work, where SP4ASC's own sampler fails.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def stripe_keep_mask(stripes: torch.Tensor, size: torch.Tensor | int) -> torch.Tensor:
    """Stripes (N, n_stripes, 2) int64 -> keep mask (N, size) float32: 0 inside any stripe, else 1."""
    position = torch.arange(size, device=stripes.device)
    if stripes.shape[1] == 0:
        return torch.ones(stripes.shape[0], position.shape[0], device=stripes.device)
    start, width = stripes[..., 0:1], stripes[..., 1:2]  # (N, n_stripes, 1)
    inside = (position >= start).to(torch.float32) * (position < start + width).to(torch.float32)
    return 1.0 - inside.amax(dim=1)


def draw_stripes(count: int, num_stripes: int, max_width: int, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw (count, num_stripes, 2) int64 stripes on an axis of ``size`` rows, SP4ASC's distribution."""
    max_width = max(1, min(max_width, size))
    width = torch.randint(0, max_width, (count, num_stripes), generator=generator)
    start = (torch.rand((count, num_stripes), generator=generator) * (size - width)).long()
    return torch.stack([start, width], dim=-1)


def apply_stripes(x: torch.Tensor, time_stripes: torch.Tensor, freq_stripes: torch.Tensor) -> torch.Tensor:
    """Zero stripes of x (N, 1, frames, mel_bins): stripe arrays (N, n, 2), one set per example."""
    time_keep = stripe_keep_mask(time_stripes, x.shape[2]).to(x.dtype)
    freq_keep = stripe_keep_mask(freq_stripes, x.shape[3]).to(x.dtype)
    return x * time_keep[:, None, :, None] * freq_keep[:, None, None, :]


class SpecAugment(nn.Module):
    """Training-time SpecAugment: ``spec_aug = [T, n, F, m]`` is n time stripes of width < T frames
    and m frequency stripes of width < F mel bins, drawn per example. Identity in eval mode."""

    def __init__(self, spec_aug: Sequence[int]) -> None:
        super().__init__()
        if len(spec_aug) != 4 or any(int(v) < 0 for v in spec_aug):
            raise ValueError(f"spec_aug must be [T, n, F, m] of non-negative integers, got {list(spec_aug)}")
        self.time_width, self.time_stripes, self.freq_width, self.freq_stripes = (int(v) for v in spec_aug)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (batch, 1, frames, mel_bins) -> same shape with stripes zeroed (training only)."""
        if not self.training:
            return x
        batch, _, frames, bins = x.shape
        time = draw_stripes(batch, self.time_stripes, self.time_width, frames).to(x.device)
        freq = draw_stripes(batch, self.freq_stripes, self.freq_width, bins).to(x.device)
        return apply_stripes(x, time, freq)
