"""asc-export --format ort: onnxruntime's ORT format for onnxruntime Mobile, its reduced-operator
configuration, and parity with SP4ASC's golden logits; the runtime reads the format from the file."""

import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from asc_deploy.errors import AscError
from asc_deploy.export.ort_format import convert_to_ort, operator_config_path
from asc_deploy.metadata import ModelMetadata
from asc_deploy.ort_runner import is_ort_format
from asc_deploy.runtime import Classifier, read_model_metadata
from tests.shared_data import checkpoint_path, needs_shared

pytestmark = needs_shared
ORT_PARITY = 1e-4  # max abs logit difference against logits_fp32 (float32 arithmetic in both)


def test_ort_logits_match_the_golden_outputs_on_every_clip(ort_model, reference):
    session = ort.InferenceSession(str(ort_model), providers=["CPUExecutionProvider"])
    seconds = set()
    for name in reference["names"]:
        wave = reference[f"wave/{name}"]
        logits = session.run(["logits"], {"waveform": wave[None]})[0][0]
        difference = np.abs(logits - reference[f"logits_fp32/ce/{name}"]).max()
        print(f"ort fp32 {name} ({wave.size / 44_100:.0f} s): max abs logit difference {difference:.2e}")
        assert difference <= ORT_PARITY, name
        seconds.add(round(wave.size / 44_100))
    assert {1, 10, 12} <= seconds  # the 1 s and 12 s clips are among them


def test_ort_file_carries_the_contract_and_its_operator_config(ort_model, exported):
    assert is_ort_format(ort_model) and not is_ort_format(exported("ce"))
    onnx_meta = ModelMetadata.from_props({p.key: p.value for p in onnx.load(str(exported("ce"))).metadata_props})
    assert read_model_metadata(ort_model) == onnx_meta
    config = operator_config_path(ort_model)
    assert config.name == f"{ort_model.stem}.required_operators.config"
    lines = [line for line in config.read_text().splitlines() if not line.startswith("#")]
    ops = {(domain, op) for domain, _, names in (line.split(";") for line in lines) for op in names.split(",")}
    assert {("ai.onnx", "Conv"), ("ai.onnx", "MatMul"), ("ai.onnx", "Softmax"), ("ai.onnx", "Log")} <= ops
    assert f"- {ort_model.name}" in config.read_text()  # names the model, not the converter's temporary file


def test_classifier_and_predict_take_ort_files_by_content(ort_model, exported, reference, tmp_path):
    wave = reference["wave/00_babble"]
    expected = Classifier(exported("ce")).predict(wave).probs
    renamed = shutil.copyfile(ort_model, tmp_path / "model.bin")  # the format comes from the file, not its name
    for path in (ort_model, renamed):
        assert np.abs(Classifier(path).predict(wave).probs - expected).max() <= 1e-5
    broken = tmp_path / "broken.ort"
    broken.write_bytes(ort_model.read_bytes()[:2000])
    with pytest.raises(AscError, match="broken.ort.*not a valid ORT-format model"):
        read_model_metadata(broken)


@pytest.mark.parametrize("tta", [False, True], ids=["clip-loop", "pass-loop"])
def test_cpu_schedule_loops_survive_the_conversion(tta, exported, reference, tmp_path):
    """The CPU schedule's Loops (over the clips of a single-pass graph, over the passes of a TTA
    graph) in ORT format: the ONNX file's probabilities for two clips, and a Loop in the operator config."""
    source = exported("ce", "fp32", tta, "cpu")
    converted = convert_to_ort(source, tmp_path / "cpu.ort")
    waves = np.stack([reference["wave/10_short1s"], 0.5 * reference["wave/10_short1s"][::-1]])
    expected = Classifier(source, tta_passes=4).probabilities(waves)
    assert np.abs(Classifier(converted, tta_passes=4).probabilities(waves) - expected).max() <= 1e-6
    assert "Loop" in operator_config_path(converted).read_text()


def test_export_cli_writes_ort_and_config(tmp_path):
    from asc_deploy.export.cli import main

    out = tmp_path / "phone.ort"
    result = CliRunner().invoke(main, ["--checkpoint", str(checkpoint_path("ce")), "--format", "ort", "--tta", "-o", str(out)])
    assert result.exit_code == 0 and "wrote" in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["phone.ort", "phone.required_operators.config"]
    assert read_model_metadata(out).variant == "tta"
    result = CliRunner().invoke(main, ["--checkpoint", str(checkpoint_path("ce")), "--format", "ort", "--stream", "-o", str(out)])
    assert result.exit_code == 1 and "--stream applies to --format onnx" in result.output


def test_failed_conversion_leaves_nothing(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"junk")
    with pytest.raises(Exception):
        convert_to_ort(bad, tmp_path / "m.ort")
    assert [p.name for p in tmp_path.iterdir()] == ["bad.onnx"]


def test_export_cli_lowers_several_formats_in_one_call(tmp_path):
    """--format onnx,ort: one call writes both from one export, the .ort converted from the .onnx
    beside it (the same graph: the same metadata and scores on a clip); the streaming graphs beside
    the .onnx; trt and triton refuse company."""
    from asc_deploy.export.cli import main

    out = tmp_path / "demo.fp32.onnx"
    result = CliRunner().invoke(main, ["--checkpoint", str(checkpoint_path("ce")), "--format", "onnx,ort", "--stream", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert [line.split(" (")[0] for line in result.output.splitlines() if line.startswith("wrote")] == \
        [f"wrote {out}", f"wrote {tmp_path / 'demo.fp32.ort'}"]
    assert {"demo.fp32.frontend.onnx", "demo.fp32.ort", "demo.fp32.required_operators.config"} <= {p.name for p in tmp_path.iterdir()}
    assert read_model_metadata(tmp_path / "demo.fp32.ort") == read_model_metadata(out)
    clip = np.random.default_rng(0).standard_normal((1, 44_100), np.float32) * 0.1
    probs = [Classifier(path).predict(clip[0]).probs for path in (out, tmp_path / "demo.fp32.ort")]
    assert np.abs(probs[0] - probs[1]).max() <= 1e-6
    result = CliRunner().invoke(main, ["--checkpoint", str(checkpoint_path("ce")), "--format", "onnx,trt", "-o", str(out)])
    assert result.exit_code == 2 and "trt and triton are exported alone" in result.output
