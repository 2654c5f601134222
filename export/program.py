"""Checkpoint -> ``torch.export`` programs, the captured graphs every deployment format is lowered from.

:func:`export_graph_program` builds the export form of a checkpoint's classifier for one
:class:`Graph` of the model (the whole waveform classifier, or one of the streaming graphs), in one
precision, single pass or TTA, and captures it with ``torch.export`` (non-strict) with unbounded
dynamic batch and length: the ONNX lowering (:func:`asc_deploy.export.onnx_export.lower_to_onnx`)
takes it. :func:`export_program` captures the waveform classifier with the bounded batch and
length that ahead-of-time runtimes plan their memory for (ExecuTorch:
:mod:`asc_deploy.export.executorch`): within :data:`MAX_BATCH` and [:data:`MIN_SAMPLES`,
:data:`MAX_SAMPLES`].

The traced modules are export forms of the shared ones (:class:`ExportFrontend`,
:func:`export_cnn`): the same functions of the same weights, rearranged into fewer, larger and
better-shaped ops for inference runtimes. Parity with the training modules is tested to float rounding.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence

import torch
from torch import nn

from asc_deploy.labels import MIN_SECONDS, SAMPLE_RATE
from asc_deploy.metadata import (
    INPUT_FEATURES,
    INPUT_FREQ_STRIPES,
    INPUT_LOGMEL,
    INPUT_TIME_STRIPES,
    INPUT_WAVEFORM,
    OUTPUT_FEATURES,
    OUTPUT_LOGITS,
    OUTPUT_LOGMEL,
    OUTPUT_PROBS,
    Graph,
)
from asc_deploy.models import TTAClassifier, WaveformClassifier, build_model, fold_batchnorm
from asc_deploy.models.checkpoint import Checkpoint
from asc_deploy.models.pipeline import FeatureExtractor, FeatureHead
from asc_deploy.export.forms import ExportFrontend, export_cnn


MAX_BATCH = 8  # clips per call
MIN_SAMPLES = int(MIN_SECONDS * SAMPLE_RATE)  # 1 s, the runtime's shortest clip
MAX_SECONDS = 30.0
MAX_SAMPLES = int(MAX_SECONDS * SAMPLE_RATE)  # 1,323,000


class Precision(str, enum.Enum):
    """Precision of the CNN weights and arithmetic; the frontend and the I/O stay float32."""

    FP32 = "fp32"
    FP16 = "fp16"

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.float16 if self is Precision.FP16 else torch.float32


@dataclasses.dataclass(frozen=True)
class Signature:
    """Names of a program's inputs and outputs, and each input's dynamic axes {axis: name}."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]


_STRIPES = {INPUT_TIME_STRIPES: {0: "passes", 1: "stripes"}, INPUT_FREQ_STRIPES: {0: "passes", 1: "stripes"}}
_FIRST_INPUT = {  # graph -> (name, dynamic axes) of its first input
    Graph.WAVEFORM: (INPUT_WAVEFORM, {0: "batch", 1: "samples"}),
    Graph.FRONTEND: (INPUT_WAVEFORM, {0: "batch", 1: "samples"}),
    Graph.LOGMEL: (INPUT_LOGMEL, {0: "batch", 2: "frames"}),
    Graph.FEATURES: (INPUT_LOGMEL, {0: "batch", 2: "frames"}),
    Graph.HEAD: (INPUT_FEATURES, {0: "batch", 2: "columns"}),
}


def signature(graph: Graph, tta: bool) -> Signature:
    """The inputs, outputs and dynamic axes of ``graph`` (single pass or TTA) in the model contract."""
    name, axes = _FIRST_INPUT[graph]
    if graph is Graph.FRONTEND:
        return Signature((name,), (OUTPUT_LOGMEL,), {name: axes})
    if graph is Graph.FEATURES:
        return Signature((name,), (OUTPUT_FEATURES,), {name: axes})
    if tta:
        return Signature((name, *_STRIPES), (OUTPUT_PROBS,), {name: axes, **_STRIPES})
    return Signature((name,), (OUTPUT_LOGITS, OUTPUT_PROBS), {name: axes})


def build_module(checkpoint: Checkpoint, graph: Graph, precision: Precision, tta: bool, channel_groups: Sequence[int]) -> nn.Module:
    """The eval-mode export module of ``graph`` for a checkpoint (BatchNorm folded, CNN in ``precision``)."""
    if tta and graph in (Graph.FEATURES, Graph.HEAD):
        raise ValueError(f"the {graph.value} graph is single pass only (TTA masks differ per window)")
    if graph is Graph.FRONTEND:
        return ExportFrontend(center=False).eval()
    cnn = export_cnn(fold_batchnorm(build_model(checkpoint)), channel_groups=channel_groups)
    dtype, temperature = precision.torch_dtype, checkpoint.temperature(tta)
    if graph is Graph.FEATURES:
        return FeatureExtractor(cnn, dtype).eval()
    if graph is Graph.HEAD:
        return FeatureHead(cnn, dtype, temperature).eval()
    frontend = ExportFrontend().eval() if graph is Graph.WAVEFORM else nn.Identity()
    return (TTAClassifier if tta else WaveformClassifier)(frontend, cnn, dtype, temperature).eval()


def example_inputs(graph: Graph, tta: bool, channels: int = 128, mel_bins: int = 256) -> tuple[torch.Tensor, ...]:
    """Example inputs that ``torch.export`` traces ``graph`` with (their sizes become dynamic)."""
    first = {
        Graph.WAVEFORM: torch.zeros(2, 2 * SAMPLE_RATE),
        Graph.FRONTEND: torch.zeros(2, 2 * SAMPLE_RATE),
        Graph.LOGMEL: torch.zeros(2, 1, 100, mel_bins),
        Graph.FEATURES: torch.zeros(2, 1, 100, mel_bins),
        Graph.HEAD: torch.zeros(2, channels, 6, mel_bins // 16),
    }[graph]
    if tta and graph in (Graph.WAVEFORM, Graph.LOGMEL):
        return first, torch.zeros(3, 2, 2, dtype=torch.int64), torch.zeros(3, 2, 2, dtype=torch.int64)
    return (first,)


def export_frontend_program(center: bool = True) -> torch.export.ExportedProgram:
    """The log-mel frontend alone, waveform (batch, samples) -> logmel (batch, 1, frames, mel_bins),
    captured like :func:`export_program` (it holds no checkpoint weights: one program serves every
    checkpoint). ``center=False`` is the streaming frontend graph (no padding)."""
    with torch.no_grad():
        return torch.export.export(ExportFrontend(center=center).eval(), example_inputs(Graph.FRONTEND, False),
                                   dynamic_shapes=({0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC},), strict=False)


def export_graph_program(checkpoint: Checkpoint, graph: Graph = Graph.WAVEFORM, precision: Precision = Precision.FP32,
                   tta: bool = False, channel_groups: Sequence[int] = (1, 1, 1, 1)) -> torch.export.ExportedProgram:
    """Build ``graph``'s export module of ``checkpoint`` and capture it with ``torch.export``.

    Every axis that :func:`signature` names is dynamic (``Dim.DYNAMIC``: its range is whatever the
    module's arithmetic allows, e.g. a waveform of at least 15,360 samples for the four pooling
    stages). ``channel_groups`` splits each CNN block by output channels (see :class:`ExportBlock`).
    """
    module = build_module(checkpoint, Graph(graph), Precision(precision), tta, channel_groups)
    cnn = getattr(module, "cnn", None)
    args = example_inputs(Graph(graph), tta, channels=cnn.fc1.in_features if cnn is not None else 128)
    axes = signature(Graph(graph), tta).dynamic_axes.values()
    dynamic_shapes = tuple({axis: torch.export.Dim.DYNAMIC for axis in a} for a in axes)
    with torch.no_grad():
        return torch.export.export(module, args, dynamic_shapes=dynamic_shapes, strict=False)


def export_program(checkpoint: Checkpoint, precision: Precision | str = Precision.FP32) -> torch.export.ExportedProgram:
    """The waveform classifier of ``checkpoint`` (CNN in ``precision``; frontend and I/O float32)
    exported with a dynamic batch (1 to :data:`MAX_BATCH`) and length (:data:`MIN_SAMPLES` to
    :data:`MAX_SAMPLES` samples)."""
    module = build_module(checkpoint, Graph.WAVEFORM, Precision(precision), False, (1, 1, 1, 1))
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    samples = torch.export.Dim("samples", min=MIN_SAMPLES, max=MAX_SAMPLES)
    example = torch.zeros(2, 2 * SAMPLE_RATE)
    with torch.no_grad():
        return torch.export.export(module, (example,), dynamic_shapes=({0: batch, 1: samples},))
