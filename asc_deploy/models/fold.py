"""BatchNorm folding: a function from model to model, with BatchNorm's eps (unlike SP4ASC's own
fold, which divides by sqrt(running_var) and changes the logits of the "ce" checkpoint by ~1.2)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from asc_deploy.models.cnn6 import Cnn6, MelAffine


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - scale * bn.running_mean


@torch.no_grad()
def fold_batchnorm(model: Cnn6) -> Cnn6:
    """Return an eval-mode copy of ``model`` with every BatchNorm folded; ``model`` is unchanged.

    bn0 becomes a per-mel-bin :class:`MelAffine`; each block's BN scales both depthwise convs and
    adds one bias (on ``sp_conv2``, since the two are summed). 62,474 parameters for Cnn6_60k.
    """
    if not isinstance(model.bn0, nn.BatchNorm2d):
        raise ValueError("model is already folded")
    folded = copy.deepcopy(model).eval()
    scale, shift = _bn_scale_shift(model.bn0)
    folded.bn0 = MelAffine(scale.numel())
    folded.bn0.weight.copy_(scale)
    folded.bn0.bias.copy_(shift)
    for block in folded.blocks:
        scale, shift = _bn_scale_shift(block.bn)
        block.sp_conv1.weight.mul_(scale[:, None, None, None])
        block.sp_conv2.weight.mul_(scale[:, None, None, None])
        block.sp_conv2.bias = nn.Parameter(shift.clone())
        block.bn = nn.Identity()
    return folded


def count_parameters(model: nn.Module) -> int:
    """Elements of all parameters (not buffers)."""
    return sum(p.numel() for p in model.parameters())
