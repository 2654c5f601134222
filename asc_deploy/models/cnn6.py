"""The separable CNN6 of SP4ASC (``Cnn6_60k``, DCASE 2021 Task 1a, valeo.ai).

State-dict keys and shapes are exactly those of the official checkpoints, so
``load_state_dict(strict=True)`` works on them, whichever :class:`BlockForm` computes the blocks.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from asc_deploy.labels import MEL_BINS, NUM_CLASSES
from asc_deploy.models.first_block import cross_tap_weights, first_block
from asc_deploy.models.spec_augment import SpecAugment


class BlockForm(enum.Enum):
    """How a :class:`SeparableConvBlock` computes its (same) function from its (same) parameters.

    SP4ASC: as SP4ASC's code does, the 1x1 convolution, then the time and frequency depthwise
    convolutions, summed (three passes over the activations and an Add).
    CROSS: the two 1-D depthwise kernels assembled inside ``forward`` into one cross-shaped 3x3
    kernel with dilation 2 (:func:`cross_kernel`), one depthwise convolution; with one input
    channel (the first block) the 1x1 convolution, a per-channel scale, is folded into that
    kernel too, and that block (unfolded) is computed from its input's five taps
    (:func:`~asc_deploy.models.first_block.first_block`: batch statistics from the taps, the
    normalised map in one matrix product, pooled as four planes). Gradients reach the same
    parameters. On the CPU its backward passes are :class:`CrossDepthwise`'s (oneDNN's own
    depthwise backward falls back to a GEMM path about ten times slower than its forward) and
    :class:`ReluPool`'s. Same values up to float rounding (~1e-6 relative).
    """

    SP4ASC = "sp4asc"
    CROSS = "cross"


def cross_kernel(time_weight: torch.Tensor, freq_weight: torch.Tensor) -> torch.Tensor:
    """The depthwise 3x3 kernel (channels, 1, 3, 3) equal to a (3, 1) time kernel ``time_weight``
    (channels, 1, 3, 1) plus a (1, 3) frequency kernel ``freq_weight`` (channels, 1, 1, 3), both
    with dilation 2 along their axis: the time taps in the centre column, the frequency taps in
    the centre row, the centre tap their sum, the corners zero. Differentiable in both inputs."""
    return F.pad(time_weight, (1, 1)) + F.pad(freq_weight, (0, 0, 1, 1))


def _tap_sums(grad: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per channel, the sum over batch, frames and bins of ``grad`` times ``x`` shifted to each
    tap of the dilated cross kernel: (frame - 2, centre, frame + 2, bin - 2, bin + 2), each
    (channels,), at least float32. grad and x (batch, channels, frames, bins), bfloat16 under autocast.

    One depthwise convolution computes them: each (clip, channel) map of x, zero-padded by 2, is
    correlated with that map's gradient as a kernel of the map's size, at stride 2, giving the 3 x 3
    sums at shifts (-2, 0, 2) of which the cross uses five. It reads both maps once (five
    products and sums read them ten times: 2-2.5x slower here); the (clip, channel) partial
    sums are added in float32.
    """
    batch, channels, frames, bins = x.shape
    total = torch.promote_types(grad.dtype, torch.float32)
    maps = batch * channels
    sums = F.conv2d(x.reshape(1, maps, frames, bins), grad.reshape(maps, 1, frames, bins), padding=2, stride=2, groups=maps)
    sums = sums.view(batch, channels, 3, 3).sum(dim=0, dtype=total)
    return sums[:, 0, 1], sums[:, 1, 1], sums[:, 2, 1], sums[:, 1, 0], sums[:, 1, 2]


class CrossDepthwise(torch.autograd.Function):
    """Depthwise convolution of x (batch, channels, frames, bins) with the cross kernel of
    ``time_weight`` (channels, 1, 3, 1) and ``freq_weight`` (channels, 1, 1, 3), dilation 2,
    same padding, no bias; output shaped as x.

    Forward and the input gradient are oneDNN's fast depthwise forward convolution (the input
    gradient of a same-padded correlation is the correlation of the output gradient with the
    flipped kernel); the weight gradients are five per-channel sums of products (:func:`_tap_sums`).
    Under bfloat16 autocast x, the output and its gradient are bfloat16 and the kernel is cast to them.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, time_weight: torch.Tensor,
                freq_weight: torch.Tensor) -> torch.Tensor:
        kernel = cross_kernel(time_weight, freq_weight)
        ctx.save_for_backward(x, kernel)
        return F.conv2d(x, kernel, padding=2, dilation=2, groups=kernel.shape[0])

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, kernel = ctx.saved_tensors
        grad_x = grad_time = grad_freq = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(grad, kernel.flip(2, 3).to(grad.dtype), padding=2, dilation=2, groups=kernel.shape[0])
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            up, centre, down, left, right = _tap_sums(grad, x)
            grad_time = torch.stack([up, centre, down], dim=1).view(-1, 1, 3, 1)
            grad_freq = torch.stack([left, centre, right], dim=1).view(-1, 1, 1, 3)
        return grad_x, grad_time, grad_freq


def average_pool(x: torch.Tensor) -> torch.Tensor:
    """``avg_pool2d(x, 2)`` of x (batch, channels, frames, bins) as a depthwise 2x2 convolution of
    stride 2 with weights 1/4 (exact in binary floating point): on the CPU oneDNN's convolution
    is 2.5x (float32) to 4x (bfloat16) faster than torch's avg_pool2d on contiguous maps."""
    return F.conv2d(x, x.new_full((x.shape[1], 1, 2, 2), 0.25), stride=2, groups=x.shape[1])


class ReluPool(torch.autograd.Function):
    """ReLU then 2x2 average pooling (:func:`average_pool`: stride 2, odd trailing rows and columns dropped): x (batch,
    channels, frames, bins) -> (batch, channels, frames // 2, bins // 2). The backward pass
    repeats each window's share of the output gradient along bins (a half-size map), then one
    ``threshold_backward`` broadcasts it over the window's two frames (x seen as (batch,
    channels, rows, 2, bins)) into the full-size gradient: 1.3-1.7x faster than nearest
    upsampling, padding and ``threshold_backward`` (broadcasting along bins too is 4x slower:
    the innermost stride 0 is not vectorised)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        rectified = torch.relu(x)
        ctx.save_for_backward(rectified)
        return average_pool(rectified)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        (rectified,) = ctx.saved_tensors
        batch, channels, rows, columns = grad.shape
        grad_x = torch.empty_like(rectified, memory_format=torch.contiguous_format)
        grad_x[:, :, 2 * rows:] = 0  # the odd trailing row and column (if any) are not pooled
        grad_x[:, :, :, 2 * columns:] = 0
        windows = (batch, channels, rows, 2, 2 * columns)
        share = (0.25 * grad).repeat_interleave(2, dim=-1)[:, :, :, None].expand(windows)
        torch.ops.aten.threshold_backward.grad_input(share, rectified[:, :, :2 * rows, :2 * columns].view(windows), 0,
                                                     grad_input=grad_x[:, :, :2 * rows, :2 * columns].view(windows))
        return grad_x


def _cpu_backward(*tensors: torch.Tensor) -> bool:
    """True where a gradient of one of ``tensors`` (all on the CPU) will be computed."""
    return tensors[0].device.type == "cpu" and torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def depthwise_cross(x: torch.Tensor, time_weight: torch.Tensor, freq_weight: torch.Tensor) -> torch.Tensor:
    """The CROSS form's depthwise convolution (see :class:`CrossDepthwise`): its own backward
    on the CPU where a gradient is needed, else one ``conv2d`` (cuDNN's backward is fast)."""
    if _cpu_backward(x, time_weight, freq_weight):
        return CrossDepthwise.apply(x, time_weight, freq_weight)
    return F.conv2d(x, cross_kernel(time_weight, freq_weight).to(x.dtype), padding=2, dilation=2, groups=x.shape[1])


def relu_pool(x: torch.Tensor) -> torch.Tensor:
    """``avg_pool2d(relu(x), 2)``; on the CPU :func:`average_pool`'s pooling, with :class:`ReluPool`'s
    backward where a gradient is needed."""
    if _cpu_backward(x):
        return ReluPool.apply(x)
    return average_pool(torch.relu(x)) if x.device.type == "cpu" else F.avg_pool2d(torch.relu(x), 2)


class SeparableConvBlock(nn.Module):
    """1x1 conv, then a dilated depthwise 3x1 (time) and 1x3 (frequency) conv summed, BatchNorm,
    ReLU, 2x2 average pool. (batch, in, frames, bins) -> (batch, out, frames // 2, bins // 2).
    ``form`` chooses how the convolutions are computed (:class:`BlockForm`)."""

    def __init__(self, in_channels: int, out_channels: int, form: BlockForm = BlockForm.SP4ASC) -> None:
        super().__init__()
        self.form = form
        self.bn: nn.Module = nn.BatchNorm2d(out_channels)  # first, as in SP4ASC's state-dict order
        self.ch_conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.sp_conv1 = nn.Conv2d(out_channels, out_channels, (3, 1), padding=(2, 0), dilation=(2, 1), groups=out_channels, bias=False)
        self.sp_conv2 = nn.Conv2d(out_channels, out_channels, (1, 3), padding=(0, 2), dilation=(1, 2), groups=out_channels, bias=False)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.form is BlockForm.SP4ASC:
            return self.pool(torch.relu(self.bn(self.convolutions(x))))
        if self.ch_conv1.in_channels == 1 and isinstance(self.bn, nn.BatchNorm2d):  # not folded
            taps = cross_tap_weights(self.sp_conv1.weight, self.sp_conv2.weight) * self.ch_conv1.weight.view(-1, 1)
            return first_block(x, taps, self.bn)
        return relu_pool(self.bn(self.cross_convolutions(x)))

    def convolutions(self, x: torch.Tensor) -> torch.Tensor:
        """SP4ASC's form: (batch, in, frames, bins) -> (batch, out, frames, bins) before BatchNorm."""
        x = self.ch_conv1(x)
        return self.sp_conv1(x) + self.sp_conv2(x)

    def cross_convolutions(self, x: torch.Tensor) -> torch.Tensor:
        """The CROSS form of :meth:`convolutions` (same function, see :class:`BlockForm`)."""
        time_weight, freq_weight = self.sp_conv1.weight, self.sp_conv2.weight
        if self.ch_conv1.in_channels == 1:  # the 1x1 convolution is a per-channel scale: into the kernel
            kernel = cross_kernel(time_weight, freq_weight) * self.ch_conv1.weight
            x = F.conv2d(x, kernel.to(x.dtype), padding=2, dilation=2)
        else:
            x = depthwise_cross(self.ch_conv1(x), time_weight, freq_weight)
        biases = [conv.bias for conv in (self.sp_conv1, self.sp_conv2) if conv.bias is not None]  # a folded block's
        return x + sum(biases).to(x.dtype)[:, None, None] if biases else x


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
        block_form: how the blocks compute their convolutions (:class:`BlockForm`; the state
            dict is the same for every form).
    """

    def __init__(
        self,
        mel_bins: int = MEL_BINS,
        channels: Sequence[int] = (64, 128, 128, 128),
        num_classes: int = NUM_CLASSES,
        dropout: float = 0.2,
        spec_aug: Sequence[int] | None = None,
        block_form: BlockForm = BlockForm.SP4ASC,
    ) -> None:
        super().__init__()
        self.bn0: nn.Module = nn.BatchNorm2d(mel_bins)
        self.spec_augmenter: nn.Module = nn.Identity() if spec_aug is None else SpecAugment(spec_aug)
        in_channels = [1, *channels[:-1]]
        self.conv1, self.conv2, self.conv3, self.conv4 = (
            SeparableConvBlock(i, o, block_form) for i, o in zip(in_channels, channels))
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
