"""asc-bench end to end on a tiny synthetic set: JSON report, recomputed metrics, parity gate."""

import csv
import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from sklearn.metrics import log_loss

from asc_deploy.bench.cli import main
from asc_deploy.export.onnx_export import export_onnx
from asc_deploy.labels import CLASS_LABELS
from asc_deploy.models import Cnn6
from asc_deploy.train.synth import make_dataset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 1 s synthetic set (90 evaluate clips) and a seeded random-weight checkpoint whose
    probabilities are far from 0 and 1, so log losses compare without clipping effects.

    fc2 is scaled up 10x so that the top class leads by a real margin (median top-2 gap 0.18):
    unscaled, the gap was 2.4e-4, below int8's rounding (max |dp| 1.4e-4 with 7-bit weights), so
    the top-1 agreement of int8 measured the CPU's int8 path (0.78 on AVX2 without VNNI, 0.92 with
    8-bit weights), not the quantisation's quality."""
    folder = tmp_path_factory.mktemp("bench")
    torch.manual_seed(0)
    model = Cnn6()
    with torch.no_grad():
        for bn in [model.bn0, *(b.bn for b in model.blocks)]:
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
        model.bn0.running_mean.fill_(-40)  # log-mel in dB: centre it
        model.bn0.running_var.fill_(400)
        model.fc2.weight.mul_(10)
    torch.save({"net": model.state_dict(), "config": {"spec_aug": [20, 2, 32, 2]}}, folder / "random.pth")
    return make_dataset(folder / "data", clips_per_class_device=1, seconds=1.0, seed=0), folder / "random.pth", folder


def test_bench_report_parity_and_metrics(tiny):
    data, checkpoint, folder = tiny
    report_dir = folder / "report"
    result = CliRunner().invoke(main, ["--model", str(checkpoint), "--data", str(data), "--nb-aug", "4", "--backends",
                                       "torch,onnxruntime,ort", "--precision", "fp32,fp16", "--report", str(report_dir)])
    assert result.exit_code == 0, result.output
    report = json.loads((report_dir / "report.json").read_text())
    ran = {(r["backend"], r["precision"]): r for r in report["runs"] if r["status"] == "ok"}
    assert set(ran) == {("torch-cpu", "fp32"), ("onnxruntime-cpu", "fp32"), ("onnxruntime-cpu", "fp16"),
                        ("onnxruntime-ort-format", "fp32"), ("onnxruntime-ort-format", "fp16")}
    skipped = [r for r in report["runs"] if r["status"] == "skipped"]
    assert skipped and all(r["reason"] for r in skipped)
    assert ran[("torch-cpu", "fp32")].get("reference")
    for key in [("onnxruntime-cpu", "fp32"), ("onnxruntime-cpu", "fp16"), ("onnxruntime-ort-format", "fp32"),
                ("onnxruntime-ort-format", "fp16")]:
        assert ran[key]["parity"]["passed"], ran[key]["parity"]
    assert ran[("onnxruntime-cpu", "fp32")]["parity"]["max_abs_prob"] <= 1e-3
    assert ran[("onnxruntime-ort-format", "fp32")]["parity"]["max_abs_prob"] <= 1e-3
    assert ran[("onnxruntime-ort-format", "fp32")]["model_file"].endswith("model.fp32.tta.ort")
    assert report["clips"] == 90 and report["nb_aug"] == 4

    clips = list(csv.DictReader(open(data / "evaluation_setup" / "fold1_evaluate.csv"), delimiter="\t"))
    truth = {row["filename"].removeprefix("audio/"): CLASS_LABELS.index(row["scene_label"]) for row in clips}
    for (backend, precision), run in ran.items():
        rows = list(csv.reader(open(report_dir / "dcase" / f"asc_deploy_{backend}_{precision}.output.csv"), delimiter="\t"))
        assert rows[0] == ["filename", "scene_label", *CLASS_LABELS]
        probs = np.array([[float(v) for v in row[2:]] for row in rows[1:]])
        labels = np.array([truth[row[0]] for row in rows[1:]])
        # The CSV's float32 probabilities, rounded to text, sum to 1 within ~1e-7, not within float64's
        # rounding that sklearn checks: renormalising changes each log loss by < 1e-6 and keeps it silent.
        assert np.abs(probs.sum(axis=1) - 1).max() < 1e-6
        probs /= probs.sum(axis=1, keepdims=True)
        classwise = [log_loss(labels[labels == c], probs[labels == c], labels=range(10)) for c in range(10)]
        assert run["metrics"]["logloss"] == pytest.approx(np.mean(classwise), abs=1e-6)
        assert run["metrics"]["micro_logloss"] == pytest.approx(log_loss(labels, probs, labels=range(10)), abs=1e-6)
        accuracy = np.mean([np.mean(probs[labels == c].argmax(1) == c) for c in range(10)])
        assert run["metrics"]["accuracy"] == pytest.approx(accuracy, abs=1e-9)
        assert set(run["metrics"]["device_wise"]) == {"a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6"}
        assert 0 <= run["metrics"]["ece"] <= 1
        assert run["timing"]["latency_p50_ms"] > 0 and run["timing"]["throughput_clips_per_s"] > 0
    for name in ("report.md", "reliability.png", "confusion.png"):
        assert (report_dir / name).stat().st_size > 0
    assert "torch-cpu" in result.output and "report:" in result.output


def test_int8_is_quantised_on_the_fly_and_judged_by_its_tolerance(tiny):
    """--precision int8 with a checkpoint: fp32 export quantised, calibrated on --data's train split,
    and compared with the torch reference by the int8 tolerances (top-1 agreement, log-loss change)."""
    data, checkpoint, folder = tiny
    result = CliRunner().invoke(main, ["--model", str(checkpoint), "--data", str(data), "--nb-aug", "0", "--backends",
                                       "torch,onnxruntime", "--precision", "int8", "--report", str(folder / "int8")])
    report = json.loads((folder / "int8" / "report.json").read_text())
    [run] = [r for r in report["runs"] if r["backend"] == "onnxruntime-cpu"]
    assert run["precision"] == "int8" and run["model_file"].endswith("model.int8.onnx")
    model = onnx.load(run["model_file"])
    assert {p.key: p.value for p in model.metadata_props}["precision"] == "int8"
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    parity = run["parity"]
    assert set(parity["tolerance"]) >= {"min_top1_agree", "max_logloss"} and parity["tolerance"]["min_top1_agree"] == 0.97
    assert parity["passed"] == (result.exit_code == 0), result.output
    assert 0.9 <= parity["top1_agree"] <= 1 and abs(parity["logloss_diff"]) < 0.05


def test_cpu_schedule_bench(tiny):
    """--schedule cpu: fp32 and int8 TTA models loop over their passes and keep parity with the
    torch reference; fp16 is exported with the gpu schedule, and says so."""
    from asc_deploy.export.loop import has_pass_loop

    data, checkpoint, folder = tiny
    result = CliRunner().invoke(main, ["--model", str(checkpoint), "--data", str(data), "--nb-aug", "3", "--backends",
                                       "torch,onnxruntime", "--precision", "fp32,fp16,int8", "--schedule", "cpu",
                                       "--report", str(folder / "cpu")])
    assert "fp16 is exported with the gpu schedule" in result.output
    report = json.loads((folder / "cpu" / "report.json").read_text())
    runs = {r["precision"]: r for r in report["runs"] if r["backend"] == "onnxruntime-cpu"}
    looped = {p: has_pass_loop(onnx.load(r["model_file"])) for p, r in runs.items()}
    assert looped == {"fp32": True, "fp16": False, "int8": True}
    assert runs["fp32"]["parity"]["max_abs_prob"] <= 1e-3 and runs["fp16"]["parity"]["passed"]
    assert 0.9 <= runs["int8"]["parity"]["top1_agree"] <= 1


def test_perturbed_model_breaks_parity(tiny):
    data, checkpoint, folder = tiny
    model = onnx.load(str(export_onnx(checkpoint, folder / "good.onnx")))
    bias = next(t for t in model.graph.initializer if t.name == "cnn.fc2.bias")
    values = onnx.numpy_helper.to_array(bias).copy()
    values[3] += 2.0  # one weight changed
    bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
    onnx.save(model, str(folder / "perturbed.onnx"))
    result = CliRunner().invoke(main, ["--model", str(folder / "perturbed.onnx"), "--reference", str(checkpoint), "--data", str(data),
                                       "--nb-aug", "0", "--backends", "torch,onnxruntime", "--report", str(folder / "bad")])
    assert result.exit_code == 1
    assert "parity broken: onnxruntime-cpu fp32: max_abs_prob" in result.output
    report = json.loads((folder / "bad" / "report.json").read_text())
    assert [r["status"] for r in report["runs"] if r["backend"] == "onnxruntime-cpu"] == ["parity-broken"]


def test_bad_options_are_one_line_errors(tiny):
    data, checkpoint, folder = tiny
    runner = CliRunner()
    for args, message in [
        (["--precision", "fp8"], "unknown precision"),
        (["--backends", "openvino"], "unknown backend"),
        (["--tolerance", "fp16.nope=1"], "bad tolerance"),
        (["--nb-aug", "-1"], "--nb-aug must be >= 0"),
        (["--threads", "-1"], "intra_op_threads must be >= 0"),
    ]:
        result = runner.invoke(main, ["--model", str(checkpoint), "--data", str(data), "--report", str(folder / "x"), *args])
        assert result.exit_code == 1 and message in result.output, result.output
        assert "Traceback" not in result.output
    assert not (folder / "x" / "models").exists()  # refused before any export
    result = runner.invoke(main, ["--model", str(folder / "missing.pth"), "--data", str(data), "--report", str(folder / "x")])
    assert result.exit_code == 1 and "missing.pth" in result.output


def test_tta_without_spec_aug_is_flagged(tiny):
    data, checkpoint, folder = tiny
    plain = folder / "plain.pth"
    torch.save({"net": torch.load(checkpoint, weights_only=True)["net"]}, plain)  # no config: no SpecAugment
    result = CliRunner().invoke(main, ["--model", str(plain), "--data", str(data), "--nb-aug", "2", "--backends", "torch",
                                       "--report", str(folder / "plain")])
    assert result.exit_code == 0, result.output
    assert "has no SpecAugment stripes" in result.output and "2 TTA passes are identical" in result.output


def test_executorch_row(tiny):
    """asc-bench --backends executorch: the checkpoint's ExecuTorch program as one row, with size, latency and parity."""
    pytest.importorskip("executorch.runtime", reason="the executorch extra is not installed")
    data, checkpoint, folder = tiny
    report_dir = folder / "report-executorch"
    result = CliRunner().invoke(main, ["--model", str(checkpoint), "--data", str(data), "--nb-aug", "0", "--backends",
                                       "torch,executorch", "--precision", "fp32", "--report", str(report_dir)])
    assert result.exit_code == 0, result.output
    report = json.loads((report_dir / "report.json").read_text())
    row = next(r for r in report["runs"] if r["backend"] == "executorch-xnnpack")
    assert row["status"] == "ok" and row["model_file"].endswith(".pte") and 0 < row["size_bytes"] <= 600 * 1024
    assert row["parity"]["passed"] and row["parity"]["max_abs_prob"] <= 1e-4, row["parity"]
    assert row["timing"] and "executorch-xnnpack" in result.output
