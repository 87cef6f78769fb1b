"""Small, safe helpers over `onnx_ir` graphs: every mutation a pass makes goes through here.

Contract: a rewrite builds its new nodes completely (new initializers registered first), then
`replace_nodes` rewires every use of the old outputs to the new ones (graph outputs included), gives
the new outputs the old names (so tensors can be matched across a rewrite), inserts the new nodes and
removes the old ones. The graph is valid before and after each call; `check` functions never mutate.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import ml_dtypes
import numpy as np
import onnx_ir as ir

from optkit.core.contract import Decline

# Element types whose folds optkit computes (in float64, rounded once to this type).
FLOAT_TYPES: dict[ir.DataType, np.dtype] = {
    ir.DataType.FLOAT: np.dtype(np.float32),
    ir.DataType.DOUBLE: np.dtype(np.float64),
    ir.DataType.FLOAT16: np.dtype(np.float16),
    ir.DataType.BFLOAT16: np.dtype(ml_dtypes.bfloat16),
}


# Default-domain ops with graph attributes; nodes of other domains are searched for them too.
CONTROL_FLOW = frozenset({"If", "Loop", "Scan", "SequenceMap"})


def iter_graphs(graph: ir.Graph) -> Iterator[ir.Graph]:
    """`graph` and every subgraph below it (If / Loop / Scan bodies), outermost first."""
    yield graph
    for node in list(graph):
        if is_default_domain(node.domain) and node.op_type not in CONTROL_FLOW:
            continue
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                yield from iter_graphs(attr.as_graph())
            elif attr.type == ir.AttributeType.GRAPHS:
                for sub in attr.as_graphs():
                    yield from iter_graphs(sub)


def all_nodes(model: ir.Model) -> Iterator[ir.Node]:
    for graph in iter_graphs(model.graph):
        yield from graph


def nodes_with_functions(model: ir.Model) -> Iterator[tuple[ir.Node, ir.Function | None]]:
    """Every node the model may run: those of its graphs (with None), then those of its local
    functions' bodies (with the function), subgraphs included."""
    for node in all_nodes(model):
        yield node, None
    for function in model.functions.values():
        for graph in iter_graphs(function.graph):
            for node in graph:
                yield node, function


# Ops that draw random numbers: two runs on the same inputs may differ.
RANDOM_OPS = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli",
     "Multinomial"}
)  # fmt: skip


def count_ops(model: ir.Model, op_type: str, domain: str = "") -> int:
    """How many nodes of `model` (subgraphs included) run `op_type` of `domain`."""
    default = is_default_domain(domain)
    return sum(
        1
        for n in all_nodes(model)
        if n.op_type == op_type and (is_default_domain(n.domain) if default else n.domain == domain)
    )


def node_count(model: ir.Model) -> int:
    return sum(1 for _ in all_nodes(model))


def opset_version(model: ir.Model, domain: str = "") -> int:
    """The model's opset for `domain` ('' and 'ai.onnx' are the same domain)."""
    imports = model.opset_imports
    if is_default_domain(domain):
        return imports.get("", imports.get("ai.onnx", 1))
    return imports.get(domain, 1)


def node_label(node: ir.Node) -> str:
    """How reports name a node: its name, or its op type and first output when it has no name."""
    if node.name:
        return node.name
    first = node.outputs[0].name if node.outputs else "?"
    return f"{node.op_type}->{first}"


# --- attributes -------------------------------------------------------------------------------


def attr_int(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return default if attr is None else int(attr.as_int())


def attr_float(node: ir.Node, name: str, default: float) -> float:
    attr = node.attributes.get(name)
    return default if attr is None else float(attr.as_float())


def attr_ints(node: ir.Node, name: str) -> list[int] | None:
    attr = node.attributes.get(name)
    return None if attr is None else [int(v) for v in attr.as_ints()]


def attr_str(node: ir.Node, name: str, default: str) -> str:
    attr = node.attributes.get(name)
    return default if attr is None else str(attr.as_string())


# --- constants --------------------------------------------------------------------------------


class ConstantPolicy:
    """Decides which values are constants a rewrite may read and fold.

    An initializer that is also a graph input is overridable at run time (ONNX IR version >= 4, and
    ONNX Runtime treats it so): it is not a constant unless the user asked to `freeze` such inputs.
    In IR version 3 every initializer had to be listed as an input, so there it is a constant.
    """

    def __init__(self, model: ir.Model, *, freeze_initializer_inputs: bool = False) -> None:
        self.inputs_are_overridable = model.ir_version >= 4 and not freeze_initializer_inputs

    def array(self, value: ir.Value | None) -> np.ndarray | Decline:
        """The value's constant contents, or a Decline saying why it is not a usable constant."""
        if value is None:
            return Decline("input is missing")
        label = value.name or "<unnamed>"
        if value.is_graph_input():
            if not value.is_initializer():
                return Decline(f"'{label}' is a graph input, not a constant")
            if self.inputs_are_overridable:
                return Decline(
                    f"'{label}' is an initializer that is also a graph input (overridable at run "
                    "time); pass --freeze-initializer-inputs to fold it"
                )
        try:
            tensor = ir.convenience.get_const_tensor(value)
        except ValueError:
            tensor = None
        if tensor is None:
            return Decline(f"'{label}' is computed at run time, not a constant")
        return tensor.numpy()

    def contents(self, value: ir.Value | None) -> np.ndarray | None:
        """`array` for callers that need no reason: the contents, or None when not a constant."""
        array = self.array(value)
        return None if isinstance(array, Decline) else array


# --- names ------------------------------------------------------------------------------------


class Namer:
    """Hands out names unused anywhere in the model (subgraphs included), deterministically."""

    def __init__(self, model: ir.Model) -> None:
        self._used: set[str] = set()
        for graph in iter_graphs(model.graph):
            for value in [*graph.inputs, *graph.initializers.values()]:
                if value.name:
                    self._used.add(value.name)
            for node in graph:
                if node.name:
                    self._used.add(node.name)
                self._used.update(v.name for v in node.outputs if v.name)

    def fresh(self, base: str) -> str:
        name, k = base, 0
        while name in self._used:
            k += 1
            name = f"{base}_{k}"
        self._used.add(name)
        return name


# --- mutation ---------------------------------------------------------------------------------


class InitializerOverflow(ValueError):
    """Finite values that round to infinity in the element type of the initializer made of them (a
    fold declines on it: `rounded`)."""


def overflow_error(array: np.ndarray, dtype: ir.DataType) -> InitializerOverflow:
    """The error for `array` (float64, the values before rounding) overflowing `dtype`, naming the
    largest finite magnitude."""
    peak = float(np.max(np.abs(array[np.isfinite(array)])))
    return InitializerOverflow(f"folded values reach {peak:.3g}, beyond {dtype.name}'s range")


def round_to(array: np.ndarray, dtype: ir.DataType, *, copy: bool = True) -> np.ndarray:
    """`array` rounded once to `dtype` (a new array unless `copy=False` and it already has that
    type; non-float dtypes: `array` as given). Raises `InitializerOverflow` when a finite value
    rounds to infinity: an initializer never holds an infinity its source values did not."""
    np_dtype = FLOAT_TYPES.get(dtype)
    if np_dtype is None:
        return array
    array = np.asarray(array)
    if array.dtype == np_dtype:  # nothing to round: no value can become infinite
        return array.astype(np_dtype, copy=copy)
    with np.errstate(over="ignore"):
        out = array.astype(np_dtype)
    if np.any(np.isinf(out) & np.isfinite(array)):
        raise overflow_error(array, dtype)
    return out


def rounded(array: np.ndarray, dtype: ir.DataType) -> np.ndarray | Decline:
    """`round_to` for a rule's plan: the rounded array, or a Decline naming the overflow."""
    try:
        return round_to(array, dtype)
    except InitializerOverflow as exc:
        return Decline(str(exc))


def add_initializer(
    graph: ir.Graph,
    namer: Namer,
    base_name: str,
    array: np.ndarray,
    dtype: ir.DataType,
    *,
    copy: bool = True,
) -> ir.Value:
    """Register `array` (rounded once to `dtype`: `round_to`) as a new initializer of `graph`;
    never overwrites one. Raises `InitializerOverflow` (registering nothing) where a finite value
    would round to infinity; rules check with `rounded` while planning, before any mutation.

    A float array is copied unless `copy=False` (the caller made it for this initializer and
    hands it over: it is then kept as is when it already has `dtype`'s type and is contiguous)."""
    data = np.ascontiguousarray(round_to(array, dtype, copy=copy))
    data = data.reshape(np.shape(array))  # ascontiguousarray makes a rank-0 array rank 1
    name = namer.fresh(base_name)
    value = ir.Value(
        name=name,
        const_value=ir.Tensor(data, dtype=dtype, name=name),
        type=ir.TensorType(dtype),
        shape=ir.Shape(data.shape),
    )
    graph.register_initializer(value)
    return value


def sole_consumer(value: ir.Value) -> ir.Node | None:
    """The only node reading `value`, when exactly one node reads it once, it is no graph output,
    and that node is in the graph that defines `value` (not inside an If / Loop / Scan body reading
    it from the outer scope: a fold never joins nodes of two graphs)."""
    if value.is_graph_output():
        return None
    uses = list(value.uses())
    if len(uses) != 1 or uses[0].node.graph is not defining_graph(value):
        return None
    return uses[0].node


def defining_graph(value: ir.Value) -> ir.Graph | None:
    """The graph whose node produces `value`, or that holds it as an input or initializer."""
    producer = value.producer()
    return producer.graph if producer is not None else value.graph


def consumers_reason(value: ir.Value, what: str) -> Decline:
    """Why `value` cannot be absorbed (`sole_consumer` found none): it has other readers, is a graph
    output, or is read inside a subgraph body."""
    if value.is_graph_output():
        return Decline(f"{what} '{value.name}' is a graph output")
    uses = list(value.uses())
    if len(uses) == 1 and uses[0].node.graph is not defining_graph(value):
        return Decline(
            f"{what} '{value.name}' is read inside a subgraph (If / Loop / Scan body) from the outer "
            "scope; folds stay within one graph"
        )
    return Decline(f"{what} '{value.name}' has {len(uses)} consumers")


def unused_outputs(node: ir.Node, start: int) -> bool:
    """True when outputs `start..` of `node` are absent or read by nobody."""
    return all(
        not out.name or (not out.uses() and not out.is_graph_output())
        for out in node.outputs[start:]
    )


def replace_nodes(
    graph: ir.Graph,
    old_nodes: Sequence[ir.Node],
    new_nodes: Sequence[ir.Node],
    old_outputs: Sequence[ir.Value],
    new_outputs: Sequence[ir.Value],
) -> None:
    """Replace `old_nodes` by `new_nodes`, each new output taking the place and name of an old one.

    New nodes are inserted right after the last old node, so every value they read is defined.
    """
    anchor = _last_of(graph, old_nodes)
    ir.convenience.replace_nodes_and_values(
        graph, anchor, list(old_nodes), list(new_nodes), list(old_outputs), list(new_outputs)
    )


def _last_of(graph: ir.Graph, nodes: Sequence[ir.Node]) -> ir.Node:
    """The node of `nodes` that comes last in `graph`.

    In a topologically sorted graph (the checker requires it of the input, and rewrites insert new
    nodes after everything they read) a node that reads another's output comes after it, so when
    exactly one of `nodes` has no reader among them it is the last one, found without scanning the
    graph; otherwise the graph's order decides.
    """
    members = {id(node) for node in nodes}
    sinks = [
        node
        for node in nodes
        if not any(id(use.node) in members for out in node.outputs for use in out.uses())
    ]
    if len(sinks) == 1:
        return sinks[0]
    order = {id(node): i for i, node in enumerate(graph)}
    return max(nodes, key=lambda node: order[id(node)])


def dims_after_batch(shape: ir.Shape | None) -> list[int] | None:
    """The dims of `shape` after the first (the batch), when every one of them is known."""
    if shape is None:
        return None
    dims = [d for d in list(shape)[1:] if isinstance(d, int)]
    return dims if len(dims) == len(shape) - 1 else None


def bypass(node: ir.Node, source: ir.Value, output: ir.Value) -> Decline | None:
    """Make every reader of `output` read `source` and delete `node`; None on success, else why not
    (checked before anything changes).

    When `output` is a graph output, `source` takes its name, which is only sound when `source` is
    produced inside the same graph and is not itself a graph input, initializer or output.
    """
    graph = node.graph
    assert graph is not None
    takes_name = output.is_graph_output()
    if takes_name:
        if source.is_graph_input() or source.is_initializer():
            return Decline("connects a graph input or initializer straight to a graph output")
        if source.is_graph_output():
            return Decline("both its input and its output are graph outputs")
        if source.graph is not graph:
            return Decline("its input comes from an enclosing graph")
    if source.type is None:
        source.type = output.type
    if source.shape is None:
        source.shape = output.shape
    ir.convenience.replace_all_uses_with(output, source, replace_graph_outputs=True)
    graph.remove(node, safe=True)
    if takes_name:  # only the output's name is the signature (a source that is a graph output
        source.name = output.name  # read by a dead Identity keeps its own)
    return None


DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})  # two spellings of ONNX's default operator set


def is_default_domain(domain: str) -> bool:
    """Whether `domain` names ONNX's default operator set ('' or 'ai.onnx': the same ops)."""
    return domain in DEFAULT_DOMAINS


def input_at(node: ir.Node, index: int) -> ir.Value | None:
    """`node`'s input `index`, or None when the node has fewer inputs or that optional one is
    left out (ONNX writes an omitted optional input as an empty name)."""
    return node.inputs[index] if index < len(node.inputs) else None


def reroute(node: ir.Node, replacements: Sequence[ir.Value], *, take_names: bool = False) -> None:
    """Make every reader of `node`'s output i read `replacements[i]`, then delete `node`.

    No output of `node` may be a graph output (the outputs' names are the signature: callers keep
    such nodes). With `take_names`, each replacement then takes the name of the output it stands
    in for, where that output has one (a folded initializer keeps the tensor's name)."""
    graph = node.graph
    assert graph is not None
    names = [out.name for out in node.outputs]
    ir.convenience.replace_all_uses_with(list(node.outputs), list(replacements))
    graph.remove(node, safe=True)
    if take_names:
        for value, name in zip(replacements, names, strict=True):
            if name:
                value.name = name


def replace_input(graph: ir.Graph, old: ir.Value, new: ir.Value, readers_read: ir.Value) -> None:
    """Graph input `old` becomes `new`, at the same position; every node that read `old` reads
    `readers_read` instead (a value the caller computes from `new` with nodes it has added)."""
    ir.convenience.replace_all_uses_with(old, readers_read)
    graph.inputs[list(graph.inputs).index(old)] = new
