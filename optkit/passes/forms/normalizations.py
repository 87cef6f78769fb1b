"""Normalization layers as exporters decompose them, read back as one ONNX op (see `canonicalize`).

    LayerNormalization (opset 17), normalizing the last k axes of x:
        d = x - ReduceMean(x, axes);  v = ReduceMean(d^2 | d*d, axes)
        n = d / Sqrt(v + eps)  |  d * Reciprocal(Sqrt(v + eps))
        y = n [* gamma] [+ beta]            (gamma, beta constants broadcasting over those axes)

    GroupNormalization (opset 21, per-channel scale and bias), as torch exports nn.GroupNorm:
        r = Reshape(x, [0, G, -1]);  i = InstanceNormalization(r, ones(G), zeros(G), eps)
        y = Reshape(i, Shape(x)) [* gamma] [+ beta]      (gamma, beta of shape (C, 1, ..., 1))
    also with the batch and group size written as numbers (Reshape(x, [N, G, K]) of a static
    export) and the Reshape back to a constant shape. Once Reshape -> InstanceNormalization ->
    Reshape is found, a form that does not fuse is a decline with its reason (groups that differ,
    a scale of its own, a shape not restored, ...). GroupNorm of (N, C) features (torch's
    nn.GroupNorm after a Linear) is declined: ONNX Runtime 1.32's GroupNormalization (opsets 21
    and 24, CPU) measured 4.3e-4 max error against float64 on (64, 32) inputs of mean 3, std 0.5
    in 8 groups, where the chain has 6.0e-6 (2.1e-5 and 1.6e-6 on (64, 32, 3, 3)).

Scale and bias become constant inputs of the fused node, broadcast to the shape the op wants.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from optkit.core.contract import Decline
from optkit.core.graph import attr_float, attr_int, attr_ints, input_at, is_default_domain
from optkit.passes.forms.pattern import Match, Reader, match, producer

MIN_OPSET = {"LayerNormalization": 17, "GroupNormalization": 21}


def recognize(node: ir.Node, reader: Reader) -> Match | Decline | None:
    if not is_default_domain(node.domain) or node.op_type not in ("Add", "Mul", "Div", "Reshape"):
        return None
    gamma, beta, core, peeled = _peel_affine(node, reader)
    if core is None:
        return None
    if core.op_type == "Reshape":
        return _group_norm(core, gamma, beta, peeled, reader)
    return _layer_norm(core, gamma, beta, peeled, reader)


def _peel_affine(
    node: ir.Node, reader: Reader
) -> tuple[np.ndarray | None, np.ndarray | None, ir.Node | None, list[ir.Node]]:
    """y = core * gamma + beta: (gamma, beta, the node computing `core`, the Mul / Add nodes)."""
    gamma = beta = None
    peeled: list[ir.Node] = []
    if node.op_type == "Add":
        beta, inner = _constant_operand(node, reader)
        if beta is None or not reader.expandable(inner):
            return None, None, None, []
        peeled.append(node)
        node = inner.producer()  # type: ignore[assignment]
        if node is None:
            return None, None, None, []
    if node.op_type == "Mul":
        gamma, inner = _constant_operand(node, reader)
        if gamma is not None:
            if inner is None or (peeled and not reader.expandable(inner)):
                return None, None, None, []
            peeled.append(node)
            node = inner.producer()  # type: ignore[assignment]
            if node is None:
                return None, None, None, []
    if not is_default_domain(node.domain) or node.op_type not in ("Mul", "Div", "Reshape"):
        return None, None, None, []
    return gamma, beta, node, peeled


def _constant_operand(node: ir.Node, reader: Reader) -> tuple[np.ndarray | None, ir.Value | None]:
    if len(node.inputs) != 2:
        return None, None
    for constant, other in ((node.inputs[1], node.inputs[0]), (node.inputs[0], node.inputs[1])):
        array = reader.policy.contents(constant)
        if array is not None and other is not None and reader.policy.contents(other) is None:
            return np.asarray(array, dtype=np.float64), other
    return None, None


# --- LayerNormalization -------------------------------------------------------------------------


def _layer_norm(
    core: ir.Node,
    gamma: np.ndarray | None,
    beta: np.ndarray | None,
    peeled: list[ir.Node],
    reader: Reader,
) -> Match | Decline | None:
    d, std_node, divide_nodes = _normalized(core)
    if d is None or std_node is None:
        return None
    sub = producer(d, "Sub")
    add = producer(std_node.inputs[0], "Add")
    split = reader.split(add) if add is not None else None
    if sub is None or split is None:
        return None
    epsilon, variance = split
    x, mean = sub.inputs
    mean_node = producer(mean, "ReduceMean")
    var_node = producer(variance, "ReduceMean")
    if x is None or mean_node is None or var_node is None or mean_node.inputs[0] is not x:
        return None
    square = producer(var_node.inputs[0], "Pow", "Mul")
    if square is None or not _is_square_of(square, d, reader):
        return None
    axes = _reduce_axes(mean_node, reader)
    if axes is None or axes != _reduce_axes(var_node, reader):
        return None
    nodes = [*peeled, *divide_nodes, std_node, add, var_node, square, sub, mean_node]
    if any(attr_int(n, "keepdims", 1) != 1 for n in (mean_node, var_node)):
        return None
    rank = len(x.shape) if x.shape is not None else None
    axis = _trailing_start(axes, rank)
    if axis is None:
        return Decline(
            f"LayerNorm pattern over axes {axes}, which are not the last axes of a known rank"
        )
    count = -axis if axis < 0 else rank - axis  # type: ignore[operator]
    normalized = _normalized_shape(x, count, gamma, beta)
    if normalized is None:
        return Decline(
            "LayerNorm pattern, but the normalized shape is unknown (no static dims, no scale)"
        )
    widest = max((c.ndim for c in (gamma, beta) if c is not None), default=0)
    if widest > count and (rank is None or widest > rank):
        return Decline(
            f"LayerNorm pattern, but its scale or bias has rank {widest}, more than the input's "
            f"({'unknown' if rank is None else rank}): the product broadcasts to a higher rank"
        )
    scale = _broadcast(gamma, normalized, 1.0)
    bias = _broadcast(beta, normalized, 0.0)
    if scale is None or bias is None:
        return Decline(
            "LayerNorm pattern, but its scale or bias does not broadcast over the normalized axes"
        )
    attributes = {"axis": axis, "epsilon": epsilon}
    return match("LayerNormalization", "LayerNormalization", attributes, x, nodes, [scale, bias])


def _normalized(core: ir.Node) -> tuple[ir.Value | None, ir.Node | None, list[ir.Node]]:
    """d / std or d * Reciprocal(std): (d, the Sqrt node, the dividing nodes)."""
    if core.op_type == "Div":
        return core.inputs[0], producer(core.inputs[1], "Sqrt"), [core]
    if core.op_type == "Mul" and len(core.inputs) == 2:
        for d, other in ((core.inputs[0], core.inputs[1]), (core.inputs[1], core.inputs[0])):
            reciprocal = producer(other, "Reciprocal")
            if reciprocal is not None:
                return d, producer(reciprocal.inputs[0], "Sqrt"), [core, reciprocal]
    return None, None, []


def _is_square_of(node: ir.Node, d: ir.Value, reader: Reader) -> bool:
    if node.op_type == "Pow":
        return node.inputs[0] is d and reader.scalar(node.inputs[1]) == 2.0
    return len(node.inputs) == 2 and node.inputs[0] is d and node.inputs[1] is d


def _reduce_axes(node: ir.Node, reader: Reader) -> list[int] | None:
    axes = attr_ints(node, "axes")
    if axes is None and input_at(node, 1) is not None:
        array = reader.policy.contents(node.inputs[1])
        axes = None if array is None else [int(a) for a in np.asarray(array).reshape(-1)]
    return sorted(axes) if axes else None


def _trailing_start(axes: list[int], rank: int | None) -> int | None:
    """The first axis when `axes` are the last len(axes) axes (all negative, or with a known rank)."""
    if all(a < 0 for a in axes):
        return axes[0] if axes == list(range(-len(axes), 0)) else None
    if rank is None:
        return None
    positive = sorted(a % rank for a in axes)
    return positive[0] if positive == list(range(rank - len(axes), rank)) else None


def _normalized_shape(
    x: ir.Value, count: int, gamma: np.ndarray | None, beta: np.ndarray | None
) -> tuple[int, ...] | None:
    if x.shape is not None and all(isinstance(d, int) for d in x.shape[-count:]):
        return tuple(int(d) for d in x.shape[-count:])  # type: ignore[arg-type]
    for constant in (gamma, beta):
        if constant is not None and constant.ndim >= count:
            trailing = constant.shape[constant.ndim - count :]
            if all(d > 1 for d in trailing) and all(d == 1 for d in constant.shape[:-count]):
                return tuple(trailing)
    return None


def _broadcast(array: np.ndarray | None, shape: tuple[int, ...], fill: float) -> np.ndarray | None:
    if array is None:
        return np.full(shape, fill)
    leading = array.shape[: max(0, array.ndim - len(shape))]
    if any(d != 1 for d in leading):
        return None  # it varies along an axis that is not normalized
    squeezed = array.reshape(array.shape[len(leading) :])
    try:
        return np.broadcast_to(squeezed, shape).copy()
    except ValueError:
        return None


# --- GroupNormalization -------------------------------------------------------------------------


def _group_norm(
    back: ir.Node,
    gamma: np.ndarray | None,
    beta: np.ndarray | None,
    peeled: list[ir.Node],
    reader: Reader,
) -> Match | Decline | None:
    """Reshape(x, [0 | N, G, -1 | K]) -> InstanceNormalization -> Reshape back to x's shape
    (through Shape(x), or a constant that restores it), then the per-channel affine. Once that
    chain of three is found, whatever keeps it from fusing is a decline with its reason."""
    norm = producer(back.inputs[0], "InstanceNormalization")
    front = producer(norm.inputs[0], "Reshape") if norm is not None else None
    if norm is None or front is None or len(norm.inputs) != 3:
        return None
    x = front.inputs[0]
    if x is None or back.inputs[1] is None:
        return None
    if _peeled_from_outside(peeled[0] if peeled else back, reader):
        return None  # the Mul / Add after it is the form's root: reported from there, once
    what = "GroupNorm pattern (Reshape, InstanceNormalization, Reshape)"
    shape_of = producer(back.inputs[1], "Shape")
    if shape_of is not None and shape_of.inputs[0] is not x:
        return Decline(
            f"{what}, but the Reshape back reads the shape of another value than its input"
        )
    if shape_of is not None and len(shape_of.attributes):
        return Decline(
            f"{what}, but the Reshape back reads a slice of Shape (start / end) of its input"
        )
    if shape_of is None and not _restores_shape_of(back, x, reader):
        return Decline(f"{what}, but the Reshape back does not restore its input's shape")
    scale = reader.policy.array(norm.inputs[1])
    shift = reader.policy.array(norm.inputs[2])
    target = reader.policy.array(front.inputs[1])
    if isinstance(scale, Decline) or isinstance(shift, Decline):
        why = scale if isinstance(scale, Decline) else shift
        return Decline(f"{what}, but the InstanceNormalization's scale or bias: {why}")
    if isinstance(target, Decline):
        return Decline(f"{what}, but the first Reshape's target: {target}")
    groups = int(scale.size)
    wanted = [int(t) for t in np.asarray(target).reshape(-1)]
    nodes = [*peeled, back, *([shape_of] if shape_of is not None else []), norm, front]
    why_groups = _groups_reason(wanted, groups, x, attr_int(front, "allowzero", 0))
    if why_groups is not None:
        return why_groups.prefixed(f"{what}, but ")
    if not (np.all(scale == 1) and np.all(shift == 0)):
        return Decline(f"{what}, but its InstanceNormalization has a scale or bias of its own")
    if x.shape is None or len(x.shape) < 2 or not isinstance(x.shape[1], int):
        known = "unknown" if x.shape is None else f"{len(x.shape)}"
        return Decline(
            f"{what}, but the rank ({known}) or the channel count of its input is unknown"
        )
    channels, rank = int(x.shape[1]), len(x.shape)
    if rank == 2:  # measured: see the module docstring
        return Decline(
            f"{what} over (N, C) features: ONNX Runtime's GroupNormalization is far less "
            "accurate than this chain on a few values per group, left decomposed"
        )
    if channels % groups:
        return Decline(f"{what}, but its {channels} channels do not split into {groups} groups")
    per_channel = [_per_channel(a, channels, rank, fill) for a, fill in ((gamma, 1.0), (beta, 0.0))]
    if per_channel[0] is None or per_channel[1] is None:
        return Decline(f"{what}, but its scale or bias is not one value per channel")
    attributes = {"epsilon": attr_float(norm, "epsilon", 1e-5), "num_groups": groups}
    return match("GroupNormalization", "GroupNormalization", attributes, x, nodes, per_channel)


def _groups_reason(target: list[int], groups: int, x: ir.Value, allowzero: int) -> Decline | None:
    """Why the first Reshape's target is not x as (N, G, -1) (None when it is). Exporters write
    [0, G, -1]; a static export may write the batch N and the group size K as numbers."""
    if len(target) != 3:
        return Decline(f"the first Reshape's target {target} is not (N, groups, -1)")
    batch, middle, rest = target
    dims = list(x.shape) if x.shape is not None else []
    if middle != groups:
        return Decline(
            f"the first Reshape makes {middle} groups, its InstanceNormalization normalizes "
            f"{groups}"
        )
    if batch == 0 and allowzero:
        return Decline("the first Reshape has allowzero=1: its 0 is a dim of size 0, not the batch")
    if batch != 0 and not (dims and isinstance(dims[0], int) and dims[0] == batch):
        first = dims[0] if dims else "unknown"
        return Decline(f"the first Reshape's batch {batch} is not its input's ({first})")
    if rest != -1:
        sizes = [d for d in dims[1:] if isinstance(d, int)]
        size = math.prod(sizes) if len(dims) >= 2 and len(sizes) == len(dims) - 1 else None
        if size is None or size != groups * rest:
            return Decline(
                f"the first Reshape's group size {rest} is not its input's "
                f"{'unknown size' if size is None else f'{size} / {groups}'}"
            )
    return None


def _peeled_from_outside(outer: ir.Node, reader: Reader) -> bool:
    """The only reader of the form's outermost node (the back Reshape, or its scale's Mul) is a
    Mul or Add by a constant that `_peel_affine` takes into the form: the form is recognized (or
    declined) from there, once."""
    allowed = {"Reshape": ("Mul", "Add"), "Mul": ("Add",)}.get(outer.op_type, ())
    value = outer.outputs[0]
    uses = list(value.uses())
    if len(uses) != 1 or value.is_graph_output():
        return False
    consumer = uses[0].node
    if consumer.op_type not in allowed or not is_default_domain(consumer.domain):
        return False
    constant, _ = _constant_operand(consumer, reader)
    return constant is not None


def _restores_shape_of(back: ir.Node, x: ir.Value, reader: Reader) -> bool:
    """The back Reshape's constant target gives x's shape again. It reshapes the (N, G, -1) view of
    x (x's element count, x's dim 0), so each element of the target must be x's static dim at that
    position, or 0 at axis 0 (allowzero = 0: copies N), or the one -1 (inferred: the one dim the
    others leave, which is x's)."""
    array = reader.policy.contents(back.inputs[1])
    if array is None or x.shape is None or array.size != len(x.shape):
        return False
    target = [int(t) for t in np.asarray(array).reshape(-1)]
    if target.count(-1) > 1:
        return False
    copies = attr_int(back, "allowzero", 0) == 0
    for axis, (wanted, dim) in enumerate(zip(target, x.shape, strict=True)):
        if wanted == -1 or (wanted == 0 and axis == 0 and copies):
            continue
        if not isinstance(dim, int) or wanted != dim:
            return False
    return True


def _per_channel(
    array: np.ndarray | None, channels: int, rank: int, fill: float
) -> np.ndarray | None:
    """`array` as (C,) when it broadcasts against (N, C, ...) along axis 1 only."""
    if array is None:
        return np.full(channels, fill)
    if array.ndim > rank - 1:
        if array.ndim > rank or array.shape[0] != 1:
            return None
        array = array.reshape(array.shape[1:])
    expected = (channels,) + (1,) * (rank - 2)
    padded = (1,) * (rank - 1 - array.ndim) + array.shape
    if padded != expected and array.size != 1:
        return None
    return np.broadcast_to(array.reshape(-1), (channels,)).copy()
