"""Training configs: built-ins load, files are data only, every bad key or value is an AscError naming the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from asc_deploy.errors import AscError
from asc_deploy.train.config import BUILTIN_CONFIGS, CONFIG_DIR, TrainConfig, config_from_dict, config_to_dict, load_config


@pytest.mark.parametrize("name", BUILTIN_CONFIGS)
def test_builtins_load_and_round_trip(name: str) -> None:
    config = load_config(name)
    assert isinstance(config, TrainConfig)
    assert config_from_dict(config_to_dict(config), "x") == config
    assert load_config(CONFIG_DIR / f"{name}.yaml") == config


def test_builtins_follow_sp4asc() -> None:
    ce, mixup, focal = load_config("ce"), load_config("mixup"), load_config("focal")
    for config in (ce, mixup, focal):
        assert (config.epochs, config.batch_size, config.lr, config.eta_min, config.weight_decay, config.dropout) == (200, 32, 1e-3, 1e-5, 1e-5, 0.2)
    assert ce.spec_aug == focal.spec_aug == (128, 2, 32, 2) and mixup.spec_aug == (128, 2, 16, 2)
    assert (ce.loss, ce.mixup_alpha) == ("ce", None)
    assert (mixup.loss, mixup.mixup_alpha) == ("ce", 0.2)
    assert (focal.loss, focal.focal_gamma, focal.mixup_alpha) == ("focal", 1.0, None)


def write(tmp_path: Path, **changes: object) -> Path:
    """A copy of the ce config with ``changes`` (a value of ... deletes the key)."""
    data = yaml.safe_load((CONFIG_DIR / "ce.yaml").read_text())
    data.update(changes)
    data = {k: v for k, v in data.items() if v is not ...}
    path = tmp_path / "my config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_file_with_changes_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, lr=0.01, spec_aug=None, mixup_alpha=1, epochs=3))
    assert (config.lr, config.spec_aug, config.mixup_alpha, config.epochs) == (0.01, None, 1.0, 3)
    assert isinstance(config.mixup_alpha, float)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"learning_rate": 0.1}, "unknown key(s) ['learning_rate']"),
        ({"lr": ...}, "missing key(s) ['lr']"),
        ({"lr": -0.1}, "lr: must be a number > 0"),
        ({"lr": "1e-3"}, "write 1.0e-3"),
        ({"epochs": 2.5}, "epochs: must be an integer >= 1"),
        ({"epochs": True}, "epochs: must be an integer >= 1"),
        ({"batch_size": 0}, "batch_size: must be an integer >= 1"),
        ({"loss": "hinge"}, "loss: must be one of ['ce', 'focal']"),
        ({"spec_aug": [128, 2, 32]}, "spec_aug: must be null or a list of 4 integers"),
        ({"spec_aug": [128, 2, 32, -1]}, "spec_aug: must be null or a list of 4 integers"),
        ({"spec_aug": "128 2 32 2"}, "spec_aug: must be null or a list of 4 integers"),
        ({"dropout": 1.0}, "dropout: must be a number in [0, 1)"),
        ({"mixup_alpha": 0}, "mixup_alpha: must be a number > 0 or null"),
        ({"focal_gamma": -1}, "focal_gamma: must be a number >= 0"),
        ({"num_workers": -1}, "num_workers: must be an integer >= 0"),
        ({"eta_min": 0.1}, "eta_min (0.1) must not exceed lr"),
    ],
)
def test_bad_files_name_the_file_and_problem(tmp_path: Path, changes: dict, message: str) -> None:
    path = write(tmp_path, **changes)
    with pytest.raises(AscError) as info:
        load_config(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_not_a_mapping_and_broken_yaml(tmp_path: Path) -> None:
    for text, message in (("- 1\n- 2\n", "a config must be a YAML mapping"), ("lr: [1, 2\n", "not valid YAML data")):
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        with pytest.raises(AscError, match="bad.yaml: " + message):
            load_config(path)


def test_yaml_is_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "evil.yaml"
    path.write_text(f"epochs: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(AscError, match="evil.yaml: not valid YAML data"):
        load_config(path)
    assert not marker.exists()


def test_unknown_name() -> None:
    with pytest.raises(AscError, match="nosuch: unknown config: neither a built-in name"):
        load_config("nosuch")


def test_holdout_is_optional_and_checked(tmp_path: Path) -> None:
    assert load_config("ce").holdout == 0.0 and load_config("demo").holdout == 0.2
    assert load_config(write(tmp_path, holdout=0.25)).holdout == 0.25
    for bad in (1, -0.1, "0.2", True):
        with pytest.raises(AscError, match=r"holdout: must be a number in \[0, 1\)"):
            load_config(write(tmp_path, holdout=bad))


def test_mixed_precision_is_optional_and_checked(tmp_path: Path) -> None:
    assert load_config("demo").mixed_precision == "auto"
    assert load_config(write(tmp_path, mixed_precision="off")).mixed_precision == "off"
    for bad in ("bf16", True, None):
        with pytest.raises(AscError, match=r"mixed_precision: must be one of \['auto', 'off'\]"):
            load_config(write(tmp_path, mixed_precision=bad))
