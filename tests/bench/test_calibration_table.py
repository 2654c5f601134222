"""asc-bench's calibration table: calibrated on the fly (--calibrate DIR) or from a calibrated checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from asc_deploy.bench.cli import main


def test_calibration_table_on_the_fly(held_out_model: Path, calibration_dir: Path, tmp_path: Path) -> None:
    report_dir = tmp_path / "report"
    result = CliRunner().invoke(main, ["--model", str(held_out_model), "--data", str(calibration_dir), "--calibrate", str(calibration_dir),
                                       "--nb-aug", "3", "--backends", "torch,onnxruntime", "--precision", "fp32", "--report", str(report_dir)])
    assert result.exit_code == 0, result.output
    report = json.loads((report_dir / "report.json").read_text())
    rows = {row["model"]: row for row in report["calibration"]["rows"]}
    assert list(rows) == ["single pass", "single pass + T", "TTA-3", "TTA-3 + T"]
    assert [row["passes"] for row in rows.values()] == [1, 1, 3, 3]
    calibration = torch.load(report_dir / "models" / "calibrated.pth", weights_only=True)["calibration"]
    assert rows["single pass"]["temperature"] == rows["TTA-3"]["temperature"] == 1.0
    assert rows["single pass + T"]["temperature"] == calibration["temperature"] and rows["TTA-3 + T"]["temperature"] == calibration["tta_temperature"]
    for plain, scaled in (("single pass", "single pass + T"), ("TTA-3", "TTA-3 + T")):  # an overconfident model: T helps
        assert rows[scaled]["logloss"] < rows[plain]["logloss"] and rows[scaled]["micro_logloss"] < rows[plain]["micro_logloss"]
        assert rows[scaled]["accuracy"] == rows[plain]["accuracy"]  # one temperature keeps every argmax
    # Every backend ran the calibrated TTA-3 model: the table's TTA-3 + T row is the torch reference's own scores.
    ran = {(r["backend"], r["precision"]): r for r in report["runs"] if r["status"] == "ok"}
    reference = ran[("torch-cpu", "fp32")]["metrics"]
    assert reference["logloss"] == pytest.approx(rows["TTA-3 + T"]["logloss"], abs=1e-5)
    assert reference["ece"] == pytest.approx(rows["TTA-3 + T"]["ece"], abs=1e-5)
    assert ran[("onnxruntime-cpu", "fp32")]["parity"]["passed"] and ran[("onnxruntime-cpu", "fp32")]["parity"]["max_abs_prob"] <= 1e-5
    assert (report_dir / "calibration.png").stat().st_size > 10_000
    assert "## Calibration per unit of compute" in (report_dir / "report.md").read_text()
    assert "TTA-3 + T" in result.output


def test_calibrate_needs_a_checkpoint(random_model: Path, calibration_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--model", str(random_model), "--data", str(calibration_dir), "--calibrate", str(calibration_dir),
                                       "--nb-aug", "0", "--report", str(tmp_path / "r")])
    assert result.exit_code == 1 and "asc-bench: error: --calibrate needs a checkpoint" in result.output


@pytest.mark.parametrize("nb_aug", [0, 3])
def test_calibration_table_reuses_the_torch_runs_logits(held_out_model: Path, calibration_dir: Path, tmp_path: Path, nb_aug: int) -> None:
    """With the torch backend the table takes its logits from the torch run (computing only the
    unaugmented pass again); without it, it computes them all: the same rows either way."""
    from asc_deploy.bench.cli import run
    from asc_deploy.train.calibrate import calibrate

    calibrated = tmp_path / "calibrated.pth"
    calibrate(held_out_model, calibration_dir, calibrated, nb_aug)

    def rows(backend: str) -> list[dict]:
        report = run(calibrated, calibration_dir, "evaluate", [backend], ["fp32"], nb_aug, None, 0, tmp_path / backend, [], 1)
        assert [r["status"] for r in report["runs"] if r["backend"].endswith("-cpu")] == ["ok"]
        return report["calibration"]["rows"]

    with_torch, without = rows("torch"), rows("onnxruntime")
    assert [r["model"] for r in with_torch] == [r["model"] for r in without] == ["single pass", "single pass + T", *(
        ["TTA-3", "TTA-3 + T"] if nb_aug else [])]
    for a, b in zip(with_torch, without):
        assert a["logloss"] == pytest.approx(b["logloss"], abs=1e-6) and a["ece"] == pytest.approx(b["ece"], abs=1e-6)
        assert a["accuracy"] == b["accuracy"] and a["temperature"] == b["temperature"]
