"""Training configurations: YAML data files validated into a frozen :class:`TrainConfig`.

Built-in configs live in ``configs/`` beside this module (``ce``, ``mixup``, ``focal``: the
SP4ASC recipes for 10 s clips; ``demo``: the ce recipe sized for the synthetic data set on a
laptop CPU, with SpecAugment and a calibration hold-out).
Files are parsed with ``yaml.safe_load`` (data only, no tags that build objects) and every key
is checked: an unknown or missing key, or a value of the wrong type or range, raises
:class:`AscError` naming the file. Only ``holdout`` (0: train on the whole split) and
``mixed_precision`` ("auto") may be left out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from asc_deploy.errors import AscError

CONFIG_DIR = Path(__file__).parent / "configs"
BUILTIN_CONFIGS: tuple[str, ...] = ("ce", "demo", "focal", "mixup")
LOSSES: tuple[str, ...] = ("ce", "focal")
MIXED_PRECISION: tuple[str, ...] = ("auto", "off")


@dataclass(frozen=True)
class TrainConfig:
    """One training recipe. Every field but ``holdout`` and ``mixed_precision`` is required in a config file."""

    epochs: int  # passes over the training split; also the cosine schedule's T_max
    batch_size: int  # clips per optimiser step (per process under torchrun)
    lr: float  # AdamW learning rate at the start of the cosine schedule
    eta_min: float  # learning rate at the end of the cosine schedule
    weight_decay: float  # AdamW decoupled weight decay
    dropout: float  # dropout probability before each fully connected layer
    spec_aug: tuple[int, int, int, int] | None  # [T frames, n time stripes, F mel bins, m frequency stripes]
    mixup_alpha: float | None  # mixup lambda ~ Beta(alpha, alpha) on log-mel and targets; None: off
    loss: str  # "ce" (cross-entropy) or "focal"
    focal_gamma: float  # focal loss exponent (used when loss is "focal"; 0 gives cross-entropy)
    seed: int  # initial weights, data order and augmentation draws are functions of it
    num_workers: int  # DataLoader worker processes (capped at the CPU cores available)
    eval_every: int  # epochs between evaluations; the last epoch is always evaluated
    # fraction of the training split held out for asc-calibrate, whole recording locations at a
    # time (asc_deploy.train.holdout, seeded by ``seed``); 0: train on every training clip
    holdout: float = 0.0
    # "auto": fp16 autocast on CUDA, bf16 autocast on CPUs with native bf16 arithmetic (AVX512-BF16
    # or AMX), float32 elsewhere (asc_deploy.train.trainer.autocast_dtype); "off": float32 everywhere
    mixed_precision: str = "auto"


OPTIONAL_KEYS = frozenset({"holdout", "mixed_precision"})

def _number(value: Any, integer: bool) -> bool:
    """True for an int (and, unless ``integer``, a float); never for a bool."""
    return not isinstance(value, bool) and isinstance(value, (int,) if integer else (int, float))


def _check(name: str, value: Any) -> str | None:
    """The problem with ``value`` for field ``name``, or None when it is valid."""
    if name in ("epochs", "batch_size", "eval_every"):
        return None if _number(value, True) and value >= 1 else "must be an integer >= 1"
    if name in ("seed", "num_workers"):
        return None if _number(value, True) and value >= 0 else "must be an integer >= 0"
    if name in ("lr", "mixup_alpha"):
        ok = _number(value, False) and value > 0 or (name == "mixup_alpha" and value is None)
        return None if ok else "must be a number > 0" + (" or null" if name == "mixup_alpha" else "")
    if name in ("eta_min", "weight_decay", "focal_gamma"):
        return None if _number(value, False) and value >= 0 else "must be a number >= 0"
    if name in ("dropout", "holdout"):
        return None if _number(value, False) and 0 <= value < 1 else "must be a number in [0, 1)"
    if name == "spec_aug":
        ok = value is None or isinstance(value, list) and len(value) == 4 and all(_number(v, True) and v >= 0 for v in value)
        return None if ok else "must be null or a list of 4 integers >= 0 [T frames, n time stripes, F mel bins, m frequency stripes]"
    if name == "loss":
        return None if value in LOSSES else f"must be one of {list(LOSSES)}"
    if name == "mixed_precision":
        return None if value in MIXED_PRECISION else f"must be one of {list(MIXED_PRECISION)}"
    raise AssertionError(f"no check for field {name}")


def config_from_dict(data: Any, source: str | Path) -> TrainConfig:
    """Validate a parsed YAML document into a :class:`TrainConfig`; AscError names ``source``."""
    if not isinstance(data, dict):
        raise AscError(f"a config must be a YAML mapping of keys to values, got {type(data).__name__}", source)
    names = [f.name for f in fields(TrainConfig)]
    unknown = sorted(str(key) for key in data if key not in names)
    if unknown:
        raise AscError(f"unknown key(s) {unknown}; valid keys: {names}", source)
    missing = [name for name in names if name not in data and name not in OPTIONAL_KEYS]
    if missing:
        raise AscError(f"missing key(s) {missing}", source)
    data = {f.name: f.default for f in fields(TrainConfig) if f.name in OPTIONAL_KEYS} | dict(data)
    for name in names:
        problem = _check(name, data[name])
        if problem:
            hint = " (YAML reads 1e-3 as text: write 1.0e-3)" if isinstance(data[name], str) and name not in ("loss", "mixed_precision") else ""
            raise AscError(f"{name}: {problem}, got {data[name]!r}{hint}", source)
    if data["eta_min"] > data["lr"]:
        raise AscError(f"eta_min ({data['eta_min']}) must not exceed lr ({data['lr']})", source)
    values = {name: data[name] for name in names}
    values["spec_aug"] = None if data["spec_aug"] is None else tuple(data["spec_aug"])
    for name in ("lr", "eta_min", "weight_decay", "dropout", "focal_gamma", "holdout"):
        values[name] = float(data[name])
    values["mixup_alpha"] = None if data["mixup_alpha"] is None else float(data["mixup_alpha"])
    return TrainConfig(**values)


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """The config as plain YAML/JSON data (``spec_aug`` a list), accepted by :func:`config_from_dict`."""
    data = asdict(config)
    data["spec_aug"] = None if config.spec_aug is None else list(config.spec_aug)
    return data


def load_config(name_or_path: str | Path) -> TrainConfig:
    """A built-in config by name (:data:`BUILTIN_CONFIGS`) or a YAML file by path."""
    path = CONFIG_DIR / f"{name_or_path}.yaml" if str(name_or_path) in BUILTIN_CONFIGS else Path(name_or_path)
    if not path.is_file():
        raise AscError(f"unknown config: neither a built-in name {list(BUILTIN_CONFIGS)} nor a YAML file", name_or_path)
    import yaml  # the [train] extra's: imported here so that the CLI can say which extra is missing first

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise AscError(f"cannot read config: {exc}", path) from exc
    except yaml.YAMLError as exc:
        raise AscError(f"not valid YAML data: {' '.join(str(exc).split())}", path) from exc
    return config_from_dict(data, path)
