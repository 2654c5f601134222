"""The ONNX model contract shared by the exporter and the runtime (no torch here).

Inputs: ``waveform`` float32 (batch, samples), mono 44.1 kHz, both axes dynamic. The TTA variant
also takes ``time_stripes`` (passes, n, 2) and ``freq_stripes`` (passes, m, 2) int64 ``[start,
width]`` in frames and mel bins. Outputs: ``logits`` and ``probs`` float32 (batch, classes); the
TTA variant outputs ``probs`` only (mean softmax over passes). ``metadata_props`` hold the keys
of :class:`ModelMetadata`, each a string (lists as JSON).

A calibrated model (``temperature`` other than 1) divides the CNN's logits by its temperature
before every softmax: ``logits`` is then the scaled logits (``probs`` = softmax(``logits``) holds
for every model; the CNN's raw logits are ``logits`` x ``temperature``), and each TTA pass is
scaled before its softmax.

Streaming graphs (``asc-export --stream``, beside ``M.onnx``; see :func:`stream_graph_paths`):
``M.frontend.onnx`` maps ``waveform`` (batch, samples) to ``logmel`` (batch, 1, samples // hop - 1,
bins) in dB WITHOUT padding (frame t covers samples [t * hop, t * hop + n_fft)); ``M.logmel.onnx``
is the classifier from ``logmel`` (batch, 1, frames, bins), with the same stripes and outputs as
``M.onnx``. A single-pass model also gets the same classifier split at the CNN's last feature map:
``M.features.onnx`` (``logmel`` -> ``features`` (batch, 128, frames // 16, bins // 16)) and
``M.head.onnx`` (``features`` (batch, 128, columns, bins // 16) -> ``logits``, ``probs``). Their
metadata is ``M.onnx``'s with ``graph`` "frontend", "logmel", "features" or "head".

ExecuTorch programs (``asc-export --format pte``, single pass) have no ``metadata_props``: their
method ``forward`` takes ``waveform`` and returns (``logits``, ``probs``) by position, and their
constant method :data:`PTE_METADATA_METHOD` returns the same key/value pairs as one JSON object
string (``ModelMetadata.from_props(json.loads(...))``).
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

from asc_deploy.errors import AscError

INPUT_WAVEFORM = "waveform"
INPUT_TIME_STRIPES = "time_stripes"
INPUT_FREQ_STRIPES = "freq_stripes"
OUTPUT_LOGITS = "logits"
OUTPUT_PROBS = "probs"
INPUT_LOGMEL = OUTPUT_LOGMEL = "logmel"
PTE_METADATA_METHOD = "asc_metadata"  # an ExecuTorch program's constant method returning the contract as JSON
PTE_FILE_IDENTIFIER = b"ET"  # bytes 4-5 of an ExecuTorch program (its flatbuffer file identifier: "ET12" and later)
INPUT_FEATURES = OUTPUT_FEATURES = "features"


class Graph(str, enum.Enum):
    """Which graph of a model a file holds: the whole classifier, or one of the two streaming graphs."""

    WAVEFORM = "waveform"  # waveform -> probs (the single-file contract)
    FRONTEND = "frontend"  # waveform -> logmel, no padding
    LOGMEL = "logmel"  # logmel -> probs
    FEATURES = "features"  # logmel -> the CNN's last feature map (single-pass models)
    HEAD = "head"  # features -> probs (single-pass models)


def is_executorch_program(path: str | Path) -> bool:
    """Whether the file at ``path`` is an ExecuTorch program (told by its header, not its name)."""
    with open(path, "rb") as f:
        return f.read(8)[4:6] == PTE_FILE_IDENTIFIER


def stream_graph_paths(model_path: str | Path) -> tuple[Path, Path]:
    """(frontend, logmel) streaming graphs written beside ``model_path``: M.onnx -> M.frontend.onnx, M.logmel.onnx."""
    path = Path(model_path)
    return path.with_name(f"{path.stem}.frontend.onnx"), path.with_name(f"{path.stem}.logmel.onnx")


def stream_cnn_paths(model_path: str | Path) -> tuple[Path, Path]:
    """(features, head) graphs of a single-pass model's CNN split, beside ``model_path``:
    M.onnx -> M.features.onnx, M.head.onnx."""
    path = Path(model_path)
    return path.with_name(f"{path.stem}.features.onnx"), path.with_name(f"{path.stem}.head.onnx")


@dataclass(frozen=True)
class ModelMetadata:
    labels: tuple[str, ...]
    sample_rate: int  # Hz
    n_fft: int  # samples
    hop_length: int  # samples
    mel_bins: int
    clip_seconds: float  # clip length the model was trained on
    precision: str  # "fp32", "fp16" or "int8" (CNN; the frontend is always float32)
    variant: str  # "single" or "tta"
    spec_aug: tuple[int, ...]  # [T, n, F, m] the TTA stripes are drawn with (empty: none)
    targets: tuple[str, ...]  # runtimes whose operator lists the graph was checked against
    checkpoint_sha256: str
    package_version: str
    # "gpu" (whole tensors, TTA passes batched) or "cpu" (cache-sized: TTA passes in a Loop);
    # files written before this key existed are "gpu"
    schedule: str = "gpu"
    # logits divided by it before the softmax: a number, or a list of one per class; 1.0 for an
    # uncalibrated model (and for files written before this key existed)
    temperature: float | tuple[float, ...] = 1.0
    graph: str = Graph.WAVEFORM.value  # see Graph; files written before this key existed are "waveform"

    @property
    def calibrated(self) -> bool:
        return self.temperature != 1.0

    @property
    def loops_over_passes(self) -> bool:
        """True for a TTA graph that runs its passes one at a time in an ONNX Loop (CPU schedule):
        one pass's activations are live at a time, so all passes can go in one call."""
        return self.variant == "tta" and self.schedule == "cpu"

    def to_props(self) -> dict[str, str]:
        """String key/value pairs for ONNX ``metadata_props``."""
        return {k: json.dumps(list(v)) if isinstance(v, tuple) else str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_props(cls, props: dict[str, str], source: str | Path = "<model>") -> ModelMetadata:
        """Parse ``metadata_props``; :class:`AscError` naming ``source`` if a key is missing or bad."""
        values = {}
        try:
            for f in fields(cls):
                if f.name not in props and f.default is not MISSING:
                    continue
                raw = props[f.name]
                if f.name == "temperature":
                    values[f.name] = parse_temperature(json.loads(raw), len(values["labels"]))
                elif f.type.startswith("tuple"):
                    values[f.name] = tuple(json.loads(raw))
                elif f.type == "int":
                    values[f.name] = int(raw)
                elif f.type == "float":
                    values[f.name] = float(raw)
                else:
                    values[f.name] = raw
        except KeyError as err:
            raise AscError(f"not an asc-deploy model: metadata key {err} is missing", source) from err
        except (ValueError, TypeError) as err:
            raise AscError(f"bad model metadata ({err})", source) from err
        if values["variant"] not in ("single", "tta"):
            raise AscError(f"bad model metadata: unknown variant {values['variant']!r}", source)
        if values.get("schedule", "gpu") not in ("gpu", "cpu"):
            raise AscError(f"bad model metadata: unknown schedule {values['schedule']!r}", source)
        if values.get("graph", Graph.WAVEFORM.value) not in {g.value for g in Graph}:
            raise AscError(f"bad model metadata: unknown graph {values['graph']!r}", source)
        return cls(**values)


def parse_temperature(value: object, classes: int) -> float | tuple[float, ...]:
    """A temperature read from a file: a finite number > 0, or a list (or tuple) of ``classes`` of
    them, returned as a float or a tuple; ValueError otherwise."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if (isinstance(value, (list, tuple)) and len(values) != classes
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in values)):
        raise ValueError(f"temperature must be a number > 0 or a list of {classes} of them, got {value!r}")
    return tuple(float(v) for v in values) if isinstance(value, (list, tuple)) else float(value)
