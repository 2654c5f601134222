"""The main job's summary: read back from the stream's output and asc-bench's report."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from asc_deploy.bench import main_job
from asc_deploy.bench.main_job import _claims, stream_lines, summary_lines


def test_stream_lines_count_the_windows_within_one_scene(tmp_path: Path) -> None:
    rows = [(0.0, 1.0, "bus"), (0.0, 10.0, "park"), (4.0, 14.0, "park"), (12.0, 22.0, "metro"), (14.0, 24.0, "bus")]
    path = tmp_path / "stream.tsv"
    path.write_text("start\tend\tlabel\tprob\tflags\n" + "".join(f"{s:.3f}\t{e:.3f}\t{label}\t0.5000\t-\n" for s, e, label in rows))
    lines = stream_lines(path, ["park", "metro"], 12.0)
    # within one scene: [0, 1] and [0, 10] (park), [12, 22] and [14, 24] (metro); [4, 14] crosses from park to metro
    assert lines[-1] == "  5 predictions; of the 4 windows within one scene, 2 name the scene being played"
    assert lines[1].split() == ["0.00", "1.00", "bus", "0.500", "-"] and len(lines) == 1 + 5 + 1


def test_stream_lines_elide_the_middle_of_a_long_stream(tmp_path: Path) -> None:
    path = tmp_path / "stream.tsv"
    path.write_text("start\tend\tlabel\tprob\tflags\n" + "".join(f"{s}.000\t{s + 10}.000\tpark\t0.9000\t-\n" for s in range(20)))
    lines = stream_lines(path, ["park"] * 3, 10.0)
    assert lines.count("  ...") == 1 and len(lines) == 1 + 4 + 1 + 4 + 1
    assert lines[-1] == "  20 predictions; of the 2 windows within one scene, 2 name the scene being played"  # [0, 10], [10, 20]


def _row(model: str, logloss: float, ece: float, accuracy: float) -> dict:
    return {"model": model, "logloss": logloss, "ece": ece, "accuracy": accuracy}


def test_claims_state_the_tta_gain_and_the_share_of_it_that_t_gets() -> None:
    rows = {r["model"]: r for r in [_row("single pass", 1.0, 0.10, 0.6), _row("single pass + T", 0.95, 0.05, 0.6),
                                     _row("TTA-30", 0.9, 0.04, 0.62), _row("TTA-30 + T", 0.88, 0.03, 0.62)]}
    lines = _claims(rows, 30)
    assert lines[0] == ("TTA-30 against a single pass: log loss 1.0000 -> 0.9000 (-0.1000), ECE 0.1000 -> 0.0400, "
                        "accuracy 60.00 % -> 62.00 %, at 30x the CNN passes")
    assert lines[1] == "single pass + T: log loss 0.9500, ECE 0.0500: 50 % of TTA-30's log-loss gain at 1/30 of its compute"
    assert lines[2] == "TTA-30 + T: log loss 0.8800, ECE 0.0300"
    rows["TTA-30"] = _row("TTA-30", 1.1, 0.2, 0.6)
    assert _claims(rows, 30)[1] == "TTA-30 did not lower the log loss of this model (single pass + T: 0.9500)"


def _run(backend: str, precision: str, logloss: float, parity: float | None = None, **extra: object) -> dict:
    return {"backend": backend, "precision": precision, "status": "ok", "size_bytes": 2048, "reference": parity is None,
            "metrics": {"logloss": logloss, "accuracy": 0.6, "ece": 0.1}, "timing": {"latency_p50_ms": 90.0},
            "parity": None if parity is None else {"passed": True, "max_abs_prob": parity, "broken": []}, **extra}


def test_summary_shows_both_benchmarks_the_files_and_the_reports(tmp_path: Path) -> None:
    """The TTA report's calibration table and claims, then both backend tables (a skipped
    backend on one line with its reason), the files with sizes, the stream, the reports."""
    rows = [_row("single pass", 1.0, 0.10, 0.6), _row("single pass + T", 0.95, 0.05, 0.6), _row("TTA-30", 0.9, 0.04, 0.62),
            _row("TTA-30 + T", 0.88, 0.03, 0.62)]
    rows = [r | {"passes": 30 if "TTA" in r["model"] else 1, "temperature": 1.0, "micro_logloss": r["logloss"]} for r in rows]
    tta = {"data": "d", "split": "evaluate", "clips": 270, "nb_aug": 30, "runs": [_run("torch-cpu", "fp32", 0.9), _run("onnxruntime-cpu", "fp32", 0.9, 3e-7)],
           "calibration": {"method": "temperature", "fitted_on": "109 held-out training clips of d", "rows": rows}}
    phone = {"nb_aug": 0, "runs": [_run("torch-cpu", "fp32", 1.0), _run("executorch-xnnpack", "fp16", 1.0, 8.7e-4),
                                   {"backend": "onnxruntime-cuda", "precision": "fp16", "status": "skipped", "reason": "no CUDA GPU found"}]}
    (tmp_path / "demo.fp16.pte").write_bytes(b"x" * 2048)
    lines = summary_lines(tta, phone, tmp_path, ["  stream line"], [Path("r/tta/report.md"), Path("r/phone/report.md")])
    text = "\n".join(lines)
    assert lines[0] == "data: d (evaluate split, 270 clips); TTA passes: 30"
    assert "TTA-30 against a single pass: log loss 1.0000 -> 0.9000 (-0.1000)" in text
    assert "TTA-30: every backend against the torch reference (the trained model) on the same clips and stripes:" in text
    assert "single pass, the fp16 files for phones: every backend against the torch reference (the trained model) on the same clips:" in text
    assert "ok (max 3.0e-07)" in text and "ok (max 8.7e-04)" in text
    assert "  onnxruntime-cuda fp16: skipped (no CUDA GPU found)" in lines
    assert f"  {'demo.fp16.pte':<38} {2.0:8.1f} KiB" in lines
    assert lines[-1] == "reports: r/tta/report.md, r/phone/report.md" and "  stream line" in lines


class _FinishedProcess:
    """What subprocess.Popen returns, for a step that has already ended with ``returncode``."""

    def __init__(self, returncode: int) -> None:
        self.returncode = returncode

    def poll(self) -> int:
        return self.returncode

    def terminate(self) -> None:
        pass

    def wait(self) -> int:
        return self.returncode


def test_ctrl_c_ends_the_job_with_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def interrupted(args: list[str], **kwargs: object) -> _FinishedProcess:
        raise KeyboardInterrupt

    monkeypatch.setattr(main_job.subprocess, "Popen", interrupted)
    result = CliRunner().invoke(main_job.main, ["--out", str(tmp_path / "demo")])
    assert result.exit_code == 130
    assert result.output.splitlines()[-1] == "main job: interrupted" and "Traceback" not in result.output


def test_a_failed_step_stops_the_steps_running_beside_it(capsys: pytest.CaptureFixture) -> None:
    """Two steps at the same time: the one that fails (no such module) ends the job with its exit
    code at once; the other (a 60 s sleep) is stopped, not waited for; both outputs are shown."""
    steps = [("sleep a minute", ["timeit", "-n", "1", "import time; time.sleep(60)"]), ("fail", ["asc_deploy.no_such_module"])]
    started = time.perf_counter()
    with pytest.raises(SystemExit) as info:
        main_job._run_steps(steps)
    assert info.value.code == 1 and time.perf_counter() - started < 20
    err = capsys.readouterr().err
    assert "== sleep a minute\n$ timeit" in err and "No module named asc_deploy.no_such_module" in err
    assert err.rstrip().endswith("main job: step 'fail' failed with exit code 1")


def test_steps_at_the_same_time_report_each_one_s_seconds() -> None:
    seconds = main_job._run_steps([("one", ["timeit", "-n", "1", "import time; time.sleep(1)"]), ("two", ["timeit", "-n", "1", "pass"])])
    assert list(seconds) == ["two", "one"] and seconds["one"] >= 1.0 > seconds["two"]


def test_a_rerun_replaces_the_previous_run_and_nothing_else(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def first_steps_fail(args: list[str], **kwargs: object) -> _FinishedProcess:
        calls.append(args)
        return _FinishedProcess(3)

    monkeypatch.setattr(main_job.subprocess, "Popen", first_steps_fail)
    out = tmp_path / "demo"
    (out / "train").mkdir(parents=True)
    (out / "train" / "last.pth").write_bytes(b"a previous run")
    (out / "stream.tsv").write_text("start")
    result = CliRunner().invoke(main_job.main, ["--out", str(out)])
    assert "holds files that the main job did not write" in result.output and result.exit_code == 1 and not calls
    assert (out / "train" / "last.pth").read_bytes() == b"a previous run"  # untouched

    (out / main_job.MARKER).write_text("")  # as the main job leaves its folder
    result = CliRunner().invoke(main_job.main, ["--out", str(out)])
    assert f"main job: replacing the previous run in {out}" in result.output and result.exit_code == 3
    assert len(calls) == 1
    assert sorted(p.name for p in out.iterdir()) == [main_job.MARKER]  # emptied before the first step ran
