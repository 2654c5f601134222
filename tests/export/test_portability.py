"""Every node of the exported graphs against the operator lists of the runtimes they target."""

import onnx
import pytest

from asc_deploy.export.portability import check_onnxruntime, check_tensorrt, load_support, tensorrt_restrictions
from tests.shared_data import OPS, needs_shared

pytestmark = [needs_shared, pytest.mark.skipif(not OPS.is_dir(), reason="../shared/ops (operator lists) is absent")]
VARIANTS = [("fp32", False, "gpu"), ("fp16", False, "gpu"), ("fp32", True, "gpu"), ("fp16", True, "gpu"),
            ("fp32", False, "cpu"), ("fp32", True, "cpu")]


@pytest.mark.parametrize("precision, tta, schedule", VARIANTS)
def test_graph_loads_in_every_target(precision, tta, schedule, exported):
    """Subgraphs included: the CPU schedule's Loop body is checked node by node too."""
    model = onnx.load(str(exported("ce", precision, tta, schedule)))
    targets = dict(p.split("=", 1) for p in [f"{x.key}={x.value}" for x in model.metadata_props]).get("targets")
    assert targets and all(t in targets for t in ("onnxruntime-cpu", "onnxruntime-cuda"))
    assert check_onnxruntime(model, load_support(OPS / "onnxruntime_cpu.json")) == []
    assert check_onnxruntime(model, load_support(OPS / "onnxruntime_cuda.json")) == []
    trt = load_support(OPS / "tensorrt_onnx_parser.json")
    assert check_tensorrt(model, trt) == []
    restrictions = tensorrt_restrictions(model, trt)
    # the CPU schedule is for onnxruntime (its clip Loop has a dynamic scan output, which TensorRT's parser refuses)
    assert ("tensorrt" in targets) == (schedule == "gpu") == ("Loop" not in restrictions)
    print(f"{precision}{' tta' if tta else ''} {schedule}: TensorRT restrictions of used ops: {restrictions}")
    used = {n.op_type for n in model.graph.node}
    assert not used & {"STFT", "DFT", "MelWeightMatrix", "HannWindow"}


def test_checker_flags_unsupported_ops():
    from onnx import TensorProto, helper

    node = helper.make_node("DFT", ["x"], ["y"], name="the_dft")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    trt = check_tensorrt(model, load_support(OPS / "tensorrt_onnx_parser.json"))
    cuda = check_onnxruntime(model, load_support(OPS / "onnxruntime_cuda.json"))
    assert [p.node for p in trt] == ["the_dft"] and [p.op_type for p in cuda] == ["DFT"]
