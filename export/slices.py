"""Gathers of a leading range of indices in an ONNX graph as Slices: the same values, without the
index tensor and the per-element lookups.

The export frontend takes the signal's whole hops as ``index_select`` of ``arange(whole * hop)``
(:class:`~asc_deploy.export.forms.ExportFrontend`: a Slice there leaves ``torch.export`` unable to
prove the shapes for every length), which lowers to Gather(waveform, Range(0, n, 1)). onnxruntime
then builds n int64 indices and gathers element by element (profiled: ~30 ms of a 16-clip call
of 10 s clips, x86, 2 threads). A Slice of the first n elements is a copy: that call 289 -> 277
ms, one 10 s clip in onnxruntime-web (node, 1 thread) 129 -> 122 ms.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxscript.optimizer
from onnx import helper, numpy_helper


def _scalar(name: str, initializers: dict[str, onnx.TensorProto]) -> int | None:
    """The value of a 0-d or one-element integer initializer, else None."""
    tensor = initializers.get(name)
    if tensor is None:
        return None
    value = numpy_helper.to_array(tensor)
    return int(value.reshape(-1)[0]) if value.size == 1 and np.issubdtype(value.dtype, np.integer) else None


def gathered_ranges_as_slices(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (changed in place) with every Gather whose indices are Range(0, n, 1), directly or
    through a Reshape to one dimension and a Cast to an integer type, replaced by a Slice of
    elements [0, n) along the Gather's axis, of the same name and output. Nodes and initializers
    that nothing reads any more (the Range and the ops between) are removed by onnxscript's
    unused-node pass."""
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}

    def passes_indices_through(node: onnx.NodeProto) -> bool:  # a Cast, or a Reshape to one dimension
        return node.op_type == "Cast" or (node.op_type == "Reshape" and _scalar(node.input[1], initializers) == -1)

    def range_limit(indices: str) -> str | None:
        node = producer.get(indices)
        while node is not None and passes_indices_through(node):
            node = producer.get(node.input[0])
        if node is None or node.op_type != "Range":
            return None
        start, _, delta = node.input
        return node.input[1] if _scalar(start, initializers) == 0 and _scalar(delta, initializers) == 1 else None

    nodes, shape = [], f"{graph.name or 'graph'}/one_dimension"
    for node in graph.node:
        limit = range_limit(node.input[1]) if node.op_type == "Gather" else None
        if limit is None:
            nodes.append(node)
            continue
        if shape not in initializers:
            initializers[shape] = numpy_helper.from_array(np.array([1], np.int64), shape)
            graph.initializer.append(initializers[shape])
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)
        starts, ends, axes = f"{node.name}/starts", f"{node.name}/ends", f"{node.name}/axes"
        graph.initializer.extend([numpy_helper.from_array(np.array([0], np.int64), starts),
                                  numpy_helper.from_array(np.array([axis], np.int64), axes)])
        nodes.append(helper.make_node("Reshape", [limit, shape], [f"{ends}/any_type"], name=f"{node.name}/ends"))
        nodes.append(helper.make_node("Cast", [f"{ends}/any_type"], [ends], name=f"{node.name}/ends_int64", to=onnx.TensorProto.INT64))
        nodes.append(helper.make_node("Slice", [node.input[0], starts, ends, axes], list(node.output), name=node.name))
    del graph.node[:]
    graph.node.extend(nodes)
    onnxscript.optimizer.remove_unused_nodes(model)  # the Range and what fed only it; onnxruntime warns about unused initializers
    return model
