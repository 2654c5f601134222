"""``asc-export``: checkpoint -> ONNX (fp32/fp16, single pass or TTA), ORT format for onnxruntime
Mobile, TensorRT engine, Triton model repository or ExecuTorch program (.pte, single pass). Prints
the complexity report and the size of what it wrote."""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from asc_deploy.errors import AscError
from asc_deploy.extras import require_extras

if TYPE_CHECKING:
    from asc_deploy.export.onnx_export import Precision  # imported in main, after the extras check


FORMATS = ("onnx", "ort", "trt", "triton", "pte")
SUFFIXES = {"onnx": ".onnx", "ort": ".ort", "trt": ".engine", "triton": "", "pte": ".pte"}
ALONE = ("trt", "triton")  # formats that are never combined with others in one call


def _default_output(checkpoint: str, fmt: str, fp16: bool, tta: bool, int8: bool = False) -> Path:
    stem = Path(checkpoint).parent.name if Path(checkpoint).name == "ckpt.pth" else Path(checkpoint).stem
    suffix = SUFFIXES[fmt]
    precision = "int8" if int8 else "fp16" if fp16 else "fp32"
    return Path(f"{stem}{'.tta' if tta else ''}.{precision}{suffix}" if suffix else f"{stem}-triton")


def _formats(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    """``--format``: one format, or several of onnx, ort and pte separated by commas."""
    formats = [f.strip() for f in value.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if not formats or unknown:
        raise click.BadParameter(f"{', '.join(unknown) or 'nothing'}: choose from {', '.join(FORMATS)} (several of onnx, ort, pte with commas)")
    if len(formats) > 1 and any(f in ALONE for f in formats):
        raise click.BadParameter(f"{' and '.join(ALONE)} are exported alone; only onnx, ort and pte combine")
    return sorted(set(formats), key=FORMATS.index)  # onnx before ort: the .ort is converted from the .onnx written


def _outputs(formats: list[str], output: str | None, checkpoint: str, fp16: bool, tta: bool, int8: bool) -> dict[str, Path]:
    """The output path of each format: ``output`` for one format; with several, ``output`` with its
    suffix replaced by each format's (demo.fp32.onnx -> demo.fp32.ort, demo.fp32.pte)."""
    if output is None:
        return {fmt: _default_output(checkpoint, fmt, fp16, tta, int8) for fmt in formats}
    if len(formats) == 1:
        return {formats[0]: Path(output)}
    return {fmt: Path(output).with_suffix(SUFFIXES[fmt]) for fmt in formats}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--checkpoint", required=True, type=click.Path(), help="SP4ASC ckpt.pth or an asc-train checkpoint.")
@click.option("--format", "formats", default="onnx", show_default=True, callback=_formats,
              help="onnx, ort, trt, triton or pte; several of onnx, ort and pte separated by commas are lowered from one export "
                   "in one call. ort: ORT format for onnxruntime Mobile; pte: ExecuTorch program with the XNNPACK delegate "
                   "(phones, embedded; needs the executorch extra).")
@click.option("--fp16", is_flag=True, help="CNN weights and arithmetic in fp16 (frontend and I/O stay float32).")
@click.option("--tta", is_flag=True, help="Export the test-time-augmentation variant (stripes as inputs).")
@click.option("--output", "-o", type=click.Path(), default=None, help="Output file (onnx, ort, trt, pte) or repository folder (triton); "
              "with several formats, each format's file is this path with its own suffix. "
              "ort also writes M.required_operators.config beside M.ort (for a minimal onnxruntime build).")
@click.option("--workspace-mib", default=1024, show_default=True, help="TensorRT builder workspace limit.")
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None, help="TensorRT timing cache to reuse and update.")
@click.option("--engine", is_flag=True, help="triton: also build a TensorRT engine (model.plan).")
@click.option("--trt-accelerator", is_flag=True, help="triton: enable onnxruntime's TensorRT accelerator in config.pbtxt.")
@click.option("--schedule", type=click.Choice(["gpu", "cpu"]), default="gpu", show_default=True,
              help="onnx: gpu = whole tensors, TTA passes batched (GPUs, TensorRT, browsers); cpu = cache-sized "
                   "activations, TTA passes in a Loop (onnxruntime on CPUs: faster, less memory).")
@click.option("--stream", is_flag=True, help="onnx: also write the streaming graphs beside M.onnx: M.frontend.onnx, M.logmel.onnx "
              "and, single pass, M.features.onnx and M.head.onnx (for asc-stream and asc_deploy.streaming).")
@click.option("--int8", is_flag=True, help="onnx: quantise the CNN to int8 (static, QDQ; the frontend stays float32).")
@click.option("--calibration-data", type=click.Path(), default=None,
              help="--int8: data set folder (TAU 2020 Mobile layout) whose training split calibrates the quantisation.")
def main(checkpoint: str, formats: list[str], fp16: bool, tta: bool, output: str | None, workspace_mib: int, timing_cache: str | None,
         engine: bool, trt_accelerator: bool, schedule: str, stream: bool, int8: bool, calibration_data: str | None) -> None:
    """Export CHECKPOINT for deployment; the graph starts at the raw 44.1 kHz waveform."""
    outputs = _outputs(formats, output, checkpoint, fp16, tta, int8)
    try:
        if (engine or trt_accelerator) and formats != ["triton"]:
            raise ValueError("--engine and --trt-accelerator only apply to --format triton")
        if schedule == "cpu" and not set(formats) <= {"onnx", "ort"}:
            raise ValueError("--schedule cpu only applies to --format onnx and ort (TensorRT and Triton engines want whole tensors)")
        if stream and ("onnx" not in formats or int8):
            raise ValueError("--stream applies to --format onnx in fp32 or fp16 (not --int8)")
        if int8 and fp16:
            raise ValueError("--int8 and --fp16 exclude each other")
        if int8 and formats != ["onnx"]:
            raise ValueError("--int8 only applies to --format onnx")
        if tta and "pte" in formats:
            raise ValueError("--format pte exports the single-pass classifier (no --tta)")
        if int8 and not calibration_data:
            raise ValueError("--int8 needs --calibration-data DIR (a data set whose training split calibrates it)")
        if calibration_data and not int8:
            raise ValueError("--calibration-data only applies to --int8")
        needs_trt = "trt" in formats or engine
        extras = ("train", *(("executorch",) if "pte" in formats else ()), *(("trt",) if needs_trt else ()))
        require_extras(f"asc-export --format {','.join(formats)}" if formats != ["onnx"] else "asc-export", *extras)
        from asc_deploy.export.onnx_export import Precision
        from asc_deploy.models import build_model, load_checkpoint
        from asc_deploy.models.complexity import complexity_report

        precision = Precision.FP16 if fp16 else Precision.FP32
        for line in complexity_report(build_model(load_checkpoint(checkpoint))).lines():
            click.echo(line)
        options = ExportOptions(precision, tta, schedule, stream, int8, calibration_data, workspace_mib, timing_cache, engine, trt_accelerator)
        with tempfile.TemporaryDirectory(prefix="asc-export-") as tmp:
            for fmt, path in outputs.items():
                _export(fmt, path, checkpoint, options, outputs, Path(tmp))
                size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
                click.echo(f"wrote {path} ({size / 1024:.1f} KiB, {'int8' if int8 else precision.value}{', TTA' if tta else ''}, "
                           f"{'XNNPACK delegate' if fmt == 'pte' else f'{schedule} schedule'})")
    except (AscError, ValueError) as err:
        click.echo(f"asc-export: error: {err}", err=True)
        sys.exit(1)


@dataclass(frozen=True)
class ExportOptions:
    """asc-export's options, checked by :func:`main`, as every format's lowering reads them."""

    precision: Precision
    tta: bool
    schedule: str
    stream: bool
    int8: bool
    calibration_data: str | None
    workspace_mib: int
    timing_cache: str | None
    engine: bool
    trt_accelerator: bool

    @property
    def fp16(self) -> bool:
        return self.precision.value == "fp16"


def _export(fmt: str, path: Path, checkpoint: str, options: ExportOptions, outputs: dict[str, Path], tmp: Path) -> None:
    """Write ``fmt`` at ``path``. ort is converted from this call's ONNX file when it wrote one
    (the same graph), else from an ONNX export in ``tmp``."""
    from asc_deploy.export.onnx_export import export_onnx

    if fmt == "onnx" and options.int8:
        from asc_deploy.export.quantize import export_int8

        export_int8(checkpoint, path, options.calibration_data, options.tta, options.schedule)
    elif fmt == "onnx":
        export_onnx(checkpoint, path, options.precision, options.tta, options.schedule, stream=options.stream)
    elif fmt == "pte":
        from asc_deploy.export.executorch import export_pte

        export_pte(checkpoint, path, options.precision)
    elif fmt == "ort":
        from asc_deploy.export.ort_format import convert_to_ort

        onnx_path = outputs.get("onnx") or export_onnx(checkpoint, tmp / "model.onnx", options.precision, options.tta, options.schedule)
        convert_to_ort(onnx_path, path)
    else:
        from asc_deploy.export.tensorrt import build_engine

        onnx_path = export_onnx(checkpoint, tmp / "model.onnx", options.precision, options.tta)
        if fmt == "trt":
            build_engine(onnx_path, path, fp16=options.fp16, workspace_mib=options.workspace_mib,
                         timing_cache=Path(options.timing_cache) if options.timing_cache else None)
        else:
            from asc_deploy.export.triton import write_triton_repository

            engine_path = build_engine(onnx_path, tmp / "model.engine", fp16=options.fp16, workspace_mib=options.workspace_mib) if options.engine else None
            write_triton_repository(onnx_path, path, fp16=options.fp16, engine_path=engine_path, trt_accelerator=options.trt_accelerator)


if __name__ == "__main__":
    main()
