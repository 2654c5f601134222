"""Complexity as DCASE counts it: parameters, model size at a given precision, and MACs.

Size in KB = parameters x bits / 8 / 1024 (DCASE 2021 Task 1a: 62,474 x 16 / 8 / 1024 = 122.0 KB
at fp16). MACs are counted per clip from the modules themselves (forward hooks on every
convolution and linear layer; the frontend's own count of its matrices).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from asc_deploy.labels import CLIP_SAMPLES, num_frames
from asc_deploy.models.cnn6 import Cnn6
from asc_deploy.models.fold import count_parameters, fold_batchnorm
from asc_deploy.models.frontend import LogMelFrontend

BITS_PER_PARAMETER = {"fp32": 32, "fp16": 16, "int8": 8}
DCASE2021_SIZE_LIMIT_KB = 128.0  # Task 1a budget, KB of non-zero parameters


@dataclass(frozen=True)
class ComplexityReport:
    parameters: int  # trainable parameters of the unfolded model
    state_dict_elements: int  # every tensor element of the state dict (BN statistics included)
    parameters_folded: int  # after folding every BatchNorm
    nonzero_parameters_folded: int
    size_kb: dict[str, float]  # folded model at fp32 / fp16 / int8
    cnn_macs: int  # per clip of ``clip_samples``
    frontend_macs: int
    clip_samples: int

    def as_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        """Human-readable report, one line per quantity."""
        seconds = self.clip_samples / 44_100
        return [
            f"parameters (unfolded, trainable): {self.parameters:,} ({self.state_dict_elements:,} state-dict elements)",
            f"parameters (BatchNorm folded):    {self.parameters_folded:,} ({self.nonzero_parameters_folded:,} non-zero)",
            "model size (folded):              " + ", ".join(f"{k} {v:.1f} KB" for k, v in self.size_kb.items()),
            f"MACs per {seconds:g} s clip:            CNN {self.cnn_macs / 1e6:.1f} M, frontend {self.frontend_macs / 1e6:.1f} M",
        ]


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """MACs of every Conv2d and Linear of ``model`` on ``example``, from their output shapes."""
    total = 0

    def hook(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kernel = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            total += output.numel() * kernel
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return total


def complexity_report(model: Cnn6, frontend: LogMelFrontend | None = None, clip_samples: int = CLIP_SAMPLES) -> ComplexityReport:
    """Complexity of an unfolded ``model`` (it is folded here for the folded counts)."""
    frontend = frontend or LogMelFrontend()
    folded = fold_batchnorm(model)
    folded_params = count_parameters(folded)
    example = torch.zeros(1, 1, num_frames(clip_samples), frontend.mel_bins)
    return ComplexityReport(
        parameters=count_parameters(model),
        state_dict_elements=sum(t.numel() for t in model.state_dict().values()),
        parameters_folded=folded_params,
        nonzero_parameters_folded=int(sum((p != 0).sum() for p in folded.parameters())),
        size_kb={k: folded_params * bits / 8 / 1024 for k, bits in BITS_PER_PARAMETER.items()},
        cnn_macs=count_macs(folded, example),
        frontend_macs=frontend.macs(clip_samples),
        clip_samples=clip_samples,
    )
