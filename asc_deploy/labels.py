"""Constants shared by every part of asc-deploy: class labels, sample rate, clip length.

Labels are in SP4ASC's index order (the order of the 10 logits of the official checkpoints).
"""

from __future__ import annotations

CLASS_LABELS: tuple[str, ...] = (
    "airport",
    "bus",
    "metro",
    "metro_station",
    "park",
    "public_square",
    "shopping_mall",
    "street_pedestrian",
    "street_traffic",
    "tram",
)
NUM_CLASSES = len(CLASS_LABELS)

SAMPLE_RATE = 44_100  # Hz, the only rate the model sees
CLIP_SECONDS = 10.0  # TAU 2020 Mobile clip length the models were trained on
CLIP_SAMPLES = int(SAMPLE_RATE * CLIP_SECONDS)  # 441,000 samples
MIN_SECONDS = 1.0  # shorter clips are refused by the runtime
N_FFT = 2048  # samples per STFT frame
HOP_LENGTH = 1024  # samples between frames
MEL_BINS = 256


def num_frames(num_samples: int) -> int:
    """Frames of the centred STFT for a clip of ``num_samples`` samples (431 for 10 s)."""
    return num_samples // HOP_LENGTH + 1
