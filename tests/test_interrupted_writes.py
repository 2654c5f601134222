"""Interrupted runs leave the previous output file or a complete new one, never half a file.

asc-predict and asc-export write through :mod:`asc_deploy.atomic`: a hidden temporary file
``.NAME.XXXXXXXX.tmp`` beside the destination, renamed onto it once complete.

* SIGINT (Ctrl-C) raises KeyboardInterrupt; the temporary file is removed on the way out, so the
  folder is exactly as before the run.
* SIGKILL cannot be caught: the destination still holds the previous complete file (or nothing),
  but the partial temporary file stays behind. It is hidden (a leading dot) and named
  ``.NAME.*.tmp``, so it is never mistaken for the output and can be deleted safely.
* SIGTERM is not handled by either command, so it behaves like SIGKILL (leftover ``.tmp``).

The runs are real subprocesses of the installed commands. asc-predict streams its CSV into the
temporary file, so the signal is sent once that file holds data: provably mid-write. asc-export
writes its model in one call at the end; there the child runs the real command with ``onnx.save``
slowed down (half the bytes, a pause, the rest) so that the signal always lands mid-write.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
import soundfile as sf

from asc_deploy.atomic import atomic_open, atomic_path
from asc_deploy.labels import CLASS_LABELS, SAMPLE_RATE
from tests.test_predict_cli import PREDICT, noise, parse_csv

MARKER = "previous complete output\n"
FILES_PER_RUN = 1000  # one short clip, listed many times: far more work than the test waits for


def _default_sigint() -> None:
    # A child inherits an ignored SIGINT (e.g. when pytest runs as a background job) and Python
    # then installs no KeyboardInterrupt handler: restore the default so SIGINT means Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint, env=env)


def _temps(folder: Path, name: str) -> list[Path]:
    return sorted(folder.glob(f".{name}.*.tmp"))


def _wait_for_partial_temp(proc: subprocess.Popen, folder: Path, name: str, timeout: float = 120) -> Path:
    """Poll until the run's temporary file for ``name`` holds data; fail if the run ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        temps = _temps(folder, name)
        if temps and temps[0].stat().st_size > 0:
            return temps[0]
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (exit {proc.returncode}) before it was interrupted: {err[-2000:]}")
        time.sleep(0.01)
    proc.kill()
    proc.communicate()
    pytest.fail(f"no temporary file for {name} after {timeout} s")


def _interrupt(proc: subprocess.Popen, sig: int) -> tuple[int, str]:
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    path = tmp_path / "clip.wav"
    sf.write(path, noise(1.0), SAMPLE_RATE, subtype="PCM_16")
    return path


def _predict_cmd(model: Path, clip: Path) -> list[str]:
    return [*PREDICT, "--model", str(model), *[clip.name] * FILES_PER_RUN, "--output", "out.csv"]


# ---------------------------------------------------------------- asc-predict
@pytest.mark.parametrize("previous", [True, False], ids=["previous-output", "no-output-yet"])
def test_sigint_mid_run_leaves_the_folder_as_it_was(tmp_path: Path, random_model: Path, clip: Path,
                                                    previous: bool) -> None:
    out = tmp_path / "out.csv"
    if previous:
        out.write_text(MARKER)
    before = sorted(p.name for p in tmp_path.iterdir())

    proc = _start(_predict_cmd(random_model, clip), tmp_path)
    partial = _wait_for_partial_temp(proc, tmp_path, "out.csv")
    code, err = _interrupt(proc, signal.SIGINT)

    assert code == 1 and "Aborted!" in err and "Traceback" not in err, err
    assert not partial.exists() and _temps(tmp_path, "out.csv") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert out.read_text() == MARKER if previous else not out.exists()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_kill_mid_run_keeps_the_previous_output(tmp_path: Path, random_model: Path, clip: Path, sig: int) -> None:
    out = tmp_path / "out.csv"
    out.write_text(MARKER)

    proc = _start(_predict_cmd(random_model, clip), tmp_path)
    partial = _wait_for_partial_temp(proc, tmp_path, "out.csv")
    code, _ = _interrupt(proc, sig)

    assert code == -sig
    assert out.read_text() == MARKER  # the previous complete file, untouched
    # Nothing could clean up: the partial file stays, hidden and named .out.csv.*.tmp.
    assert _temps(tmp_path, "out.csv") == [partial]
    assert partial.name.startswith(".out.csv.") and partial.name.endswith(".tmp")
    text = partial.read_text()
    assert text.startswith("filename\tscene_label\t")
    assert text.count("\n") < FILES_PER_RUN + 1  # cut short: it is a partial file

    # The next complete run replaces out.csv; the stale temporary file is not touched (its name
    # is unique), and is safe to delete.
    proc = subprocess.run([*PREDICT, "--model", str(random_model), clip.name, "--output", "out.csv"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    _, rows = parse_csv(out.read_text())
    assert rows[clip.name][1] in CLASS_LABELS
    assert _temps(tmp_path, "out.csv") == [partial]


# ---------------------------------------------------------------- asc-export
# The real asc-export in a child whose onnx.save writes half the file, pauses 60 s, then the rest.
_SLOW_EXPORT = """
import sys, time, onnx
def slow_save(model, path, *args, **kwargs):
    data = model.SerializeToString()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        time.sleep(60)
        f.write(data[len(data) // 2 :])
onnx.save = slow_save
from asc_deploy.export.cli import main
main(sys.argv[1:], prog_name="asc-export")
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_export_interrupted_mid_write_leaves_no_partial_model(tmp_path: Path, random_checkpoint: Path,
                                                               sig: int) -> None:
    model = tmp_path / "model.onnx"
    model.write_text(MARKER)
    scratch = tmp_path / "scratch"  # TMPDIR of the child: the exporter's own temporary folder
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    cmd = [sys.executable, "-c", _SLOW_EXPORT, "--checkpoint", str(random_checkpoint), "--output", "model.onnx"]

    proc = _start(cmd, tmp_path, env)
    partial = _wait_for_partial_temp(proc, tmp_path, "model.onnx", timeout=240)
    code, err = _interrupt(proc, sig)

    assert model.read_text() == MARKER  # never a partial model.onnx
    if sig == signal.SIGINT:
        assert code == 1 and "Aborted!" in err and "Traceback" not in err, err
        assert _temps(tmp_path, "model.onnx") == [] and list(scratch.iterdir()) == []
        assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "scratch"]
    else:
        assert code == -signal.SIGKILL
        assert _temps(tmp_path, "model.onnx") == [partial]  # hidden, named .model.onnx.*.tmp
        with pytest.raises(Exception):  # really half a model
            onnx.load(str(partial))


def test_export_uninterrupted_replaces_the_model(tmp_path: Path, random_checkpoint: Path) -> None:
    """Control for the test above: the same command, not interrupted, writes a complete model."""
    from asc_deploy.export.cli import main
    from click.testing import CliRunner

    (tmp_path / "model.onnx").write_text(MARKER)
    result = CliRunner().invoke(main, ["--checkpoint", str(random_checkpoint), "--output",
                                       str(tmp_path / "model.onnx")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    onnx.checker.check_model(onnx.load(str(tmp_path / "model.onnx")))
    assert _temps(tmp_path, "model.onnx") == []


# ---------------------------------------------------------------- asc_deploy.atomic in process
def test_keyboard_interrupt_inside_atomic_open_removes_the_temp_file(tmp_path: Path) -> None:
    dest = tmp_path / "out.csv"
    dest.write_text(MARKER)
    with pytest.raises(KeyboardInterrupt), atomic_open(dest) as f:
        f.write("half a file")
        raise KeyboardInterrupt
    assert dest.read_text() == MARKER and [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_atomic_writes_get_ordinary_permissions(tmp_path: Path) -> None:
    """mkstemp creates 0600 files: a new output must instead get 0666 less the umask, and a
    replaced one keeps its mode (a model served by another user must stay readable)."""
    umask = os.umask(0o022)
    try:
        with atomic_open(tmp_path / "new.csv") as f:
            f.write("x")
        assert (tmp_path / "new.csv").stat().st_mode & 0o777 == 0o644
        existing = tmp_path / "model.onnx"
        existing.write_text(MARKER)
        existing.chmod(0o640)
        with atomic_path(existing) as tmp:
            tmp.write_text("new")
        assert existing.stat().st_mode & 0o777 == 0o640 and existing.read_text() == "new"
    finally:
        os.umask(umask)
