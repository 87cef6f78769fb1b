"""Shape computations over partly static shapes, folded. All `bitwise`: integers, computed exactly.

With `passes.shape_values` saying what each small integer value is (constants, run-time dims of named
tensors, unknowns):

- constants:  a value every element of which is known (Shape(x)[1] of an x whose channel count is
              static, and the arithmetic, Cast, Unsqueeze, Concat over such values) becomes an
              initializer where something still reads it at run time
- reshape:    Reshape(x, t) with t partly known becomes Reshape(x, constant):
                  an element that is dim i of x itself at position i    -> 0 (copy; allowzero = 0)
                  one element left unknown, every other one positive     -> -1 (inferred)
              Reshape never accepts a target whose product differs from x's size, so the -1 is the
              very value the computation would have given, for every input the original runs on
              (an input it refuses may now run).
- expand:     Expand(x, s) where every element of s is 1 or x's own dim there -> x

Symbolic dims stay symbolic: nothing here gives a dynamic dim a size, so the result runs at every
batch size the original runs at. Graph outputs stay nodes (the signature does not change). A
Reshape target ONNX forbids (0 and -1 under allowzero = 1) stays computed.

Static dims are what onnx's shape inference derives from the graph inputs. Where onnx and the
runtime disagree on an op's output size (onnx 1.23 and ORT 1.32 on MaxPool with ceil_mode and pads,
found by an adversarial review), a fold follows onnx: `fuse`'s verification, on by default, sees
the difference and rolls the pass back.
"""

from __future__ import annotations

import onnx_ir as ir

from optkit.core.contract import Decline, Exactness, PassOptions, PassSpec, RewritePass, Site
from optkit.core.graph import (
    ConstantPolicy,
    Namer,
    add_initializer,
    attr_int,
    is_default_domain,
    iter_graphs,
    node_label,
    reroute,
)
from optkit.core.shapes import infer_shapes
from optkit.passes.forms.shape_values import Dim, ShapeValues, Tracked


class FoldShapes(RewritePass):
    spec = PassSpec(
        "shapes",
        Exactness.BITWISE,
        "fold shape computations over static dims; constant Reshape targets with 0 / -1",
    )

    def run(self, model: ir.Model, options: PassOptions) -> list[Site]:
        policy = ConstantPolicy(model, freeze_initializer_inputs=options.freeze_initializer_inputs)
        applied: list[Site] = []
        for _ in range(MAX_ROUNDS):
            plans, declined = _match(model, ShapeValues(model, policy))
            if not plans:
                break
            changed = [reader for plan in plans for reader in plan.readers()]
            namer = Namer(model)
            applied.extend(plan.apply(namer) for plan in plans)  # plans of one unchanged graph
            # A node that now reads a constant (a Reshape target, say) lets shape inference say
            # what it makes, which can make the next stage's dims static: infer again downstream
            # of it and take another round.
            _forget_shapes_after(changed)
            infer_shapes(model)
        return applied + declined


MAX_ROUNDS = 32  # each round resolves at least one more stage; chains are as long as the network


def _match(model: ir.Model, values: ShapeValues) -> tuple[list[_Plan], list[Site]]:
    plans: list[_Plan] = []
    declined: list[Site] = []
    for graph in iter_graphs(model.graph):
        for node in graph:
            if not is_default_domain(node.domain) or node.op_type == "Constant":
                continue
            found = _reshape_plan(node, values) or _expand_plan(node, values)
            if isinstance(found, Decline):
                declined.append(Site("shapes", node_label(node), False, str(found)))
            elif found is not None:
                plans.append(found)
            plans.extend(_constant_plans(node, values))
    return plans, declined


def _forget_shapes_after(nodes: list[ir.Node]) -> None:
    """Drop the inferred shapes of every value computed from the outputs of `nodes` (types stay)."""
    pending = [out for node in nodes for out in node.outputs]
    seen: set[int] = set()
    while pending:
        value = pending.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        value.shape = None
        for use in value.uses():
            pending.extend(use.node.outputs)


# --- plans: what to change, decided before anything changes ----------------------------------------


class _Plan:
    node: ir.Node

    def apply(self, namer: Namer) -> Site:
        raise NotImplementedError

    def readers(self) -> list[ir.Node]:
        """The nodes whose inputs the plan changes (their outputs' shapes may now be inferable)."""
        return [self.node]


class _Constant(_Plan):
    """`value`, the output of `node`, becomes an initializer with the same name."""

    def __init__(self, node: ir.Node, value: ir.Value, tracked: Tracked) -> None:
        self.node, self.value, self.tracked = node, value, tracked

    def readers(self) -> list[ir.Node]:
        return [use.node for use in self.value.uses()]

    def apply(self, namer: Namer) -> Site:
        graph = self.node.graph
        assert graph is not None
        name = self.value.name or "shape"
        constant = add_initializer(
            graph, namer, f"{name}_folded", self.tracked.array(), self.tracked.dtype
        )
        ir.convenience.replace_all_uses_with(self.value, constant)
        label = node_label(self.node)
        if not any(out.uses() or out.is_graph_output() for out in self.node.outputs):
            graph.remove(self.node, safe=True)
            if self.value.name:
                constant.name = self.value.name  # the value keeps its name (bisection matches it)
        return Site("shapes", label, True, removed=(label,), added=(constant.name or "",))


class _NewInput(_Plan):
    """Input `index` of `node` becomes the constant `array`; `reason` says why that is exact."""

    def __init__(self, node: ir.Node, index: int, tracked: Tracked, reason: str) -> None:
        self.node, self.index, self.tracked, self.reason = node, index, tracked, reason

    def apply(self, namer: Namer) -> Site:
        graph = self.node.graph
        assert graph is not None
        old = self.node.inputs[self.index]
        base = (old.name if old is not None and old.name else "shape") + "_static"
        constant = add_initializer(graph, namer, base, self.tracked.array(), self.tracked.dtype)
        self.node.replace_input_with(self.index, constant)
        label = node_label(self.node)
        return Site("shapes", label, True, self.reason, added=(constant.name or "",))


class _Bypass(_Plan):
    """`node` does nothing: readers of its output read its first input."""

    def __init__(self, node: ir.Node) -> None:
        self.node = node

    def apply(self, namer: Namer) -> Site:
        label = node_label(self.node)
        source = self.node.inputs[0]
        assert source is not None  # _expand_plan matched it
        reroute(self.node, [source])
        return Site("shapes", label, True, removed=(label,))


# --- matching (pure) -------------------------------------------------------------------------------


def _constant_plans(node: ir.Node, values: ShapeValues) -> list[_Plan]:
    """Outputs of `node` known in full and read by something that is not itself known in full."""
    plans: list[_Plan] = []
    for value in node.outputs:
        if value.is_graph_output() or not value.uses():
            continue
        tracked = values.of(value)
        if tracked is None or not tracked.known:
            continue
        if any(_invalid_target(reader, index, tracked) for reader, index in value.uses()):
            continue  # a constant the runtime refuses at load time, where the original ran
        if any(_needs_value(use.node, values) for use in value.uses()):
            plans.append(_Constant(node, value, tracked))
    return plans


def _invalid_target(reader: ir.Node, index: int, tracked: Tracked) -> bool:
    """A Reshape target with both 0 and -1 under allowzero = 1, which ONNX forbids: ONNX Runtime
    refuses it as a constant when it loads the model, yet may run it computed at run time."""
    return (
        reader.op_type == "Reshape"
        and index == 1
        and attr_int(reader, "allowzero", 0) == 1
        and 0 in tracked.elements
        and -1 in tracked.elements
    )


def _needs_value(reader: ir.Node, values: ShapeValues) -> bool:
    """Whether `reader` would still read a value at run time after this pass: it is not a node
    whose every output this pass knows in full (those are folded further down the chain)."""
    return not all(
        (t := values.of(out)) is not None and t.known and not out.is_graph_output()
        for out in reader.outputs
    )


def _reshape_plan(node: ir.Node, values: ShapeValues) -> _Plan | Decline | None:
    if node.op_type != "Reshape" or len(node.inputs) < 2:
        return None
    data, target = node.inputs[0], node.inputs[1]
    if data is None or target is None or target.const_value is not None:
        return None
    tracked = values.of(target)
    if tracked is None or tracked.scalar or tracked.known:
        return None  # untracked, or a constant the constants fold takes
    allowzero = attr_int(node, "allowzero", 0) == 1
    resolved: list[int | None] = []
    for position, element in enumerate(tracked.elements):
        if isinstance(element, int):
            resolved.append(element)
        elif element == Dim(data, position) and not allowzero:
            resolved.append(0)  # copies x's own dim at this position
        else:
            resolved.append(None)
    unknown = [i for i, e in enumerate(resolved) if e is None]
    how = "dims copied from the input (0)" if 0 in resolved else ""
    if len(unknown) > 1:
        return Decline(
            f"target elements {unknown} are computed at run time and are not this Reshape's own "
            "input dims at the same position; only one can become -1"
        )
    if unknown:
        others = [e for e in resolved if e is not None]
        if any(e <= 0 for e in others):
            return Decline(
                f"target element {unknown[0]} is computed at run time and the others are not all "
                "positive constants, so it cannot become -1"
            )
        resolved[unknown[0]] = -1
        how = "the run-time element inferred (-1)"
    array = Tracked(tuple(resolved), False, tracked.dtype)
    return _NewInput(node, 1, array, f"constant target: {how}")


def _expand_plan(node: ir.Node, values: ShapeValues) -> _Plan | None:
    if node.op_type != "Expand" or len(node.inputs) < 2:
        return None
    data, shape = node.inputs[0], node.inputs[1]
    if data is None or data.shape is None or node.outputs[0].is_graph_output():
        return None
    tracked = values.of(shape)
    if tracked is None or tracked.scalar or len(tracked.elements) > len(data.shape):
        return None
    offset = len(data.shape) - len(tracked.elements)
    for position, element in enumerate(tracked.elements):
        axis = offset + position
        if element == 1 or element == Dim(data, axis):
            continue
        if isinstance(element, int) and element == data.shape[axis]:
            continue
        return None
    return _Bypass(node)
