"""A float64 reference for a float model: which of two disagreeing models is closer to the truth.

When a rewrite and its original disagree, either may be the less accurate one: a Conv with a bias of
1e5 followed by a BatchNorm with a mean of 1e5 loses ~4e-3 to cancellation in float32, while the
folded Conv (its constants computed in float64) is ~2e-6 off the exact result
(tests/check/test_verdicts.py). `outputs64` runs the model with every float tensor widened to float64
(initializers, constants, inputs, outputs) on onnx's reference evaluator, which implements every op
in numpy for float64. It is meant for models up to `MAX_BYTES` of weights: a calibrated ResNet-50
at 224x224 (102 MB) takes about 2 s, and the widened weights take twice their memory.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from onnx import numpy_helper

from optkit.core.graph import RANDOM_OPS, nodes_with_functions

logger = logging.getLogger(__name__)

MAX_BYTES = 256 * 2**20  # weights beyond this: no float64 reference (time, and twice the memory)
# Ops whose result depends on where float rounding puts their input (a Cast to float16 that
# overflows or quantizes, a Floor, a comparison): widened to float64 they compute something else
# than the model means, so a model holding one gets no float64 reference.
ROUNDING_OPS = RANDOM_OPS | frozenset({
    "Cast", "CastLike", "Round", "Floor", "Ceil", "Sign", "Mod", "QuantizeLinear",
    "DequantizeLinear", "DynamicQuantizeLinear", "Greater", "GreaterOrEqual", "Less",
    "LessOrEqual", "Equal", "ArgMax", "ArgMin", "TopK", "NonZero", "IsInf", "IsNaN", "Unique",
})  # fmt: skip
_WIDENED = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
_DOUBLE = onnx.TensorProto.DOUBLE


def outputs64(
    model: ir.Model, feeds: Mapping[str, np.ndarray], *, rounding_ops: bool = False
) -> list[np.ndarray] | None:
    """The model's outputs computed in float64 on `feeds` (float inputs widened), or None when the
    model is too large, holds one of `ROUNDING_OPS` (unless `rounding_ops`: a caller that knows
    its comparisons are not near a tie), or the evaluator cannot run it."""
    from onnx.reference import ReferenceEvaluator

    from optkit.io import initializer_bytes

    if initializer_bytes(model) > MAX_BYTES:
        return None
    if not rounding_ops and any(n.op_type in ROUNDING_OPS for n, _ in nodes_with_functions(model)):
        return None
    try:
        proto = ir.serde.serialize_model(model)
        widened = _widen_model(proto)
        wide_feeds = {
            name: a.astype(np.float64) if a.dtype.kind == "f" else a for name, a in feeds.items()
        }
        results = ReferenceEvaluator(widened).run(None, wide_feeds)
    except Exception as exc:  # an op or dtype the evaluator lacks: no reference, say nothing more
        logger.info("no float64 reference: %s", exc)
        return None
    return [np.asarray(r) for r in results]


def _widen_model(proto: onnx.ModelProto) -> onnx.ModelProto:
    widened = onnx.ModelProto()
    widened.CopyFrom(proto)
    _widen_graph(widened.graph)
    for function in widened.functions:
        for node in function.node:
            _widen_node(node)
    return widened


def _widen_graph(graph: onnx.GraphProto) -> None:
    del graph.value_info[:]  # inferred again by the evaluator where it needs them
    for value in [*graph.input, *graph.output]:
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type in _WIDENED:
            value.type.tensor_type.elem_type = _DOUBLE
    for index, tensor in enumerate(graph.initializer):
        graph.initializer[index].CopyFrom(_widen_tensor(tensor))
    for node in graph.node:
        _widen_node(node)


def _widen_node(node: onnx.NodeProto) -> None:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.TENSOR:
            attr.t.CopyFrom(_widen_tensor(attr.t))
        elif attr.type == onnx.AttributeProto.GRAPH:
            _widen_graph(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            for sub in attr.graphs:
                _widen_graph(sub)
        elif attr.name == "dtype" and attr.i in _WIDENED:
            attr.i = _DOUBLE  # EyeLike(dtype=FLOAT), ...


def _widen_tensor(tensor: onnx.TensorProto) -> onnx.TensorProto:
    if tensor.data_type not in _WIDENED:
        return tensor
    array: Any = numpy_helper.to_array(tensor).astype(np.float64)
    return numpy_helper.from_array(array, tensor.name)
