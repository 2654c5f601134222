import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from asc_deploy.export.slices import gathered_ranges_as_slices


def whole_hops_graph(start: int) -> onnx.ModelProto:
    """x (2, samples) -> x[:, start : samples // 4 * 4] as the export frontend lowers it: Gather of
    Cast(Reshape(Range(start, samples // 4 * 4, 1), [-1]))."""
    init = [numpy_helper.from_array(np.array(v, np.int64), name) for name, v in
            (("one", 1), ("four", 4), ("start", start), ("flat", [-1]))]
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["samples"], axis=0),
        helper.make_node("Div", ["samples", "four"], ["hops"]),
        helper.make_node("Mul", ["hops", "four"], ["limit"]),
        helper.make_node("Range", ["start", "limit", "one"], ["range"]),
        helper.make_node("Reshape", ["range", "flat"], ["flat_range"]),
        helper.make_node("Cast", ["flat_range"], ["indices"], to=TensorProto.INT64),
        helper.make_node("Gather", ["x", "indices"], ["y"], name="/frontend/index_select", axis=1),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, "samples"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, None])], init)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_gather_of_leading_range_becomes_slice():
    """Same output for lengths that are and are not multiples of the hop; the Range, its Reshape
    and Cast and their unread initializers are gone; the shape Gather (constant index) stays."""
    model = gathered_ranges_as_slices(whole_hops_graph(0))
    onnx.checker.check_model(model, full_check=True)
    ops = [node.op_type for node in model.graph.node]
    assert "Range" not in ops and ops.count("Gather") == 1 and "Slice" in ops
    assert next(n for n in model.graph.node if n.output[0] == "y").name == "/frontend/index_select"
    assert "start" not in {i.name for i in model.graph.initializer}
    for samples in (12, 13, 15):
        x = np.arange(2 * samples, dtype=np.float32).reshape(2, samples)
        assert np.array_equal(run(model, x), x[:, : samples // 4 * 4])


def test_ranges_not_from_zero_are_kept():
    model = gathered_ranges_as_slices(whole_hops_graph(1))
    assert [node.op_type for node in model.graph.node] == [node.op_type for node in whole_hops_graph(1).graph.node]
