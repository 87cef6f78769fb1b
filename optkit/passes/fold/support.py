"""What the folds share: plans and their constants (computed in float64, rounded once, checked
for overflow before anything changes), building replacement nodes, and the sweep driver."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from optkit.core.contract import Decline, Site
from optkit.core.graph import (
    FLOAT_TYPES,
    ConstantPolicy,
    InitializerOverflow,
    Namer,
    add_initializer,
    iter_graphs,
    node_label,
    overflow_error,
    rounded,
)
from optkit.core.memory import drop_resident, new_array
from optkit.passes.fold.affine_map import Affine


@dataclass(frozen=True)
class Applied:
    """A rewrite that happened: which rule, which nodes went, which came."""

    rule: str
    removed: tuple[str, ...]
    added: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    """A fold that passed every check, its new constants computed (`Folded`): `apply` registers them
    and rewires the graph, the only mutation of a fold, and says what it did. Planning touches no
    node and registers nothing, so a rule that declines leaves the model as it was."""

    rule: str
    apply: Callable[[], Applied]


@dataclass(frozen=True)
class Folded:
    """A constant a plan computed: `array` already rounded once to `dtype` and checked to fit it."""

    array: np.ndarray
    dtype: ir.DataType


def folded(array: np.ndarray, dtype: ir.DataType) -> Folded | Decline:
    """`array` (float64 for a float `dtype`) rounded once to `dtype`, or a Decline when finite
    values round to infinity there (`rounded`)."""
    result = rounded(array, dtype)
    return result if isinstance(result, Decline) else Folded(result, dtype)


def folded_scaled(
    weight: np.ndarray, factor: np.ndarray, dtype: ir.DataType, shape: tuple[int, ...] | None = None
) -> Folded | Decline:
    """`weight * factor` computed in float64 and rounded once to `dtype` (reshaped to `shape` when
    given), chunk by chunk (`scaled`): bit for bit `folded(weight.astype(float64) * factor, dtype)`
    without a float64 copy of the whole tensor; a Decline on overflow, with the same reason."""
    try:
        result = scaled(weight, factor, dtype)
    except InitializerOverflow as exc:
        return Decline(str(exc))
    return Folded(result if shape is None else result.reshape(shape), dtype)


def all_folded(*constants: Folded | Decline) -> list[Folded] | Decline:
    """A plan's constants, or the first Decline among them (in the order they are made: the
    overflow a fold reports is that of the first constant that overflows)."""
    for constant in constants:
        if isinstance(constant, Decline):
            return constant
    return [c for c in constants if isinstance(c, Folded)]


@dataclass
class FoldContext:
    graph: ir.Graph
    policy: ConstantPolicy
    namer: Namer
    opset: int = 0  # the model's default-domain opset
    ensure_shapes: Callable[[], None] = lambda: None  # call before reading value shapes
    keep: frozenset[int] = frozenset()  # ids of nodes no fold may take (decomposed forms)

    def register(self, base: str, constant: Folded) -> ir.Value:
        """A new initializer (named after `base`) holding a plan's constant: for `Plan.apply` only.
        The array is handed over as it is (rounded and checked when it was planned)."""
        return add_initializer(
            self.graph, self.namer, base, constant.array, constant.dtype, copy=False
        )


CHUNK_BYTES = 1 << 20  # of float64 products per chunk of `scaled`: stays in cache


def scaled(weight: np.ndarray, factor: np.ndarray, dtype: ir.DataType) -> np.ndarray:
    """`weight * factor` computed in float64 and rounded once to `dtype` (a float type), in a new
    array: the same bits as `(weight.astype(float64) * factor).astype(dtype)` (each element is
    the same float64 product, and numpy's output cast is astype's cast), but computed in chunks
    of rows (axis 0) straight into the output, so no full-size float64 temporary is made and each
    chunk is checked for overflow while in cache. `factor` (float64) broadcasts to `weight`'s
    shape and has 1 or `weight.shape[0]` rows. Raises `InitializerOverflow` (naming the peak, as
    `core.graph.round_to`) when a finite product rounds to infinity."""
    np_dtype = FLOAT_TYPES[dtype]
    factor = np.asarray(factor, dtype=np.float64)
    if np.broadcast_shapes(weight.shape, factor.shape) != weight.shape or weight.ndim == 0:
        product = weight.astype(np.float64) * factor
        with np.errstate(over="ignore"):
            rounded = product.astype(np_dtype)
        if np.any(np.isinf(rounded) & np.isfinite(product)):
            raise overflow_error(product, dtype)
        return rounded
    factor = factor.reshape((1,) * (weight.ndim - factor.ndim) + factor.shape)
    out = new_array(weight.shape, np.dtype(np_dtype))
    row = max(1, int(np.prod(weight.shape[1:], dtype=np.int64)))
    step = max(1, CHUNK_BYTES // (8 * row))
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, weight.shape[0], step):
            rows = slice(start, start + step)
            part = factor[rows] if factor.shape[0] != 1 else factor
            chunk = out[rows]
            np.multiply(weight[rows], part, out=chunk, dtype=np.float64, casting="same_kind")
            drop_resident(weight[rows])  # read once: external data need not stay resident
            if np.isinf(chunk).any():  # rare: infinite weights, or an overflow
                product = weight[rows].astype(np.float64) * part
                if np.any(np.isinf(chunk) & np.isfinite(product)):
                    raise overflow_error(weight.astype(np.float64) * factor, dtype)
    return out


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

Rule = Callable[[Affine, FoldContext], "Plan | Decline"]
# A node read as an affine map, why it cannot be one, or None: not a candidate (no site).
Reader = Callable[[ir.Node, ConstantPolicy], "Affine | Decline | None"]
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
        `read` returns None for (no candidate) and gets no site.
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
        """Read `node`, then plan each rule in order; the first plan is applied (nothing else
        mutates: a declining rule changed nothing)."""
        label = node_label(node)
        affine = self.read(node, ctx.policy)
        if affine is None:
            return None
        if isinstance(affine, Decline):
            return Site(self.site_rule, label, False, affine.reason)
        reasons = []
        for name, rule in self.rules:
            plan = rule(affine, ctx)
            if isinstance(plan, Plan):
                result = plan.apply()
                return Site(result.rule, label, True, removed=result.removed, added=result.added)
            reasons.append(f"not {name} ({plan})")
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
