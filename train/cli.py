"""``asc-train``: train Cnn6 with a YAML recipe, alone or under torchrun.

    asc-train --config demo --data data/synth --out runs/demo
    torchrun --nproc_per_node 4 -m asc_deploy.train.cli --config ce --data TAU --out runs/ce
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from asc_deploy.errors import AscError
from asc_deploy.extras import require_extras
from asc_deploy.train.config import BUILTIN_CONFIGS, load_config


@click.command()
@click.option("--config", "config_name", required=True, help=f"built-in config ({', '.join(BUILTIN_CONFIGS)}) or a YAML file")
@click.option("--data", required=True, type=click.Path(path_type=Path), help="data set folder in the TAU 2020 Mobile layout")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="folder for checkpoints and logs")
@click.option("--epochs", type=click.IntRange(min=1), help="override the config's epochs (and cosine T_max)")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="default: cuda when a GPU is present, else cpu")
@click.option("--resume", is_flag=True, help="continue the run in --out from its last.pth")
@click.option("--seed", type=click.IntRange(min=0), help="override the config's seed")
@click.option("--holdout", type=click.FloatRange(0, 1, max_open=True),
              help="override the config's calibration hold-out: fraction of the training split (whole locations) left out "
                   "for asc-calibrate; 0 trains on all of it")
def main(config_name: str, data: Path, out: Path, epochs: int | None, device: str | None, resume: bool, seed: int | None,
         holdout: float | None) -> None:
    """Train the SP4ASC Cnn6 scene classifier; writes OUT/last.pth, OUT/best.pth (lowest evaluate
    log loss), OUT/metrics.jsonl and TensorBoard logs in OUT/tensorboard."""
    try:
        require_extras("asc-train", "train")
        from asc_deploy.train.trainer import train

        config = load_config(config_name)
        overrides = {name: value for name, value in (("epochs", epochs), ("seed", seed), ("holdout", holdout)) if value is not None}
        train(dataclasses.replace(config, **overrides), data, out, device, resume)
    except AscError as exc:
        raise click.ClickException(str(exc)) from exc


if __name__ == "__main__":
    main()
