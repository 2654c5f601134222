"""Benchmark outputs: a terminal table, report.json, report.md, PNG plots (reliability diagram
per backend, confusion matrix) and DCASE submission files. Every file is written atomically."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from asc_deploy.atomic import atomic_open, atomic_path
from asc_deploy.labels import CLASS_LABELS, SAMPLE_RATE

COLUMNS = ("backend", "precision", "status", "size KiB", "log loss", "accuracy", "ECE", "p50 ms", "p95 ms", "clips/s", "parity")


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def table_rows(runs: list[dict]) -> list[list[str]]:
    rows = []
    for run in runs:
        metrics, timing, parity = run.get("metrics") or {}, run.get("timing") or {}, run.get("parity")
        parity_text = "reference" if run.get("reference") else "-" if parity is None else (
            f"ok (max {parity['max_abs_prob']:.1e})" if parity["passed"] else "BROKEN: " + ",".join(parity["broken"]))
        rows.append([
            run["backend"], run["precision"], run["status"] if run["status"] != "skipped" else f"skipped: {run['reason']}",
            _fmt(run["size_bytes"] / 1024, 1) if run.get("size_bytes") else "-",
            _fmt(metrics.get("logloss")), _fmt(100 * metrics["accuracy"], 2) + " %" if metrics else "-",
            _fmt(metrics.get("ece")), _fmt(timing.get("latency_p50_ms"), 1), _fmt(timing.get("latency_p95_ms"), 1),
            _fmt(timing.get("throughput_clips_per_s"), 1), parity_text,
        ])
    return rows


def terminal_table(runs: list[dict]) -> str:
    rows = [list(COLUMNS), *table_rows(runs)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown(report: dict) -> str:
    out = [f"# asc-bench report\n", f"model: `{report['model']}`  \ndata: `{report['data']}` ({report['split']}, "
           f"{report['clips']} clips, {report['failed_clips']} failed)  \nTTA passes: {report['nb_aug']}, seed {report['seed']}, "
           f"batch size {report['batch_size']}\n", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(row) + " |" for row in table_rows(report["runs"])]
    calibration = report.get("calibration")
    if calibration:
        from asc_deploy.bench.calibration import markdown_lines

        out += ["", "## Calibration per unit of compute", "",
                f"{calibration['method']} scaling fitted on {calibration['fitted_on']}; the same clips and TTA stripes as above, "
                "torch reference (reliability diagram: calibration.png).", "", *markdown_lines(calibration["rows"])]
    complexity = report.get("complexity")
    if complexity:
        out += ["", "## Complexity", "", *(f"- {line}" for line in complexity["lines"])]
    for run in report["runs"]:
        if run["status"] == "skipped" or not run.get("metrics"):
            continue
        m = run["metrics"]
        out += ["", f"## {run['backend']} {run['precision']}", "", "| class | log loss | accuracy |", "|---|---|---|"]
        out += [f"| {label} | {_fmt(loss)} | {_fmt(100 * acc, 2)} % |"
                for label, loss, acc in zip(CLASS_LABELS, m["class_logloss"], m["class_accuracy"])]
        out += ["", "| device | log loss | accuracy |", "|---|---|---|"]
        out += [f"| {d} | {_fmt(v['logloss'])} | {_fmt(100 * v['accuracy'], 2)} % |" for d, v in m["device_wise"].items()]
        out += ["", f"micro log loss {_fmt(m['micro_logloss'])}, ECE {_fmt(m['ece'])}, peak RSS "
                f"{_fmt(run.get('peak_rss_mb'), 0)} MB, real-time factor {_fmt((run.get('timing') or {}).get('real_time_factor'), 5)}"]
    if report["errors"]:
        out += ["", "## Files that failed", "", *(f"- `{name}`: {message}" for name, message in report["errors"])]
    return "\n".join(out) + "\n"


def write_json(path: Path, report: dict) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1, default=float)
        f.write("\n")


def write_text(path: Path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def plot_reliability(path: Path, runs: list[dict]) -> None:
    """One reliability diagram per backend/precision: accuracy vs confidence per bin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in runs if r.get("metrics")]
    fig, axes = plt.subplots(1, max(1, len(shown)), figsize=(3.2 * max(1, len(shown)), 3.4), squeeze=False)
    for ax, run in zip(axes[0], shown):
        rel = run["metrics"]["reliability"]
        bins = len(rel["bin_count"])
        centers = (np.arange(bins) + 0.5) / bins
        acc = np.nan_to_num(np.asarray(rel["bin_accuracy"], float))
        ax.bar(centers, acc, width=1 / bins, edgecolor="black", color="tab:blue", label="accuracy")
        ax.plot([0, 1], [0, 1], "k--", linewidth=1)
        ax.set(title=f"{run['backend']} {run['precision']}\nECE {run['metrics']['ece']:.3f}", xlabel="confidence", ylabel="accuracy",
               xlim=(0, 1), ylim=(0, 1))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def plot_confusion(path: Path, probs: np.ndarray, labels: np.ndarray, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(CLASS_LABELS)
    matrix = np.zeros((n, n))
    np.add.at(matrix, (labels, probs.argmax(1)), 1)
    matrix /= np.maximum(1, matrix.sum(1, keepdims=True))
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), CLASS_LABELS, rotation=60, ha="right")
    ax.set_yticks(range(n), CLASS_LABELS)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7, color="white" if matrix[i, j] > 0.5 else "black")
    ax.set(title=title, xlabel="predicted", ylabel="true")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def write_dcase_submission(folder: Path, label: str, filenames: list[str], probs: np.ndarray, run: dict, complexity: dict | None,
                           nb_aug: int) -> None:
    """``<label>.output.csv`` (tab-separated: filename without ``audio/``, scene_label, 10
    probabilities) and ``<label>.meta.yaml`` with complexity and development results, the way
    SP4ASC's test.py writes them (accuracies in %)."""
    import yaml

    with atomic_open(folder / f"{label}.output.csv", "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["filename", "scene_label", *CLASS_LABELS])
        for name, p in zip(filenames, probs):
            writer.writerow([name.removeprefix("audio/"), CLASS_LABELS[int(np.argmax(p))], *(float(v) for v in p)])
    metrics = run["metrics"]
    params = complexity["parameters_folded"] if complexity else None
    bits = {"fp32": 32, "fp16": 16, "int8": 8}[run["precision"]]
    meta = {
        "submission": {"label": label, "name": "SP4ASC separable CNN6 (asc-deploy)", "abbreviation": "SP4ASC"},
        "system": {
            "description": {"input_sampling_rate": f"{SAMPLE_RATE / 1000:g}kHz", "acoustic_features": "log-mel energies",
                            "data_augmentation": "SpecAugment, mixup", "machine_learning_method": "CNN",
                            "ensemble_method_subsystem_count": nb_aug if nb_aug > 0 else 1,
                            "inference": f"{run['backend']} {run['precision']}"},
            "complexity": {"total_parameters": params, "total_parameters_non_zero": complexity["nonzero_parameters_folded"] if complexity else None,
                           "model_size": params * bits / 8 / 1024 if params else None},
        },
        "results": {"development_dataset": {
            "overall": {"logloss": metrics["logloss"], "accuracy": 100 * metrics["accuracy"]},
            "class_wise": {lab: {"logloss": loss, "accuracy": 100 * acc}
                           for lab, loss, acc in zip(CLASS_LABELS, metrics["class_logloss"], metrics["class_accuracy"])},
            "device_wise": {d: {"logloss": v["logloss"], "accuracy": 100 * v["accuracy"]} for d, v in metrics["device_wise"].items()},
        }},
    }
    with atomic_open(folder / f"{label}.meta.yaml", "w", encoding="utf-8") as f:
        yaml.safe_dump(meta, f, sort_keys=False)
