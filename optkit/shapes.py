"""ONNX shape inference, merged into an onnx_ir model conservatively.

Only tensor types are merged, and only into values that have none: merging every inferred type (as
onnx_ir 1.1's ShapeInferencePass does) turned sequence-typed values into tensors and broke models.
Weights are not serialized for it (`io.skeleton_proto`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import onnx
import onnx_ir as ir

from optkit.graph import iter_graphs
from optkit.io import skeleton_proto

logger = logging.getLogger(__name__)


def infer_shapes(model: ir.Model) -> None:
    """Fill in missing tensor types and shapes of node outputs; best effort, never raises.

    Does nothing when every node output already has both (rewrites copy them to new values).
    """
    if all(
        v.type is not None and v.shape is not None
        for g in iter_graphs(model.graph)
        for n in g
        for v in n.outputs
        if v.name
    ):
        return
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton_proto(model), data_prop=True)
    except (
        Exception
    ) as exc:  # inference fails on some valid models: folds then decline for lack of shapes
        logger.info("shape inference failed: %s", exc)
        return
    values = {v.name: v for g in iter_graphs(model.graph) for n in g for v in n.outputs if v.name}
    for info in _value_infos(inferred.graph):
        value = values.get(info.name)
        if value is None or not info.type.HasField("tensor_type"):
            continue
        tensor_type = info.type.tensor_type
        if value.type is None and tensor_type.elem_type:
            value.type = ir.TensorType(ir.DataType(tensor_type.elem_type))
        if value.shape is None and tensor_type.HasField("shape"):
            value.shape = ir.Shape(
                [
                    d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                    for d in tensor_type.shape.dim
                ]
            )


def _value_infos(graph: onnx.GraphProto) -> Iterator[onnx.ValueInfoProto]:
    yield from graph.value_info
    yield from graph.output
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _value_infos(attr.g)
            for sub in attr.graphs:
                yield from _value_infos(sub)


def reinfer_shapes(model: ir.Model) -> dict[str, ir.Shape | None]:
    """Replace every declared shape that the graph's semantics do not vouch for by an inferred one.

    A declaration (`value_info`, a graph output's shape, a Loop / Scan body input) may be stale: a
    model whose batch was made dynamic after inference keeps `[1, 4, 16, 16]` on an intermediate that
    ONNX Runtime ignores and runs at every batch. Rewrites that depend on a shape must read what the
    graph computes: so the shapes of node outputs are dropped and inferred again from the graph
    inputs and initializers alone (dynamic where an input is dynamic; None where inference cannot
    say), and subgraph inputs keep their rank with every dim unknown. Element types are kept.
    Returns the declared shapes of the main graph's outputs and of subgraph inputs, by name, for
    `restore_declared_shapes` to put back once the rewrites are done (the signature is the user's,
    and ONNX Runtime needs a Loop body's declared inputs). Best effort: where inference fails, the
    dropped shapes stay unknown and folds that need them decline.
    """
    declared = {v.name or "": v.shape for v in model.graph.outputs}
    for graph in iter_graphs(model.graph):
        if graph is not model.graph:
            for value in graph.inputs:
                declared[value.name or ""] = value.shape
                if value.shape is not None:
                    value.shape = ir.Shape([None] * len(value.shape))
        for node in graph:
            for value in node.outputs:
                value.shape = None
    infer_shapes(model)
    return declared


def restore_declared_shapes(model: ir.Model, declared: dict[str, ir.Shape | None]) -> None:
    """Put back the shapes `reinfer_shapes` set aside: the main graph's outputs, subgraph inputs."""
    values = list(model.graph.outputs)
    values += [v for g in iter_graphs(model.graph) if g is not model.graph for v in g.inputs]
    for value in values:
        if value.name in declared:
            value.shape = declared[value.name]


class ShapesOnDemand:
    """Runs `infer_shapes` on the model the first time it is called, and never again: rewrites
    that read shapes call it first, so models whose folds need no shapes never pay for inference."""

    def __init__(self, model: ir.Model) -> None:
        self._model: ir.Model | None = model

    def __call__(self) -> None:
        if self._model is not None:
            infer_shapes(self._model)
            self._model = None
