"""asc-serve's and asc-predict --server's refusals (no server started), the stub's library path,
the client's URL parsing and missing extras."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import sysconfig
import time

import pytest
from click.testing import CliRunner

from asc_deploy import extras
from asc_deploy import serve as serve_module
from asc_deploy.client import TritonClassifier, parse_url
from asc_deploy.errors import AscError
from asc_deploy.predict_cli import main as predict_main
from asc_deploy.serve import python_library_dir, stub_environment
from asc_deploy.serve_cli import main as serve_main
from asc_deploy.serve_process import free_ports


def one_line_error(result, command: str = "asc-serve") -> str:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{command}: error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_port_taken(random_model):
    http_port, grpc_port, metrics_port = free_ports(3)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", grpc_port))
        taken.listen()
        started = time.monotonic()
        result = CliRunner().invoke(serve_main, ["--model", str(random_model), "--http-port", str(http_port),
                                                 "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port)])
    assert one_line_error(result) == f"asc-serve: error: grpc port {grpc_port} on 127.0.0.1 is already in use"
    assert time.monotonic() - started < 10  # refused before starting Triton


@pytest.mark.parametrize("content, problem", [(None, "no such model file"), (b"not onnx", "not a valid ONNX model")])
def test_bad_model(tmp_path, content, problem):
    path = tmp_path / "model.onnx"
    if content is not None:
        path.write_bytes(content)
    result = CliRunner().invoke(serve_main, ["--model", str(path)])
    assert problem in one_line_error(result) and str(path) in result.output


def test_same_port_twice_refused(random_model):
    result = CliRunner().invoke(serve_main, ["--model", str(random_model), "--http-port", "9000", "--grpc-port", "9000"])
    assert "ports must differ" in one_line_error(result)


def hide(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Pretend that the given distributions are not installed."""
    real = extras._installed
    monkeypatch.setattr(extras, "_installed", lambda name: name not in names and real(name))


def test_missing_serve_extra_named_before_any_work(monkeypatch, tmp_path):
    hide(monkeypatch, "nvidia-pytriton")
    result = CliRunner().invoke(serve_main, ["--model", str(tmp_path / "absent.onnx")])  # model not looked at
    assert one_line_error(result) == ("asc-serve: error: asc-serve needs the optional extra serve (nvidia-pytriton not "
                                      "installed): pip install -c constraints.txt 'asc-deploy[serve]'")


def test_missing_client_extra(monkeypatch):
    hide(monkeypatch, "tritonclient")
    with pytest.raises(AscError, match=re.escape("pip install -c constraints.txt 'asc-deploy[client]'")):
        TritonClassifier("http://127.0.0.1:1")


def test_stub_environment_puts_this_interpreters_libpython_first():
    libdir = python_library_dir()
    assert (libdir / f"libpython{sysconfig.get_config_var('LDVERSION')}.so.1.0").is_file()
    env = stub_environment({"LD_LIBRARY_PATH": f"/opt/x:{libdir}", "PATH": "/bin"})
    assert env["LD_LIBRARY_PATH"] == f"{libdir}:/opt/x" and env["PATH"] == "/bin"
    assert stub_environment({})["LD_LIBRARY_PATH"] == str(libdir)


def test_interpreter_without_shared_libpython_refused(monkeypatch, tmp_path):
    real = sysconfig.get_config_var
    monkeypatch.setattr(serve_module.sysconfig, "get_config_var", lambda name: str(tmp_path) if name == "LIBDIR" else real(name))
    with pytest.raises(AscError, match="enable-shared"):
        python_library_dir()


@pytest.mark.parametrize("url, expected", [
    ("http://127.0.0.1:8000", ("http", "127.0.0.1:8000")),
    ("localhost:8000", ("http", "localhost:8000")),
    ("grpc://[::1]:8001", ("grpc", "[::1]:8001")),
])
def test_parse_url(url, expected):
    assert parse_url(url) == expected


@pytest.mark.parametrize("url", ["ftp://h:1", "http://h", "http://h:99999", "http://h:80/v2"])
def test_parse_url_refuses(url):
    with pytest.raises(AscError, match="bad server URL"):
        parse_url(url)


def test_predict_server_unreachable(tmp_path):
    (port,) = free_ports(1)
    result = CliRunner().invoke(predict_main, ["--server", f"http://127.0.0.1:{port}", str(tmp_path / "a.wav")])
    assert f"server http://127.0.0.1:{port}: " in one_line_error(result, "asc-predict")


@pytest.mark.parametrize("args, problem", [
    ([], "either --model or --server"),
    (["--model", "m.onnx", "--server", "http://h:1"], "either --model or --server"),
    (["--server", "http://h:1", "--tta-passes", "4"], "--tta-passes"),
    (["--model", "m.onnx", "--timeout", "3"], "--timeout only applies with --server"),
])
def test_predict_bad_combinations(args, problem):
    result = CliRunner().invoke(predict_main, [*args, "a.wav"])
    assert result.exit_code == 2 and problem in result.output


def test_serving_modules_import_without_torch():
    code = ("import sys, asc_deploy.serve, asc_deploy.serve_cli, asc_deploy.client, asc_deploy.serve_process; "
            "assert 'torch' not in sys.modules and 'pytriton' not in sys.modules and 'tritonclient' not in sys.modules")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0
