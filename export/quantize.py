"""int8 static quantisation of an exported model's CNN; the frontend stays float32.

onnxruntime's ``quantize_static`` in QDQ format: weights int8, symmetric, per output channel;
activations uint8 (asymmetric) for the u8s8 kernels of x86 CPUs. AVX2 CPUs without VNNI can
saturate u8s8 products, so ``reduce_range`` (7-bit weights) is switched on there and only there.
Only CNN convolutions (with their ReLUs) are quantised and every frontend node is excluded by name
as well: power spectra span ~20 decades (amin 1e-10) and must stay float32. The fully connected
head (2 small Gemm) stays float32 too: it costs nothing and halves the log-loss change.

Two graph details make int8 pay on onnxruntime's CPU kernels (both leave the function unchanged):
the first block (a convolution from ONE input channel, its ReLU and 2x2 average pool) stays
float32, because onnxruntime's float NCHWc kernels beat its QLinearConv on a one-channel input
and its QLinearAveragePool is slow; and the 2x2 average pools of the other blocks are depthwise
2x2 stride-2 convolutions with weights 1/4 (exact in int8; :mod:`asc_deploy.export.pools`, as
asc-export writes every float model), which run as fast QLinearConv depthwise kernels between
the quantised convolutions.

Activation ranges are calibrated (min/max) on a bounded number of clips of the TRAINING split of
a data set folder in the TAU 2020 Mobile layout (:func:`asc_deploy.train.dataset.read_split`),
one clip per calibration batch. A CPU-schedule model, whose clips (single pass) or TTA passes run
in a Loop, is calibrated and quantised in its batched form and looped again. The result carries the fp32
model's metadata with ``precision`` set to "int8", and is written atomically.
"""

from __future__ import annotations

import logging
import platform
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from asc_deploy.atomic import atomic_path
from asc_deploy.errors import AscError
from asc_deploy.export.clip_loop import batch_clips, has_clip_loop, loop_over_clips
from asc_deploy.export.loop import batch_passes, has_pass_loop, loop_over_passes
from asc_deploy.export.pools import average_pools_as_convolutions, conv_channels, is_pool
from asc_deploy.export.quiet import quiet_logger
from asc_deploy.labels import num_frames
from asc_deploy.metadata import INPUT_FREQ_STRIPES, INPUT_TIME_STRIPES, INPUT_WAVEFORM, ModelMetadata
from asc_deploy.stripes import tta_stripes

CNN_OP_TYPES = ("Conv", "Relu")
FRONTEND_SCOPE = "/frontend/"  # name prefix of the frontend's nodes in the traced graph
CALIBRATION_PASSES = 2  # TTA variant: one unmasked pass and one masked pass per calibration clip


def cpu_flags() -> set[str]:
    """Flags of this CPU from /proc/cpuinfo (empty where unavailable)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def needs_reduce_range(flags: set[str] | None = None) -> bool:
    """True on x86 CPUs whose u8s8 int8 path may saturate: AVX2 without any VNNI (or unknown)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False
    flags = cpu_flags() if flags is None else flags
    return not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}


def frontend_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes of the frontend (waveform to log-mel), all kept float32."""
    return [node.name for node in model.graph.node if node.name.startswith(FRONTEND_SCOPE)]


def prepare_for_int8(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Rewrite the CNN for onnxruntime's int8 kernels (module doc); returns the model (changed in
    place) and the names of the first block's nodes, which stay float32."""
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    keep_float: list[str] = []
    for node in graph.node:
        if (node.op_type == "Conv" and not node.name.startswith(FRONTEND_SCOPE) and conv_channels(node, initializers)[1] == 1
                and next((a.i for a in node.attribute if a.name == "group"), 1) == 1):  # the first block's, from one input channel
            keep_float.append(node.name)
            follower = node
            while (nxt := consumers.get(follower.output[0], [])) and len(nxt) == 1 and (nxt[0].op_type == "Relu" or is_pool(nxt[0])):
                follower = nxt[0]
                keep_float.append(follower.name)
                if is_pool(follower):
                    break
    return average_pools_as_convolutions(model), keep_float


def _pick(clips: list, max_clips: int) -> list:
    """At most ``max_clips`` clips spread evenly over the split (read_split lists them class by class)."""
    if len(clips) <= max_clips:
        return clips
    return [clips[int(i)] for i in np.linspace(0, len(clips) - 1, max_clips).round()]


class ClipCalibrationReader:
    """onnxruntime CalibrationDataReader over data set clips: one clip per batch, loaded lazily.

    For the TTA variant each clip comes with :data:`CALIBRATION_PASSES` passes (an empty pass and
    one drawn with the model's SpecAugment setting) so masked inputs are calibrated too.
    """

    def __init__(self, clips: list, metadata: ModelMetadata, seed: int = 0) -> None:
        from asc_deploy.train.dataset import load_clip

        self._load, self._clips, self._metadata, self._seed = load_clip, clips, metadata, seed
        self._iter = self._feeds()

    def _feeds(self) -> Iterator[dict[str, np.ndarray]]:
        for i, clip in enumerate(self._clips):
            wave = self._load(clip)
            feed = {INPUT_WAVEFORM: np.ascontiguousarray(wave[None], dtype=np.float32)}
            if self._metadata.variant == "tta":
                time, freq = tta_stripes(self._metadata.spec_aug, CALIBRATION_PASSES, num_frames(wave.shape[0]),
                                         self._metadata.mel_bins, self._seed + i)
                time[0, :, 1] = 0  # first pass unmasked
                freq[0, :, 1] = 0
                feed |= {INPUT_TIME_STRIPES: time, INPUT_FREQ_STRIPES: freq}
            yield feed

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = self._feeds()


def export_int8(checkpoint_path: str | Path, output: str | Path, calibration_dir: str | Path, tta: bool = False,
                schedule: str = "gpu", max_clips: int = 64) -> Path:
    """Checkpoint -> int8 ONNX at ``output``: an fp32 export (with the int8 channel groups under the
    CPU schedule, :data:`asc_deploy.export.onnx_export.CPU_INT8_CHANNEL_GROUPS`) in a temporary
    folder, then :func:`quantize_int8`. Returns ``output``."""
    from asc_deploy.export.onnx_export import CPU_INT8_CHANNEL_GROUPS, Precision, Schedule, export_onnx

    groups = CPU_INT8_CHANNEL_GROUPS if Schedule(schedule) is Schedule.CPU else None
    with tempfile.TemporaryDirectory(prefix="asc-int8-") as tmp:
        fp32 = export_onnx(checkpoint_path, Path(tmp) / "model.fp32.onnx", Precision.FP32, tta, schedule, groups)
        return quantize_int8(fp32, output, calibration_dir, max_clips)


def quantize_int8(onnx_path: str | Path, output: str | Path, calibration_dir: str | Path, max_clips: int = 64, *,
                  reduce_range: bool | None = None, seed: int = 0) -> Path:
    """Quantise the CNN of an fp32 ``asc-export`` ONNX model to int8; returns ``output``.

    Args:
        onnx_path: fp32 ONNX model (single-pass or TTA variant) written by ``asc-export``.
        output: where to write the int8 model (atomically; nothing is left there on failure).
        calibration_dir: data set folder in the TAU 2020 Mobile layout; its TRAINING split calibrates.
        max_clips: at most this many training clips (spread over the split) are used.
        reduce_range: 7-bit weights; None decides from this CPU (:func:`needs_reduce_range`).
        seed: seed of the calibration stripes of a TTA model.

    Raises ValueError for bad arguments (checked before any work) and AscError for bad files.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from asc_deploy.runtime import read_model_metadata
    from asc_deploy.train.dataset import read_split

    if isinstance(max_clips, bool) or not isinstance(max_clips, int) or max_clips < 1:
        raise ValueError(f"max_clips must be a positive integer, got {max_clips!r}")
    onnx_path, output, calibration_dir = Path(onnx_path), Path(output), Path(calibration_dir)
    if output.resolve() == onnx_path.resolve():
        raise ValueError("output must differ from the input model (it is replaced atomically only on success)")
    if not calibration_dir.is_dir():
        raise ValueError(f"calibration data folder {calibration_dir} does not exist or is not a folder")
    metadata = read_model_metadata(onnx_path)
    if metadata.precision != "fp32":
        raise ValueError(f"int8 quantisation starts from an fp32 export, {onnx_path} is {metadata.precision}")
    clips = _pick(read_split(calibration_dir, "train"), max_clips)

    model = onnx.load(str(onnx_path))
    # CPU schedule: calibrate and quantise the batched form (clips, then TTA passes), loop it again after
    clips_looped = has_clip_loop(model)
    clips_batched = batch_clips(model) if clips_looped else model
    passes_looped = has_pass_loop(clips_batched)
    batched = batch_passes(clips_batched) if passes_looped else clips_batched
    frontend = frontend_nodes(batched)
    if not frontend:
        raise AscError("no frontend nodes found (expected names under /frontend/): not an asc-export graph?", onnx_path)
    prepared, first_block = prepare_for_int8(onnx.ModelProto.FromString(batched.SerializeToString()))
    reduce_range = needs_reduce_range() if reduce_range is None else reduce_range
    with tempfile.TemporaryDirectory(prefix="asc-quantize-") as tmp:
        source, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        onnx.save(prepared, str(source))
        with quiet_logger(None, logging.ERROR):  # quantize_static logs advice about pre-processing on every call
            quantize_static(
                str(source), str(quantized), ClipCalibrationReader(clips, metadata, seed),
                quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=reduce_range,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                op_types_to_quantize=list(CNN_OP_TYPES), nodes_to_exclude=frontend + first_block,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
            )
        result = onnx.load(str(quantized))
    if passes_looped:
        result = loop_over_passes(result)
    if clips_looped:
        result = loop_over_clips(result)
    props = {p.key: p.value for p in model.metadata_props} | {"precision": "int8"}
    del result.metadata_props[:]
    onnx.helper.set_model_props(result, props)
    result.producer_name, result.producer_version, result.doc_string = model.producer_name, model.producer_version, model.doc_string
    onnx.checker.check_model(result, full_check=True)
    with atomic_path(output) as tmp_path:
        onnx.save(result, str(tmp_path))
    return output
