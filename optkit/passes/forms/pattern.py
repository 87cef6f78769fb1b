"""Reading decomposed subgraphs: walk back from an anchor node through the nodes that produce it.

A recognizer (see `activation_forms`, `normalization_forms`) starts at the node computing a pattern's
output and asks, through a `Reader`, for producers of given op types, scalar constants and flattened
products. Reading never mutates. `private` then checks that no value computed inside the matched nodes
is read from outside them, which the rewrite needs (those values disappear with it).

Constants are compared with `close`: equal to the expected value up to a few units in the last place
of the constant's own element type, so 0.044715 stored as float32 or float16 matches GELU's 0.044715
and 0.0447 does not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import numpy as np
import onnx_ir as ir

from optkit.core.contract import Decline
from optkit.core.graph import ConstantPolicy, is_default_domain, iter_graphs, node_label

ULPS = 4  # how many units in the last place a constant may be off (rounding on the way to storage)
_EPS = {
    np.dtype(np.float64): float(np.finfo(np.float64).eps),
    np.dtype(np.float32): float(np.finfo(np.float32).eps),
    np.dtype(np.float16): float(np.finfo(np.float16).eps),
}
_BF16_EPS = 2.0**-7


def producer(value: ir.Value | None, *op_types: str) -> ir.Node | None:
    """The default-domain node producing `value`, when its op type is one of `op_types`."""
    if value is None:
        return None
    node = value.producer()
    if node is None or not is_default_domain(node.domain) or node.op_type not in op_types:
        return None
    return node


def close(actual: float, expected: float, dtype: np.dtype | None = None) -> bool:
    """`actual` equals `expected` to `ULPS` units in the last place of `dtype` (default float32)."""
    eps = _EPS.get(np.dtype(dtype) if dtype is not None else np.dtype(np.float32), _BF16_EPS)
    return abs(actual - expected) <= ULPS * eps * max(abs(expected), 1e-30)


@dataclass
class Match:
    """What a recognizer found: `op_type(*inputs, **attributes)` computes what `nodes` compute now.

    `inputs[0]` is the tensor the function is applied to; later inputs are constants (arrays, made
    initializers of x's element type by the rewrite), e.g. LayerNormalization's scale and bias.
    """

    kind: str  # the catalogue name: the op type, or a variant such as "Gelu:tanh"
    op_type: str
    attributes: dict[str, Any]
    x: ir.Value
    nodes: list[ir.Node] = field(default_factory=list)  # the anchor (output) node first
    constants: list[np.ndarray] = field(default_factory=list)

    @property
    def output(self) -> ir.Value:
        return self.nodes[0].outputs[0]

    @property
    def fused(self) -> bool:
        """True when one node already computes it with its own op."""
        return len(self.nodes) == 1 and self.nodes[0].op_type == self.op_type

    def describe(self) -> str:
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(self.attributes.items()))
        return self.kind + (f"({params})" if params else "")


def match(
    kind: str,
    op_type: str,
    attributes: dict[str, Any],
    x: ir.Value | None,
    nodes: Sequence[ir.Node | None],
    constants: Sequence[np.ndarray | None] = (),
) -> Match | None:
    """A `Match`, or None when an operand of the form is missing (an omitted optional input)."""
    if x is None or any(n is None for n in nodes) or any(c is None for c in constants):
        return None
    return Match(kind, op_type, attributes, x, [n for n in nodes if n is not None],
                 [c for c in constants if c is not None])  # fmt: skip


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


@dataclass
class Product:
    """A tree of Mul / Div (and Pow by a small integer) read as coefficient * prod(terms) / prod(divisors).

    `coefficient` multiplies the scalar constants (divided ones inverted); `terms` are the other
    factors, repeated for powers; `nodes` are the nodes the tree spans, its root first.
    """

    coefficient: float = 1.0
    terms: list[ir.Value] = field(default_factory=list)
    divisors: list[ir.Value] = field(default_factory=list)
    nodes: list[ir.Node] = field(default_factory=list)
    dtype: np.dtype | None = None  # the element type of the scalar constants read

    def only(self, *values: ir.Value) -> bool:
        """The non-constant factors are exactly `values` (as a multiset, by identity)."""
        if self.divisors or len(self.terms) != len(values):
            return False
        remaining = list(self.terms)
        for value in values:
            hit = next((i for i, t in enumerate(remaining) if t is value), None)
            if hit is None:
                return False
            remaining.pop(hit)
        return True


class Reader:
    """Structure queries over one graph, with `policy` deciding what counts as a constant."""

    def __init__(self, graph: ir.Graph, policy: ConstantPolicy) -> None:
        self.graph = graph
        self.policy = policy

    def scalar(self, value: ir.Value | None, max_rank: int = 1) -> float | None:
        """The value's contents when it is a constant with one element and at most `max_rank`
        dimensions (so broadcasting it cannot change an output's rank)."""
        if value is None:
            return None
        array = self.policy.contents(value)
        if array is None or array.size != 1 or array.ndim > max_rank:
            return None
        if not np.issubdtype(array.dtype, np.floating) and array.dtype.name != "bfloat16":
            if not np.issubdtype(array.dtype, np.integer):
                return None
        return float(np.asarray(array, dtype=np.float64).reshape(-1)[0])

    def dtype(self, value: ir.Value | None) -> np.dtype | None:
        array = self.policy.contents(value)
        return None if array is None else array.dtype

    def split(self, node: ir.Node) -> tuple[float, ir.Value] | None:
        """For a binary node with one scalar-constant operand: (the constant, the other operand)."""
        if len(node.inputs) != 2:
            return None
        a, b = node.inputs
        value = self.scalar(b)
        if value is not None and self.scalar(a) is None and a is not None:
            return value, a
        value = self.scalar(a)
        if value is not None and self.scalar(b) is None and b is not None:
            return value, b
        return None

    def interior(self, node: ir.Node) -> bool:
        """`node` feeds a larger Mul / Div tree (so it is not where a product form ends)."""
        output = node.outputs[0] if node.outputs else None
        if not self.expandable(output):
            return False
        consumer = next(iter(output.uses())).node
        return is_default_domain(consumer.domain) and consumer.op_type in ("Mul", "Div")

    def expandable(self, value: ir.Value | None) -> TypeGuard[ir.Value]:
        """`value` is read once, by one node, is no graph output and is computed in this graph."""
        if value is None or value.is_graph_output() or len(list(value.uses())) != 1:
            return False
        node = value.producer()
        return node is not None and node.graph is self.graph

    def product(self, root: ir.Node) -> Product | None:
        """Flatten the Mul / Div tree rooted at `root`; None when `root` is neither."""
        if not is_default_domain(root.domain) or root.op_type not in ("Mul", "Div"):
            return None
        result = Product()
        self._visit(root, 1, result)
        return result

    def _visit(self, node: ir.Node, sign: int, into: Product) -> None:
        into.nodes.append(node)
        signs = (sign, sign) if node.op_type == "Mul" else (sign, -sign)
        for operand, operand_sign in zip(node.inputs, signs, strict=True):
            self._factor(operand, operand_sign, into)

    def _factor(self, value: ir.Value | None, sign: int, into: Product) -> None:
        constant = self.scalar(value)
        if constant is not None:
            into.coefficient *= constant if sign > 0 else 1.0 / constant if constant else np.inf
            into.dtype = self.dtype(value)
            return
        assert value is not None
        inner = producer(value, "Mul", "Div", "Pow") if self.expandable(value) else None
        if inner is not None and inner.op_type in ("Mul", "Div"):
            self._visit(inner, sign, into)
            return
        if inner is not None and sign > 0:
            exponent = self.scalar(inner.inputs[1])
            base = inner.inputs[0]
            if exponent in (2.0, 3.0, 4.0) and base is not None and self.scalar(base) is None:
                into.nodes.append(inner)
                into.terms += [base] * int(exponent)
                return
        (into.terms if sign > 0 else into.divisors).append(value)

    def product_of(self, value: ir.Value | None) -> Product | None:
        """The product computing `value` (its producer must be Mul or Div)."""
        node = producer(value, "Mul", "Div")
        return self.product(node) if node is not None else None


def private(nodes: list[ir.Node], output: ir.Value, graph: ir.Graph) -> Decline | None:
    """None when every value `nodes` compute, except `output`, is read only inside `nodes`; else
    why not."""
    inside = {id(n) for n in nodes}
    for node in nodes:
        if node.graph is not graph:
            return Decline(f"{node_label(node)} is in another graph")
        for value in node.outputs:
            if value is output or (not value.name and not value.uses()):
                continue
            if value.is_graph_output():
                return Decline(f"intermediate '{value.name}' is a graph output")
            for use in value.uses():
                if id(use.node) not in inside:
                    return Decline(
                        f"intermediate '{value.name}' is also read by {node_label(use.node)}"
                    )
    return None


def forms_from_the_end(
    model: ir.Model,
    policy: ConstantPolicy,
    recognize: Callable[[ir.Node, Reader], Match | Decline | None],
) -> Iterator[tuple[ir.Graph, ir.Node, Match | Decline]]:
    """What `recognize` finds at each node of every graph, from the end of the graph to its start,
    so that the largest form around a node comes before the forms inside it: the nodes of a Match
    are not visited again. The caller may rewrite the graph between steps (nodes it removed are
    skipped)."""
    for graph in list(iter_graphs(model.graph)):
        reader = Reader(graph, policy)
        claimed: set[int] = set()
        for node in reversed(list(graph)):
            if node.graph is not graph or id(node) in claimed:
                continue
            found = recognize(node, reader)
            if found is None:
                continue
            if isinstance(found, Match):
                claimed.update(id(n) for n in found.nodes)
            yield graph, node, found
