"""Paths of the SP4ASC reference material in ../shared (present in developer checkouts and CI)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SP4ASC = SHARED / "sp4asc"
OPS = SHARED / "ops"
CHECKPOINT_DIRS = {
    "ce": "configs.cnn6_small_dropout_2_specAugment_128_2_32_2",
    "mixup": "configs.cnn6_small_dropout_2_specAugment_128_2_16_2_mixup_2",
    "focal": "configs.cnn6_small_dropout_2_specAugment_128_2_32_2_focal_loss",
}
TAGS = tuple(CHECKPOINT_DIRS)
needs_shared = pytest.mark.skipif(not SP4ASC.is_dir(), reason="../shared/sp4asc (SP4ASC checkpoints and golden outputs) is absent")


def checkpoint_path(tag: str) -> Path:
    return SP4ASC / "trained_models" / CHECKPOINT_DIRS[tag] / "ckpt.pth"
