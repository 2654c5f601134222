"""Commands say which optional extra to install before doing any work."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from asc_deploy import extras
from asc_deploy.bench.cli import main as bench_main
from asc_deploy.errors import AscError
from asc_deploy.export.cli import main as export_main
from asc_deploy.train.calibrate_cli import main as calibrate_main
from asc_deploy.train.cli import main as train_main


def test_extras_are_read_from_the_project_metadata() -> None:
    assert {"matplotlib", "scikit-learn"} <= set(extras.extra_requirements("bench"))
    assert "torch" in extras.extra_requirements("train")
    assert extras.extra_requirements("trt") == ["tensorrt"]
    assert extras.extra_requirements("no-such-extra") == []


@pytest.fixture
def without(monkeypatch: pytest.MonkeyPatch):
    """Pretend that the given distributions are not installed."""
    def hide(*names: str) -> None:
        real = extras._installed
        monkeypatch.setattr(extras, "_installed", lambda name: name not in names and real(name))

    return hide


def test_require_extras_names_every_missing_extra_and_package(without) -> None:
    without("matplotlib", "torchlibrosa")
    extras.require_extras("asc-dev", "dev")  # nothing of dev is hidden
    with pytest.raises(AscError) as err:
        extras.require_extras("asc-bench", "bench", "train")
    assert str(err.value) == ("asc-bench needs the optional extras bench, train (matplotlib, torchlibrosa not installed): "
                              "pip install -c constraints.txt 'asc-deploy[bench,train]'")


def _fails_with_one_line(result, command: str, extra: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{command}: error:"), result.output
    assert f"'asc-deploy[{extra}]'" in lines[0]


def test_asc_bench_without_bench_extra_stops_before_any_work(tmp_path: Path, without) -> None:
    without("matplotlib")
    report = tmp_path / "report"
    result = CliRunner().invoke(bench_main, ["--model", str(tmp_path / "ckpt.pth"), "--data", str(tmp_path),
                                             "--report", str(report)])
    _fails_with_one_line(result, "asc-bench", "bench")
    assert not report.exists()


def test_asc_export_without_torch_or_tensorrt_stops_before_any_work(tmp_path: Path, without) -> None:
    without("tensorrt")
    out = tmp_path / "model.engine"
    result = CliRunner().invoke(export_main, ["--checkpoint", str(tmp_path / "ckpt.pth"), "--format", "trt", "--output", str(out)])
    _fails_with_one_line(result, "asc-export", "trt")
    without("torch")
    result = CliRunner().invoke(export_main, ["--checkpoint", str(tmp_path / "ckpt.pth"), "--output", str(out)])
    _fails_with_one_line(result, "asc-export", "train")
    assert list(tmp_path.iterdir()) == []


def test_asc_train_without_train_extra_stops_before_any_work(tmp_path: Path, without) -> None:
    without("tensorboard")
    result = CliRunner().invoke(train_main, ["--config", "demo", "--data", str(tmp_path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 1 and "'asc-deploy[train]'" in result.output
    assert not (tmp_path / "run").exists()


def test_asc_calibrate_without_train_extra_stops_before_any_work(tmp_path: Path, without) -> None:
    without("torch")
    out = tmp_path / "calibrated.pth"
    result = CliRunner().invoke(calibrate_main, ["--model", str(tmp_path / "ckpt.pth"), "--data", str(tmp_path), "--output", str(out)])
    _fails_with_one_line(result, "asc-calibrate", "train")
    assert not out.exists()


def test_executorch_commands_without_the_extra_stop_before_any_work(tmp_path: Path, without) -> None:
    without("executorch")
    out = tmp_path / "model.pte"
    result = CliRunner().invoke(export_main, ["--checkpoint", str(tmp_path / "ckpt.pth"), "--format", "pte", "--output", str(out)])
    _fails_with_one_line(result, "asc-export", "executorch")
    report = tmp_path / "report"
    result = CliRunner().invoke(bench_main, ["--model", str(tmp_path / "ckpt.pth"), "--data", str(tmp_path), "--backends",
                                             "torch,executorch", "--report", str(report)])
    _fails_with_one_line(result, "asc-bench", "executorch")
    assert list(tmp_path.iterdir()) == []
