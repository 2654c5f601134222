"""``asc-serve`` as a child process on free ports: started, waited for, stopped (tests, benchmarks).

The child runs in its own session (process group), so :meth:`ServerProcess.kill` takes down
tritonserver and the Python backend's stub with it, as a crashed or killed container would.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from asc_deploy.errors import AscError
from asc_deploy.triton_model import MODEL_NAME

READY_PATH = f"/v2/models/{MODEL_NAME}/ready"  # the server is ready before PyTriton loads the model


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports that were free on ``host`` a moment ago (held open together
    while the kernel picks them, so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class ServerProcess:
    """``asc-serve --model MODEL`` on ``host`` with ``ports`` (http, grpc, metrics; free ones by
    default) and extra command-line ``args``; its output goes to ``log_path``."""

    def __init__(self, model: str | Path, log_path: str | Path, args: tuple[str, ...] = (), host: str = "127.0.0.1",
                 ports: tuple[int, int, int] | None = None) -> None:
        self.model, self.log_path, self.args, self.host = Path(model), Path(log_path), args, host
        self.http_port, self.grpc_port, self.metrics_port = ports or free_ports(3, host)
        self.process: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "asc_deploy.serve_cli", "--model", str(self.model), "--host", self.host,
                "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
                "--metrics-port", str(self.metrics_port), *self.args]

    def start(self, timeout_s: float = 120.0) -> ServerProcess:
        """Start the server and return once Triton reports the model ready; :class:`AscError`
        with the log's tail if it exits or is not ready within ``timeout_s``."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AscError(f"asc-serve exited with code {self.process.returncode}:\n{self.log_tail()}")
            if self.ready():
                return self
            time.sleep(0.2)
        self.kill()
        raise AscError(f"asc-serve was not ready after {timeout_s:g} s:\n{self.log_tail()}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}{READY_PATH}", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM to asc-serve; its exit code once it and every process it started (tritonserver,
        the stub, PyTriton's helpers) have ended. SIGKILL to the group after ``timeout_s``."""
        assert self.process is not None, "not started"
        self.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        while self.group_alive():
            if time.monotonic() > deadline:
                self.kill()
                raise AscError(f"processes of asc-serve outlived it by {timeout_s:g} s")
            time.sleep(0.1)
        return code

    def kill(self) -> None:
        """SIGKILL to the server's whole process group (asc-serve, tritonserver, the stub)."""
        assert self.process is not None, "not started"
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()

    def group_alive(self) -> bool:
        """Whether any process of the server's group (tritonserver, the stub) is still running."""
        assert self.process is not None, "not started"
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        return True
