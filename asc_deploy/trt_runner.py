"""TensorRT engines behind the runner contract (activate, infer on named arrays, deactivate).

No torch and no import-time TensorRT: ``tensorrt`` is imported when an engine is loaded, so this
module imports everywhere and :func:`available` says why TensorRT cannot run. Device memory,
copies and the stream go through a small ctypes binding of the CUDA runtime (libcudart), as
Polygraphy's ``polygraphy.cuda`` does; libcudart comes with the CUDA toolkit or with the pip
wheel TensorRT depends on (``nvidia-cuda-runtime-cu12``, or ``nvidia-cuda-runtime`` for CUDA 13).

Every engine has a JSON sidecar ``<engine>.json`` (written by
:func:`asc_deploy.export.tensorrt.build_engine`): a serialized engine only runs on the TensorRT
version and GPU architecture it was built for, so :func:`load_engine` checks both, and the
engine's sha256, before TensorRT sees the file.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from asc_deploy.errors import AscError

SIDECAR_KEYS = ("tensorrt_version", "gpu_name", "compute_capability", "fp16", "profile", "onnx_sha256", "engine_sha256", "model")
_CUDA_MEMCPY_HOST_TO_DEVICE, _CUDA_MEMCPY_DEVICE_TO_HOST = 1, 2  # cudaMemcpyKind
_CUDA_ATTR_CC_MAJOR, _CUDA_ATTR_CC_MINOR = 75, 76  # cudaDevAttrComputeCapabilityMajor / Minor
_MIN_ALLOCATION = 256  # bytes: empty tensors still get a valid address


@dataclass(frozen=True)
class GpuInfo:
    """The current CUDA device."""

    name: str  # e.g. "NVIDIA H100 80GB HBM3"
    compute_capability: str  # "major.minor", e.g. "9.0"


def import_tensorrt() -> ModuleType:
    """The ``tensorrt`` module; :class:`AscError` with one line if it cannot be imported."""
    try:
        import tensorrt
    except ModuleNotFoundError as err:
        raise AscError("TensorRT is not installed: pip install 'asc-deploy[trt]'") from err
    except (ImportError, OSError) as err:
        raise AscError(f"TensorRT cannot be imported ({err})") from err
    return tensorrt


def _load_cudart() -> ctypes.CDLL:
    candidates = ["libcudart.so", "libcudart.so.13", "libcudart.so.12"]
    for entry in sys.path:  # pip wheels: nvidia/cuda_runtime/lib (CUDA 12), nvidia/cu13/lib (CUDA 13)
        candidates += sorted(str(p) for p in Path(entry or ".").glob("nvidia/*/lib/libcudart.so*"))
    candidates.append("/usr/local/cuda/lib64/libcudart.so")
    for candidate in candidates:
        try:
            return ctypes.CDLL(candidate)
        except OSError:
            continue
    raise AscError("the CUDA runtime library (libcudart) is not installed: pip install nvidia-cuda-runtime-cu12")


class _CudaRuntime:
    """The few CUDA runtime calls the runner needs. Pointers and streams are ints (addresses)."""

    def __init__(self) -> None:
        lib = _load_cudart()
        ptr, size = ctypes.c_void_p, ctypes.c_size_t
        int_ref = ctypes.POINTER(ctypes.c_int)
        signatures = {
            "cudaGetErrorString": ([ctypes.c_int], ctypes.c_char_p),
            "cudaGetDeviceCount": ([int_ref], ctypes.c_int),
            "cudaGetDevice": ([int_ref], ctypes.c_int),
            "cudaDeviceGetAttribute": ([int_ref, ctypes.c_int, ctypes.c_int], ctypes.c_int),
            "cudaMalloc": ([ctypes.POINTER(ptr), size], ctypes.c_int),
            "cudaFree": ([ptr], ctypes.c_int),
            "cudaMemcpyAsync": ([ptr, ptr, size, ctypes.c_int, ptr], ctypes.c_int),
            "cudaStreamCreate": ([ctypes.POINTER(ptr)], ctypes.c_int),
            "cudaStreamSynchronize": ([ptr], ctypes.c_int),
            "cudaStreamDestroy": ([ptr], ctypes.c_int),
        }
        for name, (argtypes, restype) in signatures.items():
            function = getattr(lib, name)
            function.argtypes, function.restype = argtypes, restype
        # cudaDeviceProp starts with char name[256] in every CUDA version; the struct is ~1 KiB.
        self._get_properties = getattr(lib, "cudaGetDeviceProperties_v2", None) or lib.cudaGetDeviceProperties
        self._get_properties.argtypes, self._get_properties.restype = [ctypes.c_char_p, ctypes.c_int], ctypes.c_int
        self._lib = lib

    def _error(self, status: int) -> str:
        return f"CUDA error {status}: {self._lib.cudaGetErrorString(status).decode()}"

    def _check(self, status: int, call: str) -> None:
        if status != 0:
            raise RuntimeError(f"{call} failed ({self._error(status)})")

    def device(self) -> GpuInfo:
        """The current device; :class:`AscError` when there is none."""
        count, device, major, minor = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
        status = self._lib.cudaGetDeviceCount(ctypes.byref(count))
        if status != 0 or count.value == 0:
            raise AscError("no CUDA GPU found" + (f" ({self._error(status)})" if status else ""))
        self._check(self._lib.cudaGetDevice(ctypes.byref(device)), "cudaGetDevice")
        self._check(self._lib.cudaDeviceGetAttribute(ctypes.byref(major), _CUDA_ATTR_CC_MAJOR, device), "cudaDeviceGetAttribute")
        self._check(self._lib.cudaDeviceGetAttribute(ctypes.byref(minor), _CUDA_ATTR_CC_MINOR, device), "cudaDeviceGetAttribute")
        properties = ctypes.create_string_buffer(4096)
        self._check(self._get_properties(properties, device), "cudaGetDeviceProperties")
        return GpuInfo(properties.value.decode(errors="replace"), f"{major.value}.{minor.value}")

    def malloc(self, nbytes: int) -> int:
        pointer = ctypes.c_void_p()
        self._check(self._lib.cudaMalloc(ctypes.byref(pointer), nbytes), f"cudaMalloc({nbytes} bytes)")
        return pointer.value

    def free(self, pointer: int) -> None:
        self._check(self._lib.cudaFree(pointer), "cudaFree")

    def copy_to_device(self, device: int, host: np.ndarray, stream: int) -> None:
        self._check(self._lib.cudaMemcpyAsync(device, host.ctypes.data, host.nbytes, _CUDA_MEMCPY_HOST_TO_DEVICE, stream), "cudaMemcpyAsync")

    def copy_to_host(self, host: np.ndarray, device: int, stream: int) -> None:
        self._check(self._lib.cudaMemcpyAsync(host.ctypes.data, device, host.nbytes, _CUDA_MEMCPY_DEVICE_TO_HOST, stream), "cudaMemcpyAsync")

    def stream_create(self) -> int:
        stream = ctypes.c_void_p()
        self._check(self._lib.cudaStreamCreate(ctypes.byref(stream)), "cudaStreamCreate")
        return stream.value

    def stream_synchronize(self, stream: int) -> None:
        self._check(self._lib.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def stream_destroy(self, stream: int) -> None:
        self._check(self._lib.cudaStreamDestroy(stream), "cudaStreamDestroy")


@functools.lru_cache(maxsize=1)
def _cuda() -> _CudaRuntime:
    return _CudaRuntime()


def cuda_device() -> GpuInfo:
    """Name and compute capability of the current CUDA device; :class:`AscError` if there is none."""
    return _cuda().device()


def available() -> tuple[bool, str]:
    """(True, "") when TensorRT imports and a CUDA GPU is present, else (False, one-line reason)."""
    try:
        import_tensorrt()
        cuda_device()
    except AscError as err:
        return False, str(err)
    return True, ""


def sidecar_path(engine_path: str | Path) -> Path:
    """``<engine>.json`` beside the engine."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def read_sidecar(engine_path: str | Path) -> dict[str, Any]:
    """The engine's sidecar as a dict; :class:`AscError` naming it if missing or not JSON."""
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise AscError(f"no engine sidecar (TensorRT version, GPU, profile): rebuild the engine {Path(engine_path).name}", path)
    try:
        sidecar = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise AscError(f"engine sidecar is not valid JSON ({err})", path) from err
    if not isinstance(sidecar, dict):
        raise AscError("engine sidecar is not a JSON object", path)
    return sidecar


def check_sidecar(sidecar: dict[str, Any], runtime_trt_version: str, compute_capability: str, source: str | Path | None = None) -> None:
    """Refuse (:class:`AscError` naming ``source``) a sidecar that lacks keys, or whose engine was built
    with another TensorRT version or for another GPU architecture (compute capability "major.minor")."""
    missing = [key for key in SIDECAR_KEYS if key not in sidecar]
    if missing:
        raise AscError(f"engine sidecar lacks {', '.join(missing)}: rebuild the engine", source)
    problems = []
    if sidecar["tensorrt_version"] != runtime_trt_version:
        problems.append(f"built with TensorRT {sidecar['tensorrt_version']}, running TensorRT {runtime_trt_version}")
    if sidecar["compute_capability"] != compute_capability:
        problems.append(f"built for compute capability {sidecar['compute_capability']} ({sidecar['gpu_name']}), "
                        f"this GPU has {compute_capability}")
    if problems:
        raise AscError(f"engine does not fit this machine: {'; '.join(problems)}; rebuild it here", source)


def load_engine(engine_path: str | Path) -> Any:
    """Deserialize an engine (a ``tensorrt.ICudaEngine``) after checking its sidecar.

    Refused with :class:`AscError`, before TensorRT reads the file, when the sidecar is missing or
    malformed, describes another file (sha256), or names another TensorRT version or GPU
    architecture than the running ones.
    """
    engine_path = Path(engine_path)
    sidecar = read_sidecar(engine_path)
    if not engine_path.is_file():
        raise AscError("no such engine file", engine_path)
    data = engine_path.read_bytes()
    if sidecar.get("engine_sha256") != hashlib.sha256(data).hexdigest():
        raise AscError(f"the engine is not the one its sidecar {sidecar_path(engine_path).name} describes (sha256 differs): rebuild it", engine_path)
    trt = import_tensorrt()
    check_sidecar(sidecar, trt.__version__, cuda_device().compute_capability, sidecar_path(engine_path))
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(data)
    if engine is None:
        raise AscError("TensorRT cannot deserialize the engine (see its log above)", engine_path)
    return engine


class TensorRTRunner:
    """Runs a TensorRT engine. ``with TensorRTRunner(path) as r: r.infer({"waveform": x})``.

    Each call sets the input shapes (within the engine's optimisation profile), copies the inputs
    to device buffers that are kept and grown between calls, runs ``execute_async_v3`` on the
    runner's stream and copies the outputs back: numpy in, numpy out, like the onnxruntime runner.
    """

    name = "tensorrt"

    def __init__(self, engine_path: str | Path) -> None:
        self.engine_path = Path(engine_path)
        self._engine: Any = None
        self._context: Any = None
        self._stream = 0
        self._buffers: dict[str, tuple[int, int]] = {}  # tensor name -> (device address, capacity in bytes)
        self._inputs: list[str] = []
        self._outputs: list[str] = []

    def activate(self) -> None:
        """Load the engine (see :func:`load_engine`), create its execution context and a CUDA stream."""
        trt = import_tensorrt()
        self._engine = load_engine(self.engine_path)
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise AscError("TensorRT cannot create an execution context (out of GPU memory?)", self.engine_path)
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._stream = _cuda().stream_create()

    def _device_buffer(self, name: str, nbytes: int) -> int:
        address, capacity = self._buffers.get(name, (0, 0))
        if nbytes > capacity:
            if address:
                _cuda().free(address)
            capacity = max(nbytes, _MIN_ALLOCATION)
            address = _cuda().malloc(capacity)
            self._buffers[name] = (address, capacity)
        return address

    def infer(self, feed: dict[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run the engine on ``feed`` (every input by name, any shape inside the profile).

        Returns the requested outputs (all by default) as new numpy arrays, e.g. ``logits`` and
        ``probs`` (batch, classes) float32.
        """
        if self._context is None:
            raise RuntimeError("runner is not active: call activate() or use it as a context manager")
        import tensorrt as trt

        if set(feed) != set(self._inputs):
            raise AscError(f"the engine takes inputs {sorted(self._inputs)}, got {sorted(feed)}", self.engine_path)
        wanted = list(outputs) if outputs else self._outputs
        if not set(wanted) <= set(self._outputs):
            raise AscError(f"the engine has outputs {self._outputs}, asked for {wanted}", self.engine_path)
        cuda, engine, context = _cuda(), self._engine, self._context
        hosts = {name: np.ascontiguousarray(feed[name], dtype=trt.nptype(engine.get_tensor_dtype(name))) for name in self._inputs}
        for name, array in hosts.items():
            if not context.set_input_shape(name, array.shape):
                low, _, high = engine.get_tensor_profile_shape(name, 0)
                raise AscError(f"input {name} of shape {array.shape} is outside the engine's profile "
                               f"({tuple(low)} to {tuple(high)})", self.engine_path)
            address = self._device_buffer(name, array.nbytes)
            cuda.copy_to_device(address, array, self._stream)
            context.set_tensor_address(name, address)
        results = {}
        for name in self._outputs:
            array = np.empty(tuple(context.get_tensor_shape(name)), dtype=trt.nptype(engine.get_tensor_dtype(name)))
            context.set_tensor_address(name, self._device_buffer(name, array.nbytes))
            results[name] = array
        if not context.execute_async_v3(self._stream):
            raise RuntimeError(f"TensorRT execution failed for {self.engine_path} (see its log above)")
        for name in wanted:
            cuda.copy_to_host(results[name], self._buffers[name][0], self._stream)
        cuda.stream_synchronize(self._stream)
        return {name: results[name] for name in wanted}

    def deactivate(self) -> None:
        """Free the device buffers and the stream, release the context and the engine."""
        if self._buffers or self._stream:
            cuda = _cuda()
            if self._stream:
                cuda.stream_synchronize(self._stream)
            for address, _ in self._buffers.values():
                cuda.free(address)
            if self._stream:
                cuda.stream_destroy(self._stream)
        self._buffers, self._stream = {}, 0
        self._context = self._engine = None

    def __enter__(self) -> TensorRTRunner:
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()
