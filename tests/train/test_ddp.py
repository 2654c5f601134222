"""asc-train under torchrun: two gloo processes on CPU train and rank 0 writes a loadable checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from asc_deploy.models import build_model, load_checkpoint
from tests.train.test_trainer import make_tiny_data, write_config


TEARDOWN_ABORT = "terminate called without an active exception"


def test_two_process_gloo_run(tmp_path: Path) -> None:
    data, config = make_tiny_data(tmp_path / "synth"), write_config(tmp_path, epochs=1)

    def torchrun(out: Path) -> subprocess.CompletedProcess:
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
            "-m", "asc_deploy.train.cli", "--config", str(config), "--data", str(data), "--out", str(out), "--device", "cpu",
        ]
        return subprocess.run(command, capture_output=True, text=True, timeout=600)

    out = tmp_path / "out"
    result = torchrun(out)
    if result.returncode != 0 and TEARDOWN_ABORT in result.stderr and "overall" in result.stdout:
        # Seen once in five runs on a heavily loaded 2-core machine: a gloo worker aborted in
        # process teardown after training had finished. Run once more rather than flake CI.
        print(f"torchrun worker aborted at teardown; retrying once:\n{result.stderr[-2000:]}")
        out = tmp_path / "out-retry"
        result = torchrun(out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("overall") == 1  # only rank 0 evaluates and reports
    model = build_model(load_checkpoint(out / "last.pth"))
    assert model(torch.zeros(1, 1, 44, 256)).shape == (1, 10)
    assert torch.load(out / "last.pth", weights_only=True)["epoch"] == 1
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]
