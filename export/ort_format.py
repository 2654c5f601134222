"""ONNX -> ORT format (``.ort``) for onnxruntime Mobile, and the reduced-operator configuration of a
minimal onnxruntime build, written beside it.

onnxruntime's own converter (``onnxruntime.tools.convert_onnx_models_to_ort``, optimization style
"Fixed"): the graph is optimised once for the CPU provider at level "all", without the x86-only
NCHWc layout (the file runs on ARM phones too), and saved as a flatbuffer that a minimal build
loads without parsing protobuf. The optimiser folds the frontend's DFT and filterbank matrices
into the file (about 1.4 MiB for fp32 instead of the ONNX file's 0.35 MiB): the phone loads them
instead of computing them. The model contract's metadata travels in the file (onnxruntime keeps
``metadata_props``).

``M.required_operators.config`` lists the operators (per domain and opset) that the model needs:
give it to onnxruntime's ``build.py --minimal_build --include_ops_by_config`` to build a runtime
that holds only those kernels.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from pathlib import Path

from asc_deploy.atomic import atomic_path
from asc_deploy.export.quiet import quiet_logger

ORT_CONFIG_SUFFIX = ".required_operators.config"


def operator_config_path(ort_path: str | Path) -> Path:
    """The reduced-operator configuration written beside an ORT file: M.ort -> M.required_operators.config."""
    return Path(ort_path).with_suffix(ORT_CONFIG_SUFFIX)


def convert_to_ort(onnx_path: str | Path, output: str | Path) -> Path:
    """Convert the ONNX file ``onnx_path`` to ORT format at ``output`` (and its operator
    configuration beside it, :func:`operator_config_path`); returns ``output``. Nothing is left
    at either path if the conversion fails."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    output = Path(output)
    with tempfile.TemporaryDirectory(prefix="asc-export-") as tmp:
        source = Path(tmp) / "model.onnx"
        shutil.copyfile(onnx_path, source)
        with contextlib.redirect_stdout(io.StringIO()), quiet_logger("ort_format_model.utils", logging.WARNING):  # a line per file written
            convert_onnx_models_to_ort(source, output_dir=Path(tmp), optimization_styles=[OptimizationStyle.Fixed])
        config = (Path(tmp) / f"model{ORT_CONFIG_SUFFIX}").read_text().replace(str(source.with_suffix(".ort")), output.name)
        with atomic_path(output) as tmp_model, atomic_path(operator_config_path(output)) as tmp_config:
            shutil.copyfile(source.with_suffix(".ort"), tmp_model)
            tmp_config.write_text(config)
    return output
