"""Smoke test of the asc-serve load benchmark: every row is produced (times are not asserted)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from asc_deploy.bench.serve_load import main

pytest.importorskip("pytriton", reason="the 'serve' extra (nvidia-pytriton) is not installed")


def test_every_row(random_model, tmp_path):
    out = tmp_path / "load.md"
    result = CliRunner().invoke(main, ["--model", str(random_model), "--clips", "8", "--seconds", "1.5",
                                       "--concurrency", "1,8,32", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines() if line.startswith("| asc-")]
    assert [(r[0].strip(), int(r[1])) for r in rows] == [
        ("asc-predict (Classifier, in process)", 1), ("asc-serve (gRPC)", 1), ("asc-serve (gRPC)", 8), ("asc-serve (gRPC)", 32)]
    for r in rows:
        assert int(r[2]) == 8 and float(r[3]) > 0 and float(r[4]) > 0  # clips, clips/s, ratio
        assert float(r[7]) <= 1e-6  # served probabilities = local ones
