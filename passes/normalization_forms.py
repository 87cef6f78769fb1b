"""Normalization layers as exporters decompose them, read back as one ONNX op (see `canonicalize`).

    LayerNormalization (opset 17), normalizing the last k axes of x:
        d = x - ReduceMean(x, axes);  v = ReduceMean(d^2 | d*d, axes)
        n = d / Sqrt(v + eps)  |  d * Reciprocal(Sqrt(v + eps))
        y = n [* gamma] [+ beta]            (gamma, beta constants broadcasting over those axes)

    GroupNormalization (opset 21, per-channel scale and bias), as torch exports nn.GroupNorm:
        r = Reshape(x, [0, G, -1]);  i = InstanceNormalization(r, ones(G), zeros(G), eps)
        y = Reshape(i, Shape(x)) [* gamma] [+ beta]      (gamma, beta of shape (C, 1, ..., 1))

Scale and bias become constant inputs of the fused node, broadcast to the shape the op wants.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from optkit.graph import attr_float, attr_int, attr_ints

from .pattern import DEFAULT_DOMAINS, Match, Reader, match, producer

MIN_OPSET = {"LayerNormalization": 17, "GroupNormalization": 21}


def recognize(node: ir.Node, reader: Reader) -> Match | str | None:
    if node.domain not in DEFAULT_DOMAINS or node.op_type not in ("Add", "Mul", "Div", "Reshape"):
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
    if node.domain not in DEFAULT_DOMAINS or node.op_type not in ("Mul", "Div", "Reshape"):
        return None, None, None, []
    return gamma, beta, node, peeled


def _constant_operand(node: ir.Node, reader: Reader) -> tuple[np.ndarray | None, ir.Value | None]:
    if len(node.inputs) != 2:
        return None, None
    for constant, other in ((node.inputs[1], node.inputs[0]), (node.inputs[0], node.inputs[1])):
        array, _ = reader.policy.array(constant) if constant is not None else (None, "")
        if array is not None and other is not None and reader.policy.array(other)[0] is None:
            return np.asarray(array, dtype=np.float64), other
    return None, None


# --- LayerNormalization -------------------------------------------------------------------------


def _layer_norm(
    core: ir.Node,
    gamma: np.ndarray | None,
    beta: np.ndarray | None,
    peeled: list[ir.Node],
    reader: Reader,
) -> Match | str | None:
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
        return f"LayerNorm pattern over axes {axes}, which are not the last axes of a known rank"
    count = -axis if axis < 0 else rank - axis  # type: ignore[operator]
    normalized = _normalized_shape(x, count, gamma, beta)
    if normalized is None:
        return "LayerNorm pattern, but the normalized shape is unknown (no static dims, no scale)"
    widest = max((c.ndim for c in (gamma, beta) if c is not None), default=0)
    if widest > count and (rank is None or widest > rank):
        return (
            f"LayerNorm pattern, but its scale or bias has rank {widest}, more than the input's "
            f"({'unknown' if rank is None else rank}): the product broadcasts to a higher rank"
        )
    scale = _broadcast(gamma, normalized, 1.0)
    bias = _broadcast(beta, normalized, 0.0)
    if scale is None or bias is None:
        return (
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
    if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        array, _ = reader.policy.array(node.inputs[1])
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
) -> Match | str | None:
    norm = producer(back.inputs[0], "InstanceNormalization")
    front = producer(norm.inputs[0], "Reshape") if norm is not None else None
    if norm is None or front is None or len(norm.inputs) != 3:
        return None
    x = front.inputs[0]
    if x is None or back.inputs[1] is None:
        return None
    shape_of = producer(back.inputs[1], "Shape")
    if shape_of is not None and (shape_of.inputs[0] is not x or len(shape_of.attributes)):
        return None
    if shape_of is None and not _restores_shape_of(back, x, reader):
        return None  # the Reshape back to Shape(x), or that shape folded to a constant
    scale, _ = reader.policy.array(norm.inputs[1])
    shift, _ = reader.policy.array(norm.inputs[2])
    target, _ = reader.policy.array(front.inputs[1])
    if scale is None or shift is None or target is None:
        return None
    groups = int(scale.size)
    if [int(t) for t in np.asarray(target).reshape(-1)] != [0, groups, -1]:
        return None
    nodes = [*peeled, back, *([shape_of] if shape_of is not None else []), norm, front]
    if not (np.all(scale == 1) and np.all(shift == 0)):
        return "GroupNorm pattern, but its InstanceNormalization has a scale or bias of its own"
    if x.shape is None or len(x.shape) < 3 or not isinstance(x.shape[1], int):
        return "GroupNorm pattern, but the rank or channel count of its input is unknown"
    channels, rank = int(x.shape[1]), len(x.shape)
    per_channel = [_per_channel(a, channels, rank, fill) for a, fill in ((gamma, 1.0), (beta, 0.0))]
    if per_channel[0] is None or per_channel[1] is None or channels % groups:
        return "GroupNorm pattern, but its scale or bias is not one value per channel"
    attributes = {"epsilon": attr_float(norm, "epsilon", 1e-5), "num_groups": groups}
    return match("GroupNormalization", "GroupNormalization", attributes, x, nodes, per_channel)


def _restores_shape_of(back: ir.Node, x: ir.Value, reader: Reader) -> bool:
    """The back Reshape's constant target gives x's shape again. It reshapes the (N, G, -1) view of
    x (x's element count, x's dim 0), so each element of the target must be x's static dim at that
    position, or 0 at axis 0 (allowzero = 0: copies N), or the one -1 (inferred: the one dim the
    others leave, which is x's)."""
    array, _ = reader.policy.array(back.inputs[1])
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
