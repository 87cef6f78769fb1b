"""The `cse` pass (bitwise): two nodes with the same op, attributes and inputs (the same values) ->
the first; readers of the second read its outputs. Only default-domain ops that draw no random
numbers and have no subgraph attributes are merged.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from optkit.core.contract import Exactness, PassOptions, PassSpec, RewritePass, Site
from optkit.core.graph import RANDOM_OPS, is_default_domain, iter_graphs, node_label, reroute


class EliminateCommonSubexpressions(RewritePass):
    spec = PassSpec("cse", Exactness.BITWISE, "merge nodes that compute the same thing")

    def run(self, model: ir.Model, options: PassOptions) -> list[Site]:
        sites = []
        for graph in iter_graphs(model.graph):
            first: dict[tuple, ir.Node] = {}
            for node in list(graph):
                key = _computation(node)
                if key is None:
                    continue
                kept = first.setdefault(key, node)
                if kept is node or any(out.is_graph_output() for out in node.outputs):
                    continue  # a graph output's name is the signature: it stays a node
                reroute(node, kept.outputs)
                label = node_label(node)
                sites.append(Site("cse", label, True, f"same as {node_label(kept)}", (label,)))
        return sites


# Attribute kinds compared by value; a node with any other kind (a subgraph, a type) is not merged.
_CSE_ATTRIBUTES = frozenset(
    {ir.AttributeType.INT, ir.AttributeType.FLOAT, ir.AttributeType.STRING, ir.AttributeType.INTS,
     ir.AttributeType.FLOATS, ir.AttributeType.STRINGS, ir.AttributeType.TENSOR}
)  # fmt: skip
_CSE_TENSOR_LIMIT = 1024  # elements of a tensor attribute compared; nodes with larger ones stay


def _computation(node: ir.Node) -> tuple | None:
    """What `node` computes, as a hashable key: op, the input values (by identity) and the
    attribute values; None for nodes never merged (other domains, random ops, subgraphs)."""
    if (
        not is_default_domain(node.domain)
        or node.op_type in RANDOM_OPS
        or node.op_type == "Dropout"
    ):
        return None  # Dropout draws its mask at random in training mode
    attributes = []
    for name, attr in sorted(node.attributes.items()):
        if attr.is_ref() or attr.type not in _CSE_ATTRIBUTES:
            return None  # subgraphs, type protos, sparse tensors: not compared
        value = attr.value
        if attr.type is ir.AttributeType.TENSOR:
            if value.size > _CSE_TENSOR_LIMIT:
                return None
            array = value.numpy()
            value = (array.shape, str(array.dtype), array.tobytes())
        elif attr.type in (ir.AttributeType.FLOAT, ir.AttributeType.FLOATS):
            value = np.asarray(value, np.float32).tobytes()  # by bits: 0.0 is not -0.0
        elif isinstance(value, list | tuple):
            value = tuple(value)
        attributes.append((name, attr.type, value))
    inputs = tuple(id(v) if v is not None else None for v in node.inputs)
    present = tuple(bool(out.name) for out in node.outputs)  # an absent output reads nothing
    return (node.op_type, node.overload, present, inputs, tuple(attributes))
