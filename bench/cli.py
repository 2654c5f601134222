"""``asc-bench``: log loss, accuracy, calibration and latency of every backend on the same clips,
with batched test-time augmentation, and parity of each backend against the reference. For a
calibrated checkpoint (or ``--calibrate DIR``, which calibrates on the fly) also the calibration
table: single pass, single pass + T, TTA-A and TTA-A + T (:mod:`asc_deploy.bench.calibration`).

Exit code 0 when every backend that ran is within its parity tolerances and every clip loaded;
1 otherwise (a backend that cannot run here is reported as skipped and does not fail the run).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
import numpy as np

from asc_deploy.errors import AscError
from asc_deploy.extras import require_extras
from asc_deploy.metrics import classwise_log_loss_accuracy, groupwise, reliability
from asc_deploy.ort_runner import SessionConfig
from asc_deploy.runtime import read_model_metadata

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt")
BROWSER_ROUNDS = 3  # --browser: page loads per row, round-robin
SYNTH_DEFAULTS = {"clips_per_class_device": 3, "seconds": 3.0, "seed": 0}  # the embedded default data set


def default_data_dir() -> Path:
    """The synthetic set, generated once and cached (``ASC_DEPLOY_CACHE`` or ~/.cache/asc-deploy)."""
    from asc_deploy.train.synth import make_dataset

    cache = Path(os.environ.get("ASC_DEPLOY_CACHE", Path.home() / ".cache" / "asc-deploy"))
    folder = cache / "synth-n{clips_per_class_device}-{seconds:g}s-seed{seed}".format(**SYNTH_DEFAULTS)
    return make_dataset(folder, **SYNTH_DEFAULTS, progress=True)


def _model_files(model: Path, precisions: list[str], tta: bool, folder: Path, data: Path,
                 schedule: str = "gpu") -> tuple[dict[str, Path], Path | None]:
    """ONNX file per precision (exported here from a checkpoint with ``schedule``; int8 quantised
    from the fp32 export and calibrated on the training split of ``data``), and the checkpoint if any."""
    suffix = model.suffix.lower()
    if suffix in CHECKPOINT_SUFFIXES:
        from asc_deploy.export.onnx_export import export_onnx, schedule_for

        def name(precision: str) -> Path:
            return folder / f"model.{precision}{'.tta' if tta else ''}.onnx"

        if schedule == "cpu" and "fp16" in precisions:
            click.echo("asc-bench: note: fp16 is exported with the gpu schedule (the cpu schedule is for fp32 and int8)", err=True)
        files = {p: export_onnx(model, name(p), p, tta, schedule_for(p, schedule)) for p in precisions if p != "int8"}
        if "int8" in precisions:
            from asc_deploy.export.quantize import export_int8

            files["int8"] = export_int8(model, name("int8"), data, tta, schedule)
        return {p: files[p] for p in precisions}, model
    if suffix == ".onnx":
        meta = read_model_metadata(model)
        if (meta.variant == "tta") != tta:
            raise AscError(f"this is a {meta.variant} model but --nb-aug {'> 0' if tta else '0'} needs the "
                           f"{'tta' if tta else 'single'} variant (asc-export {'--tta' if tta else 'without --tta'})", model)
        return {meta.precision: model}, None
    if suffix in (".engine", ".plan"):
        return {"engine": model}, None
    raise AscError("unknown model type: expected a checkpoint (.pth), an ONNX file or a TensorRT engine", model)


def _plan_runs(specs, files: dict[str, Path], checkpoint: Path | None, engines_folder: Path, timing_cache: Path):
    """(spec, precision, model path, skip reason) for every backend and precision asked for."""
    from asc_deploy.bench.runners import availability

    plan = []
    for spec in specs:
        usable, reason = availability(spec)
        for precision, path in files.items():
            if spec.kind == "torch":
                if precision != next(iter(files)):
                    continue  # the torch reference runs once, in fp32
                reason_here = reason or ("" if checkpoint else "needs a checkpoint (torch runs the model as trained)")
                plan.append((spec, "fp32", checkpoint, reason_here))
            elif precision == "engine":
                plan.append((spec, precision, path, reason if spec.kind == "tensorrt" else "an engine runs on tensorrt only"))
            elif spec.kind == "executorch":
                plan.append((spec, precision, *_executorch_program(path, precision, checkpoint, reason)))
            elif spec.kind == "ort" and usable:
                plan.append((spec, precision, _ort_file(path, engines_folder), ""))
            elif spec.kind == "tensorrt" and usable and read_model_metadata(path).schedule == "cpu":
                plan.append((spec, precision, path, "a cpu-schedule graph is for onnxruntime on CPUs (export with --schedule gpu)"))
            elif spec.kind == "tensorrt" and usable and precision != "int8":
                from asc_deploy.export.tensorrt import build_engine

                engine = build_engine(path, engines_folder / f"{path.stem}.engine", fp16=precision == "fp16", timing_cache=timing_cache)
                plan.append((spec, precision, engine, ""))
            else:
                plan.append((spec, precision, path, reason))
    return plan


def _ort_file(onnx_path: Path, folder: Path) -> Path:
    """The ORT-format file of ``onnx_path``: the one beside it when its metadata is the ONNX file's
    (``asc-export --format onnx,ort`` writes it there), else converted into ``folder``."""
    beside = onnx_path.with_suffix(".ort")
    if beside.is_file() and read_model_metadata(beside) == read_model_metadata(onnx_path):
        return beside
    from asc_deploy.export.ort_format import convert_to_ort

    return convert_to_ort(onnx_path, folder / f"{onnx_path.stem}.ort")


def _executorch_program(onnx_path: Path, precision: str, checkpoint: Path | None, reason: str) -> tuple[Path | None, str]:
    """(ExecuTorch program beside ``onnx_path``, skip reason) for the executorch backend: the
    single-pass classifier in fp32 or fp16. The program already there is taken when it comes from
    the same checkpoint at the same precision and temperature (``asc-export --format onnx,pte``
    writes it there); otherwise it is exported there from ``checkpoint``."""
    if reason:
        return None, reason
    meta = read_model_metadata(onnx_path)
    if meta.variant == "tta":
        return None, "an ExecuTorch program is the single-pass classifier (--nb-aug 0)"
    beside = onnx_path.with_suffix(".pte")
    if beside.is_file():
        from asc_deploy.bench.executorch_runner import read_pte_metadata

        found = read_pte_metadata(beside)
        if (found.checkpoint_sha256, found.precision, found.temperature) == (meta.checkpoint_sha256, meta.precision, meta.temperature):
            return beside, ""
    if checkpoint is None or precision not in ("fp32", "fp16"):
        return None, ("exported from a checkpoint (MODEL or --reference), in fp32 or fp16" if checkpoint is None
                      else f"{precision}: not exported to ExecuTorch")
    from asc_deploy.export.executorch import export_pte

    return export_pte(checkpoint, beside, precision), ""


def run(model: Path, data: Path | None, split: str, backends: list[str], precisions: list[str], nb_aug: int, batch_size: int | None,
        seed: int, report_dir: Path, tolerance: list[str], threads: int, reference: Path | None = None,
        schedule: str = "gpu", calibrate_dir: Path | None = None) -> dict:
    """The whole benchmark; returns the report dict (also written to ``report_dir``).

    ``reference``: the checkpoint the torch reference runs when MODEL is an exported file (does
    this deployed file score what the trained model did?); a checkpoint MODEL is its own reference.
    ``schedule``: export schedule of a checkpoint MODEL ("gpu" or "cpu", see asc-export).
    ``calibrate_dir``: calibrate a checkpoint MODEL first (``asc-calibrate --data calibrate_dir
    --nb-aug nb_aug``, written to ``report_dir/models/calibrated.pth``) and benchmark that.
    """
    from asc_deploy.bench.benchmark import batches, run_backend, scan_clips, total_seconds
    from asc_deploy.bench.parity import compare, tolerances_with
    from asc_deploy.bench.runners import PASS_LOGITS, backend_specs, make_runner
    from asc_deploy.train.dataset import read_split

    if nb_aug < 0:
        raise ValueError(f"--nb-aug must be >= 0, got {nb_aug}")
    tolerances = tolerances_with(tolerance)
    unknown = [p for p in precisions if p not in tolerances]
    if unknown:
        raise ValueError(f"unknown precision(s) {unknown}: choose from {sorted(tolerances)}")
    specs = backend_specs(backends)
    session = SessionConfig(intra_op_threads=threads)  # bad values refused here, before any export
    # ~30 CNN passes per call bounds activation memory: a 3 s clip with 30 passes peaks at ~1.4 GB in torch;
    # two such clips per call (2.8 GB) ran 1.3-3x slower per pass here, with its time varying 3x call to call
    batch_size = batch_size or max(1, 30 // max(1, nb_aug))
    data = data or default_data_dir()
    report_dir.mkdir(parents=True, exist_ok=True)
    if calibrate_dir is not None:
        model = _calibrate(model, calibrate_dir, nb_aug, seed, report_dir / "models" / "calibrated.pth")
    files, checkpoint = _model_files(model, precisions, nb_aug > 0, report_dir / "models", data, schedule)
    spec_aug = _spec_aug(files, checkpoint)
    if nb_aug > 0 and not (spec_aug and (spec_aug[1] or spec_aug[3])):
        click.echo(f"asc-bench: warning: {model} has no SpecAugment stripes (trained without SpecAugment), so its {nb_aug} "
                   "TTA passes are identical single passes", err=True)
    checkpoint = checkpoint or reference
    clips = read_split(data, split)
    if any(c.label is None for c in clips):
        raise AscError(f"split {split!r} has no labels: scoring needs a labelled split (evaluate)", data)
    loaded = scan_clips(clips)
    for name, message in loaded.errors:
        click.echo(f"asc-bench: skipped clip: {message}", err=True)
    if not loaded.clips:
        raise AscError(f"no clip of split {split!r} could be read", data)
    labels = np.array([c.label for c in loaded.clips])
    devices = [c.device or "unknown" for c in loaded.clips]
    groups = batches(loaded, batch_size)
    complexity = _complexity(checkpoint)
    runs, results = [], {}
    calibrated = checkpoint is not None and _is_calibrated(checkpoint)
    pass_logits: np.ndarray | None = None  # (clips, passes, classes) from the first torch run of a calibrated checkpoint
    plan = _plan_runs(specs, files, checkpoint, report_dir / "engines", report_dir / "engines" / "timing.cache")
    for spec, precision, path, reason in plan:
        entry = {"backend": spec.name, "precision": precision, "model_file": str(path) if path else None,
                 "size_bytes": Path(path).stat().st_size if path and Path(path).is_file() else None}
        if reason:
            runs.append(entry | {"status": "skipped", "reason": reason})
            continue
        runner = make_runner(spec, path, checkpoint, session, tta=nb_aug > 0)
        keep = (PASS_LOGITS,) if spec.kind == "torch" and calibrated and pass_logits is None else ()  # the calibration table's logits
        try:
            result = run_backend(runner, loaded, groups, nb_aug, spec_aug, seed, f"{spec.name} {precision}", keep)
        except AscError as err:
            runs.append(entry | {"status": "failed", "reason": str(err)})
            continue
        metrics = classwise_log_loss_accuracy(result.probs, labels)
        metrics["device_wise"] = {d: {"logloss": v["logloss"], "accuracy": v["accuracy"]} for d, v in groupwise(result.probs, labels, devices).items()}
        metrics |= {"reliability": (rel := reliability(result.probs, labels)), "ece": rel["ece"]}
        results[(spec.name, precision)] = result
        pass_logits = result.extra.get(PASS_LOGITS, pass_logits)
        runs.append(entry | {"status": "ok", "metrics": metrics, "timing": result.timing(total_seconds(loaded), len(loaded.clips)),
                             "peak_rss_mb": result.peak_rss_mb})
    reference_key = next(iter(results), None)  # torch fp32 when it ran: plan order puts it first
    for entry in runs:
        key = (entry["backend"], entry["precision"])
        if entry["status"] != "ok":
            continue
        if key == reference_key:
            entry["reference"] = True
            continue
        parity = compare(results[reference_key].probs, results[key].probs, labels, tolerances[_tolerance_precision(entry, files)])
        entry["parity"] = parity.as_dict()
        if not parity.passed:
            entry["status"] = "parity-broken"
    report = {"model": str(model), "data": str(data), "split": split, "clips": len(loaded.clips), "failed_clips": len(loaded.errors),
              "errors": loaded.errors, "nb_aug": nb_aug, "seed": seed, "batch_size": batch_size, "reference": "/".join(reference_key or ()),
              "complexity": complexity, "runs": runs}
    if calibrated:
        from asc_deploy.bench.benchmark import iter_batch_waveforms

        report["calibration"] = _calibration_table(checkpoint, iter_batch_waveforms(loaded, groups), labels, nb_aug, spec_aug, seed,
                                                   pass_logits)
    _write_outputs(report, report_dir, results, loaded, labels, reference_key)
    return report


def _calibrate(model: Path, data: Path, nb_aug: int, seed: int, output: Path) -> Path:
    """``--calibrate DIR``: the calibrated checkpoint of a checkpoint MODEL, written to ``output``."""
    from asc_deploy.train.calibrate import calibrate, summary

    if model.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise ValueError(f"--calibrate needs a checkpoint as --model (it fits the temperature on its held-out clips), got {model}")
    for line in summary(calibrate(model, data, output, nb_aug, seed=seed)):
        click.echo(f"asc-bench: {line}", err=True)
    return output


def _is_calibrated(checkpoint: Path) -> bool:
    from asc_deploy.models import load_checkpoint

    return bool(load_checkpoint(checkpoint).calibration)


def _calibration_table(checkpoint: Path, waveforms, labels: np.ndarray, nb_aug: int, spec_aug: tuple[int, ...],
                       seed: int, torch_logits: np.ndarray | None) -> dict:
    """The calibration table of a calibrated checkpoint, from the torch reference's logits of the
    same clips and stripes as the backends: ``torch_logits`` (clips, passes, classes), the torch
    backend's own, when it ran (then only a TTA run's unaugmented pass is computed here)."""
    from asc_deploy.bench.calibration import calibration_rows
    from asc_deploy.models import build_model, load_checkpoint
    from asc_deploy.models.cnn6 import BlockForm
    from asc_deploy.train.calibrate import pass_logits

    loaded = load_checkpoint(checkpoint)
    label = f"{'calibration table':<28}"
    if torch_logits is None:
        single, tta = pass_logits(build_model(loaded, BlockForm.CROSS), waveforms, len(labels), nb_aug, spec_aug, seed, label)
    elif nb_aug > 0:
        single = pass_logits(build_model(loaded, BlockForm.CROSS), waveforms, len(labels), 0, spec_aug, seed, label)[0]
        tta = torch_logits.astype(np.float64)
    else:
        single, tta = torch_logits[:, 0].astype(np.float64), None
    tta_temperature = loaded.temperature(True) if loaded.calibration.get("tta_temperature") is not None else None
    rows = calibration_rows(single, tta, labels, loaded.temperature(False), tta_temperature)
    split = loaded.calibration.get("split") or {}
    return {"checkpoint": str(checkpoint), "method": loaded.calibration.get("method"), "fitted_on": f"{len(split.get('clips', []))} held-out "
            f"training clips of {loaded.calibration.get('data')}", "rows": rows}


def _tolerance_precision(entry: dict, files: dict[str, Path]) -> str:
    """An engine is judged by the precision recorded in its sidecar (fp32 when unknown)."""
    if entry["precision"] != "engine":
        return entry["precision"]
    import json

    sidecar = Path(str(files["engine"]) + ".json")
    return "fp16" if sidecar.is_file() and json.loads(sidecar.read_text()).get("fp16") else "fp32"


def _spec_aug(files: dict[str, Path], checkpoint: Path | None) -> tuple[int, ...]:
    if checkpoint is not None:
        from asc_deploy.export.onnx_export import checkpoint_spec_aug
        from asc_deploy.models import load_checkpoint

        return checkpoint_spec_aug(load_checkpoint(checkpoint))
    path = next(iter(files.values()))
    return read_model_metadata(path).spec_aug if path.suffix == ".onnx" else ()


def _complexity(checkpoint: Path | None) -> dict | None:
    if checkpoint is None:
        return None
    from asc_deploy.models import build_model, load_checkpoint
    from asc_deploy.models.complexity import complexity_report

    report = complexity_report(build_model(load_checkpoint(checkpoint)))
    return report.as_dict() | {"lines": report.lines()}


def _write_outputs(report: dict, folder: Path, results: dict, loaded, labels: np.ndarray, reference_key) -> None:
    from asc_deploy.bench import report as out

    out.write_json(folder / "report.json", report)
    out.write_text(folder / "report.md", out.markdown(report))
    ok_runs = [r for r in report["runs"] if r.get("metrics")]
    if ok_runs:
        out.plot_reliability(folder / "reliability.png", ok_runs)
    if report.get("calibration"):
        from asc_deploy.bench.calibration import plot_calibration

        plot_calibration(folder / "calibration.png", report["calibration"]["rows"], f"calibration ({report['split']}, {report['clips']} clips)")
    if reference_key:
        out.plot_confusion(folder / "confusion.png", results[reference_key].probs, labels, f"{' '.join(reference_key)} ({report['split']})")
    dcase = folder / "dcase"
    dcase.mkdir(exist_ok=True)
    filenames = [c.filename for c in loaded.clips]
    for entry in ok_runs:
        label = f"asc_deploy_{entry['backend']}_{entry['precision']}"
        out.write_dcase_submission(dcase, label, filenames, results[(entry["backend"], entry["precision"])].probs, entry,
                                   report["complexity"], report["nb_aug"])


def _perf(model: Path, data: Path | None, precisions: list[str] | None, nb_aug: int, batch_size: int | None, seed: int,
          report_dir: Path, threads: int, iterations: int, schedule: str) -> None:
    """``--perf``: :func:`asc_deploy.bench.perf.measure_all` with asc-bench's options; prints the
    table and writes ``report_dir/perf.json``. Exits 1 with one line on a user error."""
    from asc_deploy.bench import perf

    try:
        if model.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise ValueError(f"--perf needs a checkpoint as --model (it exports every precision itself), got {model}")
        run = perf.measure_all(model, iterations, 3, [batch_size] if batch_size else [1, 16], max(1, nb_aug),
                               threads=threads or os.cpu_count() or 1, precisions=precisions or perf.PRECISIONS,
                               schedules=[schedule], calibration_dir=data, seed=seed, progress=lambda m: click.echo(m, err=True))
    except (AscError, ValueError) as err:
        click.echo(f"asc-bench --perf: error: {err}", err=True)
        sys.exit(1)
    for line in run.table():
        click.echo(line)
    report_dir.mkdir(parents=True, exist_ok=True)
    click.echo(f"report: {perf.write_report(report_dir / 'perf.json', run)}")


def _browser(model: Path, report_dir: Path, iterations: int, schedule: str | None) -> None:
    """``--browser``: :func:`asc_deploy.bench.browser.run_cli`. Exits 1 with one line on a user error."""
    from asc_deploy.bench import browser

    try:
        report = browser.run_cli(model, [schedule] if schedule else ["gpu", "cpu"], iterations, BROWSER_ROUNDS, report_dir,
                                 click.echo, lambda m: click.echo(f"asc-bench --browser: {m}", err=True))
    except (AscError, ValueError) as err:
        click.echo(f"asc-bench --browser: error: {err}", err=True)
        sys.exit(1)
    click.echo(f"report: {report}")


def _csv_list(_ctx, _param, value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", required=True, type=click.Path(path_type=Path), help="Checkpoint (exported on the fly), ONNX file or TensorRT engine.")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None, help="TAU 2020 Mobile layout folder [default: the cached synthetic set].")
@click.option("--split", default="evaluate", show_default=True, type=click.Choice(["train", "evaluate"]))
@click.option("--backends", default="torch,onnxruntime,tensorrt", show_default=True, callback=_csv_list)
@click.option("--precision", "precisions", default="fp32,fp16", show_default=True, callback=_csv_list)
@click.option("--nb-aug", default=30, show_default=True, help="SpecAugment passes of test-time augmentation (0: single pass).")
@click.option("--batch-size", default=None, type=click.IntRange(min=1), help="Clips per call [default: about 30 CNN passes per call].")
@click.option("--seed", default=0, show_default=True, help="Seed of the TTA stripes.")
@click.option("--report", "report_dir", default="bench-report", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--tolerance", multiple=True, help="Override a parity tolerance: PRECISION.NAME=VALUE (e.g. fp16.max_abs_prob=0.1).")
@click.option("--threads", default=0, show_default=True, help="onnxruntime intra-op threads (0: one per core).")
@click.option("--reference", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Checkpoint the torch reference runs when MODEL is an ONNX file or engine.")
@click.option("--perf", is_flag=True, help="CPU latency mode instead: SP4ASC's eager pipeline against onnxruntime at every "
              "precision (default fp32,fp16,int8), single pass and TTA (--nb-aug passes), at batch 1 and 16 (or --batch-size), "
              "with speed-ups and the distance to the compute floor measured in the same run. MODEL must be a checkpoint; "
              "--data calibrates int8 (python -m asc_deploy.bench.perf has every knob).")
@click.option("--browser", is_flag=True, help="Browser mode instead: examples/web (onnxruntime-web, wasm) in headless Chromium "
              "against onnxruntime native on 1 and 2 threads, one 10 s clip per call; a checkpoint MODEL is exported with "
              "--schedule, or with both schedules when it is not given (needs a checkout with .ci/install-browser done).")
@click.option("--iterations", default=20, show_default=True, help="--perf: timed calls per row, after warm-up; --browser: "
              "clips per page load.")
@click.option("--calibrate", "calibrate_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Calibrate the checkpoint MODEL first on the held-out clips of this data set (asc-calibrate with --nb-aug) "
                   "and benchmark the calibrated model; a calibrated checkpoint needs no --calibrate.")
@click.option("--schedule", type=click.Choice(["gpu", "cpu"]), default=None,
              help="Export schedule of a checkpoint MODEL (see asc-export --schedule) [default: gpu; with --perf: cpu].")
@click.pass_context
def main(ctx: click.Context, model: Path, data: Path | None, split: str, backends: list[str], precisions: list[str], nb_aug: int,
         batch_size: int | None, seed: int, report_dir: Path, tolerance: tuple[str, ...], threads: int, reference: Path | None,
         perf: bool, browser: bool, iterations: int, schedule: str | None, calibrate_dir: Path | None) -> None:
    """Benchmark MODEL on every backend available here; print the table, write the report."""
    try:
        # train: the torch reference and the data set reader
        require_extras("asc-bench", "bench", "train", *(("executorch",) if "executorch" in backends else ()))
    except AscError as err:
        click.echo(f"asc-bench: error: {err}", err=True)
        sys.exit(1)
    from asc_deploy.bench.report import terminal_table

    if browser:
        _browser(model, report_dir, iterations, schedule)
        return
    if perf:
        explicit = ctx.get_parameter_source("precisions") is click.core.ParameterSource.COMMANDLINE
        _perf(model, data, precisions if explicit else None, nb_aug, batch_size, seed, report_dir, threads, iterations,
              schedule or "cpu")
        return
    try:
        report = run(model, data, split, backends, precisions, nb_aug, batch_size, seed, report_dir, list(tolerance), threads, reference,
                     schedule or "gpu", calibrate_dir)
    except (AscError, ValueError) as err:
        click.echo(f"asc-bench: error: {err}", err=True)
        sys.exit(1)
    click.echo(terminal_table(report["runs"]))
    if report.get("calibration"):
        from asc_deploy.bench.calibration import terminal_lines

        click.echo(f"\ncalibration ({report['calibration']['method']}, fitted on {report['calibration']['fitted_on']}):")
        click.echo("\n".join(terminal_lines(report["calibration"]["rows"])))
    click.echo(f"report: {report_dir / 'report.md'} (and report.json, reliability.png, confusion.png, "
               f"{'calibration.png, ' if report.get('calibration') else ''}dcase/)")
    broken = [f"{r['backend']} {r['precision']}: {', '.join(r['parity']['broken'])}" for r in report["runs"] if r["status"] == "parity-broken"]
    failed = [f"{r['backend']} {r['precision']}: {r['reason']}" for r in report["runs"] if r["status"] == "failed"]
    for line in broken:
        click.echo(f"asc-bench: parity broken: {line}", err=True)
    for line in failed:
        click.echo(f"asc-bench: backend failed: {line}", err=True)
    if report["failed_clips"]:
        click.echo(f"asc-bench: {report['failed_clips']} clip(s) could not be read", err=True)
    if broken or failed or report["failed_clips"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
