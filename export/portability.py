"""Which runtimes can parse an ONNX graph: every node's op type against operator support lists.

The lists are JSON files as in the project's shared ``ops`` folder: TensorRT's ONNX parser
(``{"ops": {op: {"supported": "Y"|"N", "types", "restrictions"}}}``) and onnxruntime's execution
providers (``{"ops": {op: {"ranges": [{"since", "until", "types"}]}}}``). The result is data: one
:class:`OpProblem` per unsupported node, empty when the graph is portable.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import defs

DEFAULT_DOMAINS = ("", "ai.onnx")
# onnxruntime turns Constant nodes into initializers, so they need no kernel.
ORT_IMPLICIT_OPS = frozenset({"Constant"})


@dataclass(frozen=True)
class OpProblem:
    node: str
    op_type: str
    reason: str


def iter_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph``, including those of If/Loop/Scan subgraphs."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from iter_nodes(sub)


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS)


def check_tensorrt(model: onnx.ModelProto, support: dict) -> list[OpProblem]:
    """Nodes TensorRT's ONNX parser does not support (restrictions are listed by :func:`tensorrt_restrictions`)."""
    ops = support["ops"]
    return [
        OpProblem(node.name, node.op_type, "not in TensorRT's parser list" if node.op_type not in ops else "marked unsupported (N)")
        for node in iter_nodes(model.graph)
        if node.domain in DEFAULT_DOMAINS and str(ops.get(node.op_type, {}).get("supported", "N")).upper() not in ("Y", "TRUE")
    ]


def tensorrt_restrictions(model: onnx.ModelProto, support: dict) -> dict[str, str]:
    """Op type -> TensorRT parser restriction text, for the op types the graph uses."""
    used = {n.op_type for n in iter_nodes(model.graph) if n.domain in DEFAULT_DOMAINS}
    return {op: support["ops"][op].get("restrictions", "") for op in sorted(used)
            if op in support["ops"] and support["ops"][op].get("restrictions")}


def check_onnxruntime(model: onnx.ModelProto, support: dict) -> list[OpProblem]:
    """Nodes without a kernel in the provider whose list is ``support``, at the model's opset."""
    opset, problems = _opset(model), []
    for node in iter_nodes(model.graph):
        if node.domain not in DEFAULT_DOMAINS or node.op_type in ORT_IMPLICIT_OPS:
            continue
        since = defs.get_schema(node.op_type, opset).since_version
        ranges = support["ops"].get(node.op_type, {}).get("ranges", [])
        if not any(r["since"] <= since and (r["until"] is None or since <= r["until"]) for r in ranges):
            problems.append(OpProblem(node.name, node.op_type, f"no kernel for opset version {since}"))
    return problems


def load_support(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
