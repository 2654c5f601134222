"""onnxruntime behind the runner contract (activate, infer on named arrays, deactivate).

Execution providers are chosen by short names: "cpu", "cuda", "tensorrt". CUDA and TensorRT are
only offered when they really load: a CUDA driver with a device must be present (checked
through libcuda without onnxruntime, which logs loud errors otherwise), then a tiny probe
session must keep the provider.
"""

from __future__ import annotations

import ctypes
import enum
import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asc_deploy.errors import AscError

PROVIDER_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


ORT_FORMAT_IDENTIFIER = b"ORTM"  # flatbuffer file identifier (bytes 4 to 8) of onnxruntime's ORT format


def is_ort_format(path: str | Path) -> bool:
    """True when ``path`` holds an ORT-format model (``asc-export --format ort``), whatever its name."""
    with open(path, "rb") as f:
        return f.read(8)[4:] == ORT_FORMAT_IDENTIFIER


class GraphOptimization(str, enum.Enum):
    """onnxruntime's graph optimisation levels ("all" adds the NCHWc layout for convolutions)."""

    DISABLED = "disabled"
    BASIC = "basic"
    EXTENDED = "extended"
    ALL = "all"


@dataclass(frozen=True)
class SessionConfig:
    """Session options. Defaults suit a small machine: one inter-op thread, intra-op threads =
    physical cores (onnxruntime's own default when 0), full graph optimisation (with the NCHWc
    layout for the convolutions), memory arena on, memory pattern off.

    The memory pattern (onnxruntime's default) pre-plans ONE block for all activations of a call,
    which the arena rounds up to a power of two: for a TTA-30 call on a 10 s clip the process
    peaked at 2.3 GB with it and 1.2 GB without it, for a single pass 163 MB and 128 MB, at the
    same latency (the arena still recycles the freed blocks between calls).

    ``allow_spinning``: whether idle intra-op threads spin-wait for the next op instead of
    sleeping (onnxruntime's default: on). Between the many small ops of one call, waking sleeping
    threads costs more than spinning: on a 2-core VM, single-pass graphs ran ~8 % faster spinning,
    and the CPU schedule's looped TTA-30 (10 s clip) 4.5 % faster (medians 191 against 200 ms,
    faster in 13 of 14 interleaved sessions). Turn it off when other busy processes or sessions
    share the cores: spinning threads take CPU time from them.
    """

    intra_op_threads: int = 0
    graph_optimization: GraphOptimization | str = GraphOptimization.ALL  # a member or its value
    enable_memory_arena: bool = True
    enable_memory_pattern: bool = False
    allow_spinning: bool = True

    def __post_init__(self) -> None:
        """Reject bad values when the config is made (ValueError), not when a session starts."""
        try:
            object.__setattr__(self, "graph_optimization", GraphOptimization(self.graph_optimization))
        except ValueError:
            raise ValueError(f"graph_optimization must be one of {[g.value for g in GraphOptimization]}, "
                             f"got {self.graph_optimization!r}") from None
        if self.intra_op_threads < 0:
            raise ValueError(f"intra_op_threads must be >= 0, got {self.intra_op_threads}")

    def session_options(self):
        """onnxruntime SessionOptions with these settings."""
        import onnxruntime as ort

        levels = {
            GraphOptimization.DISABLED: ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            GraphOptimization.BASIC: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            GraphOptimization.EXTENDED: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            GraphOptimization.ALL: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        options = ort.SessionOptions()
        options.graph_optimization_level = levels[self.graph_optimization]
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = 1
        options.enable_cpu_mem_arena = self.enable_memory_arena
        options.enable_mem_pattern = self.enable_memory_pattern
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.allow_spinning else "0")
        return options


def cuda_device_count() -> int:
    """CUDA devices visible through the driver (0 without a driver), without loading onnxruntime's CUDA code."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if libcuda.cuInit(0) != 0 or libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


@functools.lru_cache(maxsize=None)
def provider_status(name: str) -> tuple[bool, str]:
    """(usable, reason) for a provider short name, probed once per process."""
    import onnxruntime as ort

    if name not in PROVIDER_NAMES:
        return False, f"unknown provider {name!r} (choose from {', '.join(PROVIDER_NAMES)})"
    full = PROVIDER_NAMES[name]
    if full not in ort.get_available_providers():
        return False, f"{full} is not in this onnxruntime build"
    if name == "cpu":
        return True, ""
    if cuda_device_count() == 0:
        return False, "no CUDA GPU found"
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=[full, "CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - any failure means the provider does not load
        return False, f"{full} failed to load ({str(err).splitlines()[0]})"
    if full not in session.get_providers():
        return False, f"{full} did not load (CUDA/cuDNN libraries missing?)"
    return True, ""


class OnnxRuntimeRunner:
    """Runs an ONNX or ORT-format file with onnxruntime. ``with OnnxRuntimeRunner(path) as r: r.infer({...})``."""

    def __init__(self, model_path: str | Path, provider: str = "cpu", config: SessionConfig = SessionConfig()) -> None:
        self.model_path, self.provider, self.config = Path(model_path), provider, config
        self.name = f"onnxruntime-{provider}"
        self.session = None

    def activate(self) -> None:
        import onnxruntime as ort

        usable, reason = provider_status(self.provider)
        if not usable:
            raise AscError(f"onnxruntime provider {self.provider!r} cannot run here: {reason}", self.model_path)
        providers = [PROVIDER_NAMES[self.provider]] + (["CPUExecutionProvider"] if self.provider != "cpu" else [])
        options = self.config.session_options()
        if is_ort_format(self.model_path):  # onnxruntime itself goes by the file name's .ort suffix
            options.add_session_config_entry("session.load_model_format", "ORT")
        try:
            self.session = ort.InferenceSession(os.fspath(self.model_path), options, providers=providers)
        except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph types
            raise AscError(f"onnxruntime cannot load the model ({str(err).splitlines()[0]})", self.model_path) from err

    def infer(self, feed: dict[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        if self.session is None:
            raise RuntimeError("runner is not active: call activate() or use it as a context manager")
        names = list(outputs) if outputs else [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, feed)))

    def deactivate(self) -> None:
        self.session = None

    def __enter__(self) -> OnnxRuntimeRunner:
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()
