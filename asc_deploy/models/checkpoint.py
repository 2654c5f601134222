"""Loading SP4ASC-format checkpoints (``{"net": state_dict, "config": ..., ...}``), this project's
own (same layout plus ``"format": "asc-deploy"``, and where it applies ``"holdout"``: the clips
asc-train held out, and ``"calibration"``: asc-calibrate's temperatures and record) and bare
state dicts. The state dict itself is always exactly Cnn6_60k's (loaded strictly).

Checkpoints are untrusted input: they are only ever read with ``torch.load(weights_only=True)``,
which refuses pickled code instead of running it.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch

from asc_deploy.errors import AscError
from asc_deploy.models.calibration import Temperature, checkpoint_temperature
from asc_deploy.models.cnn6 import BlockForm, Cnn6

OWN_FORMAT = "asc-deploy"


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read from disk: its weights, training config and provenance."""

    path: Path
    sha256: str
    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any] = field(default_factory=dict)
    source: str = "sp4asc"  # "sp4asc", "asc-deploy" or "state_dict"
    holdout: dict[str, Any] | None = None  # asc-train's calibration hold-out (asc_deploy.train.holdout)
    calibration: dict[str, Any] | None = None  # asc-calibrate's temperatures and record (asc_deploy.models.calibration)
    payload: dict[str, Any] = field(default_factory=dict, repr=False)  # everything the file holds

    def temperature(self, tta: bool) -> Temperature | None:
        """The temperature of the single-pass or TTA model; None when uncalibrated (see
        :func:`asc_deploy.models.calibration.checkpoint_temperature`)."""
        return checkpoint_temperature(self.calibration, tta, self.path)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint file safely; raise :class:`AscError` naming the file on any problem."""
    path = Path(path)
    if not path.is_file():
        raise AscError("no such checkpoint file" if not path.exists() else "not a file", path)
    if not _has_torch_magic(path):
        raise AscError(f"not a PyTorch checkpoint (neither a zip archive nor a pickle){_looks_like(path)}", path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL" in str(err) or "Unsupported global" in str(err):  # a reference to code, not data
            raise AscError("refused: the checkpoint contains pickled objects other than tensors and plain data "
                           "(it could run code when loaded); re-save it as a plain state dict", path) from err
        raise AscError(f"not a PyTorch checkpoint ({_last_reason(err)})", path) from err
    except Exception as err:  # torch raises RuntimeError, EOFError, zipfile errors... for non-checkpoints
        raise AscError(f"not a PyTorch checkpoint ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})", path) from err
    if isinstance(payload, dict) and isinstance(payload.get("net"), dict):
        source = OWN_FORMAT if payload.get("format") == OWN_FORMAT else "sp4asc"
        state_dict, config = payload["net"], payload.get("config") or {}
    elif isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        source, state_dict, config = "state_dict", payload, {}
    else:
        raise AscError("not a model checkpoint: expected a dict with a 'net' state dict, or a state dict", path)
    if not isinstance(config, dict):
        raise AscError("checkpoint 'config' is not a mapping", path)
    records = {key: payload.get(key) if source != "state_dict" else None for key in ("holdout", "calibration")}
    for key, value in records.items():
        if value is not None and not isinstance(value, dict):
            raise AscError(f"checkpoint '{key}' is not a mapping", path)
    return Checkpoint(path=path, sha256=file_sha256(path), state_dict=state_dict, config=config, source=source,
                      payload=payload, **records)


_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save's zip archive (1.6+), a legacy pickle (protocol 2+)


def _has_torch_magic(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4).startswith(_TORCH_MAGIC)


def _looks_like(path: Path) -> str:
    """A hint naming what a file that is not a checkpoint seems to be ("" when unknown)."""
    with open(path, "rb") as f:
        head = f.read(12)
    if head.startswith((b"RIFF", b"fLaC", b"OggS")):
        return "; it looks like an audio file"
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - protobuf's DecodeError and friends: not ONNX
        return ""
    if model.ir_version > 0 and len(model.graph.node) > 0:
        return "; it looks like an ONNX model: pass the PyTorch checkpoint (.pth) it was exported from"
    return ""


def _last_reason(err: BaseException) -> str:
    """The informative line of torch's multi-line unpickling errors (not its "please file an issue" plea)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip() and not line.strip().startswith("Please file an issue")]
    reasons = [line for line in lines if "invalid load key" in line or "error" in line.lower()]
    return (reasons or lines or [type(err).__name__])[-1][:200]


def _state_dict_mismatch(expected: dict[str, torch.Tensor], given: dict[str, Any]) -> list[str]:
    problems = [f"missing {k}" for k in expected if k not in given]
    problems += [f"unexpected {k}" for k in given if k not in expected]
    problems += [
        f"{k} has shape {tuple(given[k].shape)}, expected {tuple(v.shape)}"
        for k, v in expected.items()
        if k in given and (not isinstance(given[k], torch.Tensor) or given[k].shape != v.shape)
    ]
    return problems


def build_model(checkpoint: Checkpoint, block_form: BlockForm = BlockForm.SP4ASC) -> Cnn6:
    """The eval-mode :class:`Cnn6` holding the checkpoint's weights (strict: every key and shape),
    its blocks computed in ``block_form`` (the CROSS form is asc-train's and about 1.5x faster in
    torch on CPU; the same values up to float rounding)."""
    model = Cnn6(block_form=block_form)
    problems = _state_dict_mismatch(model.state_dict(), checkpoint.state_dict)
    if problems:
        shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
        raise AscError(f"checkpoint does not match Cnn6_60k: {shown}", checkpoint.path)
    model.load_state_dict(checkpoint.state_dict, strict=True)
    return model.eval()
