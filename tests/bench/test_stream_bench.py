"""The streaming benchmark (bench/stream.py): a smoke run that produces every row; no timing assertions."""

from click.testing import CliRunner

from asc_deploy.bench.stream import main


def test_stream_benchmark_produces_every_row(stream_model):
    result = CliRunner().invoke(main, ["--model", str(stream_model()), "--threads", "1", "--iterations", "1", "--rounds", "1"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1] == "| row | median ms | p95 ms | runs | x full pass |"
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in lines[3:]}
    assert list(rows) == ["full pass", "stream hop (48 frames, CNN reused)", "stream hop (43 frames)", "stream hop, off-grid (1 s)", "frontend 10 s", "CNN 10 s"]
    assert rows["full pass"][-1].strip(" |") == "1.00"
    assert all(float(values[0]) > 0 and values[2] == "1" and float(values[3].strip(" |")) > 0 for values in rows.values())
    assert CliRunner().invoke(main, []).exit_code == 2  # neither --checkpoint nor --model
