"""ExecuTorch programs (.pte, XNNPACK) of the "ce" checkpoint against SP4ASC's golden outputs, in
ExecuTorch's Python runtime. Each precision is exported once per session."""

import numpy as np
import pytest
from click.testing import CliRunner

from asc_deploy.errors import AscError
from asc_deploy.export.cli import main as export_main
from asc_deploy.export.program import MAX_BATCH, MAX_SAMPLES, MIN_SAMPLES
from asc_deploy.metadata import is_executorch_program
from asc_deploy.models import load_checkpoint
from asc_deploy.runtime import Classifier
from tests.shared_data import checkpoint_path, needs_shared

pytest.importorskip("executorch.runtime", reason="the executorch extra is not installed")
pytestmark = needs_shared


@pytest.fixture(scope="session")
def pte(tmp_path_factory):
    """pte(precision) -> path of the ce checkpoint's ExecuTorch program, exported once by asc-export."""
    folder, cache = tmp_path_factory.mktemp("pte"), {}

    def get(precision: str = "fp32"):
        if precision not in cache:
            path = folder / f"ce.{precision}.pte"
            result = CliRunner().invoke(export_main, ["--checkpoint", str(checkpoint_path("ce")), "--format", "pte", "-o", str(path),
                                                      *(["--fp16"] if precision == "fp16" else [])])
            assert result.exit_code == 0, result.output
            assert f"wrote {path}" in result.output and "XNNPACK delegate" in result.output
            cache[precision] = path
        return cache[precision]

    return get


@pytest.fixture(scope="session")
def fp32_runner(pte):
    from asc_deploy.bench.executorch_runner import ExecuTorchRunner

    with ExecuTorchRunner(pte("fp32")) as runner:
        yield runner


def test_loading_writes_no_cpu_probe_lines(pte, capfd):
    """The XNNPACK delegate's CPU probe lines ("[cpuinfo_utils.cpp:...] Failed to open midr file",
    five per load on x86) are not shown; the runner still runs."""
    from asc_deploy.bench.executorch_runner import CPUINFO_NOTICE, ExecuTorchRunner

    with ExecuTorchRunner(pte("fp32")) as runner:
        probs = runner.infer({"waveform": np.zeros((1, 44100), np.float32)}, ["probs"])["probs"]
    assert probs.shape == (1, 10) and abs(float(probs.sum()) - 1.0) <= 1e-5
    assert CPUINFO_NOTICE.decode() not in capfd.readouterr().err


def test_fp32_matches_reference_on_every_clip(fp32_runner, reference):
    lengths = set()
    for name in reference["names"]:
        wave = reference[f"wave/{name}"]
        logits = fp32_runner.infer({"waveform": wave[None]}, ["logits"])["logits"][0]
        diff = np.abs(logits - reference[f"logits_fp32/ce/{name}"]).max()
        print(f"pte fp32 {name} ({len(wave) / 44100:g} s): max abs logit difference {diff:.2e}")
        assert diff <= 1e-4, name
        lengths.add(len(wave))
    assert {44100, 441000, 529200} <= lengths  # 1 s, 10 s and 12 s


def test_batches_beyond_the_program_bound_run_in_slices(fp32_runner, reference):
    names = [n for n in reference["names"] if len(reference[f"wave/{n}"]) == 441000]
    batch = np.stack([reference[f"wave/{n}"] for n in names])
    assert len(batch) > MAX_BATCH
    out = fp32_runner.infer({"waveform": batch})
    assert out["probs"].shape == (len(names), 10)
    for i, name in enumerate(names):
        assert np.abs(out["logits"][i] - reference[f"logits_fp32/ce/{name}"]).max() <= 1e-4, name
    np.testing.assert_allclose(out["probs"].sum(axis=1), 1.0, atol=1e-6)


def test_contract_is_in_the_constant_method(fp32_runner, pte):
    meta = fp32_runner.metadata
    assert meta.precision == "fp32" and meta.variant == "single" and meta.targets == ("executorch-xnnpack",)
    assert meta.checkpoint_sha256 == load_checkpoint(checkpoint_path("ce")).sha256
    assert meta.sample_rate == 44100 and len(meta.labels) == 10
    assert is_executorch_program(pte("fp32"))
    size = pte("fp32").stat().st_size
    print(f"pte fp32: {size / 1024:.1f} KiB")
    assert size <= 600 * 1024  # the frontend's matrices are built in the program from compact buffers


def test_lengths_outside_the_bounds_are_refused(fp32_runner):
    for samples in (MIN_SAMPLES - 1, MAX_SAMPLES + 1):
        with pytest.raises(AscError, match="samples per clip"):
            fp32_runner.infer({"waveform": np.zeros((1, samples), np.float32)})


def test_fp16_keeps_top1_and_stays_close(pte, reference):
    """XNNPACK computes the fp16 CNN in fp16 here: its logits differ from fp32 by rounding, as the ONNX fp16 export's."""
    from asc_deploy.bench.executorch_runner import ExecuTorchRunner

    worst = 0.0
    with ExecuTorchRunner(pte("fp16")) as runner:
        assert runner.metadata.precision == "fp16"
        for name in reference["names"]:
            logits = runner.infer({"waveform": reference[f"wave/{name}"][None]}, ["logits"])["logits"][0]
            expected = reference[f"logits_fp32/ce/{name}"]
            assert logits.argmax() == expected.argmax(), name
            worst = max(worst, np.abs(logits - expected).max())
    print(f"pte fp16: max abs logit difference {worst:.4f}, {pte('fp16').stat().st_size / 1024:.1f} KiB")
    assert 1e-4 < worst <= 0.35


def test_torch_free_runtime_refuses_a_program_in_one_line(pte):
    with pytest.raises(AscError, match="an ExecuTorch program: this runtime runs ONNX and ORT-format models only"):
        Classifier(pte("fp32"))


def test_cli_rejects_tta_for_pte(tmp_path):
    out = tmp_path / "m.pte"
    result = CliRunner().invoke(export_main, ["--checkpoint", str(checkpoint_path("ce")), "--format", "pte", "--tta", "-o", str(out)])
    assert result.exit_code == 1 and result.output.strip().splitlines()[-1].startswith("asc-export: error: --format pte")
    assert not out.exists()


def test_bench_takes_the_program_beside_an_onnx_file_from_the_same_checkpoint(pte, tmp_path):
    """asc-bench's executorch backend on an exported ONNX file: the .pte beside it (as asc-export
    --format onnx,pte writes it) is benchmarked when it comes from the same checkpoint at the same
    precision; otherwise, without a checkpoint to export from, the row is skipped with the reason."""
    import shutil

    from asc_deploy.bench.cli import _executorch_program
    from asc_deploy.export.onnx_export import export_onnx

    program = shutil.copyfile(pte("fp32"), tmp_path / "ce.fp32.pte")
    same = export_onnx(checkpoint_path("ce"), tmp_path / "ce.fp32.onnx")
    assert _executorch_program(same, "fp32", None, "") == (program, "")
    other = export_onnx(checkpoint_path("ce"), tmp_path / "ce.fp16.onnx", "fp16")
    shutil.copyfile(program, other.with_suffix(".pte"))  # an fp32 program beside an fp16 graph
    path, reason = _executorch_program(other, "fp16", None, "")
    assert path is None and reason == "exported from a checkpoint (MODEL or --reference), in fp32 or fp16"


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_every_convolution_and_matrix_product_runs_in_xnnpack(precision):
    """What stays outside the XNNPACK delegate is copies, index arithmetic and the head's
    reductions: a convolution or matrix product left to ExecuTorch's portable kernels is ~20x
    slower (a frontend whose convolutions XNNPACK did not take: 459 ms per 10 s clip)."""
    from asc_deploy.export.executorch import TARGETS, delegate_to_xnnpack
    from asc_deploy.export.onnx_export import model_metadata
    from asc_deploy.export.program import export_program

    checkpoint = load_checkpoint(checkpoint_path("ce"))
    edge = delegate_to_xnnpack(export_program(checkpoint, precision), model_metadata(checkpoint, precision, False, TARGETS))
    targets = [str(node.target) for node in edge.exported_program().graph_module.graph.nodes if node.op == "call_function"]
    assert any("executorch_call_delegate" in target for target in targets)
    heavy = [t for t in targets if any(f"aten.{op}." in t for op in ("convolution", "mm", "bmm", "addmm", "linear", "matmul"))]
    assert heavy == []
