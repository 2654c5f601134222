"""asc-train under torchrun: two gloo processes on CPU train and rank 0 writes a loadable checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from asc_deploy.models import build_model, load_checkpoint
from tests.train.test_trainer import make_tiny_data, write_config


def test_two_process_gloo_run(tmp_path: Path) -> None:
    data, out = make_tiny_data(tmp_path / "synth"), tmp_path / "out"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
        "-m", "asc_deploy.train.cli", "--config", str(write_config(tmp_path, epochs=1)), "--data", str(data), "--out", str(out), "--device", "cpu",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("overall") == 1  # only rank 0 evaluates and reports
    model = build_model(load_checkpoint(out / "last.pth"))
    assert model(torch.zeros(1, 1, 44, 256)).shape == (1, 10)
    assert torch.load(out / "last.pth", weights_only=True)["epoch"] == 1
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]
