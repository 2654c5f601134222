"""asc-bench's calibration table: calibration per unit of compute.

Four ways to turn one model into probabilities, scored on the same clips: the single pass, the
single pass + its temperature, TTA-A (mean softmax over A SpecAugment passes) and TTA-A + its
temperature (each pass's logits divided by T before its softmax). Per row: DCASE log loss
(class-wise mean) and micro log loss, macro accuracy, ECE (15 bins) and the CNN passes per
clip. The CNN's logits are computed once in torch (the reference pipeline); the rows apply the
temperatures of a calibrated checkpoint (``asc-calibrate``) to them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from asc_deploy.atomic import atomic_path
from asc_deploy.metrics import classwise_log_loss_accuracy, reliability
from asc_deploy.models.calibration import Temperature, format_temperature

COLUMNS = ("model", "CNN passes/clip", "temperature", "log loss", "micro log loss", "accuracy", "ECE")


def calibration_rows(single: np.ndarray, tta: np.ndarray | None, labels: np.ndarray, temperature: Temperature,
                     tta_temperature: Temperature | None) -> list[dict[str, Any]]:
    """The table's rows from the CNN's logits: ``single`` (clips, classes), ``tta`` (clips, passes,
    classes) or None (no TTA rows), class indices ``labels`` (clips,). ``tta_temperature`` None
    leaves out the TTA + T row (a checkpoint calibrated for the single pass only)."""
    from asc_deploy.train.calibrate import probabilities

    variants = [("single pass", single, 1.0), ("single pass + T", single, temperature)]
    if tta is not None:
        variants.append((f"TTA-{tta.shape[1]}", tta, 1.0))
        if tta_temperature is not None:
            variants.append((f"TTA-{tta.shape[1]} + T", tta, tta_temperature))
    rows = []
    for name, logits, t in variants:
        probs = probabilities(logits, t)
        scores, rel = classwise_log_loss_accuracy(probs, labels), reliability(probs, labels)
        rows.append({"model": name, "passes": 1 if logits.ndim == 2 else int(logits.shape[1]),
                     "temperature": list(t) if isinstance(t, tuple) else float(t), "logloss": scores["logloss"],
                     "micro_logloss": scores["micro_logloss"], "accuracy": scores["accuracy"], "ece": rel["ece"], "reliability": rel})
    return rows


def _cells(row: dict[str, Any]) -> list[str]:
    t = row["temperature"]
    return [row["model"], str(row["passes"]), format_temperature(tuple(t) if isinstance(t, list) else t), f"{row['logloss']:.4f}",
            f"{row['micro_logloss']:.4f}", f"{100 * row['accuracy']:.2f} %", f"{row['ece']:.4f}"]


def terminal_lines(rows: list[dict[str, Any]]) -> list[str]:
    table = [list(COLUMNS), *(_cells(r) for r in rows)]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    return [lines[0], "  ".join("-" * w for w in widths), *lines[1:]]


def markdown_lines(rows: list[dict[str, Any]]) -> list[str]:
    return ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS), *("| " + " | ".join(_cells(r)) + " |" for r in rows)]


def plot_calibration(path: Path, rows: list[dict[str, Any]], title: str) -> None:
    """One reliability diagram overlaying the rows: accuracy against mean confidence per bin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    for row, marker in zip(rows, "osD^v"):
        rel = row["reliability"]
        confidence, accuracy = np.asarray(rel["bin_confidence"], float), np.asarray(rel["bin_accuracy"], float)
        filled = np.asarray(rel["bin_count"]) > 0
        ax.plot(confidence[filled], accuracy[filled], marker=marker, markersize=4,
                label=f"{row['model']} (ECE {row['ece']:.3f}, log loss {row['logloss']:.3f})")
    ax.set(title=title, xlabel="confidence (top-1 probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
