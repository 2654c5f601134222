"""Checkpoint -> one ``torch.export`` program of the waveform classifier, the program every
torch.export-based format is lowered from (ExecuTorch: :mod:`asc_deploy.export.executorch`).

The exported module is the one the ONNX export traces (:class:`WaveformClassifier` over
:class:`ExportFrontend` and :func:`export_cnn` of the BatchNorm-folded CNN, the checkpoint's
single-pass temperature dividing the logits): input ``waveform`` float32 (batch, samples) at
44.1 kHz, outputs ``logits`` and ``probs`` float32 (batch, classes). Both input axes are dynamic
within :data:`MAX_BATCH` and [:data:`MIN_SAMPLES`, :data:`MAX_SAMPLES`]: ahead-of-time runtimes
plan their memory for the upper bounds, so they are kept to what a device sends.
"""

from __future__ import annotations

import torch

from asc_deploy.export.onnx_export import ExportFrontend, Precision, export_cnn
from asc_deploy.labels import MIN_SECONDS, SAMPLE_RATE
from asc_deploy.models import WaveformClassifier, build_model, fold_batchnorm
from asc_deploy.models.checkpoint import Checkpoint

MAX_BATCH = 8  # clips per call
MIN_SAMPLES = int(MIN_SECONDS * SAMPLE_RATE)  # 1 s, the runtime's shortest clip
MAX_SECONDS = 30.0
MAX_SAMPLES = int(MAX_SECONDS * SAMPLE_RATE)  # 1,323,000


def export_program(checkpoint: Checkpoint, precision: Precision | str = Precision.FP32) -> torch.export.ExportedProgram:
    """The waveform classifier of ``checkpoint`` (CNN in ``precision``; frontend and I/O float32)
    exported with a dynamic batch (1 to :data:`MAX_BATCH`) and length (:data:`MIN_SAMPLES` to
    :data:`MAX_SAMPLES` samples)."""
    precision = Precision(precision)
    module = WaveformClassifier(ExportFrontend(), export_cnn(fold_batchnorm(build_model(checkpoint))),
                                precision.torch_dtype, checkpoint.temperature(False)).eval()
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    samples = torch.export.Dim("samples", min=MIN_SAMPLES, max=MAX_SAMPLES)
    example = torch.zeros(2, 2 * SAMPLE_RATE)
    with torch.no_grad():
        return torch.export.export(module, (example,), dynamic_shapes=({0: batch, 1: samples},))
