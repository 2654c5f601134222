"""An ExecuTorch program (``asc-export --format pte``) in ExecuTorch's Python runtime, behind the
runner contract (activate, infer on named arrays, deactivate).

ExecuTorch's Python runtime links libtorch and imports torch, so this runner is part of the
benchmark (``asc-bench --backends executorch``), not of the torch-free runtime ``asc_deploy``: on
a device the same file runs in ExecuTorch's C++ runtime. Needs the ``executorch`` extra.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from asc_deploy.errors import AscError
from asc_deploy.export.quiet import executorch_import_quieted, native_stderr_lines_dropped
from asc_deploy.metadata import INPUT_TIME_STRIPES, INPUT_WAVEFORM, OUTPUT_LOGITS, OUTPUT_PROBS, PTE_METADATA_METHOD, ModelMetadata

OUTPUTS = (OUTPUT_LOGITS, OUTPUT_PROBS)  # the program's outputs, by position
# what the XNNPACK delegate's CPU probe logs when a method loads on a CPU without Arm's /sys files
# (five lines per load on x86: "Failed to open midr file ...")
CPUINFO_NOTICE = b"[cpuinfo_utils.cpp:"


def _load(path: Path):
    """The program at ``path`` in ExecuTorch's runtime (quietly imported: torchao's GPU-kernel and
    torch's deprecation notices are nothing a benchmark user can act on)."""
    with executorch_import_quieted():
        from executorch.runtime import Runtime

    try:
        return Runtime.get().load_program(path)
    except Exception as err:  # the runtime raises RuntimeError/ValueError with its own codes
        raise AscError(f"ExecuTorch cannot load the program ({str(err).splitlines()[0] if str(err) else type(err).__name__})", path) from err


def _metadata(program, path: Path) -> ModelMetadata:
    try:
        (raw,) = program.load_method(PTE_METADATA_METHOD).execute([])
    except Exception as err:
        raise AscError(f"not an asc-export program: no {PTE_METADATA_METHOD} method ({str(err).splitlines()[0] if str(err) else ''})", path) from err
    return ModelMetadata.from_props(json.loads(raw), path)


def read_pte_metadata(path: str | Path) -> ModelMetadata:
    """The model contract in an ExecuTorch program's constant method; :class:`AscError` naming the file otherwise."""
    return _metadata(_load(Path(path)), Path(path))


class ExecuTorchRunner:
    """Runs a ``.pte`` with ExecuTorch's XNNPACK-enabled Python runtime. Feeds of more clips than
    the program's batch bound are run in slices of at most that many clips."""

    def __init__(self, model_path: str | Path) -> None:
        self.model_path = Path(model_path)
        self.name = "executorch-xnnpack"
        self.metadata: ModelMetadata | None = None
        self._method = None
        self._bounds = (0, 0, 0)  # (clips per call, fewest samples, most samples), the program's, set by activate()

    def activate(self) -> None:
        from asc_deploy.export.program import MAX_BATCH, MAX_SAMPLES, MIN_SAMPLES

        program = _load(self.model_path)
        self.metadata = _metadata(program, self.model_path)
        try:
            with native_stderr_lines_dropped(CPUINFO_NOTICE):
                self._method = program.load_method("forward")
        except Exception as err:
            raise AscError(f"ExecuTorch cannot load the program's forward ({str(err).splitlines()[0] if str(err) else type(err).__name__})",
                           self.model_path) from err
        self._bounds = (MAX_BATCH, MIN_SAMPLES, MAX_SAMPLES)

    def infer(self, feed: dict[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        if self._method is None:
            raise RuntimeError("runner is not active: call activate() or use it as a context manager")
        if INPUT_TIME_STRIPES in feed:
            raise AscError("an ExecuTorch program is the single-pass classifier: no test-time augmentation (--nb-aug 0)",
                           self.model_path)
        import torch

        waveform = np.ascontiguousarray(feed[INPUT_WAVEFORM], np.float32)
        max_batch, min_samples, max_samples = self._bounds
        if not min_samples <= waveform.shape[1] <= max_samples:
            raise AscError(f"the program takes {min_samples} to {max_samples} samples per clip, got {waveform.shape[1]}", self.model_path)
        parts = [self._method.execute([torch.from_numpy(waveform[i : i + max_batch])]) for i in range(0, len(waveform), max_batch)]
        names = list(outputs) if outputs else list(OUTPUTS)
        return {name: np.concatenate([part[OUTPUTS.index(name)].numpy() for part in parts]) for name in names}

    def deactivate(self) -> None:
        self._method = None

    def __enter__(self) -> ExecuTorchRunner:
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()
