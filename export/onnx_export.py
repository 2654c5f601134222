"""Checkpoint -> self-contained ONNX file whose graph starts at the raw 44.1 kHz waveform.

Steps: load the checkpoint, fold BatchNorm, cast the CNN to the requested precision, trace the
shared torch pipeline (frontend + CNN) with the TorchScript-based exporter, attach the model
contract's metadata (a calibrated checkpoint's temperature divides the logits in the graph and
is recorded as ``temperature``), check the graph (``onnx.checker`` full check and the operator lists of the
targeted runtimes), then move the file into place atomically.

The traced modules are export forms of the shared ones (:class:`ExportFrontend`,
:func:`export_cnn`): the same functions of the same weights, rearranged into fewer, larger and
better-shaped ops for inference runtimes (about 2x faster on onnxruntime CPU than tracing the
training modules as they are). Parity with the training modules is tested to float rounding.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import math
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch
from torch import nn

from asc_deploy import __version__
from asc_deploy.atomic import atomic_path
from asc_deploy.export.loop import loop_over_passes
from asc_deploy.labels import CLASS_LABELS, CLIP_SECONDS, SAMPLE_RATE
from asc_deploy.metadata import (
    INPUT_FREQ_STRIPES,
    INPUT_LOGMEL,
    INPUT_TIME_STRIPES,
    INPUT_WAVEFORM,
    OUTPUT_LOGITS,
    INPUT_FEATURES,
    OUTPUT_FEATURES,
    OUTPUT_LOGMEL,
    OUTPUT_PROBS,
    Graph,
    ModelMetadata,
    stream_cnn_paths,
    stream_graph_paths,
)
from asc_deploy.models import LogMelFrontend, TTAClassifier, WaveformClassifier, build_model, fold_batchnorm, load_checkpoint
from asc_deploy.models.pipeline import FeatureExtractor, FeatureHead
from asc_deploy.models.checkpoint import Checkpoint
from asc_deploy.models.cnn6 import Cnn6, SeparableConvBlock

OPSET = 17  # TensorRT 10 parses opsets 9-24; onnxruntime CPU/CUDA have kernels for every op used here
TARGETS = ("onnxruntime-cpu", "onnxruntime-cuda", "tensorrt")


class Schedule(str, enum.Enum):
    """How the exported graph walks its activations; both compute the same function.

    GPU: every op on whole tensors and all TTA passes as one batch (few large kernels: GPUs,
    TensorRT). CPU: activations cut to cache size (onnxruntime on CPUs): the first two blocks
    (full and half resolution, 28 and 14 MB per 10 s pass) in :data:`CPU_CHANNEL_GROUPS` groups of
    output channels, and a TTA model's passes one at a time in an ONNX Loop
    (:mod:`asc_deploy.export.loop`). Tuned for one or two clips per call (what the runtime sends):
    with 16 clips per call the activations no longer fit in cache and GPU was faster on a CPU too.
    """

    GPU = "gpu"
    CPU = "cpu"


# CPU schedule, groups of output channels per block: each group's activations (14 MB for the
# first block, 3.5 MB per stage of the second, 10 s pass) are read back by the next op from cache
# (32 MB L3 here), and group sizes are multiples of onnxruntime's NCHWc block (8 or 16 channels),
# so the Concat stays in that layout. Measured (2 threads, 10 s clip, one run, medians of 8
# sessions): single pass 11.0 ms ungrouped, 10.3 ms with the first block in 2 groups, 9.7 ms with
# the second in 2 or 4 as well; TTA-30 in the Loop 210 ms -> 198 ms (2) -> 193 ms (4). Chunks of
# frames instead of channels were slower (a Concat along time leaves the NCHWc layout).
CPU_CHANNEL_GROUPS = (2, 4, 1, 1)
# An int8 CNN wants other groups: its second block runs as QLinearConv in NHWC, slower in groups.
# Measured as above, TTA-30: (2, 4, 1, 1) 154 ms, (1, 1, 1, 1) 162, (2, 1, 1, 1) 135, (2, 2, 1, 1)
# 140, (4, 1, 1, 1) 124, (8, 1, 1, 1) 231; the fp32 CNN with (4, 1, 1, 1) took 225 ms.
CPU_INT8_CHANNEL_GROUPS = (4, 1, 1, 1)


class Precision(str, enum.Enum):
    """Precision of the CNN weights and arithmetic; the frontend and the I/O stay float32."""

    FP32 = "fp32"
    FP16 = "fp16"

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.float16 if self is Precision.FP16 else torch.float32


def schedule_for(precision: Precision | str, schedule: Schedule | str) -> Schedule:
    """The schedule ``precision`` is exported with when ``schedule`` is asked for: fp16 always with
    the GPU one (:func:`export_onnx` refuses fp16 with the CPU schedule)."""
    return Schedule.GPU if Precision(precision) is Precision.FP16 else Schedule(schedule)


def checkpoint_spec_aug(checkpoint: Checkpoint) -> tuple[int, ...]:
    """The [T, n, F, m] SpecAugment setting a checkpoint was trained with (SP4ASC or own config)."""
    config = checkpoint.config
    value = config.get("spec_aug", config.get("specAugment"))
    return tuple(int(v) for v in value) if value else ()


class ExportBlock(nn.Module):
    """Export form of a folded :class:`SeparableConvBlock`, same function in fewer ops.

    The summed depthwise pair (3x1 dilated (2, 1) and 1x3 dilated (1, 2), same padding) is one
    depthwise 3x3 convolution with dilation 2 whose kernel is their cross (corners zero, centre
    tap the sum of both centres) and the sum of their biases: one pass over the activations
    instead of three (two convolutions and an Add), and the ReLU fuses into it. With one input
    channel (the first block) the 1x1 convolution is a per-channel scale, folded into that kernel.

    ``channel_groups`` > 1 splits the block by output channel: each group runs its share of the
    1x1 convolution, the depthwise convolution, ReLU and pool, and the groups are concatenated
    along channels. Same values (every output channel depends on its own weights only); each
    group's activations are still in cache when the next op reads them.
    """

    def __init__(self, block: SeparableConvBlock, channel_groups: int = 1) -> None:
        super().__init__()
        if not isinstance(block.bn, nn.Identity):
            raise ValueError("ExportBlock needs a BatchNorm-folded block (fold_batchnorm)")
        pointwise, time_conv, freq_conv = block.ch_conv1, block.sp_conv1, block.sp_conv2
        channels = pointwise.out_channels
        if channel_groups < 1 or channels % channel_groups:
            raise ValueError(f"channel_groups must divide the block's {channels} output channels, got {channel_groups}")
        size = channels // channel_groups
        with torch.no_grad():
            cross = torch.zeros(channels, 1, 3, 3, dtype=time_conv.weight.dtype)
            cross[:, :, :, 1] += time_conv.weight[:, :, :, 0]
            cross[:, :, 1, :] += freq_conv.weight[:, :, 0, :]
            bias = sum(c.bias for c in (time_conv, freq_conv) if c.bias is not None)
            bias = torch.zeros(channels, dtype=cross.dtype) if isinstance(bias, int) else bias
            folded = pointwise.in_channels == 1  # the 1x1 convolution is a per-channel scale: into the kernel
            if folded:
                cross = cross * pointwise.weight
            self.ch_convs = nn.ModuleList()  # empty when folded
            self.sp_convs = nn.ModuleList()
            for first in range(0, channels, size):
                part = slice(first, first + size)
                if not folded:
                    conv = nn.Conv2d(pointwise.in_channels, size, 1, bias=False)
                    conv.weight.copy_(pointwise.weight[part])
                    self.ch_convs.append(conv)
                conv = nn.Conv2d(1 if folded else size, size, 3, padding=2, dilation=2, groups=1 if folded else size)
                conv.weight.copy_(cross[part])
                conv.bias.copy_(bias[part])
                self.sp_convs.append(conv)
        self.pool = nn.AvgPool2d(2, count_include_pad=False)  # no padding: same values; XNNPACK delegates only this form

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, in, frames, bins) -> (batch, out, frames // 2, bins // 2)."""
        groups = []
        for index, conv in enumerate(self.sp_convs):
            y = self.ch_convs[index](x) if self.ch_convs else x
            groups.append(self.pool(torch.relu(conv(y))))
        return groups[0] if len(groups) == 1 else torch.cat(groups, dim=1)


def export_cnn(cnn: Cnn6, channel_groups: Sequence[int] = (1, 1, 1, 1)) -> Cnn6:
    """An eval-mode copy of a BatchNorm-folded ``cnn`` whose blocks are :class:`ExportBlock`,
    block i in ``channel_groups[i]`` groups of output channels."""
    if len(channel_groups) != len(cnn.blocks):
        raise ValueError(f"channel_groups needs one value per block ({len(cnn.blocks)}), got {tuple(channel_groups)}")
    cnn = copy.deepcopy(cnn).eval()
    for name, groups in zip(("conv1", "conv2", "conv3", "conv4"), channel_groups):
        setattr(cnn, name, ExportBlock(getattr(cnn, name), groups))
    return cnn


class ExportFrontend(LogMelFrontend):
    """Export form of :class:`LogMelFrontend` (same constructor, buffers and buffer names): the
    same factorised DFT and filterbank, laid out for large GEMMs (frontend.py's names: sample
    n = n2 * i1 + i2 of a frame, bin k = k1 + n1 * k2).

    - the hop-sized chunks of the padded signal are gathered as the reflected first hop, the
      signal's whole hops and the last hop reflected past the end (no Pad and no Slice, whose
      result would depend on samples % hop: ``torch.export`` then proves every shape for all
      lengths), and frames are built as (batch, i2, frames, i1) from them (one cheap single-axis
      Transpose, one Concat);
    - the size-n1 DFT over i1 runs as n2 GEMMs (frames x n1) @ (n1 x n1), one per i2 and real or
      imaginary part, with the window and the twiddle factors folded into their matrices;
    - the size-n2 DFT over i2 is then one batched GEMM per frame (2 K2 x 2 n2) @ (2 n2 x n1), whose
      output rows k2, columns k1 hold the bins in their natural order k1 + n1 * k2 (the same
      onnxruntime CPU time as one (2 n2 x frames * n1) GEMM, whose frames * n1 columns
      ``torch.export`` cannot split back into frames for every length);
    - the Slaney filterbank is applied per group of 32 mel bands to the FFT bins the group
      touches only (8 groups: about 8x fewer multiply-adds than the dense 1088 x 256 product).
    Every folded matrix is built in the graph from the frontend's compact buffers, so the file
    stays small and runtimes constant-fold them at load. Output equals ``frontend(waveform)`` to
    float32 rounding: <= 5e-4 dB from the float64 truth on the SP4ASC reference clips, but up to
    4.6e-3 dB on white noise, where frames hold FFT bins ~1e-4 of the frame's power (the shared
    layout: 1.4e-3 dB there).

    ``center=False`` drops the reflect padding: (batch, samples) -> (batch, 1, samples // hop - 1,
    mel_bins), frame t over samples [t * hop, t * hop + n_fft) (the streaming frontend graph; the
    caller pads the frames at a window's edges itself, see :mod:`asc_deploy.streaming`).
    """

    def __init__(self, *args, mel_group: int = 32, center: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.center = center
        if self.hop_length != self.n1 // 2 * self.n2:
            raise ValueError("ExportFrontend needs hop_length == n1 / 2 * n2")
        with torch.no_grad():
            nonzero = self.mel_natural() != 0
        self.groups: list[tuple[int, int, int, int]] = []  # (first bin, end bin, first band, end band)
        for first in range(0, self.mel_bins, mel_group):
            end = min(first + mel_group, self.mel_bins)
            rows = nonzero[:, first:end].any(dim=1).nonzero()[:, 0]
            lo, hi = (int(rows.min()), int(rows.max()) + 1) if len(rows) else (0, 1)
            self.groups.append((lo, hi, first, end))

    def mel_natural(self) -> torch.Tensor:
        """The dense filterbank with rows in natural bin order (n1 * kept_k2, mel_bins)."""
        weights = self.mel_weights().reshape(self.n1, self.kept_k2, self.mel_bins).transpose(0, 1)
        return weights.reshape(self.n1 * self.kept_k2, self.mel_bins)

    def outer_matrices(self) -> torch.Tensor:
        """(2, n2, n1, n1): per i2, window x size-n1 DFT x twiddle, real and imaginary part, (i1, k1)."""
        cos, sin = self.dft_outer[: self.n1].T[None], self.dft_outer[self.n1 :].T[None]  # (1, i1, k1); sin holds -sin
        tw_real, tw_imag = self.twiddle_real.T[:, None, :], self.twiddle_imag.T[:, None, :]  # (i2, 1, k1)
        window = self.window.T[:, :, None]  # (i2, i1, 1)
        return torch.stack([(tw_real * cos - tw_imag * sin) * window, (tw_imag * cos + tw_real * sin) * window])

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        n1, n2, hop, kept = self.n1, self.n2, self.hop_length, self.kept_k2
        batch, samples = waveform.shape
        if self.center:  # the hops of the signal reflect-padded by n_fft // 2 (= hop), up to the last whole one
            whole, last = samples // hop, samples - 1
            tail = whole * hop + torch.arange(hop, device=waveform.device)  # the last hop, reflected past the end
            chunks = torch.cat([waveform[:, 1 : hop + 1].flip(1)[:, None],
                                waveform.index_select(1, torch.arange(whole * hop, device=waveform.device)).reshape(batch, -1, hop),
                                waveform.index_select(1, last - (last - tail).abs())[:, None]], dim=1)  # (batch, whole + 2, hop)
        else:
            chunks = waveform[:, : samples // hop * hop].reshape(batch, -1, hop)
        chunks = chunks.reshape(batch, -1, n1 // 2, n2).permute(0, 3, 1, 2)
        frames = torch.cat([chunks[:, :, :-1], chunks[:, :, 1:]], dim=3)  # (batch, i2, frames, i1)
        outer = torch.matmul(frames[:, None], self.outer_matrices())  # (batch, 2, i2, frames, k1)
        outer = outer.permute(0, 3, 1, 2, 4).reshape(batch, -1, 2 * n2, n1)  # (batch, frames, 2 * i2, k1)
        spectrum = torch.matmul(self.dft_inner.T, outer)  # (batch, frames, 2 * kept, k1)
        power = spectrum[:, :, :kept] ** 2 + spectrum[:, :, kept:] ** 2  # (batch, frames, k2, k1)
        power = power.reshape(batch, -1, kept * n1)  # (batch, frames, bins in natural order)
        weights = self.mel_natural()
        mel = torch.cat([torch.matmul(power[..., lo:hi], weights[lo:hi, first:end]) for lo, hi, first, end in self.groups], dim=-1)
        return (10.0 / math.log(10.0)) * torch.log(torch.clamp(mel, min=self.amin))[:, None]


def model_metadata(checkpoint: Checkpoint, precision: str, tta: bool, targets: Sequence[str],
                   schedule: Schedule = Schedule.GPU) -> ModelMetadata:
    """The model contract of an export of ``checkpoint`` (``precision``: "fp32", "fp16" or "int8"),
    checked against the runtimes ``targets``."""
    frontend, temperature = ExportFrontend(), checkpoint.temperature(tta)
    return ModelMetadata(
        labels=CLASS_LABELS, sample_rate=frontend.sample_rate, n_fft=frontend.n_fft, hop_length=frontend.hop_length,
        mel_bins=frontend.mel_bins, clip_seconds=CLIP_SECONDS, precision=precision,
        variant="tta" if tta else "single", spec_aug=checkpoint_spec_aug(checkpoint), targets=tuple(targets),
        checkpoint_sha256=checkpoint.sha256, package_version=__version__, schedule=Schedule(schedule).value,
        temperature=1.0 if temperature is None else temperature,
    )


def _trace(module: torch.nn.Module, tta: bool, path: Path, first_input: tuple[str, torch.Tensor, dict[int, str]] | None = None,
           output_names: Sequence[str] | None = None) -> None:
    """Trace ``module`` to ONNX at ``path``. Its first input is the waveform unless ``first_input``
    gives (name, example, dynamic axes) (the streaming graphs: log-mel in, or log-mel out)."""
    name, example, axes = first_input or (INPUT_WAVEFORM, torch.zeros(2, 2 * SAMPLE_RATE), {0: "batch", 1: "samples"})
    dynamic_axes = {name: axes}
    if tta:
        args = (example, torch.zeros(3, 2, 2, dtype=torch.int64), torch.zeros(3, 2, 2, dtype=torch.int64))
        input_names = [name, INPUT_TIME_STRIPES, INPUT_FREQ_STRIPES]
        output_names = output_names or [OUTPUT_PROBS]
        dynamic_axes |= {name: {0: "passes", 1: "stripes"} for name in input_names[1:]}
    else:
        args, input_names, output_names = (example,), [name], output_names or [OUTPUT_LOGITS, OUTPUT_PROBS]
    dynamic_axes |= {name: {0: "batch"} for name in output_names if name not in dynamic_axes}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, args, str(path), dynamo=False, opset_version=OPSET,
            input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes,
            # Folding would store the expanded filterbank (1 MB); runtimes fold it at load instead.
            do_constant_folding=False,
        )


def export_onnx(checkpoint_path: str | Path, output: str | Path, precision: Precision = Precision.FP32, tta: bool = False,
                schedule: Schedule = Schedule.GPU, channel_groups: Sequence[int] | None = None, stream: bool = False) -> Path:
    """Export a checkpoint (SP4ASC's or this project's) to ONNX at ``output``; returns ``output``.

    ``tta`` exports the test-time-augmentation variant (stripes as inputs, mean softmax out);
    ``schedule`` picks whole-tensor ops (GPUs) or cache-sized ones (CPUs), see :class:`Schedule`;
    ``channel_groups`` overrides the schedule's groups of output channels per block (the int8
    export uses :data:`CPU_INT8_CHANNEL_GROUPS`). ``stream`` also writes the streaming graphs
    beside ``output`` (:func:`~asc_deploy.metadata.stream_graph_paths`): the frontend without
    padding (waveform -> log-mel) and the classifier from log-mel, traced from the same modules,
    and for a single-pass model the same classifier split at its last feature map
    (:func:`~asc_deploy.metadata.stream_cnn_paths`).
    Nothing is left at ``output`` if any step fails.
    """
    precision, schedule = Precision(precision), Schedule(schedule)
    if schedule is Schedule.CPU and precision is Precision.FP16:
        raise ValueError("the cpu schedule is for fp32 and int8 CNNs: onnxruntime runs fp16 convolutions on CPUs slower "
                         "than fp32 (TTA-30 in the Loop measured 446 ms against 209 ms); export fp16 with the gpu schedule")
    if channel_groups is None:
        channel_groups = CPU_CHANNEL_GROUPS if schedule is Schedule.CPU else (1, 1, 1, 1)
    checkpoint = load_checkpoint(checkpoint_path)
    cnn = export_cnn(fold_batchnorm(build_model(checkpoint)), channel_groups=channel_groups)
    frontend = ExportFrontend().eval()
    temperature = checkpoint.temperature(tta)
    classifier = TTAClassifier if tta else WaveformClassifier
    metadata = model_metadata(checkpoint, precision.value, tta, TARGETS, schedule)

    def write(module: nn.Module, path: Path, graph: Graph, doc: str, with_tta: bool, **trace_args) -> None:
        with tempfile.TemporaryDirectory(prefix="asc-export-") as tmp:
            traced = Path(tmp) / "traced.onnx"
            _trace(module.eval(), with_tta, traced, **trace_args)
            model = onnx.load(str(traced))
        if with_tta and schedule is Schedule.CPU:
            model = loop_over_passes(model)
        model.producer_name, model.producer_version = "asc-deploy", __version__
        model.doc_string = doc
        onnx.helper.set_model_props(model, dataclasses.replace(metadata, graph=graph.value).to_props())
        onnx.checker.check_model(model, full_check=True)
        with atomic_path(path) as tmp_path:
            onnx.save(model, str(tmp_path))

    write(classifier(frontend, cnn, precision.torch_dtype, temperature), Path(output), Graph.WAVEFORM,
          "SP4ASC separable CNN6 acoustic scene classifier; input: mono 44.1 kHz waveform", tta)
    if stream:
        frontend_path, logmel_path = stream_graph_paths(output)
        write(ExportFrontend(center=False), frontend_path, Graph.FRONTEND,
              "SP4ASC log-mel frontend without padding: waveform (batch, samples) -> logmel (batch, 1, samples // hop - 1, bins)",
              False, first_input=(INPUT_WAVEFORM, torch.zeros(2, 2 * SAMPLE_RATE), {0: "batch", 1: "samples"}),
              output_names=[OUTPUT_LOGMEL])
        frames = torch.zeros(2, 1, 100, frontend.mel_bins)
        write(classifier(nn.Identity(), cnn, precision.torch_dtype, temperature), logmel_path, Graph.LOGMEL,
              "SP4ASC separable CNN6 acoustic scene classifier; input: log-mel (batch, 1, frames, bins) in dB", tta,
              first_input=(INPUT_LOGMEL, frames, {0: "batch", 2: "frames"}))
        if not tta:  # TTA masks differ per window: nothing of its CNN is shared between windows
            features_path, head_path = stream_cnn_paths(output)
            write(FeatureExtractor(cnn, precision.torch_dtype), features_path, Graph.FEATURES,
                  "SP4ASC CNN6 up to its last feature map: logmel (batch, 1, frames, bins) -> features (batch, 128, frames // 16, bins // 16)",
                  False, first_input=(INPUT_LOGMEL, frames, {0: "batch", 2: "frames"}), output_names=[OUTPUT_FEATURES])
            write(FeatureHead(cnn, precision.torch_dtype, temperature), head_path, Graph.HEAD,
                  "SP4ASC CNN6 head: features (batch, 128, columns, bins // 16) -> logits, probs", False,
                  first_input=(INPUT_FEATURES, torch.zeros(2, cnn.fc1.in_features, 6, frontend.mel_bins // 16), {0: "batch", 2: "columns"}))
    return Path(output)
