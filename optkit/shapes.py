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


class ShapesOnDemand:
    """Runs `infer_shapes` on the model the first time it is called, and never again: rewrites
    that read shapes call it first, so models whose folds need no shapes never pay for inference."""

    def __init__(self, model: ir.Model) -> None:
        self._model: ir.Model | None = model

    def __call__(self) -> None:
        if self._model is not None:
            infer_shapes(self._model)
            self._model = None
