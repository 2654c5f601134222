"""The separable CNN6 of SP4ASC (``Cnn6_60k``, DCASE 2021 Task 1a, valeo.ai).

State-dict keys and shapes are exactly those of the official checkpoints, so
``load_state_dict(strict=True)`` works on them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from asc_deploy.labels import MEL_BINS, NUM_CLASSES
from asc_deploy.models.spec_augment import SpecAugment


class SeparableConvBlock(nn.Module):
    """1x1 conv, then a dilated depthwise 3x1 (time) and 1x3 (frequency) conv summed, BatchNorm,
    ReLU, 2x2 average pool. (batch, in, frames, bins) -> (batch, out, frames // 2, bins // 2)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.bn: nn.Module = nn.BatchNorm2d(out_channels)  # first, as in SP4ASC's state-dict order
        self.ch_conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.sp_conv1 = nn.Conv2d(out_channels, out_channels, (3, 1), padding=(2, 0), dilation=(2, 1), groups=out_channels, bias=False)
        self.sp_conv2 = nn.Conv2d(out_channels, out_channels, (1, 3), padding=(0, 2), dilation=(1, 2), groups=out_channels, bias=False)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ch_conv1(x)
        x = self.sp_conv1(x) + self.sp_conv2(x)
        return self.pool(torch.relu(self.bn(x)))


class MelAffine(nn.Module):
    """Per-mel-bin affine map, what bn0 becomes once folded. x (batch, 1, frames, bins)."""

    def __init__(self, mel_bins: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(mel_bins))
        self.bias = nn.Parameter(torch.zeros(mel_bins))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight + self.bias


class Cnn6(nn.Module):
    """Separable CNN6 over log-mel (batch, 1, frames, mel_bins) -> logits (batch, num_classes).

    Args:
        mel_bins: mel bins of the input, normalised per bin by ``bn0``.
        channels: output channels of the four separable blocks.
        num_classes: scene classes.
        dropout: dropout before each fully connected layer (training only).
        spec_aug: ``[T, n, F, m]``: n time stripes narrower than T frames and m frequency stripes
            narrower than F mel bins zeroed after ``bn0`` during training; None disables it.
    """

    def __init__(
        self,
        mel_bins: int = MEL_BINS,
        channels: Sequence[int] = (64, 128, 128, 128),
        num_classes: int = NUM_CLASSES,
        dropout: float = 0.2,
        spec_aug: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.bn0: nn.Module = nn.BatchNorm2d(mel_bins)
        self.spec_augmenter: nn.Module = nn.Identity() if spec_aug is None else SpecAugment(spec_aug)
        in_channels = [1, *channels[:-1]]
        self.conv1, self.conv2, self.conv3, self.conv4 = (SeparableConvBlock(i, o) for i, o in zip(in_channels, channels))
        self.dropout1 = nn.Dropout(dropout)
        self.fc1 = nn.Linear(channels[-1], channels[-1])
        self.dropout2 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(channels[-1], num_classes)

    def normalize(self, logmel: torch.Tensor) -> torch.Tensor:
        """Per-mel-bin normalisation by bn0 (BatchNorm over bins, or its folded affine map)."""
        if isinstance(self.bn0, nn.BatchNorm2d):
            return self.bn0(logmel.transpose(1, 3)).transpose(1, 3)
        return self.bn0(logmel)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised log-mel (batch, 1, frames, bins) -> feature maps (batch, 128, frames/16, bins/16)."""
        x = self.spec_augmenter(x)
        return self.conv4(self.conv3(self.conv2(self.conv1(x))))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Feature maps -> logits: mean over frequency, max + mean over time, fc-ReLU-fc."""
        x = features.mean(dim=3)
        x = x.amax(dim=2) + x.mean(dim=2)
        x = torch.relu(self.fc1(self.dropout1(x)))
        return self.fc2(self.dropout2(x))

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        """Log-mel (batch, 1, frames, mel_bins) in dB -> logits (batch, num_classes)."""
        return self.forward_head(self.forward_features(self.normalize(logmel)))

    @property
    def blocks(self) -> tuple[SeparableConvBlock, ...]:
        return (self.conv1, self.conv2, self.conv3, self.conv4)
