"""``asc-predict``: classify audio files with an exported model, locally (``--model``) or on a
Triton server (``--server URL``: ``asc-serve`` or the exported Triton repository, through
:mod:`asc_deploy.client`); CSV (DCASE column order) or JSON, the same for both.

A file that fails (unreadable, too short, ...) becomes a row with its error and the run goes on;
the exit code is 1 at the end if any file failed (``--strict`` stops at the first). Output files
are written atomically.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import click

from asc_deploy.atomic import atomic_open
from asc_deploy.client import DEFAULT_TIMEOUT_S, TritonClassifier
from asc_deploy.errors import AscError
from asc_deploy.ort_runner import SessionConfig
from asc_deploy.runtime import DEFAULT_PASSES_PER_CALL, DEFAULT_TTA_PASSES, Classifier, Prediction

Row = tuple[str, Prediction | None, str]  # filename, prediction, error
LOCAL_OPTIONS = ("provider", "tta_passes", "seed", "passes_per_call", "threads")  # the model runs here


def _rows(classifier: Classifier | TritonClassifier, files: tuple[str, ...], strict: bool) -> Iterator[Row]:
    for name in files:
        try:
            yield name, classifier.predict(name), ""
        except AscError as err:
            if strict:
                raise
            yield name, None, str(err)


def _write_csv(out: IO[str], labels: tuple[str, ...], rows: Iterator[Row]) -> list[Row]:
    writer = csv.writer(out, delimiter="\t", lineterminator="\n")
    writer.writerow(["filename", "scene_label", *labels, "error"])
    failed = []
    for name, pred, error in rows:
        if pred is None:
            writer.writerow([name, "", *[""] * len(labels), error])
            failed.append((name, pred, error))
        else:
            writer.writerow([name, pred.label, *(f"{p:.6f}" for p in pred.probs), ""])
    return failed


def _write_json(out: IO[str], rows: Iterator[Row]) -> list[Row]:
    results, failed = [], []
    for name, pred, error in rows:
        if pred is None:
            results.append({"filename": name, "error": error})
            failed.append((name, pred, error))
        else:
            results.append({"filename": name, "scene_label": pred.label, "probs": pred.as_dict(), "windows": pred.windows})
    json.dump(results, out, indent=1)
    out.write("\n")
    return failed


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model_path", type=click.Path(), help="ONNX or ORT-format model written by asc-export (the format is read from the file).")
@click.option("--server", "server_url", metavar="URL",
              help="Instead of --model: a Triton server serving asc_sp4asc (asc-serve or asc-export's repository), "
                   "http://host:port or grpc://host:port.")
@click.option("--timeout", "timeout_s", default=DEFAULT_TIMEOUT_S, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="--server: most seconds per request.")
@click.argument("files", nargs=-1, required=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None, help="Write here (atomically) instead of stdout.")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of tab-separated CSV.")
@click.option("--strict", is_flag=True, help="Stop at the first file that fails.")
@click.option("--provider", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda", "tensorrt"]))
@click.option("--tta-passes", default=DEFAULT_TTA_PASSES, show_default=True, help="SpecAugment passes of a TTA model.")
@click.option("--seed", default=0, show_default=True, help="Seed of the TTA stripes.")
@click.option("--hop-seconds", default=10.0, show_default=True, help="Hop between 10 s windows of long files.")
@click.option("--passes-per-call", default=DEFAULT_PASSES_PER_CALL, show_default=True, type=click.IntRange(min=1),
              help="10 s CNN passes per onnxruntime call (windows, TTA passes): more is faster and takes more memory.")
@click.option("--threads", default=0, show_default=True, type=click.IntRange(min=0), help="onnxruntime intra-op threads (0: one per core).")
@click.pass_context
def main(ctx: click.Context, model_path: str | None, server_url: str | None, timeout_s: float, files: tuple[str, ...],
         output: str | None, as_json: bool, strict: bool, provider: str, tta_passes: int, seed: int, hop_seconds: float, passes_per_call: int, threads: int) -> None:
    """Classify FILES (wav, flac, ogg; any rate and channel count) with MODEL or on a server.

    CSV columns: filename, scene_label, the ten class probabilities (DCASE order), error.
    """
    if (model_path is None) == (server_url is None):
        raise click.UsageError("give either --model or --server")
    given = [f"--{name.replace('_', '-')}" for name in LOCAL_OPTIONS
             if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT]
    if server_url is not None and given:
        raise click.UsageError(f"{', '.join(given)} set(s) how the model runs locally: not with --server")
    if server_url is None and ctx.get_parameter_source("timeout_s") is not click.core.ParameterSource.DEFAULT:
        raise click.UsageError("--timeout only applies with --server")
    try:
        if server_url is not None:
            classifier = TritonClassifier(server_url, timeout_s=timeout_s, hop_seconds=hop_seconds)
        else:
            classifier = Classifier(model_path, provider=provider, tta_passes=tta_passes, seed=seed, hop_seconds=hop_seconds,
                                    passes_per_call=passes_per_call, session=SessionConfig(intra_op_threads=threads))
        rows = _rows(classifier, files, strict)
        write = (lambda out: _write_json(out, rows)) if as_json else (lambda out: _write_csv(out, classifier.labels, rows))
        if output:
            with atomic_open(output, "w", newline="") as out:
                failed = write(out)
        else:
            failed = write(sys.stdout)
    except (AscError, ValueError) as err:
        click.echo(f"asc-predict: error: {err}", err=True)
        sys.exit(1)
    except OSError as err:  # the output cannot be written (its folder is a file, no permission, disk full...)
        click.echo(f"asc-predict: error: cannot write the output: {err}", err=True)
        sys.exit(1)
    if failed:
        click.echo(f"asc-predict: {len(failed)} of {len(files)} files failed:", err=True)
        for name, _, error in failed:
            click.echo(f"  {error}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
