"""What the BatchNorm folds share: reading float weights, building replacement nodes, results."""

from __future__ import annotations

import dataclasses
import mmap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from optkit.core.contract import Site
from optkit.core.graph import (
    FLOAT_TYPES,
    ConstantPolicy,
    Namer,
    add_initializer,
    iter_graphs,
    node_label,
)
from optkit.passes.fold.affine_map import Affine


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
        array, dtype, why = self.stored_weight(value, what, min_rank)
        return (None if array is None else array.astype(np.float64)), dtype, why

    def stored_weight(
        self, value: ir.Value | None, what: str, min_rank: int = 0
    ) -> tuple[np.ndarray | None, ir.DataType, str]:
        """As `weight`, but the tensor as stored (no float64 copy; memory-mapped when it is external
        data): for `scaled_constant`, which widens it to float64 chunk by chunk."""
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
        return array, dtype, ""

    def scaled_constant(
        self,
        base: str,
        weight: np.ndarray,
        factor: np.ndarray,
        dtype: ir.DataType,
        shape: tuple[int, ...] | None = None,
    ) -> ir.Value:
        """A new initializer holding `weight * factor` computed in float64 and rounded once to
        `dtype` (reshaped to `shape` when given): bit for bit what `constant(base,
        weight.astype(float64) * factor, dtype)` makes, without a float64 copy of the whole tensor
        (`scaled`). Raises `FoldOverflow` as `constant` does."""
        rounded = scaled(weight, factor, dtype)
        if shape is not None:
            rounded = rounded.reshape(shape)
        value = add_initializer(self.graph, self.namer, base, rounded, dtype, copy=False)
        self.made.append(value)
        return value

    def constant(self, base: str, array: np.ndarray, dtype: ir.DataType) -> ir.Value:
        """A new initializer holding `array` rounded once to `dtype`; raises `FoldOverflow` (before
        registering anything) when finite values would round to infinity in `dtype`."""
        np_dtype = FLOAT_TYPES.get(dtype)
        if np_dtype is not None:
            with np.errstate(over="ignore"):
                rounded = np.asarray(array).astype(np_dtype)
            if np.any(np.isinf(rounded) & np.isfinite(array)):
                raise _overflow(array, dtype)
            array = rounded  # rounded once, and handed over: add_initializer does not copy it
        value = add_initializer(self.graph, self.namer, base, array, dtype, copy=np_dtype is None)
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


def _overflow(array: np.ndarray, dtype: ir.DataType) -> FoldOverflow:
    peak = float(np.max(np.abs(array[np.isfinite(array)])))
    return FoldOverflow(f"folded values reach {peak:.3g}, beyond {dtype.name}'s range")


CHUNK_BYTES = 1 << 20  # of float64 products per chunk of `scaled`: stays in cache
MAPPED_BYTES = 1 << 22  # outputs of `scaled` from this size get an anonymous mapping of their own


def new_array(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialized array, like `np.empty`; a large one (>= MAPPED_BYTES) in an anonymous
    memory mapping of its own with its pages populated at once (freed with the array). numpy asks
    for transparent huge pages for large arrays, and on the development machine a process's first
    1.2 GB of them took 2.2 s to fault in (the kernel compacting memory), 0.7 s as populated
    ordinary pages."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    anonymous = getattr(mmap, "MAP_ANONYMOUS", None)
    if nbytes < MAPPED_BYTES or anonymous is None or not hasattr(mmap, "MAP_PRIVATE"):
        return np.empty(shape, dtype)
    flags = mmap.MAP_PRIVATE | anonymous | getattr(mmap, "MAP_POPULATE", 0)
    try:
        mapping = mmap.mmap(-1, nbytes, flags=flags)
    except (OSError, ValueError):
        return np.empty(shape, dtype)
    return np.frombuffer(mapping, dtype).reshape(shape)


def scaled(weight: np.ndarray, factor: np.ndarray, dtype: ir.DataType) -> np.ndarray:
    """`weight * factor` computed in float64 and rounded once to `dtype` (a float type), in a new
    array: the same bits as `(weight.astype(float64) * factor).astype(dtype)` (each element is
    the same float64 product, and numpy's output cast is astype's cast), but computed in chunks
    of rows (axis 0) straight into the output, so no full-size float64 temporary is made and each
    chunk is checked for overflow while in cache. `factor` (float64) broadcasts to `weight`'s
    shape and has 1 or `weight.shape[0]` rows. Raises `FoldOverflow` (naming the peak, as
    `FoldContext.constant`) when a finite product rounds to infinity."""
    np_dtype = FLOAT_TYPES[dtype]
    factor = np.asarray(factor, dtype=np.float64)
    if np.broadcast_shapes(weight.shape, factor.shape) != weight.shape or weight.ndim == 0:
        product = weight.astype(np.float64) * factor
        with np.errstate(over="ignore"):
            rounded = product.astype(np_dtype)
        if np.any(np.isinf(rounded) & np.isfinite(product)):
            raise _overflow(product, dtype)
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
            if np.isinf(chunk).any():  # rare: infinite weights, or an overflow
                product = weight[rows].astype(np.float64) * part
                if np.any(np.isinf(chunk) & np.isfinite(product)):
                    raise _overflow(weight.astype(np.float64) * factor, dtype)
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
