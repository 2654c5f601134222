"""The main job on the embedded default, end to end, ending in one short summary:

synthetic data set and one long synthetic recording -> the demo recipe (SpecAugment, a
calibration hold-out) -> ``asc-calibrate`` (temperatures of the single pass and of TTA-A) ->
``asc-export`` fp32 ONNX (with the streaming graphs) and the fp16 files for phones (ONNX, ORT
format and, where the executorch extra is installed, an ExecuTorch program), each call lowering
its formats from one export -> ``asc-bench --nb-aug A`` of the torch reference and the fp32 TTA
graph, with the calibration table -> ``asc-bench --nb-aug 0`` of the fp16 phone files against the
reference -> ``asc-stream`` over the long recording.

Each step runs the project's own command in a subprocess, exactly as a user would type it (the
exports, single-threaded Python, three at the same time), and the first failure stops the job
with that command's exit code. The summary is read back
from the files the steps wrote (report.json, the models, the stream's output).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import click

from asc_deploy.errors import AscError
from asc_deploy.extras import missing_distributions

RECORDING_SCENES = ("park", "metro", "street_traffic", "shopping_mall")  # the long recording, in this order
STREAM_LINES_SHOWN = 4  # predictions of the stream printed at the top and at the end
MARKER = ".asc-main-job"  # written first into the output folder: the folder is the main job's to replace


Step = tuple[str, list[str]]  # (title, the module and arguments of ``python -m``)


def _run_steps(steps: Sequence[Step]) -> dict[str, float]:
    """Run ``steps`` at the same time (one step: in the foreground, its output live; several: each
    one's output shown when it ends) and return each one's seconds, in the order they ended; at the
    first failure the others are stopped and the job exits with that step's code. The first step
    is the longest: the others run at a lower priority (nice 10), so that it keeps a core."""
    for title, args in steps:
        click.echo(f"\n== {title}\n$ {' '.join(args)}", err=True)
    logs = [tempfile.TemporaryFile() if len(steps) > 1 else None for _ in steps]
    start = time.perf_counter()
    processes = [subprocess.Popen([sys.executable, "-m", *args], stdout=log, stderr=log, preexec_fn=(lambda: os.nice(10)) if index else None)
                 for index, ((_, args), log) in enumerate(zip(steps, logs))]
    seconds: dict[str, float] = {}
    try:
        while len(seconds) < len(steps):
            for (title, _), process, log in zip(steps, processes, logs):
                if title in seconds or process.poll() is None:
                    continue
                seconds[title] = time.perf_counter() - start
                if log is not None:
                    log.seek(0)
                    click.echo(f"\n== {title} ({seconds[title]:.1f} s)\n{log.read().decode(errors='replace').rstrip()}", err=True)
                if process.returncode:
                    click.echo(f"main job: step '{title}' failed with exit code {process.returncode}", err=True)
                    sys.exit(process.returncode)
            time.sleep(0.05)
    finally:
        for process, log in zip(processes, logs):
            if process.poll() is None:
                process.terminate()
                process.wait()
            if log is not None:
                log.close()
    return seconds


def prepare_out(out: Path) -> None:
    """Make ``out`` an empty folder owned by the main job: a folder that a previous main job wrote
    (its marker file) is emptied, so that running the job again starts over; AscError for a
    non-empty folder the main job did not write, which is never touched."""
    if out.is_dir() and any(out.iterdir()):  # (a file at ``out`` is refused by --out's type)
        if not (out / MARKER).is_file():
            raise AscError("holds files that the main job did not write: choose another --out", out)
        click.echo(f"main job: replacing the previous run in {out}", err=True)
        for child in out.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("asc-deploy main job output: running the main job again replaces this folder's contents\n")


def _read_stream(path: Path) -> list[tuple[float, float, str, float, str]]:
    """asc-stream's text output: (start s, end s, label, top probability, flags) per prediction."""
    rows = []
    for line in path.read_text().splitlines()[1:]:
        start, end, label, top, flags = line.split("\t")
        rows.append((float(start), float(end), label, float(top), flags))
    return rows


def stream_lines(path: Path, scenes: Sequence[str], seconds_per_scene: float) -> list[str]:
    """A few predictions of the stream and how often its label is the scene being played, over
    the windows that lie within one scene."""
    rows = _read_stream(path)
    if not rows:
        return ["stream: no prediction (the recording is shorter than one window)"]
    shown = rows if len(rows) <= 2 * STREAM_LINES_SHOWN else [*rows[:STREAM_LINES_SHOWN], None, *rows[-STREAM_LINES_SHOWN:]]
    lines = ["  start s    end s  label               prob  flags"]
    lines += ["  ..." if r is None else f"  {r[0]:7.2f}  {r[1]:7.2f}  {r[2]:<18} {r[3]:.3f}  {r[4]}" for r in shown]
    inside = [(scenes[int(r[0] // seconds_per_scene)], r[2]) for r in rows if int(r[0] // seconds_per_scene) == int((r[1] - 1e-6) // seconds_per_scene)]
    right = sum(truth == label for truth, label in inside)
    lines.append(f"  {len(rows)} predictions; of the {len(inside)} windows within one scene, {right} name the scene being played")
    return lines


def summary_lines(tta: dict, phone: dict, models: Path, stream: list[str], reports: Sequence[Path]) -> list[str]:
    """The main job's summary: the calibration table with what TTA and T bought (``tta``: the TTA
    benchmark's report.json), parity and size of every backend of both benchmarks (``phone``: the
    single-pass one of the phone files), the model files, the stream, and where the reports are."""
    from asc_deploy.bench.calibration import terminal_lines
    from asc_deploy.bench.report import terminal_table

    lines = [f"data: {tta['data']} ({tta['split']} split, {tta['clips']} clips); TTA passes: {tta['nb_aug']}"]
    calibration = tta.get("calibration")
    if calibration:
        rows = {r["model"]: r for r in calibration["rows"]}
        lines += ["", f"calibration per unit of compute ({calibration['method']} scaling fitted on {calibration['fitted_on']}):",
                  *terminal_lines(calibration["rows"]), "", *_claims(rows, tta["nb_aug"])]
    for report, what in ((tta, f"TTA-{tta['nb_aug']}"), (phone, "single pass, the fp16 files for phones")):
        ok = [r for r in report["runs"] if r["status"] != "skipped"]
        lines += ["", f"{what}: every backend against the torch reference (the trained model) on the same clips"
                      f"{' and stripes' if report['nb_aug'] else ''}:", terminal_table(ok)]
        lines += [f"  {r['backend']} {r['precision']}: skipped ({r['reason']})" for r in report["runs"] if r["status"] == "skipped"]
    lines += ["", "files:"]
    lines += [f"  {p.name:<38} {p.stat().st_size / 1024:8.1f} KiB" for p in sorted(models.iterdir()) if p.is_file()]
    lines += ["", "stream:", *stream, "", f"reports: {', '.join(str(r) for r in reports)}"]
    return lines


def _claims(rows: dict[str, dict], nb_aug: int) -> list[str]:
    """What the table shows about SP4ASC's claims, in words, with the numbers."""
    single, scaled = rows["single pass"], rows["single pass + T"]
    tta, tta_scaled = rows.get(f"TTA-{nb_aug}"), rows.get(f"TTA-{nb_aug} + T")
    if tta is None:
        return [f"single pass + T: log loss {single['logloss']:.4f} -> {scaled['logloss']:.4f}, ECE {single['ece']:.4f} -> {scaled['ece']:.4f}"]
    gain = single["logloss"] - tta["logloss"]
    lines = [f"TTA-{nb_aug} against a single pass: log loss {single['logloss']:.4f} -> {tta['logloss']:.4f} ({-gain:+.4f}), "
             f"ECE {single['ece']:.4f} -> {tta['ece']:.4f}, accuracy {100 * single['accuracy']:.2f} % -> {100 * tta['accuracy']:.2f} %, "
             f"at {nb_aug}x the CNN passes"]
    if gain > 0:
        share = (single["logloss"] - scaled["logloss"]) / gain
        lines.append(f"single pass + T: log loss {scaled['logloss']:.4f}, ECE {scaled['ece']:.4f}: {100 * share:.0f} % of TTA-{nb_aug}'s "
                     f"log-loss gain at 1/{nb_aug} of its compute")
    else:
        lines.append(f"TTA-{nb_aug} did not lower the log loss of this model (single pass + T: {scaled['logloss']:.4f})")
    if tta_scaled is not None:
        lines.append(f"TTA-{nb_aug} + T: log loss {tta_scaled['logloss']:.4f}, ECE {tta_scaled['ece']:.4f}")
    return lines


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--nb-aug", default=30, show_default=True, type=click.IntRange(min=1), help="TTA passes of calibration and benchmark.")
@click.option("--config", default="demo", show_default=True, help="asc-train config (needs a calibration hold-out).")
@click.option("--epochs", default=None, type=click.IntRange(min=1), help="Override the config's epochs.")
@click.option("--clips-per-class-device", default=3, show_default=True, type=click.IntRange(min=1), help="asc-synth's data set size.")
@click.option("--seconds", default=3.0, show_default=True, help="asc-synth's clip length.")
@click.option("--scene-seconds", default=15.0, show_default=True, help="Seconds of each scene in the long recording.")
def main(out: Path, nb_aug: int, config: str, epochs: int | None, clips_per_class_device: int, seconds: float, scene_seconds: float) -> None:
    """Run the whole path on the synthetic demo set into OUT and summarise it."""
    start = time.perf_counter()
    data, train, models, report = out / "data", out / "train", out / "models", out / "report"
    recording, stream_out = out / "recording.wav", out / "stream.tsv"
    calibrated, fp32, fp16 = models / "demo.pth", models / "demo.fp32.onnx", models / "demo.fp16.onnx"
    fp32_tta = models / "demo.fp32.tta.onnx"
    phone_formats, phone_backends = ("onnx,ort,pte", "torch,onnxruntime,ort,executorch") if not missing_distributions("executorch") \
        else ("onnx,ort", "torch,onnxruntime,ort")
    synth = ["--clips-per-class-device", str(clips_per_class_device), "--seconds", str(seconds)]
    steps: list[list[Step]] = [  # each group's steps run at the same time: the exports are single-threaded Python
        [("synthetic data set", ["asc_deploy.train.synth", str(data), *synth])],
        [("one long synthetic recording", ["asc_deploy.train.synth", str(recording), "--recording", ",".join(RECORDING_SCENES),
                                           "--seconds", str(scene_seconds), "--device", "s4"])],
        [("train the demo recipe", ["asc_deploy.train.cli", "--config", config, "--data", str(data), "--out", str(train),
                                    *(["--epochs", str(epochs)] if epochs else [])])],
        [(f"calibrate (single pass and TTA-{nb_aug}) on the held-out clips",
          ["asc_deploy.train.calibrate_cli", "--model", str(train / "last.pth"), "--data", str(data), "--nb-aug", str(nb_aug), "-o", str(calibrated)])],
        [(f"export fp16 for phones ({phone_formats.replace(',', ', ')})",
          ["asc_deploy.export.cli", "--checkpoint", str(calibrated), "--fp16", "--format", phone_formats, "-o", str(fp16)]),
         ("export ONNX fp32 and the streaming graphs", ["asc_deploy.export.cli", "--checkpoint", str(calibrated), "--stream", "-o", str(fp32)]),
         (f"export ONNX fp32 TTA-{nb_aug}", ["asc_deploy.export.cli", "--checkpoint", str(calibrated), "--tta", "-o", str(fp32_tta)])],
        [(f"benchmark TTA-{nb_aug}: torch reference, onnxruntime fp32",
          ["asc_deploy.bench.cli", "--model", str(fp32_tta), "--reference", str(calibrated), "--data", str(data), "--nb-aug", str(nb_aug),
           "--backends", "torch,onnxruntime", "--report", str(report / "tta")])],
        [("benchmark the fp16 phone files, single pass",
          ["asc_deploy.bench.cli", "--model", str(fp16), "--reference", str(calibrated), "--data", str(data), "--nb-aug", "0",
           "--backends", phone_backends, "--report", str(report / "phone")]),
         ("stream the long recording", ["asc_deploy.stream_cli", "--model", str(fp32), str(recording), "-o", str(stream_out)])],
    ]
    try:
        prepare_out(out)
    except AscError as err:
        click.echo(f"main job: error: {err}", err=True)
        sys.exit(1)
    try:
        timings = [_run_steps(group) for group in steps]
    except KeyboardInterrupt:  # the step's own command saw Ctrl-C too and left no half-written file
        click.echo("main job: interrupted", err=True)
        sys.exit(130)
    stream = stream_lines(stream_out, RECORDING_SCENES, scene_seconds)
    tta, phone = (json.loads((report / name / "report.json").read_text()) for name in ("tta", "phone"))
    lines = summary_lines(tta, phone, models, stream, [report / name / "report.md" for name in ("tta", "phone")])
    click.echo("\n== summary\n" + "\n".join(lines))
    click.echo("\ntimings (& : ran at the same time as the & lines beside it; the total is wall time):")
    for group in timings:
        for title, seconds_taken in group.items():
            click.echo(f" {'&' if len(group) > 1 else ' '} {title:<55} {seconds_taken:7.1f} s")
    click.echo(f"   {'total':<55} {time.perf_counter() - start:7.1f} s")


if __name__ == "__main__":
    main()
