"""A small graph builder for the recognizer tests: `g("Mul", "x", 0.5)` adds a node (numbers become
float32 initializers) and returns its output's name; `g.model("y")` makes the onnx_ir model, shapes
inferred. Nodes are named after their outputs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper, numpy_helper

from optkit.core.contract import Decline
from optkit.core.graph import ConstantPolicy
from optkit.passes.forms.pattern import Reader

F32 = onnx.TensorProto.FLOAT


class G:
    """A graph under construction: float32 inputs of `shape` (or `inputs` name -> (type, shape))."""

    def __init__(
        self,
        inputs: Sequence[str] | dict[str, tuple[int, Sequence[int | str] | None]] = ("x",),
        shape: Sequence[int | str] | None = (2, 4),
        opset: int = 17,
    ) -> None:
        specs = inputs if isinstance(inputs, dict) else {name: (F32, shape) for name in inputs}
        self.inputs = [helper.make_tensor_value_info(n, t, s) for n, (t, s) in specs.items()]
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, np.ndarray] = {}
        self.opset = opset

    def const(self, value: Any, dtype: Any = np.float32) -> str:
        name = f"c{len(self.inits)}"
        self.inits[name] = np.array(value, dtype)
        return name

    def __call__(self, op: str, *inputs: Any, name: str | None = None, **attrs: Any) -> str:
        names = [
            i if isinstance(i, str) else self.const(i) if i is not None else "" for i in inputs
        ]
        out = name or f"{op.lower()}{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, names, [out], name=out, **attrs))
        return out

    def proto(self, *outputs: str, infer: bool = True) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "g",
            self.inputs,
            [helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in outputs],
            [numpy_helper.from_array(v, k) for k, v in self.inits.items()],
        )
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        proto.ir_version = 10
        return onnx.shape_inference.infer_shapes(proto) if infer else proto

    def model(self, *outputs: str, infer: bool = True) -> ir.Model:
        return ir.from_proto(self.proto(*outputs, infer=infer))


def node(model: ir.Model, name: str) -> ir.Node:
    return next(n for n in model.graph if n.name == name)


def value(model: ir.Model, name: str) -> ir.Value:
    graph = model.graph
    for v in [*graph.inputs, *graph.initializers.values()]:
        if v.name == name:
            return v
    return next(o for n in graph for o in n.outputs if o.name == name)


def reader(model: ir.Model) -> Reader:
    return Reader(model.graph, ConstantPolicy(model))


def serialized(model: ir.Model) -> bytes:
    return ir.to_proto(model).SerializeToString()


def reason(result: object) -> str:
    """A decline's text (its `reason`); anything else as repr, for an assertion's message."""
    return result.reason if isinstance(result, Decline) else repr(result)
