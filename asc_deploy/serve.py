"""``asc-serve``'s server: a :class:`~asc_deploy.runtime.Classifier` behind Triton Inference
Server, through PyTriton (the ``serve`` extra; imported lazily).

The model is served under :data:`~asc_deploy.triton_model.MODEL_NAME` with the contract of
:mod:`asc_deploy.triton_model` (the one ``asc-export --format triton`` writes): input
``waveform`` FP32 (batch, samples), samples variable (at least 1 s at 44.1 kHz); outputs
``logits`` and ``probs`` FP32 (batch, classes) for a single-pass model, ``probs`` only for a TTA
model; the labels as the JSON model config parameter ``labels``. Triton's dynamic batcher merges
concurrent requests of the same length into one call of the classifier (up to
``max_batch_size`` clips, waiting at most ``max_queue_delay_us``); requests of other lengths wait
for their own batch. Health (``/v2/health/live``, ``/v2/health/ready``), statistics and Prometheus
metrics are Triton's own.

The interpreter the Python backend's stub embeds
    PyTriton's ``triton_python_backend_stub`` (one per Python minor version) is dynamically linked
    to ``libpython3.X.so.1.0`` and finds its standard library through the ``python3`` that PyTriton
    puts first on ``PATH`` (this environment's). The dynamic loader takes the first
    ``libpython3.X.so.1.0`` on its search path: on Debian that is the system's
    (``/usr/lib/x86_64-linux-gnu``, 3.11.2) even when the server runs under another 3.11
    (pyenv's 3.11.7, whose ``lib`` is not on the loader's path). The stub then runs 3.11.2's
    built-in modules against 3.11.7's standard library, and fails as soon as the library uses
    something newer than the built-ins (``'_thread.RLock' object has no attribute
    '_recursion_count'``, added in 3.11.6). :func:`stub_environment` puts this interpreter's own
    library folder first on ``LD_LIBRARY_PATH``, so the stub embeds exactly the interpreter whose
    standard library it reads, and refuses an interpreter built without a shared libpython.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asc_deploy.audio import MIN_SAMPLES
from asc_deploy.errors import AscError
from asc_deploy.extras import require_extras
from asc_deploy.labels import SAMPLE_RATE
from asc_deploy.metadata import INPUT_WAVEFORM
from asc_deploy.runtime import Classifier
from asc_deploy.triton_model import LABELS_PARAMETER, MAX_QUEUE_DELAY_US, MODEL_NAME, preferred_batch_sizes

SERVE_EXTRA = "serve"
# Endpoints that change the server (PyTriton guards them with a generated token); statistics,
# health, metadata and inference stay open, as on a stock Triton serving the exported repository.
RESTRICTED_ENDPOINTS = ("shared-memory", "model-repository", "trace", "logging")
MONITOR_PERIOD_S = 1.0  # how often the serving loop checks that Triton and the model are alive


@dataclass(frozen=True)
class ServerConfig:
    """Where and how the server listens. Ports are TCP ports on ``host``; ``exit_timeout_s`` is how
    long a stopping server waits for requests in flight (seconds)."""

    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch_size: int = 32
    max_queue_delay_us: int = MAX_QUEUE_DELAY_US
    exit_timeout_s: int = 5

    def __post_init__(self) -> None:
        ports = {"http": self.http_port, "grpc": self.grpc_port, "metrics": self.metrics_port}
        for name, port in ports.items():
            if not 1 <= port <= 65535:
                raise AscError(f"--{name}-port must be in 1..65535, got {port}")
        if len(set(ports.values())) < len(ports):
            raise AscError(f"the http, grpc and metrics ports must differ, got {ports}")
        if self.max_batch_size < 1:
            raise AscError(f"--max-batch-size must be >= 1, got {self.max_batch_size}")
        if self.max_queue_delay_us < 0:
            raise AscError(f"--max-queue-delay-us must be >= 0, got {self.max_queue_delay_us}")

    @property
    def ports(self) -> dict[str, int]:
        return {"http": self.http_port, "grpc": self.grpc_port, "metrics": self.metrics_port}


def python_library_dir() -> Path:
    """The folder holding this interpreter's own ``libpython3.X.so.1.0`` (the soname PyTriton's
    stub links to); :class:`AscError` for an interpreter built without a shared libpython."""
    soname = f"libpython{sysconfig.get_config_var('LDVERSION')}.so.1.0"
    libdir = Path(sysconfig.get_config_var("LIBDIR") or "")
    if not (libdir / soname).is_file():
        raise AscError(
            f"this Python ({sysconfig.get_config_var('prefix')}) has no shared library {soname} in {libdir}: "
            "the Triton Python backend stub would embed another Python whose built-in modules do not match this "
            "standard library. Use a Python built with --enable-shared (pyenv: "
            "PYTHON_CONFIGURE_OPTS=--enable-shared pyenv install 3.11) or the system python3"
        )
    return libdir


def stub_environment(environ: dict[str, str]) -> dict[str, str]:
    """``environ`` with this interpreter's library folder first on ``LD_LIBRARY_PATH`` (see the
    module docstring)."""
    libdir = str(python_library_dir())
    rest = [p for p in environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p and p != libdir]
    return {**environ, "LD_LIBRARY_PATH": os.pathsep.join([libdir, *rest])}


def check_ports_free(config: ServerConfig) -> None:
    """Refuse (:class:`AscError`) a port something already listens on, before starting Triton
    (whose own failure would surface after its start-up timeout)."""
    for name, port in config.ports.items():
        with socket.socket(socket.AF_INET6 if ":" in config.host else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no conflict
            try:
                sock.bind((config.host, port))
            except OSError as err:
                reason = "is already in use" if err.errno == errno.EADDRINUSE else f"cannot be bound ({err.strerror})"
                raise AscError(f"{name} port {port} on {config.host} {reason}") from err


def infer_function(classifier: Classifier) -> Callable[..., dict[str, np.ndarray]]:
    """PyTriton's inference callable: a batch of same-length waveforms -> the classifier's outputs."""
    from pytriton.decorators import batch

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        waveforms = inputs[INPUT_WAVEFORM]
        if waveforms.shape[1] < MIN_SAMPLES:
            raise AscError(f"waveform too short: {waveforms.shape[1]} samples, need at least {MIN_SAMPLES} "
                           f"({MIN_SAMPLES / SAMPLE_RATE:g} s at {SAMPLE_RATE} Hz)")
        return classifier.infer(waveforms)

    return infer


def _add_model_parameter(triton: object, key: str, value: str) -> None:
    """Add a string parameter to the config of the model bound to ``triton`` before it starts.

    PyTriton 0.7 has no public API for model config parameters: its model keeps the config it
    writes to the model store in ``_get_triton_model_config()`` (cached), whose
    ``backend_parameters`` become the config's ``parameters`` (next to PyTriton's own
    ``workspace-path``). Tested in tests/test_serve.py, which reads the parameter back from the server.
    """
    (model,) = triton._model_manager.models  # type: ignore[attr-defined]
    model._get_triton_model_config().backend_parameters[key] = value


def _stop_on_signal(signum: int, frame: object) -> None:
    """SIGTERM/SIGINT: ignore further signals and unwind into PyTriton's orderly stop."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def serve(classifier: Classifier, config: ServerConfig, on_ready: Callable[[], None] = lambda: None) -> bool:
    """Serve ``classifier`` until SIGTERM or SIGINT (returns True) or until Triton dies (False).

    Raises :class:`AscError` when PyTriton is missing, a port is taken or the interpreter cannot
    host the Python backend's stub; ``on_ready`` runs once the model is loaded and ready.
    """
    require_extras("asc-serve", SERVE_EXTRA)
    check_ports_free(config)
    os.environ.update(stub_environment(dict(os.environ)))  # PyTriton starts tritonserver with os.environ
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    triton_config = TritonConfig(
        http_address=config.host, http_port=config.http_port, grpc_address=config.host, grpc_port=config.grpc_port,
        metrics_address=config.host, metrics_port=config.metrics_port, exit_timeout_secs=config.exit_timeout_s,
        allow_gpu_metrics=False,
    )
    classes = len(classifier.labels)
    model_config = ModelConfig(
        max_batch_size=config.max_batch_size,
        batcher=DynamicBatcher(max_queue_delay_microseconds=config.max_queue_delay_us,
                               preferred_batch_size=preferred_batch_sizes(config.max_batch_size)),
    )
    previous = {sig: signal.signal(sig, _stop_on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    # Not Triton's context manager: it starts the server on entry, and bind() would then load the
    # model before its parameters are complete.
    triton = Triton(config=triton_config, security_config=TritonSecurityConfig(restricted_endpoints=list(RESTRICTED_ENDPOINTS)))
    try:
        triton.bind(
            model_name=MODEL_NAME,
            infer_func=infer_function(classifier),
            inputs=[Tensor(name=INPUT_WAVEFORM, dtype=np.float32, shape=(-1,))],
            outputs=[Tensor(name=name, dtype=np.float32, shape=(classes,)) for name in classifier.output_names],
            config=model_config,
            strict=True,
        )
        _add_model_parameter(triton, LABELS_PARAMETER, json.dumps(list(classifier.labels)))
        triton.run()  # starts tritonserver, loads the model, waits until it is ready
        on_ready()
        while triton.is_alive():
            time.sleep(MONITOR_PERIOD_S)  # the signal handler's KeyboardInterrupt lands here
        return False
    except KeyboardInterrupt:
        return True
    finally:
        triton.stop()  # waits up to exit_timeout_s for requests in flight
        for sig, handler in previous.items():
            signal.signal(sig, handler)
