"""BatchNorm before a layer (pre-activation nets), folded into the layer that reads it.

With x' = s x + t per input channel (s, t from `affine_map`):

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

from optkit.core.contract import Decline
from optkit.core.graph import (
    attr_int,
    consumers_reason,
    dims_after_batch,
    input_at,
    is_default_domain,
    node_label,
    replace_nodes,
    sole_consumer,
)
from optkit.passes.fold.affine_map import Affine, is_arithmetic, read_arithmetic
from optkit.passes.fold.conv_geometry import ConvGeometry
from optkit.passes.fold.readers import (
    GemmAttributes,
    gemm_b,
    gemm_c,
    layer_weight,
    matmul_weight,
    optional_bias,
)
from optkit.passes.fold.support import (
    Applied,
    FoldContext,
    Folded,
    Plan,
    all_folded,
    base_name,
    copy_attributes,
    folded,
    new_node,
)


def fold_into_consumer(affine: Affine, ctx: FoldContext) -> Plan | Decline:
    """Plan folding `affine` into the one layer that reads its output, or say why not."""
    layer = sole_consumer(affine.output)
    if layer is None:
        return consumers_reason(affine.output, "its output")
    rule = _CONSUMER_RULES.get(layer.op_type) if is_default_domain(layer.domain) else None
    if rule is None:
        return Decline(f"its output feeds {layer.op_type}, which cannot absorb it")
    if layer.inputs[0] is not affine.output:
        return Decline(f"its output is not the data input of {node_label(layer)}")
    if layer.graph is not affine.node.graph:
        return Decline("its consumer is in another graph")
    return rule(affine, layer, ctx)


def _replace(
    affine: Affine, layer: ir.Node, nodes: list[ir.Node], rule: str, ctx: FoldContext
) -> Applied:
    removed = (node_label(affine.node), node_label(layer))
    replace_nodes(
        ctx.graph, [affine.node, layer], nodes, [layer.outputs[0]], [nodes[-1].outputs[0]]
    )
    return Applied(rule, removed, tuple(node_label(n) for n in nodes))


def _gemm(affine: Affine, gemm: ir.Node, ctx: FoldContext) -> Plan | Decline:
    attrs = GemmAttributes.of(gemm)
    if attrs.trans_a:
        return Decline("Gemm has transA=1: the channels would run along the batch")
    b_mat = gemm_b(ctx.policy, gemm)
    if isinstance(b_mat, Decline):
        return b_mat
    op_b = b_mat.wide.T if attrs.trans_b else b_mat.wide  # (K, M)
    if op_b.shape[0] != affine.channels:
        return Decline(
            f"Gemm reads {op_b.shape[0]} input features, the {affine.what} has {affine.channels}"
        )
    c_arr = gemm_c(ctx.policy, gemm)
    if isinstance(c_arr, Decline):
        return c_arr
    new_op_b = op_b * affine.scale[:, None]
    new_c = (attrs.beta * c_arr if attrs.beta != 0 else 0.0) + attrs.alpha * (affine.shift @ op_b)
    made = all_folded(
        folded(new_op_b.T if attrs.trans_b else new_op_b, b_mat.dtype),
        folded(np.asarray(new_c), b_mat.dtype),
    )
    if isinstance(made, Decline):
        return made
    b_new, c_new = made
    rule = f"{affine.kind}+gemm"

    def apply() -> Applied:
        b_value = ctx.register(base_name(input_at(gemm, 1), "B"), b_new)
        c_value = ctx.register(base_name(input_at(gemm, 2), f"{b_value.name}_C"), c_new)
        new_attrs = copy_attributes(gemm, beta=ir.AttrFloat32("beta", 1.0))
        node = new_node("Gemm", [affine.input, b_value, c_value], new_attrs, gemm.name)
        return _replace(affine, gemm, [node], rule, ctx)

    return Plan(rule, apply)


def _matmul(affine: Affine, matmul: ir.Node, ctx: FoldContext) -> Plan | Decline:
    weight = matmul_weight(ctx.policy, matmul)
    if isinstance(weight, Decline):
        return weight
    ctx.ensure_shapes()
    shape = affine.input.shape
    if shape is None or len(shape) != 2:
        what = "unknown" if shape is None else str(len(shape))
        return Decline(
            f"BN input rank is {what}, not 2 (BN's channel axis must be MatMul's feature axis)"
        )
    if weight.shape[0] != affine.channels:
        return Decline(
            f"MatMul reads {weight.shape[0]} input features, the {affine.what} has {affine.channels}"
        )
    wide = weight.wide
    made = all_folded(
        folded(wide * affine.scale[:, None], weight.dtype),
        folded(affine.shift @ wide, weight.dtype),
    )
    if isinstance(made, Decline):
        return made
    w_new, c_new = made
    rule = f"{affine.kind}+matmul"

    def apply() -> Applied:
        w_value = ctx.register(base_name(input_at(matmul, 1), "W"), w_new)
        c_value = ctx.register(f"{w_value.name}_bias", c_new)
        node = new_node("Gemm", [affine.input, w_value, c_value], [], matmul.name)
        return _replace(affine, matmul, [node], rule, ctx)

    return Plan(rule, apply)


def _conv(affine: Affine, conv: ir.Node, ctx: FoldContext) -> Plan | Decline:
    stored = layer_weight(ctx.policy, conv, min_rank=3)
    if isinstance(stored, Decline):
        return stored
    weight, dtype = stored.wide, stored.dtype
    groups = attr_int(conv, "group", 1)
    c_out, c_in_per_group = weight.shape[0], weight.shape[1]
    if groups * c_in_per_group != affine.channels or c_out % groups:
        return Decline(
            f"Conv reads {groups * c_in_per_group} input channels, the {affine.what} has "
            f"{affine.channels}"
        )
    b_read = optional_bias(ctx.policy, conv, 2)
    if isinstance(b_read, Decline):
        return b_read
    bias = np.zeros(c_out) if b_read is None else b_read
    kernel_dims = weight.shape[2:]
    new_w = _scaled_slices(weight, affine.scale, groups)
    # Shift pushed through the weights, per output channel and kernel offset: (c_out, K).
    shift = _per_slice(affine.shift, weight.shape, groups)
    shift_by_offset = np.einsum("oik,oi->ok", weight.reshape(c_out, c_in_per_group, -1), shift)
    geometry = ConvGeometry.of(conv, tuple(int(k) for k in kernel_dims))
    malformed = geometry.problem()
    if malformed is not None:
        return malformed
    rule = f"{affine.kind}+conv"
    if affine.shift_image is None and (not geometry.has_padding() or not np.any(affine.shift)):
        # No padding: the shift term is uniform. A pure scale commutes with zero padding
        # (pad0(s x) = s pad0(x)), so it folds whatever the input's size (a static one or not).
        shifted = bool(np.any(affine.shift))
        new_b = bias + shift_by_offset.sum(axis=1) if shifted or b_read is not None else None
        return _plan_conv(affine, conv, new_w, new_b, dtype, ctx, rule)
    ctx.ensure_shapes()
    spatial = _static_spatial(affine.input, len(kernel_dims))
    if spatial is None:
        dynamic = (
            "Conv pads its input and the input's spatial shape is not static: the shift is not "
            "uniform at the borders, and a border correction needs a static size"
        )
        moved = _shift_onto_input(affine, conv, weight, bias, dtype, ctx, dynamic, border=False)
        return Decline(dynamic) if moved is None else moved
    mask, out_spatial = geometry.valid_mask(spatial)
    if min(out_spatial) < 1:
        return Decline(f"the Conv's output would be {out_spatial} for a {spatial} input")
    correction = shift_by_offset @ mask.T + bias[:, None]  # (c_out, positions)
    if affine.shift_image is not None:  # a mean image: its own Conv, per output position
        if affine.shift_image.shape[1:] != spatial:
            return Decline(
                f"the shift image is {affine.shift_image.shape}, the Conv input {spatial}"
            )
        correction = correction + geometry.convolve(weight, affine.shift_image, groups)[0]
    if np.all(correction == correction[:, :1]):
        return _plan_conv(affine, conv, new_w, correction[:, 0], dtype, ctx, rule)
    on_input, on_output = affine.channels * math.prod(spatial), c_out * math.prod(out_spatial)
    if on_input < on_output:
        cost = (
            f"an Add over its {on_input} input values per sample costs less than the "
            f"border correction over the Conv's {on_output} outputs"
        )
        moved = _shift_onto_input(affine, conv, weight, bias, dtype, ctx, cost, border=True)
        if moved is not None:
            return moved
    border = correction.reshape(1, c_out, *out_spatial)
    return _plan_border(affine, conv, new_w, border, dtype, ctx, f"{rule}(border)")


def _plan_conv(
    affine: Affine,
    conv: ir.Node,
    new_w: np.ndarray,
    new_b: np.ndarray | None,
    dtype: ir.DataType,
    ctx: FoldContext,
    rule: str,
) -> Plan | Decline:
    """The Conv reading the map's input with weights `new_w` and bias `new_b` (or none)."""
    made = all_folded(folded(new_w, dtype), *([] if new_b is None else [folded(new_b, dtype)]))
    if isinstance(made, Decline):
        return made
    w_new, b_new = made[0], (made[1] if new_b is not None else None)

    def apply() -> Applied:
        node = _conv_node(conv, affine.input, w_new, b_new, ctx)
        return _replace(affine, conv, [node], rule, ctx)

    return Plan(rule, apply)


def _plan_border(
    affine: Affine,
    conv: ir.Node,
    new_w: np.ndarray,
    border: np.ndarray,
    dtype: ir.DataType,
    ctx: FoldContext,
    rule: str,
) -> Plan | Decline:
    """The Conv with weights `new_w` and no bias, then one Add of the per-position `border`."""
    made = all_folded(folded(new_w, dtype), folded(border, dtype))
    if isinstance(made, Decline):
        return made
    w_new, border_new = made

    def apply() -> Applied:
        conv_node = _conv_node(conv, affine.input, w_new, None, ctx)
        new_weight = conv_node.inputs[1]
        assert new_weight is not None  # made by _conv_node
        border_value = ctx.register(f"{new_weight.name}_border", border_new)
        conv_node.outputs[0].name = ctx.namer.fresh(f"{conv.outputs[0].name}_unshifted")
        add_name = ctx.namer.fresh(f"{conv.name or 'conv'}_border")
        add = new_node("Add", [conv_node.outputs[0], border_value], [], add_name)
        return _replace(affine, conv, [conv_node, add], rule, ctx)

    return Plan(rule, apply)


def _conv_node(
    conv: ir.Node, data: ir.Value, weight: Folded, bias: Folded | None, ctx: FoldContext
) -> ir.Node:
    """`conv` reading `data` with a plan's new weights (and a new bias, or none): at apply time."""
    w_value = ctx.register(base_name(input_at(conv, 1), "W"), weight)
    inputs = [data, w_value]
    if bias is not None:
        inputs.append(ctx.register(base_name(input_at(conv, 2), f"{w_value.name}_bias"), bias))
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
) -> Plan | Decline | None:
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
            return Decline(f"the shift stays: {cost}")
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
        return Decline(
            f"{cost}; and moving the shift onto the input would add t / s up to "
            f"{float(np.max(np.abs(moved))):.6g} to it, beyond 1/16 of {dtype.name}'s largest "
            f"value {largest:.6g}: x + t / s could overflow where s x + t does not"
        )
    new_w = _scaled_slices(weight, scale, attr_int(conv, "group", 1))
    made = all_folded(folded(moved[None], dtype), folded(new_w, dtype), folded(bias, dtype))
    if isinstance(made, Decline):
        return made
    shift_new, w_new, b_new = made
    rule = f"{affine.kind}+conv(shift on input)"

    def apply() -> Applied:
        shift_value = ctx.register(f"{affine.node.name or 'input'}_shift", shift_new)
        add = new_node("Add", [x, shift_value], [], ctx.namer.fresh(affine.node.name or "shift"))
        add.outputs[0].name = ctx.namer.fresh(f"{x.name}_shifted")
        node = _conv_node(conv, add.outputs[0], w_new, b_new, ctx)
        removed = tuple(node_label(n) for n in (*nodes, conv))
        replace_nodes(ctx.graph, [*nodes, conv], [add, node], [conv.outputs[0]], [node.outputs[0]])
        return Applied(rule, removed, (node_label(add), node_label(node)))

    return Plan(rule, apply)


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
    before = read_arithmetic(producer, ctx.policy)
    if (
        not isinstance(before, Affine)
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


def _flatten(affine: Affine, flatten: ir.Node, ctx: FoldContext) -> Plan | Decline:
    """Move the map past a Flatten(axis=1) that feeds a Gemm or MatMul, as a per-feature Mul / Add
    (s and t repeated over the positions of each channel, a shift image flattened), which the next
    sweep folds into that layer."""
    if attr_int(flatten, "axis", 1) != 1:
        return Decline("the Flatten after it does not flatten from axis 1")
    reader = sole_consumer(flatten.outputs[0])
    if (
        reader is None
        or not is_default_domain(reader.domain)
        or reader.op_type not in ("Gemm", "MatMul")
        or reader.inputs[0] is not flatten.outputs[0]
        or (reader.op_type == "Gemm" and attr_int(reader, "transA", 0))
    ):
        return Decline("the Flatten after it does not feed exactly one Gemm or MatMul")
    weight = layer_weight(ctx.policy, reader)
    if isinstance(weight, Decline):
        return weight
    ctx.ensure_shapes()
    dims = dims_after_batch(affine.input.shape)
    if dims is None:
        return Decline("the input's shape is not static, so its flattened features are unknown")
    positions = math.prod(dims[1:])
    scale = np.repeat(affine.scale, positions)
    shift = np.repeat(affine.shift, positions)
    if affine.shift_image is not None:
        shift = shift + affine.shift_image.reshape(-1)
    ops = [(op, c) for op, c, needed in (("Mul", scale, np.any(scale != 1)),
                                         ("Add", shift, np.any(shift))) if needed]  # fmt: skip
    made = all_folded(*(folded(constant, weight.dtype) for _, constant in ops))
    if isinstance(made, Decline):
        return made
    rule = f"{affine.kind}+flatten"

    def apply() -> Applied:
        nodes = [new_node("Flatten", [affine.input], copy_attributes(flatten), flatten.name)]
        for (op, _), constant in zip(ops, made, strict=True):
            nodes[-1].outputs[0].name = ctx.namer.fresh(f"{flatten.outputs[0].name}_{op.lower()}")
            nodes[-1].outputs[0].type = flatten.outputs[0].type
            value = ctx.register(f"{flatten.name or 'flatten'}_{op.lower()}", constant)
            nodes.append(
                new_node(op, [nodes[-1].outputs[0], value], [], ctx.namer.fresh(op.lower()))
            )
        return _replace(affine, flatten, nodes, rule, ctx)

    return Plan(rule, apply)


_CONSUMER_RULES = {"Gemm": _gemm, "MatMul": _matmul, "Conv": _conv, "Flatten": _flatten}
