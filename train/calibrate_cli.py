"""``asc-calibrate``: fit temperature scaling on the held-out calibration split of a checkpoint
trained with a hold-out, and write the calibrated checkpoint (:mod:`asc_deploy.train.calibrate`).

    asc-calibrate --model runs/cal/last.pth --data DIR [--nb-aug 30] [--vector] --output calibrated.pth
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from asc_deploy.errors import AscError
from asc_deploy.extras import require_extras


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="asc-train checkpoint trained with a calibration hold-out (config key 'holdout').")
@click.option("--data", required=True, type=click.Path(path_type=Path), help="The data set it was trained on (TAU 2020 Mobile layout).")
@click.option("--nb-aug", default=0, show_default=True, type=click.IntRange(min=0),
              help="Also fit the TTA model of this many SpecAugment passes (0: single pass only).")
@click.option("--vector", is_flag=True, help="One temperature per class instead of one (class-wise temperature scaling).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Seed of the TTA stripes (as asc-bench --seed).")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The calibrated checkpoint to write.")
def main(model: Path, data: Path, nb_aug: int, vector: bool, seed: int, output: Path) -> None:
    """Fit temperature scaling on the held-out calibration split and write the calibrated checkpoint."""
    try:
        require_extras("asc-calibrate", "train")
        from asc_deploy.train.calibrate import calibrate, summary

        record = calibrate(model, data, output, nb_aug, vector, seed)
    except (AscError, ValueError) as err:
        click.echo(f"asc-calibrate: error: {err}", err=True)
        sys.exit(1)
    for line in summary(record):
        click.echo(line)
    click.echo(f"wrote {output}")


if __name__ == "__main__":
    main()
