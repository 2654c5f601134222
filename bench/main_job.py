"""The main job on the embedded default, end to end: synthetic data -> demo training -> ONNX
export (fp32, fp16) -> ``asc-bench --nb-aug 30`` on every backend available here.

Each step runs the project's own command in a subprocess, exactly as a user would type it, and
stops the job at the first failure with that command's exit code.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import click


def _step(title: str, args: list[str]) -> float:
    click.echo(f"\n== {title}\n$ {' '.join(args)}", err=True)
    start = time.perf_counter()
    code = subprocess.call([sys.executable, "-m", *args])
    if code:
        click.echo(f"main job: step '{title}' failed with exit code {code}", err=True)
        sys.exit(code)
    return time.perf_counter() - start


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--nb-aug", default=30, show_default=True)
def main(out: Path, nb_aug: int) -> None:
    """Run the whole path on the synthetic demo set into OUT."""
    start = time.perf_counter()
    data, train, models, report = out / "data", out / "train", out / "models", out / "report"
    steps = [
        ("synthetic data set", ["asc_deploy.train.synth", str(data)]),
        ("train the demo config", ["asc_deploy.train.cli", "--config", "demo", "--data", str(data), "--out", str(train)]),
        ("export ONNX fp32", ["asc_deploy.export.cli", "--checkpoint", str(train / "best.pth"), "-o", str(models / "demo.fp32.onnx")]),
        ("export ONNX fp16", ["asc_deploy.export.cli", "--checkpoint", str(train / "best.pth"), "--fp16", "-o", str(models / "demo.fp16.onnx")]),
        (f"benchmark every backend with {nb_aug} TTA passes",
         ["asc_deploy.bench.cli", "--model", str(train / "best.pth"), "--data", str(data), "--nb-aug", str(nb_aug), "--report", str(report)]),
    ]
    timings = {title: _step(title, args) for title, args in steps}
    click.echo("\n== main job timings", err=True)
    for title, seconds in timings.items():
        click.echo(f"  {title:<45} {seconds:7.1f} s", err=True)
    click.echo(f"  {'total':<45} {time.perf_counter() - start:7.1f} s; report: {report / 'report.md'}", err=True)


if __name__ == "__main__":
    main()
