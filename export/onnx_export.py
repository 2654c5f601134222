"""Checkpoint -> self-contained ONNX file whose graph starts at the raw 44.1 kHz waveform.

Steps: capture the checkpoint's export module with ``torch.export``
(:func:`asc_deploy.export.program.export_program`: BatchNorm folded, CNN in the requested
precision), lower that program with PyTorch's torch.export-based ONNX exporter
(:func:`lower_to_onnx`), attach the model contract's metadata (a calibrated checkpoint's
temperature divides the logits in the graph and is recorded as ``temperature``), check the graph
(``onnx.checker`` full check; the operator lists of the targeted runtimes are checked by the
tests), then move the file into place atomically.

Opset 18: the exporter's own opset (its torchlib functions are written for it, so no version
conversion runs), inside the range of every target: TensorRT 10's ONNX parser (opsets 9 to 24 in
../shared/ops), onnxruntime's CPU and CUDA kernels, onnxruntime Mobile and onnxruntime-web.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import functools
import logging
from collections.abc import Sequence
from pathlib import Path

import onnx
import onnx_ir
import onnxscript.optimizer
import torch

from asc_deploy import __version__
from asc_deploy.atomic import atomic_path
from asc_deploy.export.clip_loop import loop_over_clips
from asc_deploy.export.loop import loop_over_passes
from asc_deploy.export.pools import average_pools_as_convolutions
from asc_deploy.export.program import Precision, Signature, export_frontend_program, export_graph_program, signature
from asc_deploy.export.quiet import quiet_logger, torch_export_notices_ignored
from asc_deploy.export.slices import gathered_ranges_as_slices
from asc_deploy.labels import CLASS_LABELS, CLIP_SECONDS, HOP_LENGTH, MEL_BINS, N_FFT, SAMPLE_RATE
from asc_deploy.metadata import INPUT_LOGMEL, OUTPUT_LOGMEL, Graph, ModelMetadata, stream_cnn_paths, stream_graph_paths
from asc_deploy.models import load_checkpoint
from asc_deploy.models.checkpoint import Checkpoint

OPSET = 18  # see the module docstring
FOLD_LIMIT = 1024  # elements: constants up to this size are folded at export, larger ones (DFT, filterbank) at load
TARGETS = ("onnxruntime-cpu", "onnxruntime-cuda", "tensorrt")
# the CPU schedule is for onnxruntime; TensorRT's parser refuses its clip Loop ("scan output
# length cannot be dynamic")
CPU_SCHEDULE_TARGETS = ("onnxruntime-cpu", "onnxruntime-cuda")


class Schedule(str, enum.Enum):
    """How the exported graph walks its activations; both compute the same function.

    GPU: every op on whole tensors and all TTA passes as one batch (few large kernels: GPUs,
    TensorRT). CPU: activations cut to cache size (onnxruntime on CPUs): a single-pass model's
    clips one at a time in an ONNX Loop (:mod:`asc_deploy.export.clip_loop`), a TTA model's passes
    one at a time in a Loop (:mod:`asc_deploy.export.loop`), and the first two blocks (full and
    half resolution, 28 and 14 MB per 10 s pass) in :data:`CPU_CHANNEL_GROUPS` groups of output
    channels. Without the clip loop, 16 clips per call wrote 452 MB per block-1 map and ran slower
    per clip than one clip per call (single pass, 2 threads, separate processes: 250-297 ms per
    call of 16 clips against 153-180 ms looped). A TTA model keeps its clips batched inside the
    pass loop: with the clips looped around it, 16 clips of TTA-30 took 3.4-7.0 s per call against
    5.1-5.5 s (one call per process, alternating), and 6.4-6.6 s in two benchmark runs (2 rounds,
    spread 1.01-1.04) against 4.3-5.0 s batched in others.
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


def schedule_for(precision: Precision | str, schedule: Schedule | str) -> Schedule:
    """The schedule ``precision`` is exported with when ``schedule`` is asked for: fp16 always with
    the GPU one (:func:`export_onnx` refuses fp16 with the CPU schedule)."""
    return Schedule.GPU if Precision(precision) is Precision.FP16 else Schedule(schedule)


def checkpoint_spec_aug(checkpoint: Checkpoint) -> tuple[int, ...]:
    """The [T, n, F, m] SpecAugment setting a checkpoint was trained with (SP4ASC or own config)."""
    config = checkpoint.config
    value = config.get("spec_aug", config.get("specAugment"))
    return tuple(int(v) for v in value) if value else ()


def _scoped_names(model: onnx.ModelProto) -> None:
    """Name every node and intermediate value after the modules it was traced in,
    ``/scorer/cnn.conv1/sp_convs.0/conv2d`` (what :mod:`asc_deploy.export.loop` and the int8
    quantiser select nodes by; the quantiser names its nodes after the values), and drop the
    exporter's per-node metadata (stack traces: two thirds of the file)."""
    graph_outputs, values = {o.name for o in model.graph.output}, {}
    for node in model.graph.node:
        props = {p.key: p.value for p in node.metadata_props}
        scopes = ast.literal_eval(props.get("pkg.torch.onnx.name_scopes", "[]"))[:-1]  # module paths, outermost first
        parts, parent = [], ""
        for scope in scopes:  # each extends its parent's path: "scorer", "scorer.cnn.conv1", ...
            if scope and not scope.startswith("_") and scope.startswith(parent):
                parts.append(scope[len(parent):].lstrip("."))
                parent = scope
        scope = "/" + "".join(f"{p}/" for p in parts)
        node.name = scope + node.name.removeprefix("node_")
        values.update({name: scope + name for name in node.output if name not in graph_outputs})
        del node.metadata_props[:]
    for node in model.graph.node:
        node.input[:] = [values.get(name, name) for name in node.input]
        node.output[:] = [values.get(name, name) for name in node.output]
    for value in [*model.graph.input, *model.graph.output]:
        del value.metadata_props[:]


def _name_dynamic_axes(model: onnx.ModelProto, signature: Signature) -> None:
    """Give the graph's dynamic axes the contract's names (``batch``, ``samples``, ...) instead of
    torch.export's symbols (``s16``); intermediate shapes are dropped (runtimes infer them)."""
    names = {}
    for value in model.graph.input:
        for axis, name in signature.dynamic_axes.get(value.name, {}).items():
            names[value.type.tensor_type.shape.dim[axis].dim_param] = name
    for value in [*model.graph.input, *model.graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.dim_param = names.get(dim.dim_param, dim.dim_param)
    del model.graph.value_info[:]


def lower_to_onnx(program: torch.export.ExportedProgram, signature: Signature) -> onnx.ModelProto:
    """An exported program as an ONNX model at :data:`OPSET` (torch.export-based exporter), its
    inputs and outputs named by ``signature``.

    The exporter's optimizer is replaced by onnxscript's with a folding limit of
    :data:`FOLD_LIMIT` elements: shape arithmetic and casts are folded, the DFT and filterbank
    matrices that the frontend builds from its compact buffers are not (runtimes fold them at
    load), which keeps the file at about a third of a folded one.
    """
    with quiet_logger("torch.onnx._internal.exporter._registration", logging.ERROR), torch_export_notices_ignored():  # notes about torchvision ops
        onnx_program = torch.onnx.export(program, dynamo=True, opset_version=OPSET, optimize=False, verbose=False,
                                         input_names=list(signature.inputs), output_names=list(signature.outputs))
    onnxscript.optimizer.optimize_ir(onnx_program.model, onnx_shape_inference=False, input_size_limit=FOLD_LIMIT,
                                     output_size_limit=FOLD_LIMIT)
    model = onnx_ir.to_proto(onnx_program.model)
    _scoped_names(model)
    _name_dynamic_axes(model, signature)
    return model


@functools.lru_cache(maxsize=2)
def _frontend_onnx(center: bool) -> bytes:
    """The frontend lowered to ONNX (serialised), once per process: it is the same for every checkpoint
    and precision, and its program is the slowest part of an export to capture and lower."""
    return gathered_ranges_as_slices(lower_to_onnx(export_frontend_program(center), signature(Graph.FRONTEND, False))).SerializeToString()


def frontend_onnx(center: bool = True) -> onnx.ModelProto:
    """The frontend graph, waveform (batch, samples) -> logmel; ``center=False`` without padding."""
    return onnx.ModelProto.FromString(_frontend_onnx(center))


def compose_with_frontend(classifier: onnx.ModelProto) -> onnx.ModelProto:
    """The waveform graph: the (centred) frontend graph feeding a classifier graph from log-mel.

    The same function as lowering the whole waveform classifier's program (the classifier's first
    step is the frontend's output), built from two programs of which the frontend's is captured and
    lowered once per process. The frontend's nodes and intermediate values are named under
    ``/frontend/`` and its initializers ``frontend.*``, as in one program.
    """
    frontend, model = frontend_onnx(center=True), onnx.ModelProto.FromString(classifier.SerializeToString())
    front, graph = frontend.graph, model.graph
    opsets = {o.domain: o.version for o in model.opset_import}
    if any(opsets.get(o.domain, o.version) != o.version for o in frontend.opset_import):
        raise ValueError("the frontend and classifier graphs import different opsets")
    model.opset_import.extend(o for o in frontend.opset_import if o.domain not in opsets)
    rename = {name: f"/frontend{name}" for node in front.node for name in node.output if name != OUTPUT_LOGMEL}
    rename |= {t.name: f"frontend.{t.name}" for t in front.initializer}
    nodes = []
    for node in front.node:
        node.name = f"/frontend{node.name}"
        node.input[:] = [rename.get(i, i) for i in node.input]
        node.output[:] = [rename.get(o, o) for o in node.output]
        nodes.append(node)
    for tensor in front.initializer:
        tensor.name = rename[tensor.name]
    inputs = [i for i in graph.input if i.name != INPUT_LOGMEL]
    if len(inputs) == len(graph.input):
        raise ValueError(f"the classifier graph has no {INPUT_LOGMEL!r} input to feed the frontend into")
    del graph.input[:]
    graph.input.extend([*front.input, *inputs])
    nodes.extend(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(front.initializer)
    return model


def export_onnx(checkpoint_path: str | Path, output: str | Path, precision: Precision = Precision.FP32, tta: bool = False,
                schedule: Schedule = Schedule.GPU, channel_groups: Sequence[int] | None = None, stream: bool = False) -> Path:
    """Export a checkpoint (SP4ASC's or this project's) to ONNX at ``output``; returns ``output``.

    ``tta`` exports the test-time-augmentation variant (stripes as inputs, mean softmax out);
    ``schedule`` picks whole-tensor ops (GPUs) or cache-sized ones (CPUs), see :class:`Schedule`;
    ``channel_groups`` overrides the schedule's groups of output channels per block (the int8
    export uses :data:`CPU_INT8_CHANNEL_GROUPS`). ``stream`` also writes the streaming graphs
    beside ``output`` (:func:`~asc_deploy.metadata.stream_graph_paths`): the frontend without
    padding (waveform -> log-mel) and the classifier from log-mel, exported from the same modules,
    and for a single-pass model the same classifier split at its last feature map
    (:func:`~asc_deploy.metadata.stream_cnn_paths`). The CNN's 2x2 average pools are written as
    depthwise convolutions (:mod:`asc_deploy.export.pools`). Nothing is left at ``output`` if any
    step fails.
    """
    precision, schedule = Precision(precision), Schedule(schedule)
    if schedule is Schedule.CPU and precision is Precision.FP16:
        raise ValueError("the cpu schedule is for fp32 and int8 CNNs: onnxruntime runs fp16 convolutions on CPUs slower "
                         "than fp32 (TTA-30 in the Loop measured 446 ms against 209 ms); export fp16 with the gpu schedule")
    if channel_groups is None:
        channel_groups = CPU_CHANNEL_GROUPS if schedule is Schedule.CPU else (1, 1, 1, 1)
    checkpoint = load_checkpoint(checkpoint_path)
    metadata = model_metadata(checkpoint, precision.value, tta, CPU_SCHEDULE_TARGETS if schedule is Schedule.CPU else TARGETS, schedule)
    graphs = {Graph.WAVEFORM: Path(output)}
    if stream:
        graphs.update(zip((Graph.FRONTEND, Graph.LOGMEL), stream_graph_paths(output)))
        if not tta:  # TTA masks differ per window: nothing of its CNN is shared between windows
            graphs.update(zip((Graph.FEATURES, Graph.HEAD), stream_cnn_paths(output)))
    classifier = None  # the log-mel classifier graph, lowered once: alone (--stream) and behind the frontend
    for graph, path in graphs.items():
        with_tta = tta and graph in (Graph.WAVEFORM, Graph.LOGMEL)
        if graph in (Graph.WAVEFORM, Graph.LOGMEL):
            if classifier is None:
                classifier = average_pools_as_convolutions(lower_to_onnx(
                    export_graph_program(checkpoint, Graph.LOGMEL, precision, tta, channel_groups), signature(Graph.LOGMEL, tta)))
            model = compose_with_frontend(classifier) if graph is Graph.WAVEFORM else classifier
        elif graph is Graph.FRONTEND:
            model = frontend_onnx(center=False)
        else:
            model = average_pools_as_convolutions(lower_to_onnx(export_graph_program(checkpoint, graph, precision, False, channel_groups),
                                                                signature(graph, False)))
        if schedule is Schedule.CPU and graph in (Graph.WAVEFORM, Graph.LOGMEL):
            model = loop_over_passes(model) if with_tta else loop_over_clips(model)
        model.producer_name, model.producer_version = "asc-deploy", __version__
        model.doc_string = GRAPH_DOCS[graph]
        onnx.helper.set_model_props(model, dataclasses.replace(metadata, graph=graph.value).to_props())
        onnx.checker.check_model(model, full_check=True)
        with atomic_path(path) as tmp_path:
            onnx.save(model, str(tmp_path))
    return Path(output)


GRAPH_DOCS = {
    Graph.WAVEFORM: "SP4ASC separable CNN6 acoustic scene classifier; input: mono 44.1 kHz waveform",
    Graph.FRONTEND: "SP4ASC log-mel frontend without padding: waveform (batch, samples) -> logmel (batch, 1, samples // hop - 1, bins)",
    Graph.LOGMEL: "SP4ASC separable CNN6 acoustic scene classifier; input: log-mel (batch, 1, frames, bins) in dB",
    Graph.FEATURES: "SP4ASC CNN6 up to its last feature map: logmel (batch, 1, frames, bins) -> features (batch, 128, frames // 16, bins // 16)",
    Graph.HEAD: "SP4ASC CNN6 head: features (batch, 128, columns, bins // 16) -> logits, probs",
}


def model_metadata(checkpoint: Checkpoint, precision: str, tta: bool, targets: Sequence[str],
                   schedule: Schedule = Schedule.GPU) -> ModelMetadata:
    """The model contract of an export of ``checkpoint`` (``precision``: "fp32", "fp16" or "int8"),
    checked against the runtimes ``targets`` (the graph field is set per file)."""
    temperature = checkpoint.temperature(tta)
    return ModelMetadata(
        labels=CLASS_LABELS, sample_rate=SAMPLE_RATE, n_fft=N_FFT, hop_length=HOP_LENGTH, mel_bins=MEL_BINS,
        clip_seconds=CLIP_SECONDS, precision=precision, variant="tta" if tta else "single",
        spec_aug=checkpoint_spec_aug(checkpoint), targets=tuple(targets), checkpoint_sha256=checkpoint.sha256,
        package_version=__version__, schedule=Schedule(schedule).value, temperature=1.0 if temperature is None else temperature,
    )
