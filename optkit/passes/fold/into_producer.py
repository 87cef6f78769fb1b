"""BatchNorm after a layer, folded into that layer's weights (s, t from `batchnorm_params`).

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

import numpy as np
import onnx_ir as ir

from optkit.core.graph import (
    attr_float,
    attr_int,
    consumers_reason,
    node_label,
    replace_nodes,
    sole_consumer,
)
from optkit.passes.fold.affine_map import Affine, along
from optkit.passes.fold.support import Applied, FoldContext, base_name, copy_attributes, new_node


def fold_into_producer(affine: Affine, ctx: FoldContext) -> Applied | str:
    """Fold `affine` into the layer that produces its input, or say why not."""
    if affine.shift_image is not None:
        return "a per-position shift gains nothing folded into the layer before it"
    layer = affine.input.producer()
    if layer is None:
        return "its input is not produced by a layer (graph input or initializer)"
    if layer.domain != "":
        return f"its input comes from {layer.domain}::{layer.op_type}"
    rule = _PRODUCER_RULES.get(layer.op_type)
    if rule is None:
        return f"its input comes from {layer.op_type}, which cannot absorb it"
    if sole_consumer(affine.input) is not affine.node:
        return consumers_reason(affine.input, f"{layer.op_type} output")
    return rule(affine, layer, ctx)


def _replace(
    affine: Affine, old: list[ir.Node], node: ir.Node, rule: str, ctx: FoldContext
) -> Applied:
    removed = tuple(node_label(n) for n in [*old, affine.node])
    replace_nodes(ctx.graph, [*old, affine.node], [node], [affine.output], [node.outputs[0]])
    return Applied(rule, removed, (node_label(node),))


def _conv(affine: Affine, conv: ir.Node, ctx: FoldContext) -> Applied | str:
    weight, dtype, why = ctx.stored_weight(
        conv.inputs[1] if len(conv.inputs) > 1 else None, "Conv weight", min_rank=3
    )
    if weight is None:
        return why
    if weight.shape[0] != affine.channels:
        return (
            f"Conv has {weight.shape[0]} output channels, the {affine.what} has {affine.channels}"
        )
    bias, why = _optional_bias(conv, 2, affine.channels, ctx)
    if bias is None:
        return why
    factor = along(affine.scale, 0, weight.ndim)
    new_b = bias * affine.scale + affine.shift
    rule = f"conv+{affine.kind}"
    return _emit_conv_like(affine, conv, weight, factor, weight.shape, new_b, dtype, ctx, rule)


def _conv_transpose(affine: Affine, conv: ir.Node, ctx: FoldContext) -> Applied | str:
    weight, dtype, why = ctx.stored_weight(
        conv.inputs[1] if len(conv.inputs) > 1 else None, "ConvTranspose weight", min_rank=3
    )
    if weight is None:
        return why
    groups = attr_int(conv, "group", 1)
    c_in, c_out_per_group = weight.shape[0], weight.shape[1]
    if groups * c_out_per_group != affine.channels or c_in % groups:
        channels = groups * c_out_per_group
        return (
            f"ConvTranspose has {channels} output channels, the {affine.what} has {affine.channels}"
        )
    bias, why = _optional_bias(conv, 2, affine.channels, ctx)
    if bias is None:
        return why
    grouped = weight.reshape(groups, c_in // groups, c_out_per_group, *weight.shape[2:])
    scale = affine.scale.reshape(groups, 1, c_out_per_group, *([1] * (weight.ndim - 2)))
    new_b = bias * affine.scale + affine.shift
    rule = f"convtranspose+{affine.kind}"
    return _emit_conv_like(affine, conv, grouped, scale, weight.shape, new_b, dtype, ctx, rule)


def _emit_conv_like(
    affine: Affine,
    conv: ir.Node,
    weight: np.ndarray,
    factor: np.ndarray,
    shape: tuple[int, ...],
    new_b: np.ndarray,
    dtype: ir.DataType,
    ctx: FoldContext,
    rule: str,
) -> Applied:
    """The layer with weight `weight * factor` (in float64, rounded once, in `shape`) and bias
    `new_b`."""
    w_value = ctx.scaled_constant(base_name(conv.inputs[1], "W"), weight, factor, dtype, shape)
    b_value = ctx.constant(
        base_name(conv.inputs[2] if len(conv.inputs) > 2 else None, f"{w_value.name}_bias"),
        new_b,
        dtype,
    )
    node = new_node(
        conv.op_type, [conv.inputs[0], w_value, b_value], copy_attributes(conv), conv.name
    )
    return _replace(affine, [conv], node, rule, ctx)


def _optional_bias(
    layer: ir.Node, index: int, channels: int, ctx: FoldContext
) -> tuple[np.ndarray | None, str]:
    """The layer's per-channel bias as float64 (zeros when it has none), or None and why."""
    value = layer.inputs[index] if len(layer.inputs) > index else None
    if value is None:
        return np.zeros(channels), ""
    bias, _, why = ctx.weight(value, f"{layer.op_type} bias")
    if bias is None:
        return None, why
    if bias.shape != (channels,):
        return None, f"{layer.op_type} bias has shape {bias.shape}, expected ({channels},)"
    return bias, ""


def _gemm(affine: Affine, gemm: ir.Node, ctx: FoldContext) -> Applied | str:
    b_mat, dtype, why = ctx.stored_weight(
        gemm.inputs[1] if len(gemm.inputs) > 1 else None, "Gemm B"
    )
    if b_mat is None:
        return why
    if b_mat.ndim != 2:
        return f"Gemm B has rank {b_mat.ndim}"
    trans_b = attr_int(gemm, "transB", 0)
    columns = b_mat.shape[0] if trans_b else b_mat.shape[1]
    if columns != affine.channels:
        return f"Gemm has {columns} output features, the {affine.what} has {affine.channels}"
    beta = attr_float(gemm, "beta", 1.0)
    c_in = gemm.inputs[2] if len(gemm.inputs) > 2 else None
    c_arr: np.ndarray = np.zeros(())
    if c_in is not None:
        c_read, _, why = ctx.weight(c_in, "Gemm C")
        if c_read is None:
            return why
        c_arr = c_read
        if c_arr.ndim > 2 or (c_arr.ndim and c_arr.shape[-1] not in (1, affine.channels)):
            return f"Gemm C of shape {list(c_arr.shape)} does not broadcast to its output"
    new_c = (
        beta * c_arr * affine.scale + affine.shift
        if beta != 0
        else np.broadcast_to(affine.shift, (affine.channels,))
    )
    factor = affine.scale[:, None] if trans_b else affine.scale[None, :]
    b_value = ctx.scaled_constant(base_name(gemm.inputs[1], "B"), b_mat, factor, dtype)
    c_value = ctx.constant(base_name(c_in, f"{b_value.name}_C"), np.asarray(new_c), dtype)
    attrs = copy_attributes(gemm, beta=ir.AttrFloat32("beta", 1.0))
    node = new_node("Gemm", [gemm.inputs[0], b_value, c_value], attrs, gemm.name)
    return _replace(affine, [gemm], node, f"gemm+{affine.kind}", ctx)


def _matmul(
    affine: Affine,
    matmul: ir.Node,
    ctx: FoldContext,
    bias: np.ndarray | None = None,
    extra: list[ir.Node] | None = None,
) -> Applied | str:
    """MatMul (optionally followed by a constant Add, `extra`) into one Gemm."""
    if matmul.domain != "" or matmul.op_type != "MatMul":
        return "not a MatMul"
    weight, dtype, why = ctx.stored_weight(matmul.inputs[1], "MatMul weight")
    if weight is None:
        return why
    if weight.ndim != 2:
        return f"MatMul weight has rank {weight.ndim}, not 2"
    ctx.ensure_shapes()
    rank_reason = _rank_two(affine.input, "MatMul output")
    if rank_reason:
        return rank_reason
    data = matmul.inputs[0]
    if data is None or data.shape is None or len(data.shape) != 2:
        rank = "unknown" if data is None or data.shape is None else len(data.shape)
        return f"MatMul input has rank {rank}: a Gemm takes rank 2"
    rows = data.shape[0]
    if bias is not None and bias.ndim == 2 and bias.shape[0] != 1 and bias.shape[0] != rows:
        return (
            f"Add bias of shape {bias.shape} does not fit the MatMul's {rows} rows: a Gemm's bias "
            "must broadcast to its output"
        )
    if weight.shape[1] != affine.channels:
        return (
            f"MatMul has {weight.shape[1]} output features, the {affine.what} has {affine.channels}"
        )
    new_c = (bias if bias is not None else np.zeros(())) * affine.scale + affine.shift
    w_value = ctx.scaled_constant(
        base_name(matmul.inputs[1], "W"), weight, affine.scale[None, :], dtype
    )
    c_value = ctx.constant(f"{w_value.name}_bias", np.asarray(new_c), dtype)
    node = new_node("Gemm", [matmul.inputs[0], w_value, c_value], [], matmul.name)
    rule = f"matmul+add+{affine.kind}" if extra else f"matmul+{affine.kind}"
    return _replace(affine, [matmul, *(extra or [])], node, rule, ctx)


def _matmul_add(affine: Affine, add: ir.Node, ctx: FoldContext) -> Applied | str:
    for mm_index in (0, 1):
        mm_out, bias_in = add.inputs[mm_index], add.inputs[1 - mm_index]
        producer = mm_out.producer() if mm_out is not None else None
        if producer is None or producer.op_type != "MatMul" or producer.domain != "":
            continue
        assert mm_out is not None
        if sole_consumer(mm_out) is not add:
            return consumers_reason(mm_out, "MatMul output")
        bias, _, why = ctx.weight(bias_in, "Add bias")
        if bias is None:
            return why
        if bias.ndim > 2:
            return f"Add bias has rank {bias.ndim}: it broadcasts the output to a higher rank"
        return _matmul(affine, producer, ctx, bias=bias, extra=[add])
    return "its input comes from an Add that does not follow a MatMul"


def _rank_two(value: ir.Value, what: str) -> str:
    if value.shape is None:
        return f"rank of {what} '{value.name}' is unknown (BN's channel axis must be its last axis)"
    if len(value.shape) != 2:
        return f"{what} has rank {len(value.shape)}: BN normalizes axis 1, not the feature axis"
    return ""


_PRODUCER_RULES = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Add": _matmul_add,
}
