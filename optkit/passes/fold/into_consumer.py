"""BatchNorm before a layer (pre-activation nets), folded into the layer that reads it.

With x' = s x + t per input channel (s, t from `batchnorm_params`):

    Gemm (transA=0):  a x' B + beta C  ->  B'[k, :] = s_k B[k, :] (rows of op(B)),
                                          C' = beta C + a t op(B),  beta' = 1
    MatMul (2-D x):   x' W             ->  Gemm(x, s W, t W)
    Conv:             W * x' + b       ->  W'[o, i] = s_(c(o, i)) W[o, i]  (c: the input channel that
                                          weight slice reads, through the groups), and the shift
                                          term W * t, which is the constant sum_(i,k) W[o,i,k] t_c in
                                          the interior. A pure scale (t = 0) commutes with zero
                                          padding, pad0(s x) = s pad0(x): it folds into the weights
                                          whatever the input's size. With a shift and zero padding
                                          the term is smaller at the borders, and one of two exact
                                          forms is emitted, the one that touches fewer values per
                                          sample: for a static input size, the shift term per output
                                          position (a border correction, one Add on the output when
                                          it is not uniform); or
                   Conv(pad0(s x + t)) = Conv_(W s)(pad0(x + t / s)): the scale into the weights, the
                                          shift kept as one Add on the input (the only form for a
                                          dynamic size, where the border correction, a constant per
                                          output position, cannot be built; taken with a per-channel
                                          scale just before it: a x + t = a (x + t / a)).

Exact in real arithmetic.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import onnx_ir as ir

from optkit.core.graph import (
    attr_float,
    attr_int,
    consumers_reason,
    dims_after_batch,
    node_label,
    replace_nodes,
    sole_consumer,
)
from optkit.passes.fold.affine_map import Affine, is_arithmetic, read_arithmetic
from optkit.passes.fold.conv_geometry import ConvGeometry
from optkit.passes.fold.support import Applied, FoldContext, base_name, copy_attributes, new_node


def fold_into_consumer(affine: Affine, ctx: FoldContext) -> Applied | str:
    """Fold `affine` into the one layer that reads its output, or say why not."""
    layer = sole_consumer(affine.output)
    if layer is None:
        return consumers_reason(affine.output, "its output")
    rule = _CONSUMER_RULES.get(layer.op_type) if layer.domain == "" else None
    if rule is None:
        return f"its output feeds {layer.op_type}, which cannot absorb it"
    if layer.inputs[0] is not affine.output:
        return f"its output is not the data input of {node_label(layer)}"
    if layer.graph is not affine.node.graph:
        return "its consumer is in another graph"
    return rule(affine, layer, ctx)


def _replace(
    affine: Affine, layer: ir.Node, nodes: list[ir.Node], rule: str, ctx: FoldContext
) -> Applied:
    removed = (node_label(affine.node), node_label(layer))
    replace_nodes(
        ctx.graph, [affine.node, layer], nodes, [layer.outputs[0]], [nodes[-1].outputs[0]]
    )
    return Applied(rule, removed, tuple(node_label(n) for n in nodes))


def _gemm(affine: Affine, gemm: ir.Node, ctx: FoldContext) -> Applied | str:
    if attr_int(gemm, "transA", 0):
        return "Gemm has transA=1: the channels would run along the batch"
    b_mat, dtype, why = ctx.weight(gemm.inputs[1], "Gemm B")
    if b_mat is None:
        return why
    if b_mat.ndim != 2:
        return f"Gemm B has rank {b_mat.ndim}"
    trans_b = attr_int(gemm, "transB", 0)
    op_b = b_mat.T if trans_b else b_mat  # (K, M)
    if op_b.shape[0] != affine.channels:
        return f"Gemm reads {op_b.shape[0]} input features, the {affine.what} has {affine.channels}"
    alpha, beta = attr_float(gemm, "alpha", 1.0), attr_float(gemm, "beta", 1.0)
    c_in = gemm.inputs[2] if len(gemm.inputs) > 2 else None
    c_arr: np.ndarray = np.zeros(())
    if c_in is not None:
        c_read, _, why = ctx.weight(c_in, "Gemm C")
        if c_read is None:
            return why
        c_arr = c_read
    new_op_b = op_b * affine.scale[:, None]
    new_c = (beta * c_arr if beta != 0 else 0.0) + alpha * (affine.shift @ op_b)
    b_value = ctx.constant(
        base_name(gemm.inputs[1], "B"), new_op_b.T if trans_b else new_op_b, dtype
    )
    c_value = ctx.constant(base_name(c_in, f"{b_value.name}_C"), np.asarray(new_c), dtype)
    attrs = copy_attributes(gemm, beta=ir.AttrFloat32("beta", 1.0))
    node = new_node("Gemm", [affine.input, b_value, c_value], attrs, gemm.name)
    return _replace(affine, gemm, [node], f"{affine.kind}+gemm", ctx)


def _matmul(affine: Affine, matmul: ir.Node, ctx: FoldContext) -> Applied | str:
    weight, dtype, why = ctx.weight(matmul.inputs[1], "MatMul weight")
    if weight is None:
        return why
    if weight.ndim != 2:
        return f"MatMul weight has rank {weight.ndim}, not 2"
    ctx.ensure_shapes()
    shape = affine.input.shape
    if shape is None or len(shape) != 2:
        what = "unknown" if shape is None else str(len(shape))
        return f"BN input rank is {what}, not 2 (BN's channel axis must be MatMul's feature axis)"
    if weight.shape[0] != affine.channels:
        return f"MatMul reads {weight.shape[0]} input features, the {affine.what} has {affine.channels}"
    w_value = ctx.constant(base_name(matmul.inputs[1], "W"), weight * affine.scale[:, None], dtype)
    c_value = ctx.constant(f"{w_value.name}_bias", affine.shift @ weight, dtype)
    node = new_node("Gemm", [affine.input, w_value, c_value], [], matmul.name)
    return _replace(affine, matmul, [node], f"{affine.kind}+matmul", ctx)


def _conv(affine: Affine, conv: ir.Node, ctx: FoldContext) -> Applied | str:
    weight, dtype, why = ctx.weight(
        conv.inputs[1] if len(conv.inputs) > 1 else None, "Conv weight", min_rank=3
    )
    if weight is None:
        return why
    groups = attr_int(conv, "group", 1)
    c_out, c_in_per_group = weight.shape[0], weight.shape[1]
    if groups * c_in_per_group != affine.channels or c_out % groups:
        return f"Conv reads {groups * c_in_per_group} input channels, the {affine.what} has {affine.channels}"
    bias: np.ndarray = np.zeros(c_out)
    b_in = conv.inputs[2] if len(conv.inputs) > 2 else None
    if b_in is not None:
        b_read, _, why = ctx.weight(b_in, "Conv bias")
        if b_read is None:
            return why
        bias = b_read
    kernel_dims = weight.shape[2:]
    new_w = _scaled_slices(weight, affine.scale, groups)
    # Shift pushed through the weights, per output channel and kernel offset: (c_out, K).
    shift = _per_slice(affine.shift, weight.shape, groups)
    shift_by_offset = np.einsum("oik,oi->ok", weight.reshape(c_out, c_in_per_group, -1), shift)
    geometry = ConvGeometry.of(conv, tuple(int(k) for k in kernel_dims))
    malformed = geometry.problem()
    if malformed:
        return malformed
    if affine.shift_image is None and (not geometry.has_padding() or not np.any(affine.shift)):
        # No padding: the shift term is uniform. A pure scale commutes with zero padding
        # (pad0(s x) = s pad0(x)), so it folds whatever the input's size (a static one or not).
        shifted = bool(np.any(affine.shift))
        new_b = bias + shift_by_offset.sum(axis=1) if shifted or b_in is not None else None
        node = _conv_node(conv, affine.input, new_w, new_b, dtype, ctx)
        return _replace(affine, conv, [node], f"{affine.kind}+conv", ctx)
    ctx.ensure_shapes()
    spatial = _static_spatial(affine.input, len(kernel_dims))
    if spatial is None:
        dynamic = (
            "Conv pads its input and the input's spatial shape is not static: the shift is not "
            "uniform at the borders, and a border correction needs a static size"
        )
        moved = _shift_onto_input(affine, conv, weight, bias, dtype, ctx, dynamic, border=False)
        return dynamic if moved is None else moved
    mask, out_spatial = geometry.valid_mask(spatial)
    if min(out_spatial) < 1:
        return f"the Conv's output would be {out_spatial} for a {spatial} input"
    correction = shift_by_offset @ mask.T + bias[:, None]  # (c_out, positions)
    if affine.shift_image is not None:  # a mean image: its own Conv, per output position
        if affine.shift_image.shape[1:] != spatial:
            return f"the shift image is {affine.shift_image.shape}, the Conv input {spatial}"
        correction = correction + geometry.convolve(weight, affine.shift_image, groups)[0]
    if np.all(correction == correction[:, :1]):
        node = _conv_node(conv, affine.input, new_w, correction[:, 0], dtype, ctx)
        return _replace(affine, conv, [node], f"{affine.kind}+conv", ctx)
    on_input, on_output = affine.channels * math.prod(spatial), c_out * math.prod(out_spatial)
    if on_input < on_output:
        cost = (
            f"an Add over its {on_input} input values per sample costs less than the "
            f"border correction over the Conv's {on_output} outputs"
        )
        moved = _shift_onto_input(affine, conv, weight, bias, dtype, ctx, cost, border=True)
        if moved is not None:
            return moved
    conv_node = _conv_node(conv, affine.input, new_w, None, dtype, ctx)
    new_weight = conv_node.inputs[1]
    assert new_weight is not None  # made by _conv_node
    border = ctx.constant(
        f"{new_weight.name}_border", correction.reshape(1, c_out, *out_spatial), dtype
    )
    conv_node.outputs[0].name = ctx.namer.fresh(f"{conv.outputs[0].name}_unshifted")
    add = new_node(
        "Add", [conv_node.outputs[0], border], [], ctx.namer.fresh(f"{conv.name or 'conv'}_border")
    )
    return _replace(affine, conv, [conv_node, add], f"{affine.kind}+conv(border)", ctx)


def _conv_node(
    conv: ir.Node,
    data: ir.Value,
    weight: np.ndarray,
    bias: np.ndarray | None,
    dtype: ir.DataType,
    ctx: FoldContext,
) -> ir.Node:
    """`conv` reading `data` with new weights (and a new bias, or none)."""
    w_value = ctx.constant(base_name(conv.inputs[1], "W"), weight, dtype)
    inputs = [data, w_value]
    if bias is not None:
        b_in = conv.inputs[2] if len(conv.inputs) > 2 else None
        inputs.append(ctx.constant(base_name(b_in, f"{w_value.name}_bias"), bias, dtype))
    return new_node("Conv", inputs, copy_attributes(conv), conv.name)


def _per_slice(vector: np.ndarray, weight_shape: tuple[int, ...], groups: int) -> np.ndarray:
    """v_(c(o, i)), shape (C_out, C_in / groups): the per-input-channel `vector` as seen by each
    weight slice (o, i), c(o, i) being the input channel it reads through the groups."""
    c_out, c_in_per_group = weight_shape[0], weight_shape[1]
    group_of_out = np.arange(c_out) // (c_out // groups)
    return vector.reshape(groups, c_in_per_group)[group_of_out]


def _scaled_slices(weight: np.ndarray, scale: np.ndarray, groups: int) -> np.ndarray:
    """W[o, i] * s_(c(o, i)): each weight slice times the scale of the input channel it reads."""
    per_slice = _per_slice(scale, weight.shape, groups)
    return weight * per_slice.reshape(*per_slice.shape, *([1] * (weight.ndim - 2)))


def _shift_onto_input(
    affine: Affine,
    conv: ir.Node,
    weight: np.ndarray,
    bias: np.ndarray,
    dtype: ir.DataType,
    ctx: FoldContext,
    cost: str,
    *,
    border: bool,
) -> Applied | str | None:
    """Zero padding commutes with a scale, not with a shift: Conv(pad0(s x + t)) equals
    Conv_(W s)(pad0(x + t / s)). The scale folds into the weights and the shift stays on the input
    as one Add, where that costs less than the border correction. A pure shift (s = 1) right after
    a per-channel scale a is taken together with it: a x + t = a (x + t / a). None where a scale
    is zero, or where t / s reaches 1/16 of the dtype's largest value (x + t / s could overflow
    where s x + t does not: fp16 with s = 1e-3, t = 50 adds 50000 to x), when the border
    correction (`border`) can fold it instead; otherwise those are declines with the reason."""
    nodes, x, scale = [affine.node], affine.input, affine.scale
    if np.all(scale == 1):
        before = _scale_before(affine, ctx)
        if before is None:
            return f"the shift stays: {cost}"
        nodes, x, scale = [before.node, affine.node], before.input, before.scale
    if np.any(scale == 0):
        return None
    spatial_ones = [1] * (weight.ndim - 2)
    shift = affine.shift.reshape(-1, *spatial_ones)
    if affine.shift_image is not None:
        shift = shift + affine.shift_image
    moved = shift / scale.reshape(-1, *spatial_ones)
    largest = float(ml_dtypes.finfo(dtype.numpy()).max)
    if float(np.max(np.abs(moved))) > largest / 16:
        if border:
            return None
        return (
            f"{cost}; and moving the shift onto the input would add t / s up to "
            f"{float(np.max(np.abs(moved))):.6g} to it, beyond 1/16 of {dtype.name}'s largest "
            f"value {largest:.6g}: x + t / s could overflow where s x + t does not"
        )
    shift_value = ctx.constant(f"{affine.node.name or 'input'}_shift", moved[None], dtype)
    add = new_node("Add", [x, shift_value], [], ctx.namer.fresh(affine.node.name or "shift"))
    add.outputs[0].name = ctx.namer.fresh(f"{x.name}_shifted")
    node = _conv_node(conv, add.outputs[0], _scaled_slices(weight, scale, attr_int(conv, "group", 1)),
                      bias, dtype, ctx)  # fmt: skip
    removed = tuple(node_label(n) for n in (*nodes, conv))
    replace_nodes(ctx.graph, [*nodes, conv], [add, node], [conv.outputs[0]], [node.outputs[0]])
    return Applied(
        f"{affine.kind}+conv(shift on input)", removed, (node_label(add), node_label(node))
    )


def _scale_before(affine: Affine, ctx: FoldContext) -> Affine | None:
    """The per-channel Mul / Div by a constant that computes the input of `affine`, read only by it."""
    producer = affine.input.producer()
    if (
        producer is None
        or producer.graph is not affine.node.graph
        or not is_arithmetic(producer)
        or id(producer) in ctx.keep
        or sole_consumer(affine.input) is not affine.node
    ):
        return None
    before, _ = read_arithmetic(producer, ctx.policy)
    if (
        before is None
        or before.shift_image is not None
        or np.any(before.shift != 0)
        or before.channels != affine.channels
    ):
        return None
    return before


def _static_spatial(value: ir.Value, rank: int) -> tuple[int, ...] | None:
    shape = value.shape
    if shape is None or len(shape) != rank + 2:
        return None
    dims = [d for d in list(shape)[2:] if isinstance(d, int)]
    return tuple(dims) if len(dims) == rank else None


def _flatten(affine: Affine, flatten: ir.Node, ctx: FoldContext) -> Applied | str:
    """Move the map past a Flatten(axis=1) that feeds a Gemm or MatMul, as a per-feature Mul / Add
    (s and t repeated over the positions of each channel, a shift image flattened), which the next
    sweep folds into that layer."""
    if attr_int(flatten, "axis", 1) != 1:
        return "the Flatten after it does not flatten from axis 1"
    reader = sole_consumer(flatten.outputs[0])
    if (
        reader is None
        or reader.domain != ""
        or reader.op_type not in ("Gemm", "MatMul")
        or reader.inputs[0] is not flatten.outputs[0]
        or (reader.op_type == "Gemm" and attr_int(reader, "transA", 0))
    ):
        return "the Flatten after it does not feed exactly one Gemm or MatMul"
    weight, dtype, why = ctx.weight(reader.inputs[1], f"{reader.op_type} weight")
    if weight is None:
        return why
    ctx.ensure_shapes()
    dims = dims_after_batch(affine.input.shape)
    if dims is None:
        return "the input's shape is not static, so its flattened features are unknown"
    positions = math.prod(dims[1:])
    scale = np.repeat(affine.scale, positions)
    shift = np.repeat(affine.shift, positions)
    if affine.shift_image is not None:
        shift = shift + affine.shift_image.reshape(-1)
    nodes = [new_node("Flatten", [affine.input], copy_attributes(flatten), flatten.name)]
    for op, constant, needed in (("Mul", scale, np.any(scale != 1)), ("Add", shift, np.any(shift))):
        if needed:
            nodes[-1].outputs[0].name = ctx.namer.fresh(f"{flatten.outputs[0].name}_{op.lower()}")
            nodes[-1].outputs[0].type = flatten.outputs[0].type
            value = ctx.constant(f"{flatten.name or 'flatten'}_{op.lower()}", constant, dtype)
            nodes.append(
                new_node(op, [nodes[-1].outputs[0], value], [], ctx.namer.fresh(op.lower()))
            )
    removed = (node_label(affine.node), node_label(flatten))
    replace_nodes(
        ctx.graph, [affine.node, flatten], nodes, [flatten.outputs[0]], [nodes[-1].outputs[0]]
    )
    return Applied(f"{affine.kind}+flatten", removed, tuple(node_label(n) for n in nodes))


_CONSUMER_RULES = {"Gemm": _gemm, "MatMul": _matmul, "Conv": _conv, "Flatten": _flatten}
