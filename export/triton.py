"""Exported ONNX model -> Triton Inference Server model repository.

Layout written under ``repo_dir``::

    <model_name>/config.pbtxt
    <model_name>/labels.txt      class labels from the ONNX metadata, one a line, in logit order
    <model_name>/1/model.onnx    byte copy of the exported model
    <model_name>/1/model.plan    only with ``engine_path``: the TensorRT engine (platform tensorrt_plan)

The config declares the model contract of :mod:`asc_deploy.metadata` with the batch dimension
implicit (``max_batch_size``): input ``waveform`` TYPE_FP32 dims [-1] (variable length), outputs
``logits`` and ``probs`` dims [classes]; ``probs`` names ``labels.txt`` so Triton's
classification extension returns label names, and the parameter ``labels`` holds them as a JSON
list (the contract of :mod:`asc_deploy.triton_model`, which ``asc-serve`` serves too). Dynamic batching only merges requests of the
same length (no ragged batching is configured): send clips cut to equal windows to batch them.

A TensorRT engine only runs on the GPU architecture it was built for; its compute capability
is read from the engine's JSON sidecar (``<engine>.json`` from export/tensorrt.py, key
``compute_capability``, e.g. "8.9") and recorded in ``cc_model_filenames``. The repository keeps
``model.onnx`` beside the plan as the engine's source.

The model directory is assembled in a temporary directory beside it and renamed into place,
so Triton never sees a half-written model.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from pathlib import Path

import onnx

from asc_deploy.errors import AscError
from asc_deploy.metadata import INPUT_WAVEFORM, OUTPUT_LOGITS, OUTPUT_PROBS, ModelMetadata
from asc_deploy.triton_model import LABELS_PARAMETER, MAX_QUEUE_DELAY_US, MODEL_NAME, preferred_batch_sizes

LABEL_FILENAME = "labels.txt"
ONNX_FILENAME = "model.onnx"
PLAN_FILENAME = "model.plan"
TRT_CACHE_ROOT = "/tmp/triton_trt_cache"  # engines the TensorRT accelerator builds (writable in the server)
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_CC = re.compile(r"^\d+\.\d+$")


def _read_model(onnx_path: Path) -> ModelMetadata:
    """The metadata of an asc-deploy single-variant ONNX model; :class:`AscError` otherwise."""
    if not onnx_path.is_file():
        raise AscError("no such ONNX file", onnx_path)
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError, OSError, ... for a file that is not ONNX
        raise AscError(f"not an ONNX model ({err})", onnx_path) from err
    meta = ModelMetadata.from_props({p.key: p.value for p in model.metadata_props}, onnx_path)
    if meta.variant != "single":
        raise AscError(f"the {meta.variant!r} variant is not supported for Triton; export the single variant", onnx_path)
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if inputs != [INPUT_WAVEFORM] or sorted(outputs) != sorted([OUTPUT_LOGITS, OUTPUT_PROBS]):
        raise AscError(f"not an asc-deploy model: inputs {inputs}, outputs {outputs}", onnx_path)
    return meta


def _engine_compute_capability(engine_path: Path, onnx_path: Path, max_batch_size: int) -> str:
    """The compute capability ("8.9") in the engine's sidecar ``<engine>.json`` (written by
    export/tensorrt.py), after checking the engine was built from ``onnx_path`` and its shape
    profile takes ``max_batch_size`` (checks skipped where the sidecar lacks the keys)."""
    if not engine_path.is_file():
        raise AscError("no such TensorRT engine", engine_path)
    sidecar = Path(f"{engine_path}.json")
    if not sidecar.is_file():
        raise AscError(f"the engine's JSON sidecar {sidecar.name} is missing", engine_path)
    try:
        info = json.loads(sidecar.read_text(encoding="utf-8"))
        cc = str(info["compute_capability"])
        max_batch = info["profile"]["shapes"][INPUT_WAVEFORM][2][0] if "profile" in info else None
    except (ValueError, KeyError, TypeError, IndexError) as err:
        raise AscError(f"bad engine sidecar ({err!r})", sidecar) from err
    if not _CC.match(cc):
        raise AscError(f"bad compute_capability {cc!r}, expected e.g. \"8.9\"", sidecar)
    if info.get("onnx_sha256") not in (None, hashlib.sha256(onnx_path.read_bytes()).hexdigest()):
        raise AscError(f"the engine was built from another ONNX file than {onnx_path.name}", sidecar)
    if max_batch is not None and max_batch < max_batch_size:
        raise AscError(f"the engine's profile takes batches up to {max_batch}, below max_batch_size {max_batch_size}", sidecar)
    return cc


def _config_text(
    model_name: str, labels: tuple[str, ...], max_batch_size: int, cc: str | None, fp16: bool, trt_accelerator: bool
) -> str:
    q = json.dumps  # a JSON string literal is a valid protobuf text-format string for these names
    preferred = preferred_batch_sizes(max_batch_size)
    classes = len(labels)
    lines = ["# Written by asc-deploy (export/triton.py).", f"name: {q(model_name)}"]
    if cc is None:
        lines += ['platform: "onnxruntime_onnx"', f"default_model_filename: {q(ONNX_FILENAME)}"]
    else:
        lines += [
            'platform: "tensorrt_plan"',
            f"default_model_filename: {q(PLAN_FILENAME)}",
            f"cc_model_filenames {{ key: {q(cc)} value: {q(PLAN_FILENAME)} }}",
        ]
    lines += [
        f"max_batch_size: {max_batch_size}",
        f"input [ {{ name: {q(INPUT_WAVEFORM)} data_type: TYPE_FP32 dims: [ -1 ] }} ]",
        "output [",
        f"  {{ name: {q(OUTPUT_LOGITS)} data_type: TYPE_FP32 dims: [ {classes} ] }},",
        f"  {{ name: {q(OUTPUT_PROBS)} data_type: TYPE_FP32 dims: [ {classes} ] label_filename: {q(LABEL_FILENAME)} }}",
        "]",
        "dynamic_batching {",
        f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]",
        f"  max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US}",
        "}",
        f"instance_group [ {{ count: 1 kind: {'KIND_CPU' if cc is None and not trt_accelerator else 'KIND_GPU'} }} ]",
        f"parameters {{ key: {q(LABELS_PARAMETER)} value: {{ string_value: {q(json.dumps(list(labels)))} }} }}",
    ]
    if trt_accelerator:  # onnxruntime backend's TensorRT execution provider (onnxruntime_backend README)
        params = {"precision_mode": "FP16" if fp16 else "FP32", "trt_engine_cache_enable": "1",
                  "trt_engine_cache_path": f"{TRT_CACHE_ROOT}/{model_name}"}
        lines += [
            "optimization { execution_accelerators {",
            '  gpu_execution_accelerator [ { name: "tensorrt"',
            *(f"    parameters {{ key: {q(k)} value: {q(v)} }}" for k, v in params.items()),
            "  } ]",
            "} }",
        ]
    return "\n".join(lines) + "\n"


def write_triton_repository(
    onnx_path: str | Path,
    repo_dir: str | Path,
    model_name: str = MODEL_NAME,
    max_batch_size: int = 32,
    fp16: bool = False,
    engine_path: str | Path | None = None,
    trt_accelerator: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write ``repo_dir/model_name`` (see the module docstring); returns that model directory.

    ``engine_path`` serves a prebuilt TensorRT engine (platform tensorrt_plan, its ``.json``
    sidecar gives the compute capability); ``trt_accelerator`` instead lets the onnxruntime
    backend build TensorRT engines itself, in FP16 when ``fp16`` (``fp16`` changes nothing else:
    a plan's precision is fixed when it is built). An existing non-empty model
    directory is replaced only with ``overwrite``. Bad inputs raise :class:`AscError`.
    """
    onnx_path, repo_dir = Path(onnx_path), Path(repo_dir)
    if not _NAME.match(model_name):
        raise AscError(f"bad Triton model name {model_name!r}: use letters, digits, '_', '.', '-'")
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
        raise AscError(f"max_batch_size must be an integer >= 1, got {max_batch_size!r}")
    if engine_path is not None and trt_accelerator:
        raise AscError("give either a TensorRT engine or the TensorRT accelerator, not both")
    meta = _read_model(onnx_path)
    cc = None if engine_path is None else _engine_compute_capability(Path(engine_path), onnx_path, max_batch_size)
    model_dir = repo_dir / model_name
    if model_dir.exists() and not model_dir.is_dir():
        raise AscError("exists and is not a directory", model_dir)
    if model_dir.is_dir() and any(model_dir.iterdir()) and not overwrite:
        raise AscError("model directory exists and is not empty (pass overwrite=True to replace it)", model_dir)

    repo_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{model_name}.", suffix=".tmp", dir=repo_dir))
    old = None
    try:
        (staging / "1").mkdir()
        shutil.copyfile(onnx_path, staging / "1" / ONNX_FILENAME)
        if engine_path is not None:
            shutil.copyfile(engine_path, staging / "1" / PLAN_FILENAME)
        (staging / LABEL_FILENAME).write_text("".join(f"{label}\n" for label in meta.labels), encoding="utf-8")
        config = _config_text(model_name, meta.labels, max_batch_size, cc, fp16, trt_accelerator)
        (staging / "config.pbtxt").write_text(config, encoding="utf-8")
        staging.chmod(0o755)  # mkdtemp makes it 0700; a server running as another user must read it
        if model_dir.is_dir() and any(model_dir.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{model_name}.", suffix=".old", dir=repo_dir))
            model_dir.replace(old / model_name)
        staging.replace(model_dir)  # rename(2) also replaces an empty directory
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None and not model_dir.exists():  # put the previous model back
            (old / model_name).replace(model_dir)
            old.rmdir()
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return model_dir
