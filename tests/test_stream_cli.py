"""asc-stream: files and raw PCM on stdin, text and JSON lines, atomic and followed output, and
the ways a stream ends (closed pipe, interrupt, NaN, a stream ending inside a frame)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from asc_deploy.runtime import Classifier
from tests.test_streaming import TOLERANCE, signal as make_signal

STREAM = [sys.executable, "-m", "asc_deploy.stream_cli"]


def run(args, data: bytes | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(STREAM + [str(a) for a in args], input=data, capture_output=True, timeout=120, **kwargs)


def json_lines(text: bytes) -> list[dict]:
    return [json.loads(line) for line in text.decode().splitlines()]


@pytest.fixture(scope="module")
def wave() -> np.ndarray:
    return make_signal(3.3, 11) * 0.3


def test_file_and_stdin_give_the_offline_probabilities(stream_model, wave, tmp_path):
    model = stream_model()
    path = tmp_path / "clip.wav"
    sf.write(path, wave, 44_100, subtype="FLOAT")
    from_file = run(["--model", model, path, "--json"])
    assert from_file.returncode == 0, from_file.stderr
    rows = json_lines(from_file.stdout)
    assert [(r["start"], r["end"]) for r in rows] == [(0.0, 1.0), (0.0, 2.114558), (0.0, 3.229116), (0.0, 3.3)]
    offline = Classifier(model)
    for r in rows:
        expected = offline.probabilities(wave[None, : round(r["end"] * 44_100)])[0]
        assert np.abs(np.array(list(r["probs"].values())) - expected).max() <= TOLERANCE
        assert r["label"] == max(r["probs"], key=r["probs"].get) and r["flags"] == []
    stderr = from_file.stderr.decode()
    assert "4 predictions over 3.3 s of audio" in stderr and "p50" in stderr and "p95" in stderr and "real-time factor" in stderr
    piped = run(["--model", model, "-", "--json"], wave.astype("<f4").tobytes())
    assert piped.returncode == 0 and json_lines(piped.stdout) == rows
    # 16-bit stereo at 48 kHz on stdin: resampled by the streaming front; a silent channel is flagged
    stereo = np.stack([wave, np.zeros_like(wave)], axis=1)
    pcm = (np.clip(stereo[: 3 * 48_000], -1, 1) * 32767).astype("<i2").tobytes()
    text = run(["--model", model, "-", "--format", "s16le", "--rate", 48_000, "--channels", 2], pcm)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.decode().splitlines()
    assert lines[0] == "start\tend\tlabel\tprob\tflags"
    assert len(lines) == 1 + 3 and all(line.split("\t")[4] == "dead_channel" for line in lines[1:])


def test_output_is_atomic_or_followed(stream_model, wave, tmp_path):
    model, out = stream_model(), tmp_path / "out.jsonl"
    pcm = wave.astype("<f4").tobytes()
    assert run(["--model", model, "-", "--json", "--output", out], pcm).returncode == 0
    followed = tmp_path / "followed.jsonl"
    assert run(["--model", model, "-", "--json", "--output", followed, "--follow"], pcm).returncode == 0
    assert out.read_text() == followed.read_text() and len(out.read_text().splitlines()) == 4
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("fault,code,message", [
    ("nan", 1, "NaN or infinite samples in the stream at 2.500 s"),
    ("mid-frame", 1, "the stream ended inside a frame (3 bytes left over"),
])
def test_bad_streams_end_cleanly_and_keep_earlier_output(stream_model, wave, tmp_path, fault, code, message):
    samples = wave.copy()
    if fault == "nan":
        samples[round(2.5 * 44_100)] = np.nan
    data = samples.astype("<f4").tobytes() + (b"\x00\x00\x00" if fault == "mid-frame" else b"")
    out = tmp_path / "out.jsonl"
    result = run(["--model", stream_model(), "-", "--json", "--output", out], data)
    stderr = result.stderr.decode()
    assert result.returncode == code and message in stderr and "Traceback" not in stderr
    rows = json_lines(out.read_bytes())  # the file is complete and valid up to the fault
    assert len(rows) == (2 if fault == "nan" else 3)


def test_closed_pipe_ends_quietly(stream_model, wave):
    data = np.tile(wave, 3).astype("<f4").tobytes()
    reader = subprocess.Popen(STREAM + ["--model", str(stream_model()), "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    reader.stdin.write(data)
    reader.stdin.close()
    header = reader.stdout.readline()
    reader.stdout.close()  # the consumer goes away (as `| head -1` does)
    stderr = reader.stderr.read().decode()
    assert reader.wait(timeout=120) == 141, stderr
    assert header.startswith(b"start") and "output closed (broken pipe)" in stderr and "Traceback" not in stderr


def test_interrupt_completes_the_output(stream_model, tmp_path):
    path, out = tmp_path / "long.wav", tmp_path / "out.jsonl"
    sf.write(path, make_signal(30.0, 3) * 0.3, 44_100)
    process = subprocess.Popen(STREAM + ["--model", str(stream_model()), str(path), "--realtime", "--json", "--output", str(out)],
                               stderr=subprocess.PIPE)
    time.sleep(6.0)  # model load, then a few predictions in real time
    process.send_signal(signal.SIGINT)
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 130, stderr
    assert "interrupted; stopped after" in stderr and "Traceback" not in stderr
    rows = json_lines(out.read_bytes())
    assert rows and rows[0]["end"] == 1.0 and rows[-1]["end"] < 30


def test_option_errors(stream_model, tmp_path):
    result = run(["--model", stream_model(), tmp_path / "missing.wav"])
    assert result.returncode == 1 and "missing.wav: no such file" in result.stderr.decode()
    result = run(["--model", stream_model(), "-", "--follow"], b"")
    assert result.returncode == 1 and "--follow needs --output" in result.stderr.decode()
