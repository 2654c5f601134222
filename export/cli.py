"""``asc-export``: checkpoint -> ONNX (fp32/fp16, single pass or TTA), ORT format for onnxruntime
Mobile, TensorRT engine, Triton model repository or ExecuTorch program (.pte, single pass). Prints
the complexity report and the size of what it wrote."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import click

from asc_deploy.errors import AscError
from asc_deploy.extras import require_extras


def _default_output(checkpoint: str, fmt: str, fp16: bool, tta: bool, int8: bool = False) -> Path:
    stem = Path(checkpoint).parent.name if Path(checkpoint).name == "ckpt.pth" else Path(checkpoint).stem
    suffix = {"onnx": ".onnx", "ort": ".ort", "trt": ".engine", "triton": "", "pte": ".pte"}[fmt]
    precision = "int8" if int8 else "fp16" if fp16 else "fp32"
    return Path(f"{stem}{'.tta' if tta else ''}.{precision}{suffix}" if suffix else f"{stem}-triton")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--checkpoint", required=True, type=click.Path(), help="SP4ASC ckpt.pth or an asc-train checkpoint.")
@click.option("--format", "fmt", type=click.Choice(["onnx", "ort", "trt", "triton", "pte"]), default="onnx", show_default=True,
              help="ort: ORT format for onnxruntime Mobile; pte: ExecuTorch program with the XNNPACK delegate (phones, "
                   "embedded; needs the executorch extra).")
@click.option("--fp16", is_flag=True, help="CNN weights and arithmetic in fp16 (frontend and I/O stay float32).")
@click.option("--tta", is_flag=True, help="Export the test-time-augmentation variant (stripes as inputs).")
@click.option("--output", "-o", type=click.Path(), default=None, help="Output file (onnx, ort, trt) or repository folder (triton). "
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
def main(checkpoint: str, fmt: str, fp16: bool, tta: bool, output: str | None, workspace_mib: int, timing_cache: str | None,
         engine: bool, trt_accelerator: bool, schedule: str, stream: bool, int8: bool, calibration_data: str | None) -> None:
    """Export CHECKPOINT for deployment; the graph starts at the raw 44.1 kHz waveform."""
    output_path = Path(output) if output else _default_output(checkpoint, fmt, fp16, tta, int8)
    try:
        if engine and fmt != "triton" or trt_accelerator and fmt != "triton":
            raise ValueError("--engine and --trt-accelerator only apply to --format triton")
        if schedule == "cpu" and fmt not in ("onnx", "ort"):
            raise ValueError("--schedule cpu only applies to --format onnx and ort (TensorRT and Triton engines want whole tensors)")
        if stream and (fmt != "onnx" or int8):
            raise ValueError("--stream applies to --format onnx in fp32 or fp16 (not --int8)")
        if int8 and fp16:
            raise ValueError("--int8 and --fp16 exclude each other")
        if int8 and fmt != "onnx":
            raise ValueError("--int8 only applies to --format onnx")
        if tta and fmt == "pte":
            raise ValueError("--format pte exports the single-pass classifier (no --tta)")
        if int8 and not calibration_data:
            raise ValueError("--int8 needs --calibration-data DIR (a data set whose training split calibrates it)")
        if calibration_data and not int8:
            raise ValueError("--calibration-data only applies to --int8")
        needs_trt = fmt == "trt" or engine
        if fmt == "pte":
            require_extras("asc-export --format pte", "train", "executorch")
        else:
            require_extras("asc-export" + (" with TensorRT" if needs_trt else ""), "train", *(("trt",) if needs_trt else ()))
        from asc_deploy.export.onnx_export import Precision, export_onnx
        from asc_deploy.models import build_model, load_checkpoint
        from asc_deploy.models.complexity import complexity_report

        precision = Precision.FP16 if fp16 else Precision.FP32
        for line in complexity_report(build_model(load_checkpoint(checkpoint))).lines():
            click.echo(line)
        if fmt == "onnx" and int8:
            from asc_deploy.export.quantize import export_int8

            export_int8(checkpoint, output_path, calibration_data, tta, schedule)
        elif fmt == "onnx":
            export_onnx(checkpoint, output_path, precision, tta, schedule, stream=stream)
        elif fmt == "pte":
            from asc_deploy.export.executorch import export_pte

            export_pte(checkpoint, output_path, precision)
        elif fmt == "ort":
            from asc_deploy.export.ort_format import convert_to_ort

            with tempfile.TemporaryDirectory(prefix="asc-export-") as tmp:
                convert_to_ort(export_onnx(checkpoint, Path(tmp) / "model.onnx", precision, tta, schedule), output_path)
        else:
            with tempfile.TemporaryDirectory(prefix="asc-export-") as tmp:
                onnx_path = export_onnx(checkpoint, Path(tmp) / "model.onnx", precision, tta)
                if fmt == "trt":
                    from asc_deploy.export.tensorrt import build_engine

                    build_engine(onnx_path, output_path, fp16=fp16, workspace_mib=workspace_mib,
                                 timing_cache=Path(timing_cache) if timing_cache else None)
                else:
                    from asc_deploy.export.tensorrt import build_engine
                    from asc_deploy.export.triton import write_triton_repository

                    engine_path = None
                    if engine:
                        engine_path = build_engine(onnx_path, Path(tmp) / "model.engine", fp16=fp16, workspace_mib=workspace_mib)
                    write_triton_repository(onnx_path, output_path, fp16=fp16, engine_path=engine_path, trt_accelerator=trt_accelerator)
    except (AscError, ValueError) as err:
        click.echo(f"asc-export: error: {err}", err=True)
        sys.exit(1)
    size = sum(p.stat().st_size for p in output_path.rglob("*") if p.is_file()) if output_path.is_dir() else output_path.stat().st_size
    click.echo(f"wrote {output_path} ({size / 1024:.1f} KiB, {'int8' if int8 else precision.value}{', TTA' if tta else ''}, "
               f"{'XNNPACK delegate' if fmt == 'pte' else f'{schedule} schedule'})")


if __name__ == "__main__":
    main()
