"""The training benchmark (bench/train_perf.py): a smoke run that produces every row; no timing assertions."""

import json

import pytest
from click.testing import CliRunner

from asc_deploy.bench.train_perf import main
from tests.train.test_trainer import make_tiny_data, write_config

STEP_ROWS = ["SP4ASC eager, default malloc", "SP4ASC eager", "SP4ASC form, own frontend", "asc-train, from waveform",
             "asc-train, cached log-mel, float32", "asc-train, cached log-mel", "floor"]
EPOCH_ROWS = ["SP4ASC eager loop, epoch", "asc-train epoch", "asc-train log-mel cache (once)", "asc-train epoch + cache / 2"]


@pytest.mark.usefixtures("one_torch_thread")
def test_train_benchmark_produces_every_row(tmp_path):
    data = make_tiny_data(tmp_path / "data")
    config = write_config(tmp_path, epochs=2, spec_aug=[8, 1, 16, 1], mixup_alpha=0.2)
    args = ["--config", str(config), "--data", str(data), "--batch", "2", "--seconds", "1", "--threads", "1", "--iterations", "2",
            "--rounds", "2", "--epoch-rounds", "1", "--gemm-sizes", "64", "--report", str(tmp_path / "train.json")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "train.json").read_text())
    assert [r["label"] for r in report["steps"]] == STEP_ROWS
    assert [r["label"] for r in report["epochs"]] == EPOCH_ROWS
    for row in report["steps"][:-1]:
        assert row["median"] > 0 and row["runs"] == 2 and len(row["round_medians"]) == 2 and row["speedup"] > 0
        assert row["floor"] == report["steps"][-1]["median"] > 0
    baseline = next(r for r in report["steps"] if r["label"] == "SP4ASC eager")
    assert baseline["speedup"] == 1.0
    assert all(r["median"] > 0 and r["speedup"] is None or r["speedup"] > 0 for r in report["epochs"])
    printed = [line.split("  ")[0].strip() for line in result.output.splitlines()]
    assert all(label in printed for label in STEP_ROWS + EPOCH_ROWS)


def test_train_benchmark_rejects_an_unknown_config(tmp_path):
    result = CliRunner().invoke(main, ["--config", str(tmp_path / "nosuch.yaml"), "--epoch-rounds", "0"])
    assert result.exit_code == 1 and "unknown config" in result.output and result.output.count("\n") == 1
