"""TTA graphs with the passes run one at a time: the pass scorer's nodes in an ONNX Loop.

A batched TTA graph (``/scorer/`` nodes of :class:`asc_deploy.models.pipeline.PassScorer`)
scores passes x clips as one batch. On a CPU that writes every activation of every pass to
memory and reads it back: for one 10 s clip with 30 passes the first block's convolution alone
writes 847 MB, which its average pool then reads. :func:`loop_over_passes` moves the scorer into
the body of a Loop over passes, so one pass's activations (28 MB at most, mostly far less) stay
in the caches; the function is unchanged (probabilities equal to float rounding).
:func:`batch_passes` undoes it exactly (int8 calibration needs the batched graph).

Structure (node names under ``/pass_loop/``): ``passes = Shape(A)[0]``; ``Loop(passes, true,
zeros(1, batch, classes))`` whose body gathers pass ``i`` of the augmented log-mel ``A``
(passes, batch, 1, frames, bins), runs the scorer nodes on it and adds their probabilities
(1, batch, classes) float32 to the carried sum; the sum divided by ``passes`` replaces the
scorer's output ``B`` (passes, batch, classes) for the rest of the graph, which averages over
axis 0. No scan outputs and a fixed-shape carried value: TensorRT's Loop restrictions hold.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

SCORER_SCOPE = "/scorer/"
LOOP_SCOPE = "/pass_loop/"
LOOP_NODE = f"{LOOP_SCOPE}Loop"
_ITER, _COND_IN, _ACC_IN, _COND_OUT, _ACC_OUT = (f"{LOOP_SCOPE}{n}" for n in ("iteration", "cond_in", "sum_in", "cond_out", "sum_out"))


def detached_copy(proto):
    """A detached copy (elements of a repeated field must not outlive its clearing)."""
    copy = type(proto)()
    copy.CopyFrom(proto)
    return copy


def copy_with_loop_body(model: onnx.ModelProto, loop_node: str, made_by: str) -> tuple[onnx.ModelProto, onnx.GraphProto]:
    """A copy of ``model`` and the body of its Loop named ``loop_node`` (ValueError naming the
    transformation ``made_by`` when there is none)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    loop = next((detached_copy(n) for n in model.graph.node if n.name == loop_node), None)
    if loop is None:
        raise ValueError(f"no {loop_node} node: not a graph made by {made_by}")
    return model, next(attr.g for attr in loop.attribute if attr.name == "body")


def has_pass_loop(model: onnx.ModelProto) -> bool:
    return any(node.name == LOOP_NODE for node in model.graph.node)


def _boundary(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> tuple[str, str, set[int]]:
    """(A, B, body): the scorer's input and output tensors, and the indices in ``nodes`` (the
    graph's nodes in order) of the nodes that run per pass. Sizes the scorer computes from the
    graph's input shapes (frames, batch) are no input of it: the body reads them from the outer
    graph, where they are computed once (the scorer's own shapes must not depend on the number of
    passes, see :class:`~asc_deploy.models.pipeline.PassScorer`)."""
    scorer = [n for n in nodes if n.name.startswith(SCORER_SCOPE)]
    if not scorer:
        raise ValueError(f"no pass scorer nodes (names under {SCORER_SCOPE}): not a batched asc-export TTA graph")
    variable = {i.name for i in graph.input}  # tensors that depend on a graph input
    shapes: set[str] = set()  # variable tensors computed from tensor shapes only (sizes that reshapes use)
    for node in nodes:
        if any(i in variable for i in node.input):
            variable.update(node.output)
            if node.op_type == "Shape" or all(i in shapes for i in node.input if i in variable):
                shapes.update(node.output)
    scorer_out = {o for n in scorer for o in n.output}
    entering = {i for n in scorer for i in n.input if i in variable and i not in scorer_out and i not in shapes}
    graph_outputs = {o.name for o in graph.output}
    used_outside = {i for n in nodes if not n.name.startswith(SCORER_SCOPE) for i in n.input} | graph_outputs
    leaving = scorer_out & used_outside
    if len(entering) != 1 or len(leaving) != 1:
        raise ValueError(f"the pass scorer must have one input and one output, found inputs {sorted(entering)} "
                         f"and outputs {sorted(leaving)}")
    a, b = entering.pop(), leaving.pop()
    after_a = {a}  # forward closure of A
    for node in nodes:
        if any(i in after_a for i in node.input):
            after_a.update(node.output)
    needed, body = {b}, set()  # backward closure of B through nodes that depend on A or on nothing variable
    for index in reversed(range(len(nodes))):
        outputs = set(nodes[index].output)
        if outputs & needed and (set(nodes[index].input) & after_a or not outputs & variable or outputs <= shapes):
            needed.update(i for i in nodes[index].input if i)
            body.add(index)
    # A constant-only node (weight DequantizeLinear, shape constants) stays in the body only if
    # nothing outside it uses its outputs.
    consumers: dict[str, set[int]] = {}
    for index, node in enumerate(nodes):
        for i in node.input:
            consumers.setdefault(i, set()).add(index)
    changed = True
    while changed:
        changed = False
        for index in sorted(body):
            outputs = set(nodes[index].output)
            if set(nodes[index].input) & after_a:
                continue
            if outputs & graph_outputs or any(consumers.get(o, set()) - body for o in outputs):
                body.discard(index)
                changed = True
    return a, b, body


def _classes(graph: onnx.GraphProto) -> int:
    """Classes: the last dimension of the graph's (batch, classes) output."""
    dims = graph.output[0].type.tensor_type.shape.dim
    if not dims or not dims[-1].HasField("dim_value"):
        raise ValueError(f"the graph output {graph.output[0].name!r} has no fixed number of classes")
    return dims[-1].dim_value


def loop_over_passes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a batched TTA ``model`` whose pass scorer runs in a Loop, one pass per iteration."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    nodes = [detached_copy(n) for n in graph.node]
    a, b, body_indices = _boundary(graph, nodes)
    classes = _classes(graph)
    body_nodes = [nodes[i] for i in sorted(body_indices)]
    a_pass = f"{LOOP_SCOPE}augmented_pass"
    for node in body_nodes:
        node.input[:] = [a_pass if i == a else i for i in node.input]
    body_inputs = {i for n in body_nodes for i in n.input}
    outer_inputs = {i for index, n in enumerate(nodes) if index not in body_indices for i in n.input}
    moved = [t for t in graph.initializer if t.name in body_inputs and t.name not in outer_inputs]
    moved_names = {t.name for t in moved}

    def c(name: str, values: list[int], dims: list[int] | None = None) -> onnx.TensorProto:
        return helper.make_tensor(f"{LOOP_SCOPE}{name}", TensorProto.INT64, [len(values)] if dims is None else dims, values)

    body = helper.make_graph(
        [helper.make_node("Unsqueeze", [_ITER, f"{LOOP_SCOPE}axis0"], [f"{LOOP_SCOPE}index"], name=f"{LOOP_SCOPE}Unsqueeze"),
         helper.make_node("Gather", [a, f"{LOOP_SCOPE}index"], [a_pass], name=f"{LOOP_SCOPE}Gather", axis=0),
         *body_nodes,
         helper.make_node("Add", [_ACC_IN, b], [_ACC_OUT], name=f"{LOOP_SCOPE}Add"),
         helper.make_node("Identity", [_COND_IN], [_COND_OUT], name=f"{LOOP_SCOPE}Identity")],
        "pass",
        [helper.make_tensor_value_info(_ITER, TensorProto.INT64, []),
         helper.make_tensor_value_info(_COND_IN, TensorProto.BOOL, []),
         helper.make_tensor_value_info(_ACC_IN, TensorProto.FLOAT, [1, "batch", classes])],
        [helper.make_tensor_value_info(_COND_OUT, TensorProto.BOOL, []),
         helper.make_tensor_value_info(_ACC_OUT, TensorProto.FLOAT, [1, "batch", classes])],
        initializer=[c("axis0", [0]), *moved],
    )
    p = LOOP_SCOPE
    plumbing = [
        helper.make_node("Shape", [a], [f"{p}shape"], name=f"{p}Shape"),
        helper.make_node("Gather", [f"{p}shape", f"{p}zero"], [f"{p}passes"], name=f"{p}GatherPasses", axis=0),
        helper.make_node("Slice", [f"{p}shape", f"{p}one", f"{p}two"], [f"{p}batch"], name=f"{p}SliceBatch"),
        helper.make_node("Concat", [f"{p}one", f"{p}batch", f"{p}classes"], [f"{p}sum_shape"], name=f"{p}Concat", axis=0),
        helper.make_node("ConstantOfShape", [f"{p}sum_shape"], [f"{p}sum0"], name=f"{p}ConstantOfShape",
                         value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])),
        helper.make_node("Constant", [], [f"{p}true"], name=f"{p}True", value=helper.make_tensor("true", TensorProto.BOOL, [], [True])),
        helper.make_node("Loop", [f"{p}passes", f"{p}true", f"{p}sum0"], [f"{p}sum"], name=LOOP_NODE, body=body),
        helper.make_node("Cast", [f"{p}passes"], [f"{p}passes_float"], name=f"{p}Cast", to=TensorProto.FLOAT),
        helper.make_node("Div", [f"{p}sum", f"{p}passes_float"], [f"{p}mean"], name=f"{p}Div"),
    ]
    outer, placed = [], False
    for index, node in enumerate(nodes):
        if index in body_indices:
            continue
        if b in node.input:
            if not placed:
                outer.extend(plumbing)
                placed = True
            node.input[:] = [f"{p}mean" if i == b else i for i in node.input]
        outer.append(node)
    if not placed:
        raise ValueError(f"the pass scorer's output {b!r} must feed a node that averages the passes")
    del graph.node[:]
    graph.node.extend(outer)
    kept = [detached_copy(t) for t in graph.initializer if t.name not in moved_names]
    del graph.initializer[:]
    graph.initializer.extend([*kept, c("zero", [0], []), c("one", [1]), c("two", [2]), c("classes", [classes])])
    return model


def batch_passes(model: onnx.ModelProto) -> onnx.ModelProto:
    """The batched TTA graph of a ``model`` made by :func:`loop_over_passes` (its exact inverse up
    to node order)."""
    model, body = copy_with_loop_body(model, LOOP_NODE, "loop_over_passes")
    graph = model.graph
    gather = next(n for n in body.node if n.name == f"{LOOP_SCOPE}Gather")
    add = next(n for n in body.node if n.name == f"{LOOP_SCOPE}Add")
    a, a_pass, b = gather.input[0], gather.output[0], add.input[1]
    scorer = [detached_copy(n) for n in body.node if not n.name.startswith(LOOP_SCOPE)]
    for node in scorer:
        node.input[:] = [a if i == a_pass else i for i in node.input]
    body_initializers = [detached_copy(t) for t in body.initializer if not t.name.startswith(LOOP_SCOPE)]
    outer = []
    for node in [detached_copy(n) for n in graph.node]:
        if node.name == LOOP_NODE:
            outer.extend(scorer)
        elif not node.name.startswith(LOOP_SCOPE):
            node.input[:] = [b if i == f"{LOOP_SCOPE}mean" else i for i in node.input]
            outer.append(node)
    del graph.node[:]
    graph.node.extend(outer)
    kept = [detached_copy(t) for t in graph.initializer if not t.name.startswith(LOOP_SCOPE)]
    del graph.initializer[:]
    graph.initializer.extend([*kept, *body_initializers])
    return model
