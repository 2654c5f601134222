"""export/pools.py: average pools as depthwise convolutions, the same values to the rounding of the sum."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from asc_deploy.export.pools import average_pools_as_convolutions, is_pool

CHANNELS = 8


def conv_relu_pools(dtype: type) -> onnx.ModelProto:
    """x (1, 3, 21, 16) -> Conv 3x3 (8 channels) -> ReLU -> 2x2 stride-2 AveragePool ("pool"), and
    the same ReLU output through a padded 2x2 pool ("padded": not a plain 2x2 pool, kept)."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((CHANNELS, 3, 3, 3)).astype(dtype), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("AveragePool", ["r"], ["pooled"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("AveragePool", ["r"], ["padded"], name="padded", kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1])]
    outputs = [helper.make_tensor_value_info("pooled", elem, [1, CHANNELS, 10, 8]),
               helper.make_tensor_value_info("padded", elem, [1, CHANNELS, 11, 9])]
    graph = helper.make_graph(nodes, "pools", [helper.make_tensor_value_info("x", elem, [1, 3, 21, 16])], outputs, [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the graph's own ops, not fused ones
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, {"x": x})


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_pool_becomes_a_depthwise_convolution_with_the_same_values(dtype):
    """Each value within 1 ulp of AveragePool's (the four terms are added in another order); the
    padded pool stays."""
    model = conv_relu_pools(dtype)
    x = np.random.default_rng(1).standard_normal((1, 3, 21, 16)).astype(dtype)
    before = run(model, x)
    after_model = average_pools_as_convolutions(conv_relu_pools(dtype))
    onnx.checker.check_model(after_model, full_check=True)
    nodes = {n.name: n for n in after_model.graph.node}
    assert nodes["pool"].op_type == "Conv" and is_pool(nodes["pool"])
    assert helper.get_attribute_value(next(a for a in nodes["pool"].attribute if a.name == "group")) == CHANNELS
    assert nodes["padded"].op_type == "AveragePool" and not is_pool(nodes["padded"])
    weight = numpy_helper.to_array(next(i for i in after_model.graph.initializer if i.name == "pool/depthwise_weight"))
    assert weight.dtype == dtype and weight.shape == (CHANNELS, 1, 2, 2) and np.all(weight == 0.25)
    after = run(after_model, x)
    assert after[0].shape == (1, CHANNELS, 10, 8)  # the odd 21st row dropped, as AveragePool does
    assert np.all(np.abs(after[0] - before[0]) <= np.spacing(before[0]))  # the sum's order: measured 1 ulp in fp32, 0 in fp16
    assert np.array_equal(after[1], before[1])
