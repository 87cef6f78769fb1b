"""BatchNorm after a layer, folded into that layer's weights (s, t from `affine_map`).

    Conv:           y = W * x + b            ->  W'[o]      = s_o W[o],           b' = s b + t
    ConvTranspose:  W (C_in, C_out/g, k...)  ->  W'[i, j]   = s_(g(i) C_out/g + j) W[i, j],  b' = s b + t
    Gemm:           y = a A B + beta C       ->  B'[:, j]   = s_j B[:, j] (columns of op(B)),
                                                 C' = beta s C + t,  beta' = 1
    MatMul (2-D):   y = X W                  ->  Gemm(X, W s, t)
    MatMul + Add:   y = X W + c              ->  Gemm(X, W s, s c + t)

Exact in real arithmetic. BN normalizes axis 1, so the layer's channel axis must be axis 1 of its
output: MatMul folds only when its output is known to be 2-D.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from optkit.core.contract import Decline
from optkit.core.graph import (
    attr_int,
    consumers_reason,
    input_at,
    is_default_domain,
    node_label,
    replace_nodes,
    sole_consumer,
)
from optkit.passes.fold.affine_map import Affine, along
from optkit.passes.fold.readers import (
    GemmAttributes,
    Weight,
    channel_bias,
    float_operand,
    gemm_b,
    gemm_c,
    layer_weight,
    matmul_weight,
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
    folded_scaled,
    new_node,
)


def fold_into_producer(affine: Affine, ctx: FoldContext) -> Plan | Decline:
    """Plan folding `affine` into the layer that produces its input, or say why not."""
    if affine.shift_image is not None:
        return Decline("a per-position shift gains nothing folded into the layer before it")
    layer = affine.input.producer()
    if layer is None:
        return Decline("its input is not produced by a layer (graph input or initializer)")
    if not is_default_domain(layer.domain):
        return Decline(f"its input comes from {layer.domain}::{layer.op_type}")
    rule = _PRODUCER_RULES.get(layer.op_type)
    if rule is None:
        return Decline(f"its input comes from {layer.op_type}, which cannot absorb it")
    if sole_consumer(affine.input) is not affine.node:
        return consumers_reason(affine.input, f"{layer.op_type} output")
    return rule(affine, layer, ctx)


def _plan(
    affine: Affine,
    old: list[ir.Node],
    rule: str,
    ctx: FoldContext,
    op_type: str,
    inputs: list[ir.Value | None],
    constants: list[tuple[Base, Folded]],
    attributes: list[ir.Attr],
) -> Plan:
    """Replace `old` and the map by one `op_type` node (named as `old[0]`) reading `inputs` and
    then the planned `constants`, registered in order; a constant's base name may be made from
    the name the one before it got."""

    def apply() -> Applied:
        values: list[ir.Value] = []
        for base, constant in constants:
            name = base if isinstance(base, str) else base(str(values[-1].name))
            values.append(ctx.register(name, constant))
        node = new_node(op_type, [*inputs, *values], attributes, old[0].name)
        removed = tuple(node_label(n) for n in [*old, affine.node])
        replace_nodes(ctx.graph, [*old, affine.node], [node], [affine.output], [node.outputs[0]])
        return Applied(rule, removed, (node_label(node),))

    return Plan(rule, apply)


Base = str | Callable[[str], str]  # a base name, or one made from the previous constant's name


def _name_after(value: ir.Value | None, suffix: str) -> Base:
    """The base name of a layer's new bias: its old one's (`base_name`), or, where it had none,
    that of the weight made just before it with `suffix`."""
    if value is not None and value.name:
        return base_name(value, "")
    return lambda weight: base_name(None, weight + suffix)


def _conv(affine: Affine, conv: ir.Node, ctx: FoldContext) -> Plan | Decline:
    weight = layer_weight(ctx.policy, conv, min_rank=3)
    if isinstance(weight, Decline):
        return weight
    if weight.shape[0] != affine.channels:
        return Decline(
            f"Conv has {weight.shape[0]} output channels, the {affine.what} has {affine.channels}"
        )
    bias = channel_bias(ctx.policy, conv, 2, affine.channels)
    if isinstance(bias, Decline):
        return bias
    factor = along(affine.scale, 0, weight.ndim)
    new_b = bias * affine.scale + affine.shift
    rule = f"conv+{affine.kind}"
    return _conv_like(affine, conv, weight, weight.array, factor, new_b, ctx, rule)


def _conv_transpose(affine: Affine, conv: ir.Node, ctx: FoldContext) -> Plan | Decline:
    weight = layer_weight(ctx.policy, conv, min_rank=3)
    if isinstance(weight, Decline):
        return weight
    groups = attr_int(conv, "group", 1)
    c_in, c_out_per_group = weight.shape[0], weight.shape[1]
    if groups * c_out_per_group != affine.channels or c_in % groups:
        channels = groups * c_out_per_group
        return Decline(
            f"ConvTranspose has {channels} output channels, the {affine.what} has {affine.channels}"
        )
    bias = channel_bias(ctx.policy, conv, 2, affine.channels)
    if isinstance(bias, Decline):
        return bias
    grouped = weight.array.reshape(groups, c_in // groups, c_out_per_group, *weight.shape[2:])
    scale = affine.scale.reshape(groups, 1, c_out_per_group, *([1] * (weight.ndim - 2)))
    new_b = bias * affine.scale + affine.shift
    rule = f"convtranspose+{affine.kind}"
    return _conv_like(affine, conv, weight, grouped, scale, new_b, ctx, rule)


def _conv_like(
    affine: Affine,
    conv: ir.Node,
    weight: Weight,
    view: np.ndarray,
    factor: np.ndarray,
    new_b: np.ndarray,
    ctx: FoldContext,
    rule: str,
) -> Plan | Decline:
    """The layer with weight `view * factor` (in float64, rounded once, in the weight's shape) and
    bias `new_b`."""
    made = all_folded(
        folded_scaled(view, factor, weight.dtype, weight.shape), folded(new_b, weight.dtype)
    )
    if isinstance(made, Decline):
        return made
    names = [base_name(input_at(conv, 1), "W"), _name_after(input_at(conv, 2), "_bias")]
    constants = list(zip(names, made, strict=True))
    attrs = copy_attributes(conv)
    return _plan(affine, [conv], rule, ctx, conv.op_type, [conv.inputs[0]], constants, attrs)


def _gemm(affine: Affine, gemm: ir.Node, ctx: FoldContext) -> Plan | Decline:
    b_mat = gemm_b(ctx.policy, gemm)
    if isinstance(b_mat, Decline):
        return b_mat
    attrs = GemmAttributes.of(gemm)
    columns = b_mat.shape[0] if attrs.trans_b else b_mat.shape[1]
    if columns != affine.channels:
        return Decline(
            f"Gemm has {columns} output features, the {affine.what} has {affine.channels}"
        )
    c_arr = gemm_c(ctx.policy, gemm)
    if isinstance(c_arr, Decline):
        return c_arr
    if input_at(gemm, 2) is not None and (
        c_arr.ndim > 2 or (c_arr.ndim and c_arr.shape[-1] not in (1, affine.channels))
    ):
        return Decline(f"Gemm C of shape {list(c_arr.shape)} does not broadcast to its output")
    new_c = (
        attrs.beta * c_arr * affine.scale + affine.shift
        if attrs.beta != 0
        else np.broadcast_to(affine.shift, (affine.channels,))
    )
    factor = affine.scale[:, None] if attrs.trans_b else affine.scale[None, :]
    made = all_folded(
        folded_scaled(b_mat.array, factor, b_mat.dtype), folded(np.asarray(new_c), b_mat.dtype)
    )
    if isinstance(made, Decline):
        return made
    names = [base_name(input_at(gemm, 1), "B"), _name_after(input_at(gemm, 2), "_C")]
    constants = list(zip(names, made, strict=True))
    new_attrs = copy_attributes(gemm, beta=ir.AttrFloat32("beta", 1.0))
    rule = f"gemm+{affine.kind}"
    return _plan(affine, [gemm], rule, ctx, "Gemm", [gemm.inputs[0]], constants, new_attrs)


def _matmul(
    affine: Affine,
    matmul: ir.Node,
    ctx: FoldContext,
    bias: np.ndarray | None = None,
    extra: list[ir.Node] | None = None,
) -> Plan | Decline:
    """MatMul (optionally followed by a constant Add, `extra`) into one Gemm."""
    if not is_default_domain(matmul.domain) or matmul.op_type != "MatMul":
        return Decline("not a MatMul")
    weight = matmul_weight(ctx.policy, matmul)
    if isinstance(weight, Decline):
        return weight
    ctx.ensure_shapes()
    rank_decline = _rank_two(affine.input, "MatMul output")
    if rank_decline is not None:
        return rank_decline
    data = matmul.inputs[0]
    if data is None or data.shape is None or len(data.shape) != 2:
        rank = "unknown" if data is None or data.shape is None else len(data.shape)
        return Decline(f"MatMul input has rank {rank}: a Gemm takes rank 2")
    rows = data.shape[0]
    if bias is not None and bias.ndim == 2 and bias.shape[0] != 1 and bias.shape[0] != rows:
        return Decline(
            f"Add bias of shape {bias.shape} does not fit the MatMul's {rows} rows: a Gemm's bias "
            "must broadcast to its output"
        )
    if weight.shape[1] != affine.channels:
        return Decline(
            f"MatMul has {weight.shape[1]} output features, the {affine.what} has {affine.channels}"
        )
    new_c = (bias if bias is not None else np.zeros(())) * affine.scale + affine.shift
    made = all_folded(
        folded_scaled(weight.array, affine.scale[None, :], weight.dtype),
        folded(np.asarray(new_c), weight.dtype),
    )
    if isinstance(made, Decline):
        return made
    names: list[Base] = [base_name(input_at(matmul, 1), "W"), lambda w: f"{w}_bias"]
    constants = list(zip(names, made, strict=True))
    rule = f"matmul+add+{affine.kind}" if extra else f"matmul+{affine.kind}"
    old = [matmul, *(extra or [])]
    return _plan(affine, old, rule, ctx, "Gemm", [matmul.inputs[0]], constants, [])


def _matmul_add(affine: Affine, add: ir.Node, ctx: FoldContext) -> Plan | Decline:
    for mm_index in (0, 1):
        mm_out, bias_in = add.inputs[mm_index], add.inputs[1 - mm_index]
        producer = mm_out.producer() if mm_out is not None else None
        if (
            producer is None
            or producer.op_type != "MatMul"
            or not is_default_domain(producer.domain)
        ):
            continue
        assert mm_out is not None
        if sole_consumer(mm_out) is not add:
            return consumers_reason(mm_out, "MatMul output")
        if bias_in is None:
            return Decline("Add bias is missing")
        bias = float_operand(ctx.policy, bias_in, "Add bias")
        if isinstance(bias, Decline):
            return bias
        if bias.ndim > 2:
            return Decline(
                f"Add bias has rank {bias.ndim}: it broadcasts the output to a higher rank"
            )
        return _matmul(affine, producer, ctx, bias=bias, extra=[add])
    return Decline("its input comes from an Add that does not follow a MatMul")


def _rank_two(value: ir.Value, what: str) -> Decline | None:
    if value.shape is None:
        return Decline(
            f"rank of {what} '{value.name}' is unknown (BN's channel axis must be its last axis)"
        )
    if len(value.shape) != 2:
        return Decline(
            f"{what} has rank {len(value.shape)}: BN normalizes axis 1, not the feature axis"
        )
    return None


_PRODUCER_RULES = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Add": _matmul_add,
}
