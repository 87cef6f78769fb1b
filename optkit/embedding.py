"""Embedding a preprocessing spec into a model: its input then takes the raw tensor.

The new first nodes compute exactly `optkit.preprocessing.apply` in standard ONNX ops (Cast,
Transpose, Gather, Mul, Sub, Div, MatMul), in float32, in the same order, so the embedded model on raw
input matches the original on numpy-preprocessed input bit for bit. The spec is recorded in the
model's metadata under `optkit.preprocessing`. The affine folds of `fuse` then absorb what is exact
into the first layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from optkit import io
from optkit.check import runtime
from optkit.check.compare import Verdict, compare_outputs
from optkit.check.inputs import runtime_inputs, synthetic_inputs
from optkit.core.contract import Exactness
from optkit.core.graph import Namer, add_initializer, replace_input
from optkit.errors import InputError
from optkit.preprocessing import METADATA_KEY, PreprocessSpec, apply

RAW_TYPES = {
    "uint8": ir.DataType.UINT8,
    "float16": ir.DataType.FLOAT16,
    "float32": ir.DataType.FLOAT,
}


def embed(model: io.ModelLike, spec: PreprocessSpec, input_name: str | None = None) -> ir.Model:
    """A copy of `model` whose input `input_name` (default: its only input) takes the raw tensor."""
    result = io.load(model)
    inputs = runtime_inputs(result)
    if input_name is None:
        if len(inputs) != 1:
            raise InputError(
                f"the model has {len(inputs)} inputs ({', '.join(v.name or '?' for v in inputs)}); "
                "name the one to preprocess with --input"
            )
        target = inputs[0]
    else:
        found = [v for v in inputs if v.name == input_name]
        if not found:
            raise InputError(
                f"no input '{input_name}' (inputs: {', '.join(v.name or '?' for v in inputs)})"
            )
        target = found[0]
    if not isinstance(target.type, ir.TensorType) or target.shape is None:
        raise InputError(f"input '{target.name}' is not a tensor with a known rank")
    if target.type.dtype != ir.DataType.FLOAT:
        raise InputError(
            f"input '{target.name}' is {target.type.dtype.name}; preprocessing feeds float32"
        )
    model_shape = tuple(d if isinstance(d, int) else None for d in target.shape)
    spec.check(model_shape, f"input '{target.name}'")
    graph = result.graph
    namer = Namer(result)
    name = target.name or "input"
    raw = ir.Value(
        name=namer.fresh(f"{name}_raw"),
        type=ir.TensorType(RAW_TYPES[spec.dtype]),
        shape=ir.Shape(list(spec.raw_shape(tuple(target.shape)))),
    )
    nodes: list[ir.Node] = []

    def add(op: str, inputs: list[ir.Value], **attributes: Any) -> ir.Value:
        node = ir.node(
            op, inputs, attributes=attributes, name=namer.fresh(f"preprocess_{op.lower()}")
        )
        node.outputs[0].name = namer.fresh(f"{name}_{op.lower()}")
        nodes.append(node)
        return node.outputs[0]

    def constant(label: str, array: np.ndarray | np.floating) -> ir.Value:
        return add_initializer(
            graph, namer, f"{name}_{label}", np.asarray(array, np.float32), ir.DataType.FLOAT
        )

    x = add("Cast", [raw], to=ir.DataType.FLOAT)
    rank = len(model_shape)
    if spec.layout == "NHWC":
        x = add("Transpose", [x], perm=[0, rank - 1, *range(1, rank - 1)])
    if spec.channel_order is not None:
        order = add_initializer(
            graph,
            namer,
            f"{name}_channel_order",
            np.asarray(spec.channel_order, np.int64),
            ir.DataType.INT64,
        )
        x = add("Gather", [x, order], axis=1)
    if spec.scale != 1.0:
        x = add("Mul", [x, constant("scale", np.float32(spec.scale))])
    for op, label, array in (("Sub", "mean", spec.mean_array()), ("Div", "std", spec.std_array())):
        if array is not None:
            shaped = array.reshape((-1,) + (1,) * (rank - 2)) if array.ndim == 1 else array
            x = add(op, [x, constant(label, shaped)])
    projection = spec.projection_array()
    if projection is not None:
        x = add("MatMul", [x, constant("projection", projection)])
    for node in nodes:
        graph.append(node)
    replace_input(graph, target, raw, x)
    x.name, raw.name = namer.fresh(f"{name}_preprocessed"), name
    x.type, x.shape = target.type, target.shape
    graph.sort()
    result.metadata_props[METADATA_KEY] = spec.to_json()
    return result


def verify_preprocessing(
    original: Any,
    rewritten: Any,
    spec: PreprocessSpec,
    input_name: str,
    *,
    seed: int = 0,
    exactness: Exactness = Exactness.REASSOCIATE,
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> Verdict:
    """The adapter the preprocessing rewrite declares: seeded raw inputs (integers over 0..255, at
    `shapes` for dynamic dims) to `rewritten`, the same after `apply(spec, raw)` to `original`,
    outputs compared at `exactness`."""
    raw = synthetic_inputs(io.load(rewritten, copy=False), shapes, seed=seed, int_range=(0, 256))
    preprocessed = {**raw, input_name: apply(spec, raw[input_name])}
    want = runtime.run(runtime.make_session(original), preprocessed)
    got = runtime.run(runtime.make_session(rewritten), raw)
    return compare_outputs(want, got, exactness)
