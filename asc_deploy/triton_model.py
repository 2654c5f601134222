"""The Triton model contract shared by ``asc-export --format triton`` and ``asc-serve`` (no torch).

Both serve the model under :data:`MODEL_NAME` with input ``waveform`` FP32 (batch, samples) of
variable length and outputs ``probs`` (and ``logits`` for a single-pass model) FP32 (batch,
classes), dynamic batching with the same preferred sizes and queue delay, and the class labels
as the JSON list in the model config parameter :data:`LABELS_PARAMETER`, so that one client
(:mod:`asc_deploy.client`) works against either server.
"""

from __future__ import annotations

MODEL_NAME = "asc_sp4asc"
MAX_QUEUE_DELAY_US = 5000  # how long Triton may hold a request to fill a preferred batch
LABELS_PARAMETER = "labels"  # model config parameter: JSON list of the class labels in output order


def preferred_batch_sizes(max_batch_size: int) -> list[int]:
    """Dynamic batching's preferred sizes for ``max_batch_size``: half of it and all of it."""
    return sorted({max(1, max_batch_size // 2), max_batch_size})
