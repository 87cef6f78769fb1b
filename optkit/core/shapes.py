"""ONNX shape inference, merged into an onnx_ir model conservatively.

Only tensor types are merged, and only into values that have none: merging every inferred type (as
onnx_ir 1.1's ShapeInferencePass does) turned sequence-typed values into tensors and broke models.
Weights are not serialized for it (`core.skeleton.skeleton_proto`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import onnx
import onnx_ir as ir

from optkit.core.graph import CONTROL_FLOW, is_default_domain, iter_graphs
from optkit.core.skeleton import skeleton_proto

logger = logging.getLogger(__name__)


def infer_shapes(model: ir.Model) -> None:
    """Fill in missing tensor types and shapes of node outputs; best effort, never raises.

    Does nothing when every node output already has both (rewrites copy them to new values), or
    when the ones without are those the last inference could not fill either, from the same
    initializers (inference would only leave them unfilled again, at the cost of a run per pass
    that asks for shapes; a fold that made a new constant may let it say more).
    """
    missing = _unshaped(model)
    if not missing or model.meta.get(_UNINFERABLE) == (missing, _constants(model)):
        return
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton_proto(model), data_prop=True)
    except Exception as exc:  # inference fails on some valid models: folds decline without shapes
        logger.info("shape inference failed: %s", exc)
        model.meta[_UNINFERABLE] = (missing, _constants(model))
        return
    graphs = list(iter_graphs(model.graph))
    protos = list(_proto_graphs(inferred.graph))
    if len(graphs) != len(protos):  # not the same structure: better no shapes than wrong ones
        logger.info("shape inference: %d graphs, %d inferred; not merged", len(graphs), len(protos))
        return
    for graph, proto in zip(graphs, protos, strict=True):
        _merge(graph, proto)
    model.meta[_UNINFERABLE] = (_unshaped(model), _constants(model))


# In the model's meta: the node outputs inference left unshaped, and the initializers it had.
_UNINFERABLE = "optkit.uninferable"


def _constants(model: ir.Model) -> frozenset[int]:
    """The initializers (by identity): a fold that made a new one may let inference say more."""
    return frozenset(id(v) for g in iter_graphs(model.graph) for v in g.initializers.values())


def _unshaped(model: ir.Model) -> frozenset[int]:
    """The node outputs (by identity) that lack a type or a shape."""
    return frozenset(
        id(v)
        for g in iter_graphs(model.graph)
        for n in g
        for v in n.outputs
        if v.name and (v.type is None or v.shape is None)
    )


def _merge(graph: ir.Graph, proto: onnx.GraphProto) -> None:
    """Merge one graph's inferred tensor types into its node outputs (names are unique within a
    graph, not across sibling subgraphs, which may reuse them)."""
    values = {v.name: v for n in graph for v in n.outputs if v.name}
    for info in [*proto.value_info, *proto.output]:
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


def _proto_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """`graph` and its subgraphs in the order `optkit.core.graph.iter_graphs` walks the IR model."""
    yield graph
    for node in graph.node:
        if is_default_domain(node.domain) and node.op_type not in CONTROL_FLOW:
            continue
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _proto_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _proto_graphs(sub)


_DECLARED = "optkit.declared_shape"  # in a subgraph input's meta: the shape it was declared with
_DECLARED_VALUES = "optkit.declared_values"  # in a graph's meta: names of node outputs declared


def reinfer_shapes(model: ir.Model) -> list[ir.Shape | None]:
    """Replace every declared shape that the graph's semantics do not vouch for by an inferred one.

    A declaration (`value_info`, a graph output's shape, a Loop / Scan body input) may be stale: a
    model whose batch was made dynamic after shape inference keeps `[1, 4, 16, 16]` on an
    intermediate that ONNX Runtime ignores and runs at every batch. Rewrites that depend on a shape
    must read what the graph computes: so the shapes of node outputs are dropped and inferred again
    from the graph inputs and initializers alone (dynamic where an input is dynamic; None where
    inference cannot say), and subgraph inputs keep their rank with every dim unknown. Element
    types are kept. The declared shapes of subgraph inputs are kept in each value's meta (sibling
    bodies may reuse a name), the names of the node outputs that carried a declaration in each
    graph's meta, and those of the main graph's outputs returned by position, for
    `restore_declared_shapes` to put back once the rewrites are done (the signature is the user's,
    and ONNX Runtime relies on a body's declared inputs when it optimizes). Best effort: where
    inference fails, the dropped shapes stay unknown and folds that need them decline.
    """
    declared = [v.shape for v in model.graph.outputs]
    for graph in iter_graphs(model.graph):
        if graph is not model.graph:
            for value in graph.inputs:
                value.meta[_DECLARED] = value.shape
                if value.shape is not None:
                    value.shape = ir.Shape([None] * len(value.shape))
        graph.meta[_DECLARED_VALUES] = frozenset(
            v.name
            for node in graph
            for v in node.outputs
            if v.name and (v.type is not None or v.shape is not None)
        )
        for node in graph:
            for value in node.outputs:
                value.shape = None
    infer_shapes(model)
    return declared


def restore_declared_shapes(model: ir.Model, declared: list[ir.Shape | None]) -> None:
    """Put back the shapes `reinfer_shapes` set aside: the main graph's outputs (by position: the
    rewrites keep the signature), subgraph inputs; and declare no more intermediates than the
    input did.

    A node output the input model declared (in `value_info`) keeps its inferred type and shape; one
    it did not declare loses both, so the result declares no node output the input left
    undeclared. The inferred shapes are what the rewrites needed, not a description the runtime
    should get. ONNX Runtime fuses more where it is told more: given the symbolic shapes that
    `data_prop` inference finds, it fuses a BERT encoder's residual Add + LayerNormalization into
    SkipLayerNormalization, which its CPU provider runs slower at one thread (a 6-layer, 384-wide
    encoder ran at 1.10x the latency of the same graph undeclared). So the output declares what
    the input declared, and the runtime optimizes the rewritten graph knowing what it knew of the
    original.
    """
    if len(declared) == len(model.graph.outputs):
        for value, shape in zip(model.graph.outputs, declared, strict=True):
            if shape is not None:  # none declared: the inferred one is the better description
                value.shape = shape
    for graph in iter_graphs(model.graph):
        kept = graph.meta.pop(_DECLARED_VALUES, None)
        if kept is not None:
            outputs = {id(v) for v in graph.outputs}
            for node in graph:
                for value in node.outputs:
                    if id(value) not in outputs and value.name not in kept:
                        value.type = None
                        value.shape = None
        if graph is model.graph:
            continue
        for value in graph.inputs:
            if _DECLARED in value.meta:
                value.shape = value.meta.pop(_DECLARED)
    model.meta.pop(_UNINFERABLE, None)  # the node outputs it names may be unshaped now


class ShapesOnDemand:
    """Runs `infer_shapes` on the model the first time it is called, and never again: rewrites
    that read shapes call it first, so models whose folds need no shapes never pay for inference."""

    def __init__(self, model: ir.Model) -> None:
        self._model: ir.Model | None = model

    def __call__(self) -> None:
        if self._model is not None:
            infer_shapes(self._model)
            self._model = None
