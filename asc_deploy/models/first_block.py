"""The first separable block (convolution, BatchNorm, ReLU, 2x2 average pooling) computed from
its one-channel input.

The first block of :class:`~asc_deploy.models.cnn6.Cnn6` sees one channel (the log-mel), so its
1x1 convolution is a per-channel scale and the block before BatchNorm is a cross-shaped depthwise
convolution with five taps: every output channel c at every position p is ``w_c . X(p)``, X(p)
the five input values under the taps. BatchNorm's batch statistics of that output are then
``mean_c = w_c . m`` and ``var_c = w_c^T C w_c``, m and C the mean (5,) and covariance (5, 5) of
X over the batch, frames and bins: five input rows, not 64 output maps. So the normalised map
is written in one batched matrix product of the 64 normalised kernels (and BatchNorm's shift) by
the centred taps, and autograd's backward reads its gradient twice (two more products) instead
of the convolution-BatchNorm-backward chain's many full passes. The product writes only the
positions the 2x2 pooling keeps, grouped by their place in the window, so ReLU and pooling are
a sum of four contiguous planes and their backward one broadcast pass. Block forward and
backward, bfloat16 autocast, 16 clips of 3 s: 143 ms as convolution, BatchNorm and
:class:`~asc_deploy.models.cnn6.ReluPool`, 67-88 ms here (runs minutes apart on a VM whose speed
varied by up to 1.4x); same values (float64: to rounding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

TAPS = 5  # (frame - 2, centre, frame + 2, bin - 2, bin + 2) of the dilated cross kernel


def cross_taps(x: torch.Tensor) -> torch.Tensor:
    """x (batch, 1, frames, bins) -> (batch, 5, frames * bins): x under each tap of the dilated
    cross kernel at every output position (same padding: zeros outside the map), in the order
    (frame - 2, centre, frame + 2, bin - 2, bin + 2)."""
    batch, _, frames, bins = x.shape
    padded = F.pad(x[:, 0], (2, 2, 2, 2))
    rows = (padded[:, 0:frames, 2:bins + 2], padded[:, 2:frames + 2, 2:bins + 2], padded[:, 4:frames + 4, 2:bins + 2],
            padded[:, 2:frames + 2, 0:bins], padded[:, 2:frames + 2, 4:bins + 4])
    return torch.stack(rows, dim=1).reshape(batch, TAPS, frames * bins)


def cross_tap_weights(time_weight: torch.Tensor, freq_weight: torch.Tensor) -> torch.Tensor:
    """The weights (channels, 5) of :func:`cross_taps`' taps in the cross kernel of a (3, 1) time
    kernel (channels, 1, 3, 1) and a (1, 3) frequency kernel (channels, 1, 1, 3): the centre tap
    is their sum (as :func:`~asc_deploy.models.cnn6.cross_kernel`)."""
    time, freq = time_weight.reshape(-1, 3), freq_weight.reshape(-1, 3)
    return torch.stack([time[:, 0], time[:, 1] + freq[:, 1], time[:, 2], freq[:, 0], freq[:, 2]], dim=1)


def _update_running_stats(bn: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
    """What a training-mode ``bn`` does to its buffers for a batch of ``count`` values per channel
    with biased variance ``var``: momentum (or cumulative) averages, the variance unbiased."""
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), factor)
        bn.running_var.lerp_((var * count / max(count - 1, 1)).to(bn.running_var.dtype), factor)


class WindowReluMean(torch.autograd.Function):
    """ReLU, then the mean over dimension 2 of y (batch, channels, 4, windows): the 2x2 average
    pooling of a map whose positions :func:`window_order` grouped by their place in the window.
    The four planes are contiguous, so the mean is a sum of planes and the backward one
    ``threshold_backward`` of the output gradient broadcast over them (no upsampling, no
    innermost stride 0)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, y: torch.Tensor) -> torch.Tensor:
        rectified = torch.relu(y)
        ctx.save_for_backward(rectified)
        return rectified.sum(dim=2).mul_(0.25)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        (rectified,) = ctx.saved_tensors
        return torch.ops.aten.threshold_backward((0.25 * grad)[:, :, None].expand(rectified.shape), rectified, 0)


def window_order(rows: torch.Tensor, frames: int, bins: int) -> torch.Tensor:
    """rows (batch, k, frames * bins) -> (batch, k, 4 * (frames // 2) * (bins // 2)): the positions
    of the 2x2 pooling windows (odd trailing frame and bin dropped), first every window's top-left
    value in (frame // 2, bin // 2) order, then its top-right, bottom-left and bottom-right."""
    batch, k = rows.shape[:2]
    windows = rows.view(batch, k, frames, bins)[:, :, :frames // 2 * 2, :bins // 2 * 2]
    windows = windows.reshape(batch, k, frames // 2, 2, bins // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return windows.reshape(batch, k, -1)


def first_block(x: torch.Tensor, tap_weights: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """``avg_pool2d(relu(bn(conv2d(x, kernel, padding=2, dilation=2))), 2)`` for x (batch, 1, frames,
    bins) and the cross kernel whose five tap weights are ``tap_weights`` (channels, 5) -> (batch,
    channels, frames // 2, bins // 2) in x's dtype (or autocast's). ``bn`` in training mode (or not
    tracking): batch statistics, running statistics updated where it tracks them; else its
    running statistics.

    The batch statistics are those of the taps (module doc), in float64 (a 5 x 5 covariance of
    centred taps: no cancellation whatever the input's mean). The map before ReLU is one ``bmm``
    of the normalised kernels and their shift (channels, 6) by the centred taps and a row of ones,
    at the pooled positions only, in :func:`window_order` (:class:`WindowReluMean` pools it).
    Differentiable in x, ``tap_weights`` and bn's affine parameters.
    """
    batch, _, frames, bins = x.shape
    taps = cross_taps(x)
    batch_statistics = bn.training or not bn.track_running_stats
    with torch.autocast(x.device.type, enabled=False):
        exact = taps.double()
        mean = exact.mean(dim=(0, 2))
        centred = exact - mean[:, None]
        weights = tap_weights.double()
        centre = weights @ mean  # each channel's batch mean
        if batch_statistics:
            count = batch * frames * bins
            covariance = torch.bmm(centred, centred.mT).sum(dim=0) / count  # 2x faster than one (5, batch * positions) product
            channel_mean, channel_var = centre, ((weights @ covariance) * weights).sum(dim=1)
        else:
            channel_mean, channel_var = bn.running_mean.double(), bn.running_var.double()
        scale = torch.rsqrt(channel_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.double()
        shift = bn.bias.double() if bn.bias is not None else torch.zeros_like(scale)
        shift = shift - scale * (channel_mean - centre)  # zero with batch statistics
        normalised = torch.cat([weights * scale[:, None], shift[:, None]], dim=1).to(x.dtype)
    if batch_statistics and bn.track_running_stats:
        _update_running_stats(bn, channel_mean, channel_var, count)
    positions = window_order(centred.to(x.dtype), frames, bins)
    rows = torch.cat([positions, torch.ones_like(positions[:, :1])], dim=1)
    before_relu = torch.bmm(normalised.expand(batch, -1, -1), rows).view(batch, normalised.shape[0], 4, -1)
    if before_relu.requires_grad:
        pooled = WindowReluMean.apply(before_relu)
    else:  # no graph (evaluation): the product is ours, rectified in place (a fresh map costs page faults)
        pooled = before_relu.clamp_min_(0).sum(dim=2).mul_(0.25)
    return pooled.view(batch, -1, frames // 2, bins // 2)
