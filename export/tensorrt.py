"""Exported ONNX -> TensorRT engine, with a JSON sidecar that pins where the engine may run.

The build parses the ONNX file (its STFT is already lowered to MatMul, so the parser needs no
DFT support), sets one optimisation profile over the dynamic axes, limits the builder's
workspace, reuses a timing cache across builds, and writes ``<engine>`` and ``<engine>.json``
atomically (see :mod:`asc_deploy.atomic`). TF32 is turned off so an fp32 engine is fp32.

Precision follows the ONNX file: an fp16 engine is built from an ONNX exported with precision
"fp16", whose CNN is half precision while the log-mel frontend, inputs and outputs stay float32
(power spectra overflow fp16). How that typing reaches TensorRT depends on its major version:

- TensorRT 10 (weakly typed network): ``BuilderFlag.FP16`` lets the builder pick fp16 kernels;
  every layer whose outputs are float32 in the ONNX graph (the frontend, the final cast, the
  softmax) is pinned to float32 and ``OBEY_PRECISION_CONSTRAINTS`` makes the pins binding.
- TensorRT >= 11 (weak typing and ``BuilderFlag.FP16`` removed): every network is strongly
  typed (the ``STRONGLY_TYPED`` creation flag is deprecated there and ignored, so none is passed)
  and runs each layer in the type the ONNX graph gives it: the fp16 ONNX alone makes the engine.

Loading goes through :func:`load_engine` (in the runtime, :mod:`asc_deploy.trt_runner`), which
refuses an engine whose sidecar names another TensorRT version or GPU architecture.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx

from asc_deploy.atomic import atomic_open, atomic_path
from asc_deploy.errors import AscError
from asc_deploy.metadata import INPUT_FREQ_STRIPES, INPUT_TIME_STRIPES, INPUT_WAVEFORM, ModelMetadata
from asc_deploy.trt_runner import check_sidecar, cuda_device, import_tensorrt, load_engine, sidecar_path

__all__ = ["EngineProfile", "build_engine", "check_sidecar", "load_engine"]

Shapes = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]  # (min, opt, max) shape of one input


@dataclass(frozen=True)
class EngineProfile:
    """The input shapes an engine accepts (min <= opt <= max; TensorRT tunes its kernels for opt).

    ``waveform`` is (batch, samples) at 44.1 kHz: 1 s to 30 s, tuned for 8 clips of 10 s. A TTA
    engine also takes ``time_stripes`` / ``freq_stripes`` (passes, n, 2) int64, where n, the
    stripes per axis, is fixed by the model's SpecAugment setting ``[T, n, F, m]`` (the runtime
    always draws that many). The CNN of a TTA engine sees passes x batch clips: device memory
    grows with max_passes x max_batch x max_samples, so TTA engines want a smaller max_batch.
    """

    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32
    min_samples: int = 44_100  # 1 s
    opt_samples: int = 441_000  # 10 s
    max_samples: int = 1_323_000  # 30 s
    min_passes: int = 1
    opt_passes: int = 30
    max_passes: int = 30

    def __post_init__(self) -> None:
        for axis in ("batch", "samples", "passes"):
            low, opt, high = (getattr(self, f"{bound}_{axis}") for bound in ("min", "opt", "max"))
            if not 0 < low <= opt <= high:
                raise ValueError(f"engine profile {axis}: need 0 < min <= opt <= max, got {low}/{opt}/{high}")

    def shapes(self, tta: bool, time_stripes: int = 0, freq_stripes: int = 0) -> dict[str, Shapes]:
        """(min, opt, max) shape of every input: ``waveform``, plus the stripes of a TTA model."""
        bounds = ("min", "opt", "max")
        shapes = {INPUT_WAVEFORM: tuple((getattr(self, f"{b}_batch"), getattr(self, f"{b}_samples")) for b in bounds)}
        if tta:
            for name, stripes in ((INPUT_TIME_STRIPES, time_stripes), (INPUT_FREQ_STRIPES, freq_stripes)):
                shapes[name] = tuple((getattr(self, f"{b}_passes"), stripes, 2) for b in bounds)
        return shapes


def _read_onnx(path: Path) -> tuple[dict[str, str], ModelMetadata, list[str], str]:
    """(metadata_props, parsed metadata, graph input names, sha256) of an asc-deploy ONNX file."""
    if not path.is_file():
        raise AscError("no such ONNX file", path)
    data = path.read_bytes()
    try:
        model = onnx.load_model_from_string(data)
    except Exception as err:  # protobuf DecodeError and friends
        raise AscError(f"not a valid ONNX model ({type(err).__name__})", path) from err
    props = {p.key: p.value for p in model.metadata_props}
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    return props, ModelMetadata.from_props(props, path), inputs, hashlib.sha256(data).hexdigest()


def _pin_float32_layers(trt: Any, network: Any) -> None:
    """TensorRT 10 weak typing: keep every layer whose outputs are all float32 in float32."""
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if layer.type != trt.LayerType.CAST and outputs and all(t.dtype == trt.float32 for t in outputs):
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)


def _use_timing_cache(config: Any, path: Path | None) -> None:
    """Start from the cache at ``path`` when it exists and fits this TensorRT and GPU, else empty."""
    if path is None:
        return
    cache = config.create_timing_cache(path.read_bytes() if path.is_file() else b"")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def build_engine(onnx_path: str | Path, engine_path: str | Path, profile: EngineProfile = EngineProfile(), fp16: bool = False,
                 workspace_mib: int = 1024, timing_cache: str | Path | None = None) -> Path:
    """Build a TensorRT engine for this machine's GPU from an exported ONNX file; returns ``engine_path``.

    Args:
        onnx_path: an ``asc-export`` ONNX file, single-pass or TTA (detected from its inputs).
        engine_path: where the engine goes; its sidecar goes to ``<engine_path>.json``.
        profile: the input shapes the engine accepts.
        fp16: build the half-precision CNN; needs an ONNX exported with precision "fp16" (and
            ``fp16=False`` needs an fp32 one): the ONNX types say which layers may be fp16.
        workspace_mib: the builder's workspace memory pool limit, MiB.
        timing_cache: a tactic timing cache file, read if present and written back (atomically)
            after the build, so later builds on the same GPU and TensorRT version are faster.

    Raises :class:`AscError` (one line, nothing written) without TensorRT or a CUDA GPU, for a bad
    ONNX file, a precision mismatch, parser errors (all of them, naming the file) or a failed build.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    timing_cache = None if timing_cache is None else Path(timing_cache)
    if workspace_mib <= 0:
        raise ValueError(f"workspace_mib must be positive, got {workspace_mib}")
    trt = import_tensorrt()
    gpu = cuda_device()
    props, metadata, inputs, onnx_sha256 = _read_onnx(onnx_path)
    if metadata.precision not in ("fp32", "fp16"):
        raise AscError(f"TensorRT engines are built from fp32 or fp16 exports, this one is {metadata.precision}", onnx_path)
    if fp16 != (metadata.precision == "fp16"):
        wanted = "fp16" if fp16 else "fp32"
        raise AscError(f"an {wanted} engine needs an ONNX exported with precision {wanted}, this one is {metadata.precision}", onnx_path)
    tta = INPUT_TIME_STRIPES in inputs
    stripes = (metadata.spec_aug[1], metadata.spec_aug[3]) if metadata.spec_aug else (0, 0)
    shapes = profile.shapes(tta, *stripes)
    if sorted(inputs) != sorted(shapes):
        raise AscError(f"unexpected ONNX inputs {inputs}, expected {list(shapes)}", onnx_path)

    strongly_typed = int(trt.__version__.split(".")[0]) >= 11
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch; weakly typed on 10, strongly typed on >= 11
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [" ".join(str(parser.get_error(i)).split()) for i in range(parser.num_errors)]
        raise AscError(f"TensorRT cannot parse the model: {' | '.join(errors) or 'unknown parser error'}", onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    config.clear_flag(trt.BuilderFlag.TF32)
    if fp16 and not strongly_typed:
        _pin_float32_layers(trt, network)
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    optimization_profile = builder.create_optimization_profile()
    for name, (low, opt, high) in shapes.items():
        optimization_profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(optimization_profile)
    _use_timing_cache(config, timing_cache)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise AscError("TensorRT could not build the engine (see its log above)", onnx_path)
    engine = bytes(serialized)

    sidecar = {
        "tensorrt_version": trt.__version__,
        "gpu_name": gpu.name,
        "compute_capability": gpu.compute_capability,
        "fp16": fp16,
        "strongly_typed": strongly_typed,
        "profile": {"settings": asdict(profile), "shapes": {name: [list(s) for s in bounds] for name, bounds in shapes.items()}},
        "workspace_mib": workspace_mib,
        "onnx_file": onnx_path.name,
        "onnx_sha256": onnx_sha256,
        "engine_sha256": hashlib.sha256(engine).hexdigest(),
        "model": props,
    }
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(engine)
    with atomic_open(sidecar_path(engine_path)) as f:
        json.dump(sidecar, f, indent=2)
    if timing_cache is not None:
        with atomic_path(timing_cache) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    return engine_path
