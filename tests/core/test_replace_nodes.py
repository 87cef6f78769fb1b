"""`core.graph.replace_nodes` inserts the new nodes right after the last of the old ones in graph
order, whether the old nodes form a chain (found without scanning the graph) or not."""

from __future__ import annotations

import onnx_ir as ir

from optkit.core.graph import replace_nodes


def _graph() -> tuple[ir.Graph, list[ir.Node]]:
    """x -> A -> B (a chain), x -> C, x -> D (independent), E reads B, C and D; in the order A, C, B,
    D, E."""
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([2]))
    a = ir.node("Relu", [x], name="A")
    b = ir.node("Neg", [a.outputs[0]], name="B")
    c = ir.node("Abs", [x], name="C")
    d = ir.node("Exp", [x], name="D")
    e = ir.node("Sum", [b.outputs[0], c.outputs[0], d.outputs[0]], name="E")
    nodes = [a, c, b, d, e]
    for node, name in zip(nodes, "acbde", strict=True):
        node.outputs[0].name = name
    graph = ir.Graph([x], [e.outputs[0]], nodes=nodes, opset_imports={"": 18})
    return graph, nodes


def _replace(graph: ir.Graph, old: list[ir.Node]) -> list[str]:
    """Replace each of `old` by an Identity of x (named N0, N1, ... in `old`'s order) taking the
    place of its output; the node names in graph order after."""
    x = graph.inputs[0]
    new = [ir.node("Identity", [x], name=f"N{i}") for i in range(len(old))]
    outs = [node.outputs[0] for node in old]
    replace_nodes(graph, old, new, outs, [node.outputs[0] for node in new])
    return [node.name or "" for node in graph]


def test_a_chain_given_in_any_order_anchors_at_its_end() -> None:
    graph, (a, _, b, *_) = _graph()
    assert _replace(graph, [b, a]) == ["C", "N0", "N1", "D", "E"]


def test_independent_nodes_anchor_at_the_later_one_in_graph_order() -> None:
    graph, (_, c, _, d, _) = _graph()
    assert _replace(graph, [d, c]) == ["A", "B", "N0", "N1", "E"]
    graph, (a, c, *_) = _graph()
    assert _replace(graph, [c, a]) == ["N0", "N1", "B", "D", "E"]
