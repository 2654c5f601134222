"""Backends behind one runner contract: ``activate()``, ``infer(feed) -> {name: array}``,
``deactivate()``, usable as a context manager. Feeds and results follow the ONNX contract of
:mod:`asc_deploy.metadata` (``waveform`` and, for TTA, ``time_stripes``/``freq_stripes`` in;
``probs`` out), so every backend sees the same arrays and results compare element by element.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asc_deploy.extras import missing_distributions
from asc_deploy.metadata import INPUT_FREQ_STRIPES, INPUT_TIME_STRIPES, INPUT_WAVEFORM, OUTPUT_PROBS
from asc_deploy.ort_runner import OnnxRuntimeRunner, SessionConfig, provider_status
from asc_deploy.trt_runner import TensorRTRunner
from asc_deploy.trt_runner import available as tensorrt_available

PASS_LOGITS = "pass_logits"  # the torch reference's extra output: the CNN's raw logits of every pass, (batch, passes, classes)


class TorchRunner:
    """The reference: the checkpoint's model as trained (eval mode, nothing folded), fp32, in
    torch eager on CPU or CUDA, behind the same feed/result names as the ONNX graphs. A calibrated
    checkpoint's temperature of the single-pass or (``tta``) TTA model divides the logits, as in
    the exported graphs. Besides ``probs`` it can return :data:`PASS_LOGITS`, the CNN's logits
    of every pass before any temperature (one pass without stripes), from the same computation."""

    def __init__(self, checkpoint: str | Path, device: str = "cpu", tta: bool = False) -> None:
        self.checkpoint, self.device, self.tta = Path(checkpoint), device, tta
        self.name = f"torch-{device}"
        self.model = None
        self._memory: contextlib.ExitStack | None = None

    def activate(self) -> None:
        import torch

        from asc_deploy.allocator import freed_memory_kept
        from asc_deploy.models import LogMelFrontend, TTAClassifier, build_model, load_checkpoint
        from asc_deploy.models.cnn6 import BlockForm

        if self.device == "cpu":  # TTA batches allocate ~0.5 GB per op: reuse it instead of faulting it in every call
            self._memory = contextlib.ExitStack()
            self._memory.enter_context(freed_memory_kept())
        self._torch = torch
        checkpoint = load_checkpoint(self.checkpoint)
        model = TTAClassifier(LogMelFrontend(), build_model(checkpoint, BlockForm.CROSS), temperature=checkpoint.temperature(self.tta))
        self.model = model.to(self.device).eval()
        # Same weights, channels-last layout: torch's CPU kernels for the dilated depthwise convolutions
        # are 2.6x faster on it (60 TTA passes of a 3 s clip: 28 -> 11 ms a pass); results equal to ~3e-8.
        self.model.cnn.to(memory_format=torch.channels_last)

    def infer(self, feed: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        torch = self._torch
        waveform = torch.from_numpy(feed[INPUT_WAVEFORM]).to(self.device)
        if INPUT_TIME_STRIPES in feed:
            time, freq = (torch.from_numpy(feed[k]).to(self.device) for k in (INPUT_TIME_STRIPES, INPUT_FREQ_STRIPES))
        else:  # single pass: one pass without stripes
            time = freq = torch.zeros(1, 0, 2, dtype=torch.int64, device=self.device)
        with torch.inference_mode():
            logits = self.model.scorer.logits(self.model.augment(waveform, time, freq))  # (passes, batch, classes)
            probs = torch.softmax(self.model.scorer.calibration(logits), dim=-1).mean(dim=0)  # = self.model(...)
        if self.device != "cpu":
            torch.cuda.synchronize()
        result = {OUTPUT_PROBS: probs.cpu().numpy()}
        if outputs and PASS_LOGITS in outputs:
            result[PASS_LOGITS] = logits.transpose(0, 1).cpu().numpy()
        return result

    def deactivate(self) -> None:
        self.model = None
        if self._memory is not None:
            self._memory.close()
            self._memory = None

    def __enter__(self) -> TorchRunner:
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()


@dataclass(frozen=True)
class BackendSpec:
    """A backend to benchmark: ``kind`` is "torch", "onnxruntime", "ort" (onnxruntime on the ORT-format
    file of the ONNX export, as onnxruntime Mobile loads it), "tensorrt" or "executorch"; ``provider``
    the onnxruntime provider (cpu, cuda, tensorrt), the torch device (cpu, cuda) or ExecuTorch's
    delegate (xnnpack)."""

    kind: str
    provider: str

    @property
    def name(self) -> str:
        return {"torch": f"torch-{self.provider}", "onnxruntime": f"onnxruntime-{self.provider}", "ort": "onnxruntime-ort-format",
                "tensorrt": "tensorrt", "executorch": f"executorch-{self.provider}"}[self.kind]


def backend_specs(kinds: list[str]) -> list[BackendSpec]:
    """Expand ``--backends`` names: torch -> torch on CPU and CUDA, onnxruntime -> its CPU, CUDA
    and TensorRT providers, ort -> onnxruntime CPU on the ORT-format file, tensorrt -> native engines,
    executorch -> ExecuTorch programs with XNNPACK."""
    expand = {
        "torch": [BackendSpec("torch", "cpu"), BackendSpec("torch", "cuda")],
        "onnxruntime": [BackendSpec("onnxruntime", p) for p in ("cpu", "cuda", "tensorrt")],
        "ort": [BackendSpec("ort", "cpu")],
        "tensorrt": [BackendSpec("tensorrt", "gpu")],
        "executorch": [BackendSpec("executorch", "xnnpack")],
    }
    unknown = [k for k in kinds if k not in expand]
    if unknown:
        raise ValueError(f"unknown backend(s) {unknown}: choose from {sorted(expand)}")
    return [spec for kind in kinds for spec in expand[kind]]


def availability(spec: BackendSpec) -> tuple[bool, str]:
    """(usable here, reason if not), without loading anything heavy."""
    if spec.kind == "torch":
        if spec.provider == "cpu":
            return True, ""
        import torch

        return (True, "") if torch.cuda.is_available() else (False, "no CUDA GPU for torch")
    if spec.kind in ("onnxruntime", "ort"):
        return provider_status(spec.provider)
    if spec.kind == "executorch":
        missing = missing_distributions("executorch")
        return (False, f"needs the executorch extra ({', '.join(missing)} not installed)") if missing else (True, "")
    return tensorrt_available()


def make_runner(spec: BackendSpec, model: Path, checkpoint: Path | None, session: SessionConfig = SessionConfig(), tta: bool = False):
    """The runner of ``spec`` over ``model`` (ONNX file, engine or ExecuTorch program); torch needs the checkpoint
    (and ``tta``: whether it runs the TTA model, whose temperature differs)."""
    if spec.kind == "torch":
        return TorchRunner(checkpoint, spec.provider, tta)
    if spec.kind in ("onnxruntime", "ort"):
        return OnnxRuntimeRunner(model, spec.provider, session)
    if spec.kind == "executorch":
        from asc_deploy.bench.executorch_runner import ExecuTorchRunner

        return ExecuTorchRunner(model)
    return TensorRTRunner(model)
