"""A model's skeleton: the model as a proto without the bytes of its weights, for the onnx checker and
shape inference (which read types and shapes, not weights).
"""

from __future__ import annotations

import onnx
import onnx_ir as ir


def skeleton_proto(model: ir.Model) -> onnx.ModelProto:
    """The model as a proto without the bytes of its large or external tensors, for the checker and
    shape inference (which read types and shapes, not weights).

    Large initializers of the main graph are serialized as graph inputs of the same name, type and
    shape instead; the model is restored, initializer order included, before this returns. Small
    tensors keep their data: shape arithmetic may read them.
    """
    graph = model.graph
    order = list(graph.initializers.values())
    inputs = list(graph.inputs)
    for value in order:
        tensor = value.const_value
        if tensor is None or not (
            isinstance(tensor, ir.ExternalTensor) or tensor.nbytes > _SKELETON_BYTES
        ):
            continue
        if value.type is None:
            value.type = ir.TensorType(tensor.dtype)
        if value.shape is None:
            value.shape = ir.Shape(tensor.shape.numpy())  # a tensor's shape is static
        graph.initializers.pop(value.name or "")
        if not value.is_graph_input():
            graph.inputs.append(value)
    try:
        return ir.serde.serialize_model(model)
    finally:
        graph.inputs.clear()
        graph.inputs.extend(inputs)
        graph.initializers.clear()
        for value in order:
            graph.register_initializer(value)


_SKELETON_BYTES = 1 << 16  # tensors from this size (and external ones) are left out
