"""The CPU latency benchmark (bench/perf.py): smoke runs that produce every row; no timing assertions."""

import json

import pytest
from click.testing import CliRunner

from asc_deploy.bench.perf import (
    BASELINE,
    NOISY_SPREAD,
    ORT,
    PRECISIONS,
    PerfRow,
    measure_all,
    perf_command,
    schedule_precisions,
    table,
    work_flops,
)
from tests.shared_data import checkpoint_path, needs_shared

pytestmark = needs_shared


def test_floor_counts_the_issue_formula():
    # CNN MACs x 2 per pass + per frame 5 N log2 N (N = 2048) + 2 x 1025 x 256 mel flops; 431 frames in 10 s
    assert work_flops(442_600_000, 441_000, 1, 1) == pytest.approx(2 * 442.6e6 + 431 * (5 * 2048 * 11 + 2 * 1025 * 256))
    assert work_flops(100, 441_000, 16, 30) == pytest.approx(16 * work_flops(100, 441_000, 1, 30))


def test_benchmark_smoke_produces_every_row(exported, int8):
    schedules = ("cpu", "gpu")
    pairs = schedule_precisions(schedules, PRECISIONS)
    assert ("cpu", "fp16") not in pairs and len(pairs) == 5  # fp16 runs under the gpu schedule only
    files = {(s, p, tta): (int8(tta, s) if p == "int8" else exported("ce", p, tta, s)) for s, p in pairs for tta in (False, True)}
    run = measure_all(checkpoint_path("ce"), iterations=1, warmup=1, batch_sizes=(1, 2), passes=2, seconds=1.0, threads=1,
                      rounds=1, row_budget_s=None, model_files=files, gemm_sizes=(256,), schedules=schedules)
    expected = {(BASELINE, "", "fp32", p, b) for p in (1, 2) for b in (1, 2)} | {
        (ORT, s, precision, p, b) for s, precision in pairs for p in (1, 2) for b in (1, 2)}
    assert {(r.path, r.schedule, r.precision, r.passes, r.batch) for r in run.rows} == expected and len(run.rows) == len(expected)
    notes = {(r.schedule, r.passes): r.note for r in run.rows}
    assert notes["cpu", 1] == "one call, clips one at a time in a Loop"
    assert notes["cpu", 2] == "one call, TTA passes one at a time in a Loop, stripes from the host"
    assert notes["gpu", 1] == "one call" and notes["gpu", 2] == "TTA batched in one call, stripes from the host"
    for row in run.rows:
        assert row.runs == 1 and row.median_ms > 0 and row.p95_ms >= row.median_ms * 0.5 and row.floor_ms > 0
        assert len(row.round_medians_ms) == 1 and row.spread is None  # one round: no spread
        assert row.speedup is not None and row.floor_ratio > 0
        if row.precision == "fp32":  # the exported graph computes what the eager SP4ASC pipeline computes
            assert row.max_prob_diff <= 1e-3, row
    lines = run.table()
    assert "GEMM fp32 best" in lines[0] and len(lines) == len(expected) + 4
    assert all(row.label in "\n".join(lines) for row in run.rows)


def test_perf_command_writes_a_report(tmp_path):
    report = tmp_path / "perf.json"
    result = CliRunner().invoke(perf_command, ["--checkpoint", str(checkpoint_path("ce")), "--iterations", "1", "--warmup", "0",
                                               "--batch-sizes", "1", "--passes", "1", "--seconds", "1", "--precisions", "fp32",
                                               "--gemm-sizes", "256", "--threads", "1", "--rounds", "2", "--report", str(report)])
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert [(r["path"], r["precision"]) for r in data["rows"]] == [(BASELINE, "fp32"), (ORT, "fp32")]
    for row in data["rows"]:  # one timed call in each of the 2 rounds: the round medians are those calls
        assert row["runs"] == 2 and len(row["round_medians_ms"]) == 2
        assert row["spread"] == pytest.approx(max(row["round_medians_ms"]) / min(row["round_medians_ms"]))
    assert data["gemm_gflops_best"] > 0 and all(line in result.output for line in data["table"])
    assert "x floor" in result.output


def test_perf_command_rejects_bad_options():
    result = CliRunner().invoke(perf_command, ["--checkpoint", str(checkpoint_path("ce")), "--precisions", "int4"])
    assert result.exit_code == 1 and "unknown precision" in result.output
    result = CliRunner().invoke(perf_command, ["--checkpoint", str(checkpoint_path("ce")), "--batch-sizes", "0"])
    assert result.exit_code != 0
    result = CliRunner().invoke(perf_command, ["--checkpoint", str(checkpoint_path("ce")), "--schedules", "tpu"])
    assert result.exit_code == 1 and "schedules must be among" in result.output


def test_table_without_gemm_header():
    assert table([])[0].startswith("path")


def _row(round_medians: tuple[float, ...]) -> PerfRow:
    return PerfRow(path=ORT, schedule="cpu", precision="fp32", passes=30, batch=1, median_ms=200.0, p95_ms=210.0,
                   runs=2 * len(round_medians), floor_ms=128.0, speedup=24.0, max_prob_diff=1e-7, round_medians_ms=round_medians)


def test_table_reports_round_spread_and_warns_when_noisy():
    quiet, noisy = _row((200.0, 210.0)), _row((200.0, 400.0))
    assert quiet.spread == pytest.approx(1.05) and noisy.spread == pytest.approx(2.0) and _row((200.0,)).spread is None
    lines = table([quiet])
    assert "spread" in lines[0] and " 1.05 " in lines[2] and not any(line.startswith("warning") for line in lines)
    lines = table([quiet, noisy])
    assert " 2.00 " in lines[3]
    assert lines[-1].startswith("warning: the machine's speed changed") and f"more than {NOISY_SPREAD}x apart (worst 2.00x" in lines[-1]


def test_asc_bench_perf_mode(tmp_path):
    """``asc-bench --perf`` runs the same benchmark with asc-bench's options and writes perf.json."""
    from asc_deploy.bench.cli import main

    args = ["--model", str(checkpoint_path("ce")), "--perf", "--nb-aug", "0", "--batch-size", "1", "--precision", "fp32",
            "--iterations", "1", "--threads", "1", "--report", str(tmp_path / "report")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "report" / "perf.json").read_text())
    assert [(r["path"], r["precision"], r["passes"], r["batch"]) for r in data["rows"]] == [(BASELINE, "fp32", 1, 1), (ORT, "fp32", 1, 1)]
    assert all(r["speedup"] > 0 and r["floor_ratio"] > 0 for r in data["rows"]) and "x floor" in result.output
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"")
    result = CliRunner().invoke(main, ["--model", str(onnx_file), "--perf"])
    assert result.exit_code == 1 and "needs a checkpoint" in result.output
