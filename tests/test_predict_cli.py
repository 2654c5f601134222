"""``asc-predict`` at the command level (issue 7): bad inputs, ``--strict``, API/CLI agreement,
fuzzing, and a one-hour file streamed in bounded memory.

Every test runs without ../shared: the model is a randomly initialised Cnn6 exported once per
session (:func:`random_model`). Its probabilities are close to uniform, which is enough to check
plumbing, error handling and agreement; the API/CLI agreement test also runs on the official "ce"
checkpoint where ../shared is present.

The helpers here (random model/checkpoint, CLI command lines, peak RSS of a child) are imported by
tests/test_interrupted_writes.py and tests/test_many_files.py.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from asc_deploy.audio import MIN_SAMPLES, load_audio
from asc_deploy.errors import AscError
from asc_deploy.labels import CLASS_LABELS, CLIP_SAMPLES, SAMPLE_RATE
from asc_deploy.predict_cli import main
from asc_deploy.runtime import Classifier

RNG_SEED = 20240607
FIXTURE_REUSED = HealthCheck.function_scoped_fixture  # tmp_path: each example overwrites its file


# ---------------------------------------------------------------- shared helpers
def cli_command(script: str, module: str) -> list[str]:
    """The installed console script beside this interpreter, else ``python -m module``."""
    path = Path(sys.executable).with_name(script)
    return [str(path)] if path.exists() else [sys.executable, "-m", module]


PREDICT = cli_command("asc-predict", "asc_deploy.predict_cli")
EXPORT = cli_command("asc-export", "asc_deploy.export.cli")


def run_measured(cmd: list[str], cwd: Path, timeout: float = 300) -> tuple[int, str, str, int]:
    """Run ``cmd``; return (exit code, stdout, stderr, the child's peak RSS in bytes).

    The peak RSS is the child's own ``ru_maxrss``, from ``os.wait4`` on its pid: the same number
    ``resource.getrusage(RUSAGE_CHILDREN)`` reports, but for this child alone (RUSAGE_CHILDREN
    is the maximum over every child the test process has waited for).
    """
    out_path, err_path = cwd / ".stdout.txt", cwd / ".stderr.txt"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=err)
        try:
            _, status, usage = _wait4(proc.pid, timeout)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = out_path.read_text(), err_path.read_text()
    out_path.unlink()
    err_path.unlink()
    return proc.returncode, stdout, stderr, usage.ru_maxrss * 1024  # Linux reports KiB


def _wait4(pid: int, timeout: float):
    import time

    deadline = time.monotonic() + timeout
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            return done, status, usage
        if time.monotonic() > deadline:
            raise TimeoutError(f"{pid} still running after {timeout} s")
        time.sleep(0.05)


def noise(seconds: float, rate: int = SAMPLE_RATE, channels: int = 1, seed: int = RNG_SEED) -> np.ndarray:
    """Deterministic white noise of amplitude ~0.1, float32 ``(frames, channels)``."""
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal((round(seconds * rate), channels))).astype(np.float32)


def write_near_silent_hour_flac(path: Path, rate: int = SAMPLE_RATE) -> Path:
    """One hour of 16-bit FLAC, written a minute at a time: sparse +-1 LSB clicks in silence
    (the generation approach of tests/test_audio.py's one-hour streaming test)."""
    rng = np.random.default_rng(RNG_SEED)
    with sf.SoundFile(path, "w", rate, 1, "PCM_16", format="FLAC") as f:
        for _ in range(60):
            minute = np.zeros(60 * rate, np.int16)
            minute[rng.random(60 * rate) < 1e-4] = 1
            f.write(minute)
    return path


def parse_csv(text: str) -> tuple[list[str], dict[str, list[str]]]:
    """asc-predict's tab-separated output -> (header, {filename: row})."""
    rows = list(csv.reader(io.StringIO(text), delimiter="\t"))
    assert rows, "no output"
    return rows[0], {row[0]: row for row in rows[1:]}


def _invoke(args: list[str]):
    """Run asc-predict in this process; any exception other than SystemExit fails the test."""
    return CliRunner().invoke(main, args, catch_exceptions=False)


def _assert_distribution(probs: list[float] | np.ndarray, atol: float = 1e-5) -> None:
    probs = np.asarray(probs, np.float64)
    assert probs.shape == (len(CLASS_LABELS),)
    assert np.isfinite(probs).all() and (probs >= 0).all() and (probs <= 1).all(), probs
    assert abs(probs.sum() - 1.0) <= atol, probs.sum()


# ---------------------------------------------------------------- bad (and good) inputs, table-driven
@dataclass(frozen=True)
class Case:
    """One command line. ``make(tmp, model)`` writes its inputs and returns the arguments.

    expect:
        "row"   a file that fails: exit 1, an error row naming ``culprit`` and ``keyword``, and the
                good file beside it still classified;
        "ok"    a file that must succeed: exit 0, probabilities, ``windows`` windows;
        "fatal" the run cannot start: exit 1, one stderr line naming ``culprit`` and ``keyword``;
        "usage" click refuses the command line: exit 2 naming ``keyword``.
    """

    make: Callable[[Path, Path], list[str]]
    expect: str
    keyword: str = ""
    culprit: str = ""
    windows: int = 1


def _file(name: str, write: Callable[[Path], object]) -> Callable[[Path, Path], list[str]]:
    def make(tmp: Path, model: Path) -> list[str]:
        write(tmp / name)
        return ["--model", str(model), str(tmp / name)]

    return make


def _row(name: str, write: Callable[[Path], object], keyword: str) -> Case:
    return Case(_file(name, write), "row", keyword, name)


def _ok(name: str, write: Callable[[Path], object], windows: int = 1) -> Case:
    return Case(_file(name, write), "ok", windows=windows)


def _sf(data: np.ndarray, rate: int = SAMPLE_RATE, **kwargs: str) -> Callable[[Path], None]:
    return lambda path: sf.write(path, data, rate, **kwargs)


def _float_wav_with(value: float) -> Callable[[Path], None]:
    data = noise(2.0)
    data[30_000] = value
    return _sf(data, subtype="FLOAT")


def _cut(fmt: str, keep: float) -> Callable[[Path], None]:
    """A 3 s stereo file of format ``fmt`` cut to the first ``keep`` fraction of its bytes."""

    def write(path: Path) -> None:
        sf.write(path, noise(3.0, channels=2), SAMPLE_RATE, format=fmt, subtype="PCM_16")
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])

    return write


def _flac_without_length(path: Path) -> None:
    """A FLAC whose STREAMINFO total-samples field is 0, as streaming encoders write it."""
    sf.write(path, noise(2.0), SAMPLE_RATE, format="FLAC")
    data = bytearray(path.read_bytes())
    data[21] &= 0xF0
    data[22:26] = bytes(4)
    path.write_bytes(bytes(data))


def _sine_pcm(freqs: tuple[float, ...], seconds: float, rate: int, amp: float, dtype=np.int16) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    chans = np.stack([amp * np.sin(2 * np.pi * f * t) for f in freqs], axis=1)
    return np.round(chans * (np.iinfo(dtype).max if dtype != np.float32 else 1)).astype(dtype)


def _model_case(make_model: Callable[[Path, Path], Path], keyword: str, culprit: str) -> Case:
    """A run whose --model is made by ``make_model(tmp, good_model)``; the audio file is fine."""

    def make(tmp: Path, model: Path) -> list[str]:
        sf.write(tmp / "ok.wav", noise(1.5), SAMPLE_RATE)
        return ["--model", str(make_model(tmp, model)), str(tmp / "ok.wav")]

    return Case(make, "fatal", keyword, culprit)


def _option_case(options: list[str], expect: str, keyword: str, culprit: str = "") -> Case:
    def make(tmp: Path, model: Path) -> list[str]:
        sf.write(tmp / "ok.wav", noise(1.5), SAMPLE_RATE)
        return ["--model", str(model), str(tmp / "ok.wav"), *options]

    return Case(make, expect, keyword, culprit)


def _write_bytes(name: str, data: bytes | Callable[[Path], bytes]) -> Callable[[Path, Path], Path]:
    def make(tmp: Path, model: Path) -> Path:
        (tmp / name).write_bytes(data(model) if callable(data) else data)
        return tmp / name

    return make


def _onnx_variant(name: str, edit: Callable[[object], object]) -> Callable[[Path, Path], Path]:
    """An ONNX file made by ``edit(ModelProto of the good model)``."""

    def make(tmp: Path, model: Path) -> Path:
        import onnx

        onnx.save(edit(onnx.load(str(model))), str(tmp / name))
        return tmp / name

    return make


def _without_metadata(model):
    del model.metadata_props[:]
    return model


def _with_bad_variant(model):
    for prop in model.metadata_props:
        if prop.key == "variant":
            prop.value = "xyz"
    return model


def _metadata_on_foreign_graph(model):
    """A one-Relu graph carrying a genuine asc-deploy metadata block."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "foreign",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    foreign = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=model.ir_version)
    helper.set_model_props(foreign, {p.key: p.value for p in model.metadata_props})
    return foreign


def _missing_model(tmp: Path, model: Path) -> Path:
    return tmp / "nowhere.onnx"


def _model_dir(tmp: Path, model: Path) -> Path:
    (tmp / "models.onnx").mkdir()
    return tmp / "models.onnx"


def _wav_as_model(tmp: Path, model: Path) -> Path:
    sf.write(tmp / "m.wav", noise(1.0), SAMPLE_RATE)
    return tmp / "m.wav"


def _output_under_a_file(tmp: Path, model: Path) -> list[str]:
    sf.write(tmp / "ok.wav", noise(1.5), SAMPLE_RATE)
    (tmp / "results").write_text("a file, not a folder\n")
    return ["--model", str(model), str(tmp / "ok.wav"), "--output", str(tmp / "results" / "out.csv")]


def _output_is_a_dir(tmp: Path, model: Path) -> list[str]:
    sf.write(tmp / "ok.wav", noise(1.5), SAMPLE_RATE)
    return ["--model", str(model), str(tmp / "ok.wav"), "--output", str(tmp)]


NOT_AUDIO = "not a readable audio"
NOT_ONNX = "not a valid ONNX model"
CASES: dict[str, Case] = {
    # A file that fails becomes an error row; the run goes on.
    "missing-file": _row("absent.wav", lambda p: None, "no such file"),
    "directory": _row("folder.wav", lambda p: p.mkdir(), "directory"),
    "empty-file": _row("empty.wav", lambda p: p.write_bytes(b""), "empty"),
    "named-pipe": _row("live.wav", os.mkfifo, "not a regular file (a named pipe)"),
    "device-file": _row("null.wav", lambda p: p.symlink_to("/dev/null"), "not a regular file (a character device)"),
    "truncated-wav": _row("cut.wav", _cut("WAV", 0.6), "truncated"),
    "truncated-flac": _row("cut.flac", _cut("FLAC", 0.7), "truncated"),
    "not-audio-text": _row("notes.wav", lambda p: p.write_text("hello, not audio\n" * 50), NOT_AUDIO),
    "not-audio-bytes": _row("ramp.flac", lambda p: p.write_bytes(bytes(range(256)) * 40), NOT_AUDIO),
    "header-only-wav": _row("header.wav", _sf(np.zeros((0, 1), np.int16)), "0 samples"),
    "flac-unknown-length": _row("stream.flac", _flac_without_length, "no length"),
    "nan-wav": _row("nan.wav", _float_wav_with(np.nan), "NaN"),
    "inf-wav": _row("inf.wav", _float_wav_with(np.inf), "infinite"),
    "half-second": _row("short.wav", _sf(noise(0.5)), "too short"),
    "half-second-8k": _row("short8k.wav", _sf(noise(0.5, 8000), 8000), "too short"),
    # Finite float PCM far beyond [-1, 1] overflowed the power spectrum: NaN probabilities.
    "huge-float-wav": _row("loud.wav", _sf(np.full((2 * SAMPLE_RATE, 1), 1e20, np.float32), subtype="FLOAT"),
                           "non-finite probabilities"),
    # Files that must succeed.
    "8k-stereo-int16": _ok("stereo8k.wav", _sf(_sine_pcm((440.0, 1000.0), 3.0, 8000, 0.4), 8000, subtype="PCM_16")),
    "96k-24bit": _ok("hi.wav", _sf(_sine_pcm((1000.0,), 2.0, 96_000, 0.5, np.float32), 96_000, subtype="PCM_24")),
    "exactly-1s-48k": _ok("one.wav", _sf(noise(1.0, 48_000), 48_000)),
    "ogg-vorbis": _ok("clip.ogg", _sf(noise(2.0, 48_000), 48_000, format="OGG", subtype="VORBIS")),
    "12s-flac-two-windows": _ok("long.flac", _sf(noise(12.0), subtype="PCM_16"), windows=2),
    "float-wav-beyond-1": _ok("hot.wav", _sf(noise(1.5) * 30, subtype="FLOAT")),
    # The run cannot start: one line on stderr, exit 1, no rows.
    "model-missing": _model_case(_missing_model, "no such model file", "nowhere.onnx"),
    "model-directory": _model_case(_model_dir, "not a file", "models.onnx"),
    "model-empty": _model_case(_write_bytes("empty.onnx", b""), NOT_ONNX, "empty.onnx"),
    "model-corrupt": _model_case(_write_bytes("half.onnx", lambda m: m.read_bytes()[: m.stat().st_size // 2]),
                                 NOT_ONNX, "half.onnx"),
    "model-text": _model_case(_write_bytes("text.onnx", b"hello, not a model\n"), NOT_ONNX, "text.onnx"),
    "model-is-a-wav": _model_case(_wav_as_model, NOT_ONNX, "m.wav"),
    "model-no-metadata": _model_case(_onnx_variant("plain.onnx", _without_metadata), "not an asc-deploy model",
                                     "plain.onnx"),
    "model-bad-metadata": _model_case(_onnx_variant("badmeta.onnx", _with_bad_variant), "unknown variant",
                                      "badmeta.onnx"),
    "model-foreign-graph": _model_case(_onnx_variant("foreign.onnx", _metadata_on_foreign_graph),
                                       "not an asc-deploy single model graph", "foreign.onnx"),
    "hop-zero": _option_case(["--hop-seconds", "0"], "fatal", "hop_seconds must be in (0, 10] s"),
    "hop-negative": _option_case(["--hop-seconds", "-1"], "fatal", "hop_seconds"),
    "hop-too-long": _option_case(["--hop-seconds", "10.5"], "fatal", "hop_seconds"),
    "hop-nan": _option_case(["--hop-seconds", "nan"], "fatal", "got nan"),
    "hop-inf": _option_case(["--hop-seconds", "inf"], "fatal", "got inf"),
    "tta-passes-zero": _option_case(["--tta-passes", "0"], "fatal", "tta_passes"),
    "output-under-a-file": Case(_output_under_a_file, "fatal", "cannot write the output", "results"),
    # Click refuses the command line: exit 2.
    "hop-not-a-number": _option_case(["--hop-seconds", "abc"], "usage", "not a valid float"),
    "unknown-provider": _option_case(["--provider", "tpu"], "usage", "tpu"),
    "passes-per-call-zero": _option_case(["--passes-per-call", "0"], "usage", "--passes-per-call"),
    "threads-negative": _option_case(["--threads", "-1"], "usage", "--threads"),
    "output-is-a-directory": Case(_output_is_a_dir, "usage", "is a directory"),
    "no-files": Case(lambda tmp, model: ["--model", str(model)], "usage", "Missing argument"),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_inputs(tmp_path: Path, random_model: Path, case: Case) -> None:
    args = case.make(tmp_path, random_model)
    if case.expect == "row":  # a good file after the bad one: the run goes on
        sf.write(tmp_path / "good.wav", noise(1.5), SAMPLE_RATE)
        args.append(str(tmp_path / "good.wav"))
    if case.expect == "ok":
        args.append("--json")

    result = _invoke(args)

    assert "Traceback" not in result.stderr
    if case.expect == "ok":
        assert result.exit_code == 0, result.stderr
        [entry] = json.loads(result.stdout)
        assert set(entry) == {"filename", "scene_label", "probs", "windows"}
        assert list(entry["probs"]) == list(CLASS_LABELS) and entry["scene_label"] in CLASS_LABELS
        _assert_distribution(list(entry["probs"].values()))
        assert entry["windows"] == case.windows
    elif case.expect == "row":
        assert result.exit_code == 1, result.stderr
        header, rows = parse_csv(result.stdout)
        assert header == ["filename", "scene_label", *CLASS_LABELS, "error"]
        bad, good = rows[args[-2]], rows[str(tmp_path / "good.wav")]
        assert bad[1:-1] == [""] * (1 + len(CLASS_LABELS))
        assert case.culprit in bad[-1] and case.keyword in bad[-1], bad[-1]
        assert good[1] in CLASS_LABELS and good[-1] == ""
        _assert_distribution([float(p) for p in good[2:-1]])
        lines = result.stderr.splitlines()
        assert lines == ["asc-predict: 1 of 2 files failed:", f"  {bad[-1]}"]
    elif case.expect == "fatal":
        assert result.exit_code == 1
        assert result.stdout == ""  # nothing half-done on stdout
        [line] = result.stderr.splitlines()
        assert line.startswith("asc-predict: error: ")
        assert case.culprit in line and case.keyword in line, line
    else:
        assert case.expect == "usage"
        assert result.exit_code == 2 and result.stdout == ""
        assert case.keyword in result.stderr and "Usage: " in result.stderr


def test_bad_inputs_through_the_installed_script(tmp_path: Path, random_model: Path) -> None:
    """The console script as a user runs it: error rows, a summary on stderr, exit 1, no traceback."""
    bad = {"absent.wav": "no such file", "empty.wav": "empty", "short.wav": "too short", "notes.wav": NOT_AUDIO}
    (tmp_path / "empty.wav").write_bytes(b"")
    sf.write(tmp_path / "short.wav", noise(0.5), SAMPLE_RATE)
    (tmp_path / "notes.wav").write_text("not audio\n" * 100)
    sf.write(tmp_path / "good.wav", noise(1.5), SAMPLE_RATE)
    files = ["good.wav", *bad]
    proc = subprocess.run([*PREDICT, "--model", str(random_model), *files, "--output", "out.csv"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert "Traceback" not in proc.stderr
    _, rows = parse_csv((tmp_path / "out.csv").read_text())
    assert list(rows) == files
    assert rows["good.wav"][1] in CLASS_LABELS
    stderr = proc.stderr.splitlines()
    assert stderr[0] == f"asc-predict: {len(bad)} of {len(files)} files failed:"
    for name, keyword in bad.items():
        assert rows[name][-1].startswith(f"{name}: ") and keyword in rows[name][-1]
        assert f"  {rows[name][-1]}" in stderr

    proc = subprocess.run([*PREDICT, "--model", "good.wav", "good.wav"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines() == [proc.stderr.strip()] and "good.wav: not a valid ONNX model" in proc.stderr


# ---------------------------------------------------------------- --strict
def test_strict_stops_at_the_first_failure(tmp_path: Path, random_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("first.wav", "later.wav"):
        sf.write(tmp_path / name, noise(1.5), SAMPLE_RATE)
    sf.write(tmp_path / "short.wav", noise(0.5), SAMPLE_RATE)
    files = [str(tmp_path / n) for n in ("first.wav", "short.wav", "later.wav")]
    seen: list[str] = []
    predict = Classifier.predict

    def spy(self: Classifier, source):
        seen.append(str(source))
        return predict(self, source)

    monkeypatch.setattr(Classifier, "predict", spy)

    result = _invoke(["--model", str(random_model), "--strict", *files])
    assert result.exit_code == 1
    assert seen == files[:2]  # later.wav was never read
    _, rows = parse_csv(result.stdout)
    assert list(rows) == files[:1]  # rows before the failure were already streamed to stdout
    [line] = result.stderr.splitlines()
    assert line.startswith("asc-predict: error: ") and "short.wav" in line and "too short" in line

    # With --output the run fails as a whole: the previous output file is kept untouched.
    out = tmp_path / "out.csv"
    out.write_text("previous\n")
    seen.clear()
    result = _invoke(["--model", str(random_model), "--strict", *files, "--output", str(out), "--json"])
    assert result.exit_code == 1 and seen == files[:2]
    assert out.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.wav", "later.wav", "out.csv", "short.wav"]

    # Without --strict the same files give two results and one error row.
    result = _invoke(["--model", str(random_model), *files])
    _, rows = parse_csv(result.stdout)
    assert result.exit_code == 1 and list(rows) == files
    assert [bool(rows[f][-1]) for f in files] == [False, True, False]


# ---------------------------------------------------------------- API == CLI
@pytest.mark.parametrize("kind", ["random", "ce", "ce-tta"])
def test_api_and_cli_agree(tmp_path: Path, request: pytest.FixtureRequest, kind: str) -> None:
    """Same wav, same probabilities (<= 1e-6) from Classifier.predict, CSV and --json; "ce" and
    "ce-tta" (3 passes) use the official checkpoint and skip where ../shared is absent."""
    if kind == "random":
        model = request.getfixturevalue("random_model")
    else:
        model = request.getfixturevalue("exported")("ce", "fp32", kind == "ce-tta")
    passes = ["--tta-passes", "3"]
    path = tmp_path / "scene.wav"
    sf.write(path, noise(12.5, 48_000, channels=2), 48_000, subtype="PCM_16")  # resampled, mixed, 2 windows
    classifier = Classifier(model, tta_passes=3)
    api = classifier.predict(path)
    assert api.windows == 2
    _assert_distribution(api.probs)
    # The array path (already at 44.1 kHz) gives the same windows, so the same probabilities.
    np.testing.assert_allclose(classifier.predict(load_audio(path)).probs, api.probs, rtol=0, atol=1e-6)

    as_csv = _invoke(["--model", str(model), str(path), *passes, "--passes-per-call", "5", "--threads", "1"])  # other grouping
    assert as_csv.exit_code == 0, as_csv.stderr
    _, rows = parse_csv(as_csv.stdout)
    row = rows[str(path)]
    assert row[1] == api.label and row[-1] == ""
    np.testing.assert_allclose([float(p) for p in row[2:-1]], api.probs, rtol=0, atol=1e-6)

    out = tmp_path / "out.json"
    as_json = _invoke(["--model", str(model), str(path), "--json", "--output", str(out), *passes])
    assert as_json.exit_code == 0 and as_json.stdout == ""
    [entry] = json.loads(out.read_text())
    assert entry["scene_label"] == api.label and entry["windows"] == api.windows
    np.testing.assert_allclose(list(entry["probs"].values()), api.probs, rtol=0, atol=1e-6)
    assert entry["probs"] == api.as_dict()  # JSON carries the float32 values exactly


def test_tta_model_without_spec_aug(tmp_path: Path, random_checkpoint: Path) -> None:
    from asc_deploy.export.onnx_export import export_onnx

    model = export_onnx(random_checkpoint, tmp_path / "tta.onnx", tta=True)  # no config: spec_aug ()
    classifier = Classifier(model, tta_passes=2)
    assert classifier.metadata.spec_aug == ()
    _assert_distribution(classifier.predict(noise(1.5)[:, 0]).probs)  # one zero-width stripe: the identity


# ---------------------------------------------------------------- properties
@pytest.fixture(scope="module")
def classifier(random_model: Path) -> Classifier:
    return Classifier(random_model)


_DTYPES = st.one_of(
    hnp.floating_dtypes(),
    hnp.integer_dtypes(),
    hnp.unsigned_integer_dtypes(),
    hnp.boolean_dtypes(),
    hnp.complex_number_dtypes(),
)
_LENGTHS = st.sampled_from([0, 1, MIN_SAMPLES - 1, MIN_SAMPLES, MIN_SAMPLES + 3, CLIP_SAMPLES + 1000])
_SHAPES = st.one_of(
    st.tuples(_LENGTHS),
    st.tuples(_LENGTHS, st.integers(0, 3)),
    st.tuples(st.integers(0, 3), _LENGTHS),
    hnp.array_shapes(min_dims=0, max_dims=3, max_side=4),
)
_AUDIO_LENGTHS = st.sampled_from([MIN_SAMPLES, MIN_SAMPLES + 3, 2 * MIN_SAMPLES, CLIP_SAMPLES + 1000])
_AUDIO_SHAPES = st.tuples(_AUDIO_LENGTHS) | st.tuples(_AUDIO_LENGTHS, st.integers(1, 3))
_PCM_DTYPES = hnp.floating_dtypes() | hnp.integer_dtypes() | hnp.unsigned_integer_dtypes()


@st.composite
def _waves(draw: st.DrawFn) -> np.ndarray:
    """Half anything at all; half plausible audio (a valid shape, any integer PCM or float
    PCM in [-1, 1]) so that the success path is exercised too."""
    if draw(st.booleans()):
        return draw(hnp.arrays(_DTYPES, _SHAPES))
    dtype = draw(_PCM_DTYPES)
    elements = st.floats(-1, 1, width=8 * dtype.itemsize) if dtype.kind == "f" else None
    return draw(hnp.arrays(dtype, draw(_AUDIO_SHAPES), elements=elements))


@settings(max_examples=30, deadline=None)
@given(wave=_waves())
def test_any_array_predicts_or_raises_asc_error(classifier: Classifier, wave: np.ndarray) -> None:
    """Arrays of every dtype, shape and value (NaN, inf, 1e300, subnormals...): a finite
    distribution or AscError, never another exception."""
    try:
        pred = classifier.predict(wave)
    except AscError as err:
        assert "<array>" in str(err) and "\n" not in str(err)
        event("AscError")
        return
    event("predicted")
    _assert_distribution(pred.probs)
    assert pred.label == CLASS_LABELS[int(np.argmax(pred.probs))]
    assert pred.windows == (2 if wave.shape[0] > CLIP_SAMPLES else 1)


def _file_bytes_of(fmt: str, subtype: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, noise(1.2, channels=2), SAMPLE_RATE, format=fmt, subtype=subtype)
    return buf.getvalue()


_VALID = {
    "WAV": _file_bytes_of("WAV", "PCM_16"),
    "WAV-FLOAT": _file_bytes_of("WAV", "FLOAT"),
    "FLAC": _file_bytes_of("FLAC", "PCM_16"),
    "OGG": _file_bytes_of("OGG", "VORBIS"),
}


@st.composite
def _file_bytes(draw: st.DrawFn) -> bytes:
    """Random bytes (a third), else a valid WAV/FLAC/Ogg with bytes overwritten (in the header or
    anywhere) and/or cut short."""
    if draw(st.integers(0, 2)) == 0:
        return draw(st.binary(max_size=4096))
    data = bytearray(_VALID[draw(st.sampled_from(sorted(_VALID)))])
    for _ in range(draw(st.integers(0, 3))):  # headers are in the first 64 bytes
        data[draw(st.integers(0, 63) | st.integers(64, len(data) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, 2))
    return bytes(data if cut else data[: draw(st.integers(0, len(data)))])


def _no_nan(name: str) -> float:
    raise AssertionError(f"non-finite number {name} in the JSON output")


@settings(max_examples=30, deadline=None, suppress_health_check=[FIXTURE_REUSED])
@given(data=_file_bytes(), as_json=st.booleans())
def test_any_bytes_give_a_result_or_an_error_row(tmp_path: Path, random_model: Path, data: bytes, as_json: bool) -> None:
    path = tmp_path / "fuzz.wav"
    path.write_bytes(data)
    result = _invoke(["--model", str(random_model), str(path), *(["--json"] if as_json else [])])
    assert result.exit_code in (0, 1), result.stderr
    event(f"exit {result.exit_code}")
    if as_json:
        [entry] = json.loads(result.stdout, parse_constant=_no_nan)
        error = entry.get("error", "")
        probs = list(entry.get("probs", {}).values())
    else:
        _, rows = parse_csv(result.stdout)
        row = rows[str(path)]
        error = row[-1]
        probs = [float(p) for p in row[2:-1]] if not error else []
    if result.exit_code == 1:
        assert error.startswith(f"{path}: ") and "\n" not in error
        assert result.stderr.splitlines() == ["asc-predict: 1 of 1 files failed:", f"  {error}"]
    else:
        assert error == "" and result.stderr == ""
        _assert_distribution(probs)
        assert all(math.isfinite(p) for p in probs)


# ---------------------------------------------------------------- one hour, streamed
@pytest.mark.slow
def test_one_hour_flac_is_streamed(tmp_path: Path, random_model: Path) -> None:
    """A one-hour 16-bit FLAC of near-silence succeeds with 360 windows, and asc-predict's peak
    RSS stays within 100 MB of its peak for a 4-minute file: memory does not grow with length.

    (The baseline must run the same call shape several times: onnxruntime's arena reaches its
    plateau only on the second run of a shape.)
    """
    write_near_silent_hour_flac(tmp_path / "hour.flac")
    sf.write(tmp_path / "short.flac", noise(240.0), SAMPLE_RATE, subtype="PCM_16")  # 24 windows: 12 calls of 2

    code, _, err, short_peak = run_measured([*PREDICT, "--model", str(random_model), "short.flac", "--json",
                                             "--output", "short.json"], tmp_path)
    assert code == 0, err
    code, _, err, hour_peak = run_measured([*PREDICT, "--model", str(random_model), "hour.flac", "--json",
                                            "--output", "hour.json"], tmp_path, timeout=600)
    assert code == 0, err
    [entry] = json.loads((tmp_path / "hour.json").read_text())
    assert entry["windows"] == 360
    _assert_distribution(list(entry["probs"].values()))
    print(f"\nasc-predict peak RSS: one-hour FLAC {hour_peak / 2**20:.0f} MiB, "
          f"4-minute FLAC {short_peak / 2**20:.0f} MiB (load_audio of the hour alone would need 635 MB)")
    assert hour_peak - short_peak < 100e6, (hour_peak, short_peak)
