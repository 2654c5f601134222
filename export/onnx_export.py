"""Checkpoint -> self-contained ONNX file whose graph starts at the raw 44.1 kHz waveform.

Steps: load the checkpoint, fold BatchNorm, cast the CNN to the requested precision, trace the
shared torch pipeline (frontend + CNN) with the TorchScript-based exporter, attach the model
contract's metadata, check the graph (``onnx.checker`` full check and the operator lists of the
targeted runtimes), then move the file into place atomically.
"""

from __future__ import annotations

import enum
import tempfile
import warnings
from pathlib import Path

import onnx
import torch

from asc_deploy import __version__
from asc_deploy.atomic import atomic_path
from asc_deploy.labels import CLASS_LABELS, CLIP_SECONDS, SAMPLE_RATE
from asc_deploy.metadata import (
    INPUT_FREQ_STRIPES,
    INPUT_TIME_STRIPES,
    INPUT_WAVEFORM,
    OUTPUT_LOGITS,
    OUTPUT_PROBS,
    ModelMetadata,
)
from asc_deploy.models import LogMelFrontend, TTAClassifier, WaveformClassifier, build_model, fold_batchnorm, load_checkpoint
from asc_deploy.models.checkpoint import Checkpoint

OPSET = 17  # TensorRT 10 parses opsets 9-24; onnxruntime CPU/CUDA have kernels for every op used here
TARGETS = ("onnxruntime-cpu", "onnxruntime-cuda", "tensorrt")


class Precision(str, enum.Enum):
    """Precision of the CNN weights and arithmetic; the frontend and the I/O stay float32."""

    FP32 = "fp32"
    FP16 = "fp16"

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.float16 if self is Precision.FP16 else torch.float32


def checkpoint_spec_aug(checkpoint: Checkpoint) -> tuple[int, ...]:
    """The [T, n, F, m] SpecAugment setting a checkpoint was trained with (SP4ASC or own config)."""
    config = checkpoint.config
    value = config.get("spec_aug", config.get("specAugment"))
    return tuple(int(v) for v in value) if value else ()


def _trace(module: torch.nn.Module, tta: bool, path: Path) -> None:
    waveform = torch.zeros(2, 2 * SAMPLE_RATE)
    dynamic_axes = {INPUT_WAVEFORM: {0: "batch", 1: "samples"}}
    if tta:
        args = (waveform, torch.zeros(3, 2, 2, dtype=torch.int64), torch.zeros(3, 2, 2, dtype=torch.int64))
        input_names = [INPUT_WAVEFORM, INPUT_TIME_STRIPES, INPUT_FREQ_STRIPES]
        output_names = [OUTPUT_PROBS]
        dynamic_axes |= {name: {0: "passes", 1: "stripes"} for name in input_names[1:]}
    else:
        args, input_names, output_names = (waveform,), [INPUT_WAVEFORM], [OUTPUT_LOGITS, OUTPUT_PROBS]
    dynamic_axes |= {name: {0: "batch"} for name in output_names}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, args, str(path), dynamo=False, opset_version=OPSET,
            input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes,
            # Folding would store the expanded filterbank (1 MB); runtimes fold it at load instead.
            do_constant_folding=False,
        )


def export_onnx(checkpoint_path: str | Path, output: str | Path, precision: Precision = Precision.FP32, tta: bool = False) -> Path:
    """Export a checkpoint (SP4ASC's or this project's) to ONNX at ``output``; returns ``output``.

    ``tta`` exports the test-time-augmentation variant (stripes as inputs, mean softmax out).
    Nothing is left at ``output`` if any step fails.
    """
    precision = Precision(precision)
    checkpoint = load_checkpoint(checkpoint_path)
    cnn = fold_batchnorm(build_model(checkpoint))
    frontend = LogMelFrontend().eval()
    module = (TTAClassifier if tta else WaveformClassifier)(frontend, cnn, precision.torch_dtype).eval()
    metadata = ModelMetadata(
        labels=CLASS_LABELS, sample_rate=frontend.sample_rate, n_fft=frontend.n_fft, hop_length=frontend.hop_length,
        mel_bins=frontend.mel_bins, clip_seconds=CLIP_SECONDS, precision=precision.value,
        variant="tta" if tta else "single", spec_aug=checkpoint_spec_aug(checkpoint), targets=TARGETS,
        checkpoint_sha256=checkpoint.sha256, package_version=__version__,
    )
    with tempfile.TemporaryDirectory(prefix="asc-export-") as tmp:
        traced = Path(tmp) / "traced.onnx"
        _trace(module, tta, traced)
        model = onnx.load(str(traced))
    model.producer_name, model.producer_version = "asc-deploy", __version__
    model.doc_string = "SP4ASC separable CNN6 acoustic scene classifier; input: mono 44.1 kHz waveform"
    onnx.helper.set_model_props(model, metadata.to_props())
    onnx.checker.check_model(model, full_check=True)
    with atomic_path(output) as tmp_path:
        onnx.save(model, str(tmp_path))
    return Path(output)
