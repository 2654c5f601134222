"""Checkpoint -> ExecuTorch program (``.pte``) for PyTorch's on-device runtime (Android, iOS,
embedded Linux), lowered from the one exported program (:func:`~asc_deploy.export.program.export_program`)
with the XNNPACK delegate.

The program's method ``forward`` takes the waveform float32 (batch, samples) at 44.1 kHz, batch
1 to :data:`~asc_deploy.export.program.MAX_BATCH`, 1 s to
:data:`~asc_deploy.export.program.MAX_SECONDS` s, and returns (logits, probs), each (batch,
classes) float32: the single-pass contract of :mod:`asc_deploy.metadata`, by position. Its constant
method :data:`~asc_deploy.metadata.PTE_METADATA_METHOD` returns the model contract (the ONNX
``metadata_props``) as one JSON object string. Every op of the CNN and the frontend's GEMMs run
in XNNPACK; index arithmetic, copies and the head's reductions run in ExecuTorch's portable
kernels. Needs the ``executorch`` extra.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from asc_deploy.atomic import atomic_path
from asc_deploy.export.onnx_export import Precision, model_metadata
from asc_deploy.export.program import export_program
from asc_deploy.export.quiet import executorch_import_quieted, torch_export_notices_ignored
from asc_deploy.metadata import PTE_METADATA_METHOD, ModelMetadata
from asc_deploy.models import load_checkpoint

if TYPE_CHECKING:
    from executorch.exir import EdgeProgramManager

TARGETS = ("executorch-xnnpack",)


def delegate_to_xnnpack(program: torch.export.ExportedProgram, metadata: ModelMetadata) -> EdgeProgramManager:
    """``program`` as an ExecuTorch edge program (``EdgeProgramManager``) whose ops XNNPACK takes
    run in its delegate, ``metadata`` in its constant method :data:`~asc_deploy.metadata.PTE_METADATA_METHOD`."""
    with executorch_import_quieted():
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

    with torch_export_notices_ignored():
        return to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                           constant_methods={PTE_METADATA_METHOD: json.dumps(metadata.to_props())})


def lower_to_executorch(program: torch.export.ExportedProgram, metadata: ModelMetadata) -> bytes:
    """The ``.pte`` bytes of ``program`` lowered with the XNNPACK delegate (:func:`delegate_to_xnnpack`)."""
    edge = delegate_to_xnnpack(program, metadata)
    with torch_export_notices_ignored():
        return edge.to_executorch().buffer


def export_pte(checkpoint_path: str | Path, output: str | Path, precision: Precision | str = Precision.FP32) -> Path:
    """Export a checkpoint's single-pass classifier (CNN in ``precision``) to an ExecuTorch program
    at ``output``; returns ``output``. Nothing is left at ``output`` if any step fails."""
    precision = Precision(precision)
    checkpoint = load_checkpoint(checkpoint_path)
    buffer = lower_to_executorch(export_program(checkpoint, precision), model_metadata(checkpoint, precision.value, False, TARGETS))
    with atomic_path(output) as tmp_path:
        tmp_path.write_bytes(buffer)
    return Path(output)
