"""``asc-bench --browser``: every row of the browser benchmark printed and written (CI smoke test:
no time is asserted). The probability and threading checks on a split-vote clip are in
tests/web/test_browser.py::test_browser_benchmark."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from asc_deploy.bench import browser, cli
from asc_deploy.bench.cli import main


@pytest.mark.slow
@pytest.mark.skipif(browser.missing() is not None, reason=browser.missing() or "")
def test_browser_cli_prints_every_row(random_model, tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "BROWSER_ROUNDS", 1)  # one page load per row: a smoke test
    report_dir = tmp_path / "report"  # not there yet: asc-bench makes it
    result = CliRunner().invoke(main, ["--browser", "--model", str(random_model), "--iterations", "2", "--report", str(report_dir)])
    assert result.exit_code == 0, result.output
    names = [browser.native_name(t) for t in browser.NATIVE_THREADS] + [c.name for c in browser.PAGE_CONFIGS]
    table = [line for line in result.output.splitlines() if line.startswith(tuple(names))]
    assert [line[:36].rstrip() for line in table] == names, result.output
    [report] = json.loads((report_dir / "browser.json").read_text())
    assert [r["name"] for r in report["rows"]] == names
    assert all(len(r["ms_rounds"]) == 1 and len(r["ms_rounds"][0]) == 2 for r in report["rows"])
    assert report["max_prob_diff"] <= 1e-4
    assert (report_dir / "browser-clip.wav").stat().st_size > 4 * 441_000


def test_browser_cli_refuses_tta_model(exported, tmp_path, monkeypatch):
    """A TTA model is refused in one line before any browser starts."""
    monkeypatch.setattr(browser, "missing", lambda: None)  # refused even where no browser is installed
    monkeypatch.setattr(browser, "measure", lambda *a, **k: pytest.fail("measured a TTA model"))
    model = exported(tta=True)
    result = CliRunner().invoke(main, ["--browser", "--model", str(model), "--report", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == f"asc-bench --browser: error: {model}: the page runs the single-pass variant (export without --tta)"
    assert not (tmp_path / "browser.json").exists()
