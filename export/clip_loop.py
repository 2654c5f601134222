"""Graphs that run their clips one at a time: the whole graph in an ONNX Loop over the batch.

A call with many clips writes every activation of every clip before the next op reads it back:
16 clips of 10 s make the first block's map 452 MB, far beyond the caches, and onnxruntime on a
CPU then runs the batch slower per clip than one clip per call. :func:`loop_over_clips` moves
every node of a graph into the body of a Loop over the clips of its batched inputs (those whose
first dimension is the outputs' ``batch``), so one clip's activations (28 MB at most for a 10 s
clip, mostly far less) are live at a time and stay in the caches; inputs without a batch axis
(a TTA model's stripes) are shared by every iteration, and a nested Loop (the TTA passes,
:mod:`asc_deploy.export.loop`) would run inside each clip's iteration (the CPU schedule loops the
clips of single-pass graphs only: :class:`~asc_deploy.export.onnx_export.Schedule`). The
function is unchanged (each clip's outputs are those of a call with that clip alone).
:func:`batch_clips` undoes it exactly (int8 calibration needs the batched graph).

Structure (node names under ``/clip_loop/``): ``Loop(Shape(X)[0], true)`` over the clips of the
first batched input X; the body slices clip ``i`` of every batched input (batch axis kept, length
1), runs the graph's nodes on it with their initializers, and returns every graph output as a
scan output (clips, 1, ...); a Squeeze of axis 1 gives each output its name and shape back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import onnx
from onnx import TensorProto, helper

from asc_deploy.export.loop import copy_with_loop_body, detached_copy

CLIP_SCOPE = "/clip_loop/"
CLIP_LOOP_NODE = f"{CLIP_SCOPE}Loop"
_ITER, _COND_IN, _COND_OUT = (f"{CLIP_SCOPE}{n}" for n in ("iteration", "cond_in", "cond_out"))
_CLIP = "/clip"  # suffix of a batched input's or an output's name inside the body


def has_clip_loop(model: onnx.ModelProto) -> bool:
    return any(node.name == CLIP_LOOP_NODE for node in model.graph.node)


def _rename_inputs(nodes: Iterable[onnx.NodeProto], rename: Callable[[str], str]) -> None:
    """Rename the inputs of ``nodes`` and of every node of their subgraphs (a nested Loop's body
    reads outer names too), in place."""
    for node in nodes:
        node.input[:] = [rename(i) for i in node.input]
        for attr in node.attribute:
            for graph in [attr.g] if attr.HasField("g") else list(attr.graphs):
                _rename_inputs(graph.node, rename)


def _batch_axis(value: onnx.ValueInfoProto) -> str:
    """The name of ``value``'s first dimension ("" when it is a number, unnamed or absent)."""
    dims = value.type.tensor_type.shape.dim
    return dims[0].dim_param if dims else ""


def loop_over_clips(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose nodes run in a Loop over the clips of its batched inputs, one clip
    per iteration. Every output must have the batch axis first (named, e.g. ``batch``), and at
    least one input must have it."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    batch = {_batch_axis(o) for o in graph.output}
    if len(batch) != 1 or not next(iter(batch)):
        raise ValueError(f"every output needs the same named batch axis first, found {sorted(batch)}")
    batched = [i.name for i in graph.input if _batch_axis(i) in batch]
    if not batched:
        raise ValueError(f"no input has the outputs' batch axis {batch.pop()!r} first")
    inside = {name: name + _CLIP for name in batched} | {o.name: o.name + _CLIP for o in graph.output}
    nodes = [detached_copy(n) for n in graph.node]
    _rename_inputs(nodes, lambda name: inside.get(name, name))
    for node in nodes:
        node.output[:] = [inside.get(o, o) for o in node.output]
    p = CLIP_SCOPE
    slices = [helper.make_node("Unsqueeze", [_ITER, f"{p}axis0"], [f"{p}start"], name=f"{p}Start"),
              helper.make_node("Add", [f"{p}start", f"{p}one"], [f"{p}end"], name=f"{p}End")]
    slices += [helper.make_node("Slice", [name, f"{p}start", f"{p}end", f"{p}axis0"], [inside[name]], name=f"{p}Slice{k}")
               for k, name in enumerate(batched)]
    scan_outputs = []
    for output in graph.output:
        clip = detached_copy(output)
        clip.name = inside[output.name]
        clip.type.tensor_type.shape.dim[0].Clear()
        clip.type.tensor_type.shape.dim[0].dim_value = 1
        scan_outputs.append(clip)
    body = helper.make_graph(
        [*slices, *nodes, helper.make_node("Identity", [_COND_IN], [_COND_OUT], name=f"{p}Identity")],
        "clip",
        [helper.make_tensor_value_info(_ITER, TensorProto.INT64, []), helper.make_tensor_value_info(_COND_IN, TensorProto.BOOL, [])],
        [helper.make_tensor_value_info(_COND_OUT, TensorProto.BOOL, []), *scan_outputs],
        initializer=[detached_copy(t) for t in graph.initializer]
        + [helper.make_tensor(f"{p}axis0", TensorProto.INT64, [1], [0]), helper.make_tensor(f"{p}one", TensorProto.INT64, [1], [1])],
        value_info=[detached_copy(v) for v in graph.value_info],
    )
    stacked = [f"{p}{o.name}_stacked" for o in graph.output]
    outer = [
        helper.make_node("Shape", [batched[0]], [f"{p}clips"], name=f"{p}Shape", start=0, end=1),
        helper.make_node("Squeeze", [f"{p}clips"], [f"{p}trip_count"], name=f"{p}TripCount"),
        helper.make_node("Constant", [], [f"{p}true"], name=f"{p}True", value=helper.make_tensor("true", TensorProto.BOOL, [], [True])),
        helper.make_node("Loop", [f"{p}trip_count", f"{p}true"], stacked, name=CLIP_LOOP_NODE, body=body),
        *(helper.make_node("Squeeze", [s, f"{p}axis1"], [o.name], name=f"{p}Squeeze{k}") for k, (s, o) in enumerate(zip(stacked, graph.output))),
    ]
    del graph.node[:], graph.initializer[:], graph.value_info[:]
    graph.node.extend(outer)
    graph.initializer.append(helper.make_tensor(f"{p}axis1", TensorProto.INT64, [1], [1]))
    return model


def batch_clips(model: onnx.ModelProto) -> onnx.ModelProto:
    """The batched graph of a ``model`` made by :func:`loop_over_clips` (its exact inverse up to
    the order of initializers)."""
    model, body = copy_with_loop_body(model, CLIP_LOOP_NODE, "loop_over_clips")
    graph = model.graph
    outside = {o: o.removesuffix(_CLIP) for o in (*(n.output[0] for n in body.node if n.op_type == "Slice" and n.name.startswith(CLIP_SCOPE)),
                                                   *(o.name for o in body.output[1:]))}
    nodes = [detached_copy(n) for n in body.node if not n.name.startswith(CLIP_SCOPE)]
    _rename_inputs(nodes, lambda name: outside.get(name, name))
    for node in nodes:
        node.output[:] = [outside.get(o, o) for o in node.output]
    del graph.node[:], graph.initializer[:]
    graph.node.extend(nodes)
    graph.initializer.extend(detached_copy(t) for t in body.initializer if not t.name.startswith(CLIP_SCOPE))
    graph.value_info.extend(detached_copy(v) for v in body.value_info)
    return model
