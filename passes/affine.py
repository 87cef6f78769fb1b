"""Per-channel arithmetic by constants, folded away (exporters from Caffe2 and others emit it, and
so does a BatchNorm written out as Mul + Add).

    Mul(x, c), Div(x, c)   y = c x,  x / c     s = c or 1/c,  t = 0
    Add(x, c), Sub(x, c)   y = x + c,  x - c   s = 1,         t = c or -c
    Sub(c, x)              y = c - x           s = -1,        t = c

where c is a constant that varies along axis 1 of x at most (shape (C, 1, .., 1), (1, C, 1, ..), or a
scalar), so that y = s x + t per channel. Each such node is then

1. folded into the layer that produces x (Conv, ConvTranspose, Gemm, MatMul; `affine_into_layer`);
2. else merged into a BatchNormalization that produces x: gamma' = s gamma, beta' = s beta + t;
3. else folded into the one layer that reads y (Conv, Gemm, MatMul; `affine_into_next_layer`).

Exact in real arithmetic (`reassociate`). Mul / Add nodes whose constant is not per-channel, or whose
operands are both computed, are not candidates and get no site in the report.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from optkit.contract import Exactness, PassOptions, PassSpec, RewritePass, Site
from optkit.graph import (
    ConstantPolicy,
    Namer,
    consumers_reason,
    iter_graphs,
    node_label,
    opset_version,
    replace_nodes,
    sole_consumer,
)
from optkit.shapes import infer_shapes

from .affine_into_layer import fold_into_producer
from .affine_into_next_layer import fold_into_consumer
from .affine_params import Affine, read_batchnorm
from .canonicalize import decomposed_forms
from .fold_support import Applied, FoldContext, Folds, copy_attributes, new_node

ARITHMETIC = frozenset({"Mul", "Add", "Sub", "Div"})


def is_arithmetic(node: ir.Node) -> bool:
    return node.op_type in ARITHMETIC and node.domain == "" and len(node.inputs) == 2


def _has_constant_operand(node: ir.Node, policy: ConstantPolicy) -> bool:
    return is_arithmetic(node) and any(
        v is not None and policy.array(v)[0] is not None for v in node.inputs
    )


def channel_vector(constant: np.ndarray, rank: int, channels: int | None) -> np.ndarray | None:
    """`constant` as a (C,) vector when it broadcasts along axis 1 of a rank-`rank` tensor only."""
    if constant.ndim > rank:
        return None
    if constant.size == 1:
        return None if channels is None else np.full(channels, constant.reshape(-1)[0])
    shape = (1,) * (rank - constant.ndim) + constant.shape
    if rank < 2 or any(d != 1 for i, d in enumerate(shape) if i != 1):
        return None
    if channels is not None and shape[1] != channels:
        return None
    return constant.reshape(-1)


def read_arithmetic(node: ir.Node, policy: ConstantPolicy) -> tuple[Affine | None, str]:
    """Mul / Add / Sub / Div of a computed x and a per-channel constant c as y = s x + t."""
    first, second = node.inputs
    if first is None or second is None:
        return None, ""
    a, _ = policy.array(first)
    b, _ = policy.array(second)
    if (a is None) == (b is None):  # both computed, or both constant (constant folding's job)
        return None, ""
    x, c = (first, b) if b is not None else (second, a)
    assert c is not None
    if c.dtype.kind != "f" or not isinstance(x.type, ir.TensorType):
        return None, ""
    shape = x.shape if x.shape is not None else node.outputs[0].shape
    if shape is None:
        return None, ""
    rank = len(shape)
    channels = shape[1] if rank > 1 and isinstance(shape[1], int) else None
    constant_first = x is second
    vector = channel_vector(c.astype(np.float64), rank, channels)
    if vector is None:
        return _read_image_shift(node, x, c, shape, constant_first)
    ones, zeros = np.ones_like(vector), np.zeros_like(vector)
    if node.op_type == "Mul":
        scale, shift = vector, zeros
    elif node.op_type == "Add":
        scale, shift = ones, vector
    elif node.op_type == "Sub":
        scale, shift = (-ones, vector) if constant_first else (ones, -vector)
    else:  # Div
        if constant_first:
            return None, ""  # c / x is not affine in x
        if np.any(vector == 0):
            return None, "divides by a constant with zeros"
        scale, shift = 1.0 / vector, zeros
    return Affine(node, x, scale, shift, kind=node.op_type.lower()), ""


def _read_image_shift(
    node: ir.Node, x: ir.Value, c: np.ndarray, shape: ir.Shape, constant_first: bool
) -> tuple[Affine | None, str]:
    """x + M, x - M or M - x for a whole constant image M (C, *spatial) of x's static shape: a mean
    image. Folds only into a following Conv (per position) or Flatten -> Gemm (per feature)."""
    dims = list(shape)[1:]
    if (
        node.op_type not in ("Add", "Sub")
        or len(dims) < 2
        or not all(isinstance(d, int) for d in dims)
    ):
        return None, ""
    image = c.astype(np.float64)
    while image.ndim > len(dims) and image.shape[0] == 1:
        image = image[0]
    if image.shape != tuple(dims):
        return None, ""
    channels = int(dims[0])
    sign = -1.0 if node.op_type == "Sub" and not constant_first else 1.0
    scale = np.full(channels, -1.0 if node.op_type == "Sub" and constant_first else 1.0)
    kind = f"{node.op_type.lower()}-image"
    return Affine(node, x, scale, np.zeros(channels), kind, shift_image=sign * image), ""


def merge_into_batchnorm(affine: Affine, ctx: FoldContext) -> Applied | str:
    """s (gamma (x - mean) / sqrt(var + eps) + beta) + t is a BatchNorm with gamma' = s gamma and
    beta' = s beta + t."""
    if affine.shift_image is not None:
        return "a per-position shift does not fit a BatchNorm"
    bn_node = affine.input.producer()
    if bn_node is None or bn_node.op_type != "BatchNormalization" or bn_node.domain != "":
        return "its input does not come from a BatchNormalization"
    if sole_consumer(affine.input) is not affine.node:
        return consumers_reason(affine.input, "BatchNormalization output")
    bn, why = read_batchnorm(bn_node, ctx.policy, ctx.opset)
    if bn is None:
        return why
    if bn.channels != affine.channels:
        return f"the BatchNorm has {bn.channels} channels, the constant {affine.channels}"
    gamma, dtype, why = ctx.weight(bn_node.inputs[1], "BN scale")
    beta, beta_dtype, why_beta = ctx.weight(bn_node.inputs[2], "BN bias")
    if gamma is None or beta is None:
        return why or why_beta
    new_gamma = ctx.constant(f"{bn_node.inputs[1].name}_merged", gamma * affine.scale, dtype)
    new_beta = ctx.constant(
        f"{bn_node.inputs[2].name}_merged", beta * affine.scale + affine.shift, beta_dtype
    )
    inputs = [bn_node.inputs[0], new_gamma, new_beta, bn_node.inputs[3], bn_node.inputs[4]]
    node = new_node("BatchNormalization", inputs, copy_attributes(bn_node), bn_node.name)
    removed = (node_label(bn_node), node_label(affine.node))
    replace_nodes(ctx.graph, [bn_node, affine.node], [node], [affine.output], [node.outputs[0]])
    return Applied(f"bn+{affine.kind}", removed, (node_label(node),))


FOLDS = (
    ("into its producer", fold_into_producer),
    ("into the BatchNorm before it", merge_into_batchnorm),
    ("into its consumer", fold_into_consumer),
)


class FoldAffine(RewritePass):
    spec = PassSpec(
        "affine",
        Exactness.REASSOCIATE,
        "fold per-channel Mul / Add / Sub / Div by constants into adjacent layers or BatchNorm",
    )

    def run(self, model: ir.Model, options: PassOptions) -> list[Site]:
        policy = ConstantPolicy(model, freeze_initializer_inputs=options.freeze_initializer_inputs)
        if not any(_has_constant_operand(n, policy) for g in iter_graphs(model.graph) for n in g):
            return []
        infer_shapes(model)  # ranks and channel counts decide what is per-channel
        ctx = FoldContext(model.graph, policy, Namer(model), opset_version(model))
        forms = decomposed_forms(model)

        def candidate(node: ir.Node) -> bool:
            return is_arithmetic(node) and id(node) not in forms

        folds = Folds(candidate, read_arithmetic, FOLDS, "affine")
        applied, declined = folds.to_fixed_point(model, ctx)
        live = {id(n) for g in iter_graphs(model.graph) for n in g}
        kept = [
            Site(
                "affine",
                node_label(n),
                False,
                f"part of a decomposed {forms[id(n)]}, kept whole (runtimes fuse the chain; "
                "optkit fuses it where the opset allows)",
            )
            for g in iter_graphs(model.graph)
            for n in g
            if id(n) in forms and is_arithmetic(n) and _has_constant_operand(n, policy)
        ]
        return applied + [site for key, site in declined.items() if key in live] + kept
