"""What the BatchNorm folds share: reading float weights, building replacement nodes, results."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from optkit.contract import Site
from optkit.graph import (
    FLOAT_TYPES,
    ConstantPolicy,
    Namer,
    add_initializer,
    iter_graphs,
    node_label,
)

from .affine_params import Affine


@dataclass(frozen=True)
class Applied:
    """A rewrite that happened: which rule, which nodes went, which came."""

    rule: str
    removed: tuple[str, ...]
    added: tuple[str, ...]


@dataclass
class FoldContext:
    graph: ir.Graph
    policy: ConstantPolicy
    namer: Namer
    opset: int = 0  # the model's default-domain opset
    ensure_shapes: Callable[[], None] = lambda: None  # call before reading value shapes
    keep: frozenset[int] = frozenset()  # ids of nodes no fold may take (decomposed forms)
    made: list[ir.Value] = field(default_factory=list)  # initializers `constant` registered

    def weight(
        self, value: ir.Value | None, what: str, min_rank: int = 0
    ) -> tuple[np.ndarray | None, ir.DataType, str]:
        """A constant float tensor (of at least `min_rank` dimensions) as float64 with its stored
        dtype, or None and why not."""
        if value is None:
            return None, ir.DataType.UNDEFINED, f"{what} is missing"
        array, why = self.policy.array(value)
        if array is None:
            return None, ir.DataType.UNDEFINED, f"{what} is not a constant: {why}"
        dtype = ir.DataType.from_numpy(array.dtype)
        if dtype not in FLOAT_TYPES:
            return None, dtype, f"{what} has element type {dtype.name}, not a float type"
        if array.ndim < min_rank:
            return None, dtype, f"{what} has rank {array.ndim}, below {min_rank}"
        return array.astype(np.float64), dtype, ""

    def constant(self, base: str, array: np.ndarray, dtype: ir.DataType) -> ir.Value:
        """A new initializer holding `array` rounded once to `dtype`; raises `FoldOverflow` (before
        registering anything) when finite values would round to infinity in `dtype`."""
        np_dtype = FLOAT_TYPES.get(dtype)
        if np_dtype is not None:
            with np.errstate(over="ignore"):
                rounded = np.asarray(array).astype(np_dtype)
            if np.any(np.isinf(rounded) & np.isfinite(array)):
                peak = float(np.max(np.abs(array[np.isfinite(array)])))
                raise FoldOverflow(f"folded values reach {peak:.3g}, beyond {dtype.name}'s range")
        value = add_initializer(self.graph, self.namer, base, array, dtype)
        self.made.append(value)
        return value

    def drop_made_since(self, mark: int) -> None:
        """Remove the initializers `constant` registered after `len(self.made)` was `mark`: a rule
        that declines rewired nothing, so no node in a graph reads them (at most a node it built
        and dropped). A declining pass reports no change, and the pipeline would not run `unused`
        after it."""
        for value in self.made[mark:]:
            if value.name is not None and all(use.node.graph is None for use in value.uses()):
                self.graph.initializers.pop(value.name, None)
        del self.made[mark:]


class FoldOverflow(ValueError):
    """A fold's result does not fit the weight's element type (a rule declines on it)."""


def copy_attributes(node: ir.Node, **overrides: ir.Attr | None) -> list[ir.Attr]:
    """The node's attributes, with `overrides` replacing (or, when None, dropping) some."""
    attrs = {name: ir.Attr(a.name, a.type, a.value) for name, a in node.attributes.items()}
    for name, attr in overrides.items():
        if attr is None:
            attrs.pop(name, None)
        else:
            attrs[name] = attr
    return list(attrs.values())


def new_node(
    op_type: str, inputs: Sequence[ir.Value | None], attributes: Sequence[ir.Attr], name: str | None
) -> ir.Node:
    return ir.Node("", op_type, list(inputs), attributes=list(attributes), name=name, num_outputs=1)


def base_name(value: ir.Value | None, fallback: str) -> str:
    return (value.name if value is not None and value.name else fallback) + "_bnfold"


# --- the sweep driver shared by the BatchNorm and affine passes -------------------------------

Rule = Callable[[Affine, FoldContext], "Applied | str"]
Reader = Callable[[ir.Node, ConstantPolicy], tuple["Affine | None", str]]
MAX_ROUNDS = 16


@dataclass(frozen=True)
class Folds:
    """One family of folds: which nodes to look at, how to read one as y = s x + t, and the rules
    to try on it in order (each named for the report: "not <name> (<reason>)")."""

    select: Callable[[ir.Node], bool]
    read: Reader
    rules: Sequence[tuple[str, Rule]]
    site_rule: str

    def sweep(self, model: ir.Model, ctx: FoldContext) -> tuple[list[Site], dict[int, Site]]:
        """One pass over every graph: the applied sites, and the declined ones by node id.

        `ctx` is the context for the main graph; each subgraph gets a copy pointing at it. A node
        `read` rejects with an empty reason is not a candidate and gets no site.
        """
        applied: list[Site] = []
        declined: dict[int, Site] = {}
        for graph in list(iter_graphs(model.graph)):
            graph_ctx = dataclasses.replace(ctx, graph=graph)
            for node in [n for n in graph if self.select(n)]:
                if node.graph is None:  # removed by a rewrite earlier in this sweep
                    continue
                site = self._try(node, graph_ctx)
                if site is None:
                    continue
                if site.applied:
                    applied.append(site)
                else:
                    declined[id(node)] = site
        return applied, declined

    def _try(self, node: ir.Node, ctx: FoldContext) -> Site | None:
        label = node_label(node)
        affine, why = self.read(node, ctx.policy)
        if affine is None:
            return Site(self.site_rule, label, False, why) if why else None
        reasons = []
        for name, rule in self.rules:
            mark = len(ctx.made)
            try:
                result = rule(affine, ctx)
            except FoldOverflow as exc:  # nothing was rewired
                result = str(exc)
            if isinstance(result, Applied):
                return Site(result.rule, label, True, removed=result.removed, added=result.added)
            ctx.drop_made_since(mark)
            reasons.append(f"not {name} ({result})")
        return Site(self.site_rule, label, False, "; ".join(reasons))

    def to_fixed_point(
        self, model: ir.Model, ctx: FoldContext
    ) -> tuple[list[Site], dict[int, Site]]:
        """Sweep until a sweep applies nothing (a chain folds one link per sweep); the declines
        of the last sweep are the ones that stand."""
        applied: list[Site] = []
        declined: dict[int, Site] = {}
        for _ in range(MAX_ROUNDS):
            done, declined = self.sweep(model, ctx)
            applied += done
            if not done:
                break
        return applied, declined
