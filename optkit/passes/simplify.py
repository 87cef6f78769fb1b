"""Shape-only simplifications. All are `bitwise`: they inline, rewire, delete or merge nodes that move
data without computing, so every output is bit for bit the same, for every input the original graph
accepts (a merged pair no longer checks what its first node checked, e.g. that a squeezed dim is 1).

    if-constant:        If(c) with a constant c     -> the taken branch's nodes in the enclosing graph;
                                                       its outputs replace the If's (outer reads stay)
    noop-transpose:     Transpose(x, perm=0..r-1)   -> x   (perm absent: rank <= 1)
    noop-cast:          Cast(x, to=type(x))         -> x
    noop-reshape:       Reshape(x, t)               -> x   when t resolves to shape(x): t[i] = x[i]
                                                           static, 0 (copy, allowzero=0), or the one -1
    noop-expand:        Expand(x, t)                -> x   when broadcast(shape(x), t) = shape(x): rank t
                                                           <= rank x, every t[i] 1 or x's static dim
    noop-squeeze:       Squeeze(x), no axes         -> x   when no dim of x is 1 (all static)
    noop-unsqueeze:     Unsqueeze(x, axes=[])       -> x
    noop-slice:         Slice(x, s, e, axes, 1)     -> x   when each sliced axis is kept whole:
                                                           clamp(s) = 0, clamp(e) = dim (static), or
                                                           s = 0, e = INT64_MAX (dynamic dim)
    transpose-pair:     Transpose(Transpose(x, p), q) = Transpose(x, r), r[j] = p[q[j]];  x when r = id
    cast-pair:          Cast(Cast(x, t1), t2) = Cast(x, t2) when x -> t1 is exact (LOSSLESS) and
                        x -> t2 is exact too; = x when t2 = type(x)
    reshape-chain:      Reshape / Squeeze / Unsqueeze followed by Reshape, or Reshape followed by
                        Squeeze / Unsqueeze = Reshape(x, t): all relabel the shape of the same row-major
                        data. t is the constant final target; a 0 (copy) in it stays where it copies x's
                        dim at the same axis, else it becomes that dim's static size, else declined
    unsqueeze-squeeze:  Squeeze(Unsqueeze(x, a), a) = x
    squeeze-unsqueeze:  Unsqueeze(Squeeze(x, a), a) = x   when x's dims at a are static 1

A pair merges only when the first node's output is read by the second alone (and is no graph output).
Where a pair that collapses to x cannot hand its output to x (a graph input straight to a graph output,
the rules of `cleanup._bypass`), an Identity keeps the graph's signature. Shapes come from ONNX shape
inference (`optkit.core.shapes.infer_shapes`); a rewrite that needs a dim inference left unknown declines.
The pass repeats its sweep until nothing applies (a merge can make a no-op), so it is idempotent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import onnx_ir as ir

from optkit.core.contract import Decline, Exactness, PassOptions, PassSpec, RewritePass, Site
from optkit.core.graph import (
    ConstantPolicy,
    Namer,
    add_initializer,
    attr_int,
    attr_ints,
    bypass,
    consumers_reason,
    input_at,
    is_default_domain,
    iter_graphs,
    node_label,
    opset_version,
    replace_nodes,
    sole_consumer,
)
from optkit.core.shapes import ShapesOnDemand

MAX_SWEEPS = 16
INT64_MAX = int(np.iinfo(np.int64).max)
INT64_MIN = int(np.iinfo(np.int64).min)

_D = ir.DataType
_INTS = (_D.INT8, _D.INT16, _D.INT32, _D.INT64, _D.UINT8, _D.UINT16, _D.UINT32, _D.UINT64)
_FLOATS_FROM_SMALL_INTS = (_D.FLOAT16, _D.BFLOAT16, _D.FLOAT, _D.DOUBLE)
# Element type -> the types that hold every one of its values exactly (a Cast there and back is the
# identity). Only these; float8, 4-bit and string types are never merged, so Cast-19's `saturate`
# (which acts on float8 targets only) never matters to a merge.
LOSSLESS: dict[ir.DataType, frozenset[ir.DataType]] = {
    _D.BOOL: frozenset({*_INTS, *_FLOATS_FROM_SMALL_INTS}),
    _D.INT8: frozenset({_D.INT16, _D.INT32, _D.INT64, *_FLOATS_FROM_SMALL_INTS}),
    _D.UINT8: frozenset(
        {_D.INT16, _D.INT32, _D.INT64, _D.UINT16, _D.UINT32, _D.UINT64, *_FLOATS_FROM_SMALL_INTS}
    ),
    _D.INT16: frozenset({_D.INT32, _D.INT64, _D.FLOAT, _D.DOUBLE}),
    _D.UINT16: frozenset({_D.INT32, _D.INT64, _D.UINT32, _D.UINT64, _D.FLOAT, _D.DOUBLE}),
    _D.INT32: frozenset({_D.INT64, _D.DOUBLE}),
    _D.UINT32: frozenset({_D.INT64, _D.UINT64, _D.DOUBLE}),
    _D.FLOAT16: frozenset({_D.FLOAT, _D.DOUBLE}),
    _D.BFLOAT16: frozenset({_D.FLOAT, _D.DOUBLE}),
    _D.FLOAT: frozenset({_D.DOUBLE}),
}

Dim = int | str | None  # a static size, a symbolic name, or unknown


class Copy(NamedTuple):
    """A dim of a Reshape chain's intermediate that is dim `axis` of the chain's input x."""

    axis: int


Term = int | Copy  # a static size (-1: the one dim a Reshape infers), or a dim of x


@dataclass
class _Context:
    model: ir.Model
    graph: ir.Graph
    policy: ConstantPolicy
    namer: Namer
    opset: int
    shapes: Callable[[], None]
    inlined: bool = False  # an If was inlined: the list of graphs is stale


Rule = Callable[[ir.Node, _Context], "Site | None"]


class Simplify(RewritePass):
    spec = PassSpec(
        "simplify",
        Exactness.BITWISE,
        "inline If on a constant condition, drop no-op reshapes/transposes/casts/expands, merge pairs",
    )

    def run(self, model: ir.Model, options: PassOptions) -> list[Site]:
        if not any(_candidate(n) for g in iter_graphs(model.graph) for n in g):
            return []
        policy = ConstantPolicy(model, freeze_initializer_inputs=options.freeze_initializer_inputs)
        namer = Namer(model)
        shapes = ShapesOnDemand(model)
        applied: list[Site] = []
        declined: list[Site] = []
        for _ in range(MAX_SWEEPS):
            sweep, inlined = self._sweep(model, policy, namer, shapes)
            if inlined:  # values moved out of branches: inference may know more of them now
                shapes = ShapesOnDemand(model)
            applied += [s for s in sweep if s.applied]
            declined = [s for s in sweep if not s.applied]  # those of the last sweep stand
            if not any(s.applied for s in sweep):
                break
        return applied + declined

    @staticmethod
    def _sweep(
        model: ir.Model, policy: ConstantPolicy, namer: Namer, shapes: Callable[[], None]
    ) -> tuple[list[Site], bool]:
        sites: list[Site] = []
        ctx = _Context(model, model.graph, policy, namer, opset_version(model), shapes)
        for graph in list(iter_graphs(model.graph)):
            ctx.graph = graph
            for node in list(graph):
                if node.graph is graph and _candidate(node):
                    sites += _try_rules(node, ctx)
            if ctx.inlined:  # nodes moved and branches died: the next sweep walks the new graphs
                break
        return sites, ctx.inlined


def _candidate(node: ir.Node) -> bool:
    return is_default_domain(node.domain) and node.op_type in RULES and len(node.outputs) >= 1


def _try_rules(node: ir.Node, ctx: _Context) -> list[Site]:
    """The first rule that applies, else every decline (rules that do not match say nothing)."""
    declines = []
    for rule in RULES[node.op_type]:
        site = rule(node, ctx)
        if site is None:
            continue
        if site.applied:
            return [site]
        declines.append(site)
    return declines


# --- reading ----------------------------------------------------------------------------------


def _dims(value: ir.Value | None) -> list[Dim] | None:
    """Per axis, the static size, the symbolic name or None; None when the rank is unknown."""
    if value is None or value.shape is None:
        return None
    return [d if isinstance(d, int) else (d.value or None) for d in value.shape]


def _dtype(value: ir.Value | None) -> ir.DataType | None:
    if value is None or not isinstance(value.type, ir.TensorType):
        return None
    return value.type.dtype


def _ints(value: ir.Value | None, policy: ConstantPolicy) -> list[int] | Decline:
    """A constant integer vector (or scalar), or why not."""
    array = policy.array(value)
    if isinstance(array, Decline):
        return array
    if array.dtype.kind not in "iu" or array.ndim > 1:
        return Decline(f"'{value.name if value is not None else ''}' is not an integer vector")
    return [int(v) for v in array.reshape(-1)]


def _axes(node: ir.Node, policy: ConstantPolicy) -> list[int] | Decline | None:
    """Squeeze / Unsqueeze axes: the attribute (before opset 13) or the input (from 13). None when
    absent, a Decline when not a constant."""
    attr = attr_ints(node, "axes")
    if attr is not None:
        return attr
    if input_at(node, 1) is not None:
        axes = _ints(node.inputs[1], policy)
        return Decline(f"its axes are not constant ({axes})") if isinstance(axes, Decline) else axes
    return None


def _normalized(axes: Sequence[int], rank: int) -> list[int] | None:
    """Axes made non-negative for `rank`; None when out of range or repeated."""
    out = [a + rank if a < 0 else a for a in axes]
    if any(not 0 <= a < rank for a in out) or len(set(out)) != len(out):
        return None
    return out


def _sole_input(node: ir.Node) -> ir.Value | None:
    return node.inputs[0] if node.inputs and len(node.outputs) == 1 else None


class _Pair(NamedTuple):
    """The node of a pair's op types producing the second node's data input, and its own input."""

    first: ir.Node
    source: ir.Value
    shared: Decline | None  # why the second node is not the first one's only reader, or None


def _first_of_pair(node: ir.Node, op_types: Sequence[str]) -> _Pair | None:
    """The pair ending at `node` whose first node is of `op_types`; None when the producer of
    `node`'s data input is of another type."""
    value = _sole_input(node)
    first = value.producer() if value is not None else None
    if (
        value is None
        or first is None
        or not is_default_domain(first.domain)
        or first.op_type not in op_types
    ):
        return None
    source = _sole_input(first)
    if source is None:
        return None
    if sole_consumer(value) is not node:
        return _Pair(first, source, consumers_reason(value, f"the {first.op_type} output"))
    return _Pair(first, source, None)


# --- rewriting --------------------------------------------------------------------------------


def _applied(rule: str, node: ir.Node, removed: Sequence[str], added: Sequence[str]) -> Site:
    return Site(rule, node_label(node), True, removed=tuple(removed), added=tuple(added))


def _declined(rule: str, node: ir.Node, reason: str) -> Site:
    return Site(rule, node_label(node), False, reason)


def _remove_noop(rule: str, node: ir.Node, source: ir.Value) -> Site:
    label = node_label(node)
    reason = bypass(node, source, node.outputs[0])
    if reason is not None:
        return Site(rule, label, False, f"a no-op, kept: {reason}")
    return Site(rule, label, True, removed=(label,))


def _new_node(
    ctx: _Context,
    op_type: str,
    inputs: Sequence[ir.Value],
    attrs: Sequence[ir.Attr],
    name: str | None,
) -> ir.Node:
    """A default-domain node; unnamed, it gets a name unused anywhere in the model."""
    name = name or ctx.namer.fresh(f"{op_type}_simplified")
    return ir.Node("", op_type, list(inputs), attributes=list(attrs), name=name, num_outputs=1)


def _merge(rule: str, first: ir.Node, second: ir.Node, replacement: ir.Node, ctx: _Context) -> Site:
    removed = (node_label(first), node_label(second))
    replace_nodes(ctx.graph, [first, second], [replacement], second.outputs, replacement.outputs)
    return _applied(rule, second, removed, (node_label(replacement),))


def _collapse(rule: str, first: ir.Node, second: ir.Node, source: ir.Value, ctx: _Context) -> Site:
    """second(first(x)) = x: readers of the pair's output read x. Where x cannot take the place of a
    graph output, one Identity keeps the signature."""
    removed = (node_label(first), node_label(second))
    if bypass(second, source, second.outputs[0]) is None:
        ctx.graph.remove(first, safe=True)
        return _applied(rule, second, removed, ())
    identity = _new_node(ctx, "Identity", [source], [], second.name)
    replace_nodes(ctx.graph, [first, second], [identity], second.outputs, identity.outputs)
    return _applied(rule, second, removed, (node_label(identity),))


# --- If on a constant condition -----------------------------------------------------------------


def inline_if(node: ir.Node, ctx: _Context) -> Site | None:
    rule = "if-constant"
    cond = ctx.policy.array(node.inputs[0] if node.inputs else None)
    if isinstance(cond, Decline):
        return _declined(rule, node, f"its condition is not a constant: {cond}")
    if cond.size != 1:
        return _declined(rule, node, f"its condition has {cond.size} elements, not 1")
    which = "then_branch" if bool(cond.reshape(-1)[0]) else "else_branch"
    attr = node.attributes.get(which)
    if attr is None or attr.type != ir.AttributeType.GRAPH:
        return _declined(rule, node, f"it has no {which} graph")
    branch = attr.as_graph()
    if len(branch.inputs) or len(branch.outputs) != len(node.outputs):
        return _declined(
            rule,
            node,
            f"its {which} has {len(branch.inputs)} inputs and "
            f"{len(branch.outputs)} outputs for {len(node.outputs)} If outputs",
        )

    # Plan (pure): how each If output is replaced, which moved names would clash.
    moved_nodes = list(branch)
    moved_inits = list(branch.initializers.values())
    movable = {id(v) for n in moved_nodes for v in n.outputs} | {id(v) for v in moved_inits}
    plan: list[tuple[ir.Value, ir.Value, str]] = []  # (If output, branch output, how)
    claimed: set[int] = set()
    for old, new in zip(node.outputs, branch.outputs, strict=True):
        if not old.uses() and not old.is_graph_output():
            how = "skip"
        elif (
            id(new) in movable
            and id(new) not in claimed
            and (new.producer() is not None or not old.is_graph_output())
        ):  # an initializer does not become a graph output
            how = "take"  # the branch value takes the If output's place and name
            claimed.add(id(new))
        elif old.is_graph_output():
            how = "identity"
            if not isinstance(new.type or old.type, ir.TensorType) and ctx.opset < 16:
                return _declined(rule, node, f"output '{old.name}' is not a tensor (opset < 16)")
        else:
            how = "rewire"
        plan.append((old, new, how))
    outside = _names_outside(ctx.model, node)

    # Apply.
    label = node_label(node)
    graph = ctx.graph
    branch.outputs.clear()
    for value in moved_inits:
        assert value.name is not None
        branch.initializers.pop(value.name)
        if value.name in outside:
            value.name = ctx.namer.fresh(value.name)
        graph.register_initializer(value)
    branch.remove(moved_nodes)
    for moved in moved_nodes:
        if moved.name and moved.name in outside:
            moved.name = ctx.namer.fresh(moved.name)
        for value in moved.outputs:
            if value.name and value.name in outside:
                value.name = ctx.namer.fresh(value.name)
    graph.insert_before(node, moved_nodes)
    added = list(moved_nodes)
    renames: list[tuple[ir.Value, str]] = []
    for old, new, how in plan:
        if how == "skip":
            continue
        if how == "identity":
            identity = _new_node(ctx, "Identity", [new], [], None)
            graph.insert_before(node, identity)
            added.append(identity)
            identity.outputs[0].type, identity.outputs[0].shape = new.type, new.shape
            new = identity.outputs[0]
        if new.type is None:
            new.type = old.type
        if new.shape is None:
            new.shape = old.shape
        ir.convenience.replace_all_uses_with(old, new, replace_graph_outputs=True)
        if how != "rewire" and old.name:
            renames.append((new, old.name))
    for other in node.attributes.values():  # the dropped branch stops reading outer values
        if other.type == ir.AttributeType.GRAPH and other.as_graph() is not branch:
            _detach(other.as_graph())
    graph.remove(node, safe=True)
    for value, name in renames:
        value.name = name
    ctx.inlined = True
    return Site(rule, label, True, removed=(label,), added=tuple(node_label(n) for n in added))


def _detach(graph: ir.Graph) -> None:
    """Make the nodes of a discarded graph (subgraphs included) stop being readers of any value."""
    for sub in iter_graphs(graph):
        for node in sub:
            for i in range(len(node.inputs)):
                node.replace_input_with(i, None)


def _names_outside(model: ir.Model, node: ir.Node) -> set[str]:
    """Every value and node name of the model except those inside `node`'s subgraphs."""
    inside = {
        id(g)
        for attr in node.attributes.values()
        if attr.type == ir.AttributeType.GRAPH
        for g in iter_graphs(attr.as_graph())
    }
    names: set[str] = set()
    for graph in iter_graphs(model.graph):
        if id(graph) in inside:
            continue
        names.update(v.name for v in [*graph.inputs, *graph.initializers.values()] if v.name)
        for n in graph:
            if n.name:
                names.add(n.name)
            names.update(v.name for v in n.outputs if v.name)
    return names


# --- no-ops -----------------------------------------------------------------------------------


def noop_transpose(node: ir.Node, ctx: _Context) -> Site | None:
    source = _sole_input(node)
    if source is None:
        return None
    perm = attr_ints(node, "perm")
    if perm is None:
        ctx.shapes()
        dims = _dims(source)
        if dims is None or len(dims) > 1:
            return None
    elif perm != list(range(len(perm))):
        return None
    return _remove_noop("noop-transpose", node, source)


def noop_cast(node: ir.Node, ctx: _Context) -> Site | None:
    source = _sole_input(node)
    if source is None or "to" not in node.attributes:
        return None
    ctx.shapes()
    if _dtype(source) != _D(attr_int(node, "to", 0)):
        return None
    return _remove_noop("noop-cast", node, source)


def noop_reshape(node: ir.Node, ctx: _Context) -> Site | None:
    source = _sole_input(node)
    if source is None or len(node.inputs) < 2:
        return None
    target = _ints(node.inputs[1], ctx.policy)
    if isinstance(target, Decline):
        return None
    ctx.shapes()
    dims = _dims(source)
    if dims is None or len(dims) != len(target) or target.count(-1) > 1:
        return None
    allowzero = attr_int(node, "allowzero", 0)
    dynamic = []
    for i, (want, have) in enumerate(zip(target, dims, strict=True)):
        if want == -1 or (want == 0 and not allowzero):
            continue  # the inferred dim (when the others all match) or a copy of x's own
        if want < 0 or (isinstance(have, int) and have != want):
            return None
        if not isinstance(have, int):
            dynamic.append(i)
    if -1 in target and 0 in dims:
        return None  # -1 next to a zero-size dim: the Reshape fails
    if dynamic:
        return _declined(
            "noop-reshape",
            node,
            f"a no-op only if the input's dims {dynamic} (known at run time) "
            f"are {[target[i] for i in dynamic]}",
        )
    return _remove_noop("noop-reshape", node, source)


def noop_expand(node: ir.Node, ctx: _Context) -> Site | None:
    source = _sole_input(node)
    if source is None or len(node.inputs) < 2:
        return None
    target = _ints(node.inputs[1], ctx.policy)
    if isinstance(target, Decline):
        return None
    ctx.shapes()
    dims = _dims(source)
    if dims is None or len(target) > len(dims):
        return None
    dynamic = []
    for k, want in enumerate(target):
        axis = len(dims) - len(target) + k
        have = dims[axis]
        if want == 1:
            continue
        if isinstance(have, int):
            if have != want:
                return None
        else:
            dynamic.append(axis)
    if dynamic:
        return _declined(
            "noop-expand",
            node,
            f"a no-op only if the input's dims {dynamic} (known at run time) equal the target's",
        )
    return _remove_noop("noop-expand", node, source)


def noop_squeeze(node: ir.Node, ctx: _Context) -> Site | None:
    source = _sole_input(node)
    axes = _axes(node, ctx.policy)
    if source is None or isinstance(axes, Decline) or axes:  # explicit axes always remove dims
        return None
    ctx.shapes()
    dims = _dims(source)
    if dims is None or 1 in dims:
        return None
    dynamic = [i for i, d in enumerate(dims) if not isinstance(d, int)]
    if dynamic:
        return _declined(
            "noop-squeeze",
            node,
            f"squeezes every size-1 dim, and the input's dims {dynamic} are known only at run time",
        )
    return _remove_noop("noop-squeeze", node, source)


def noop_unsqueeze(node: ir.Node, ctx: _Context) -> Site | None:
    source = _sole_input(node)
    axes = _axes(node, ctx.policy)
    if source is None or axes is None or isinstance(axes, Decline) or axes:
        return None
    return _remove_noop("noop-unsqueeze", node, source)


def noop_slice(node: ir.Node, ctx: _Context) -> Site | None:
    source = _sole_input(node)
    if source is None:
        return None
    params = _slice_params(node, ctx.policy)
    if params is None:
        return None
    starts, ends, axes, steps = params
    ctx.shapes()
    dims = _dims(source)
    if dims is None:
        return None
    axes = _normalized(axes if axes is not None else range(len(starts)), len(dims))
    if axes is None or not len(starts) == len(ends) == len(axes) == len(steps):
        return None
    dynamic = []
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        size = dims[axis]
        if step != 1:
            return None
        if isinstance(size, int):
            lo = min(max(start + size if start < 0 else start, 0), size)
            hi = min(max(end + size if end < 0 else end, 0), size)
            if (lo, hi) != (0, size):
                return None
        elif start not in (0, INT64_MIN) or end != INT64_MAX:
            if start in (0, INT64_MIN) and end > 0:
                dynamic.append(axis)  # [0:end] may or may not cover a dim known at run time
            else:
                return None
    if dynamic:
        return _declined(
            "noop-slice",
            node,
            f"keeps all of axes {dynamic} only if their run-time size is at "
            "most the end (an end of INT64_MAX always does)",
        )
    return _remove_noop("noop-slice", node, source)


def _slice_params(
    node: ir.Node, policy: ConstantPolicy
) -> tuple[list[int], list[int], list[int] | None, list[int]] | None:
    """starts, ends, axes (None: the first len(starts)), steps; None unless all are constant."""
    if "starts" in node.attributes:  # Slice-1: attributes
        starts, ends = attr_ints(node, "starts"), attr_ints(node, "ends")
        if starts is None or ends is None:
            return None
        return starts, ends, attr_ints(node, "axes"), [1] * len(starts)
    values: list[list[int] | None] = []
    for index in range(1, 5):
        value = node.inputs[index] if index < len(node.inputs) else None
        if value is None:
            values.append(None)
            continue
        ints = _ints(value, policy)
        if isinstance(ints, Decline):
            return None
        values.append(ints)
    starts, ends, axes, steps = values
    if starts is None or ends is None:
        return None
    return starts, ends, axes, steps if steps is not None else [1] * len(starts)


# --- pairs ------------------------------------------------------------------------------------


def transpose_pair(node: ir.Node, ctx: _Context) -> Site | None:
    rule = "transpose-pair"
    pair = _first_of_pair(node, ("Transpose",))
    if pair is None:
        return None
    first, source, shared = pair
    if shared is not None:
        return _declined(rule, node, str(shared))
    p, q = attr_ints(first, "perm"), attr_ints(node, "perm")
    rank = len(p) if p is not None else len(q) if q is not None else None
    if rank is None:
        ctx.shapes()
        dims = _dims(source)
        if dims is None:
            return _declined(rule, node, "the rank of its input is unknown (both perms absent)")
        rank = len(dims)
    p = p if p is not None else list(reversed(range(rank)))
    q = q if q is not None else list(reversed(range(rank)))
    if len(p) != rank or len(q) != rank:
        return None
    composed = [p[j] for j in q]
    if composed == list(range(rank)):
        return _collapse(rule, first, node, source, ctx)
    merged = _new_node(ctx, "Transpose", [source], [ir.AttrInt64s("perm", composed)], node.name)
    return _merge(rule, first, node, merged, ctx)


def cast_pair(node: ir.Node, ctx: _Context) -> Site | None:
    rule = "cast-pair"
    pair = _first_of_pair(node, ("Cast",))
    if pair is None or "to" not in pair.first.attributes:
        return None
    first, source, shared = pair
    if shared is not None:
        return _declined(rule, node, str(shared))
    ctx.shapes()
    have = _dtype(source)
    if have is None:
        return _declined(rule, node, "the element type of the first Cast's input is unknown")
    middle, final = _D(attr_int(first, "to", 0)), _D(attr_int(node, "to", 0))
    exact = LOSSLESS.get(have, frozenset()) | {have}
    if middle not in exact:
        return _declined(
            rule,
            node,
            f"the first Cast ({have.name} -> {middle.name}) can change values; "
            "merging would skip that rounding",
        )
    if final == have:
        return _collapse(rule, first, node, source, ctx)
    if final not in exact:
        return _declined(
            rule,
            node,
            f"{have.name} -> {middle.name} -> {final.name}: the last step is not exact "
            f"for every {have.name} value, and a direct Cast may round or overflow differently",
        )
    attrs = [ir.Attr(a.name, a.type, a.value) for a in node.attributes.values()]
    return _merge(rule, first, node, _new_node(ctx, "Cast", [source], attrs, node.name), ctx)


def squeeze_after_unsqueeze(node: ir.Node, ctx: _Context) -> Site | None:
    """Squeeze(Unsqueeze(x, a), a) = x."""
    rule = "unsqueeze-squeeze"
    pair = _first_of_pair(node, ("Unsqueeze",))
    if pair is None:
        return None
    first, source, shared = pair
    if shared is not None:
        return _declined(rule, node, str(shared))
    inserted, removed = _axes(first, ctx.policy), _axes(node, ctx.policy)
    if isinstance(inserted, Decline) or isinstance(removed, Decline):
        return _declined(rule, node, str(inserted if isinstance(inserted, Decline) else removed))
    if inserted is None:
        return _declined(rule, node, "the Unsqueeze has no axes")
    if removed is None:
        return _declined(
            rule, node, "the Squeeze has no axes: it would drop x's own size-1 dims too"
        )
    if any(a < 0 for a in [*inserted, *removed]):
        ctx.shapes()
        dims = _dims(source)
        if dims is None:
            return _declined(rule, node, "negative axes and the rank of x is unknown")
        rank = len(dims) + len(inserted)
        inserted_n, removed_n = _normalized(inserted, rank), _normalized(removed, rank)
    else:
        inserted_n, removed_n = inserted, removed
    if inserted_n is None or removed_n is None or sorted(inserted_n) != sorted(removed_n):
        return _declined(
            rule, node, f"the Squeeze removes axes {removed}, the Unsqueeze inserted {inserted}"
        )
    return _collapse(rule, first, node, source, ctx)


def unsqueeze_after_squeeze(node: ir.Node, ctx: _Context) -> Site | None:
    """Unsqueeze(Squeeze(x, a), a) = x when x's dims at a are 1."""
    rule = "squeeze-unsqueeze"
    pair = _first_of_pair(node, ("Squeeze",))
    if pair is None:
        return None
    first, source, shared = pair
    if shared is not None:
        return _declined(rule, node, str(shared))
    removed, inserted = _axes(first, ctx.policy), _axes(node, ctx.policy)
    if isinstance(removed, Decline) or isinstance(inserted, Decline):
        return _declined(rule, node, str(removed if isinstance(removed, Decline) else inserted))
    if inserted is None:
        return _declined(rule, node, "the Unsqueeze has no axes")
    ctx.shapes()
    dims = _dims(source)
    if dims is None:
        return _declined(rule, node, "the rank of x is unknown")
    if removed is None:  # every size-1 dim
        if not all(isinstance(d, int) for d in dims):
            return _declined(rule, node, "the Squeeze has no axes and x's shape is not static")
        removed = [i for i, d in enumerate(dims) if d == 1]
    removed_n, inserted_n = _normalized(removed, len(dims)), _normalized(inserted, len(dims))
    if removed_n is None or inserted_n is None or sorted(removed_n) != sorted(inserted_n):
        return _declined(
            rule, node, f"the Unsqueeze inserts axes {inserted}, the Squeeze removed {removed}"
        )
    unknown = [a for a in removed_n if dims[a] != 1]
    if unknown:
        return _declined(rule, node, f"x's dims {unknown} are not known to be 1")
    return _collapse(rule, first, node, source, ctx)


def reshape_chain(node: ir.Node, ctx: _Context) -> Site | None:
    """Reshape / Squeeze / Unsqueeze, then Reshape; or Reshape, then Squeeze / Unsqueeze."""
    rule = "reshape-chain"
    kinds = ("Reshape",) if node.op_type != "Reshape" else ("Reshape", "Squeeze", "Unsqueeze")
    pair = _first_of_pair(node, kinds)
    if pair is None or ctx.opset < 5:
        return None
    first, source, shared = pair
    if shared is not None:
        return _declined(rule, node, str(shared))
    for reshape in (first, node):
        if reshape.op_type == "Reshape" and len(reshape.inputs) < 2:
            return None
    ctx.shapes()
    x_dims = _dims(source)
    final: list[Term] | None = None
    if node.op_type == "Reshape":
        given = _ints(node.inputs[1], ctx.policy)
        if isinstance(given, Decline):
            return _declined(rule, node, f"its target is not a constant ({given})")
        if attr_int(node, "allowzero", 0) or 0 not in given:
            final = list(given)  # no copied dims: the intermediate does not matter
    if final is None:
        inter = _terms_after(first, x_dims, ctx)
        if isinstance(inter, Decline):
            return _declined(rule, node, str(inter))
        then = _terms_then(node, inter, _dims(first.outputs[0]), x_dims, ctx)
        if isinstance(then, Decline):
            return _declined(rule, node, str(then))
        final = then
    target = _encode(final, x_dims)
    if isinstance(target, Decline):
        return _declined(rule, node, str(target))
    shape = node.inputs[1] if node.op_type == "Reshape" else None
    if shape is None or _ints(shape, ctx.policy) != target:
        name = f"{node.outputs[0].name or 'reshape'}_shape"
        shape = add_initializer(ctx.graph, ctx.namer, name, np.array(target, np.int64), _D.INT64)
    merged = _new_node(ctx, "Reshape", [source, shape], [], node.name)
    return _merge(rule, first, node, merged, ctx)


def _terms_after(first: ir.Node, x_dims: list[Dim] | None, ctx: _Context) -> list[Term] | Decline:
    """The dims of the first node's output, in terms of x's."""
    if first.op_type == "Reshape":
        target = _ints(first.inputs[1], ctx.policy)
        if isinstance(target, Decline):
            return Decline(f"the first Reshape's target is not a constant ({target})")
        allowzero = attr_int(first, "allowzero", 0)
        if any(t < -1 for t in target):
            return Decline("the first Reshape's target has a negative entry other than -1")
        return [Copy(i) if t == 0 and not allowzero else t for i, t in enumerate(target)]
    axes = _axes(first, ctx.policy)
    if isinstance(axes, Decline):
        return axes
    if x_dims is None:
        return Decline("the rank of the input is unknown")
    rank = len(x_dims)
    if first.op_type == "Squeeze":
        if axes is None:
            if not all(isinstance(d, int) for d in x_dims):
                return Decline("the Squeeze has no axes and its input's shape is not static")
            axes = [i for i, d in enumerate(x_dims) if d == 1]
        removed = _normalized(axes, rank)
        if removed is None:
            return Decline(f"the Squeeze's axes {axes} are invalid for rank {rank}")
        return [Copy(i) for i in range(rank) if i not in removed]
    if axes is None:
        return Decline("the Unsqueeze has no axes")
    inserted = _normalized(axes, rank + len(axes))
    if inserted is None:
        return Decline(f"the Unsqueeze's axes {axes} are invalid for rank {rank}")
    dims_of_x = iter(range(rank))
    return [1 if j in inserted else Copy(next(dims_of_x)) for j in range(rank + len(axes))]


def _terms_then(
    node: ir.Node,
    inter: list[Term],
    inter_dims: list[Dim] | None,
    x_dims: list[Dim] | None,
    ctx: _Context,
) -> list[Term] | Decline:
    """The dims of the second node's output, in terms of x's."""

    def static(j: int) -> int | None:  # the intermediate's dim j, when known before running
        term = inter[j]
        if isinstance(term, Copy):
            have = x_dims[term.axis] if x_dims is not None else None
        elif term >= 0:
            return term
        else:
            have = inter_dims[j] if inter_dims is not None and len(inter_dims) > j else None
        return have if isinstance(have, int) else None

    if node.op_type == "Reshape":
        target = _ints(node.inputs[1], ctx.policy)
        if isinstance(target, Decline):
            return Decline(f"its target is not a constant ({target})")
        out: list[Term] = []
        for j, t in enumerate(target):
            if t != 0:
                out.append(t)
            elif j >= len(inter):
                return Decline(f"its target copies dim {j} (a 0) of a rank-{len(inter)} input")
            elif inter[j] != -1:
                out.append(inter[j])
            elif (size := static(j)) is not None:
                out.append(size)
            else:
                return Decline(
                    f"its target copies dim {j} (a 0) of the intermediate, which is known only "
                    "at run time"
                )
        return out
    axes = _axes(node, ctx.policy)
    if isinstance(axes, Decline):
        return axes
    if node.op_type == "Unsqueeze":
        if axes is None:
            return Decline("the Unsqueeze has no axes")
        inserted = _normalized(axes, len(inter) + len(axes))
        if inserted is None:
            return Decline(f"the Unsqueeze's axes {axes} are invalid for rank {len(inter)}")
        terms = iter(inter)
        return [1 if j in inserted else next(terms) for j in range(len(inter) + len(axes))]
    if axes is None:
        sizes = [static(j) for j in range(len(inter))]
        if any(s is None for s in sizes):
            return Decline("the Squeeze has no axes and the Reshape's output shape is not static")
        return [t for t, s in zip(inter, sizes, strict=True) if s != 1]
    removed = _normalized(axes, len(inter))
    if removed is None:
        return Decline(f"the Squeeze's axes {axes} are invalid for rank {len(inter)}")
    not_one = [j for j in removed if static(j) != 1]
    if not_one:
        return Decline(f"the Reshape's output dims {not_one} are not known to be 1")
    return [t for j, t in enumerate(inter) if j not in removed]


def _encode(final: list[Term], x_dims: list[Dim] | None) -> list[int] | Decline:
    """The Reshape(x, target) giving `final`: a copy of x's dim i stays 0 at axis i, else becomes
    that dim's static size."""
    target = []
    for j, term in enumerate(final):
        if isinstance(term, Copy):
            have = x_dims[term.axis] if x_dims is not None else None
            if term.axis == j:
                target.append(0)
            elif isinstance(have, int) and have > 0:
                target.append(have)
            else:
                return Decline(
                    f"the merged target needs the input's dim {term.axis} at axis {j}, and that "
                    "dim is known only at run time"
                )
        elif term == 0:
            return Decline("the merged target has a zero-size dim")
        elif term < -1:
            return Decline(f"the target has an invalid entry {term}")
        else:
            target.append(term)
    if target.count(-1) > 1:
        return Decline("the merged target would have two dims to infer (-1)")
    return target


RULES: dict[str, tuple[Rule, ...]] = {
    "If": (inline_if,),
    "Transpose": (noop_transpose, transpose_pair),
    "Cast": (noop_cast, cast_pair),
    "Reshape": (noop_reshape, reshape_chain),
    "Expand": (noop_expand,),
    "Squeeze": (noop_squeeze, squeeze_after_unsqueeze, reshape_chain),
    "Unsqueeze": (noop_unsqueeze, unsqueeze_after_squeeze, reshape_chain),
    "Slice": (noop_slice,),
}
