"""Per-channel arithmetic by constants, folded away (exporters from Caffe2 and others emit it, and
so does a BatchNorm written out as Mul + Add).

    Mul(x, c), Div(x, c)   y = c x,  x / c     s = c or 1/c,  t = 0
    Add(x, c), Sub(x, c)   y = x + c,  x - c   s = 1,         t = c or -c
    Sub(c, x)              y = c - x           s = -1,        t = c

where c is a constant that varies along axis 1 of x at most (shape (C, 1, .., 1), (1, C, 1, ..), or a
scalar), so that y = s x + t per channel. Each such node is then

1. folded into the layer that produces x (Conv, ConvTranspose, Gemm, MatMul; `fold.into_producer`);
2. else merged into a BatchNormalization that produces x: gamma' = s gamma, beta' = s beta + t;
3. else folded into the one layer that reads y (Conv, Gemm, MatMul; `fold.into_consumer`).

Exact in real arithmetic (`reassociate`). Mul / Add nodes whose constant is not per-channel, or whose
operands are both computed, are not candidates and get no site in the report.
"""

from __future__ import annotations

import onnx_ir as ir

from optkit.core.contract import Decline, Exactness, PassOptions, PassSpec, RewritePass, Site
from optkit.core.graph import (
    ConstantPolicy,
    Namer,
    consumers_reason,
    is_default_domain,
    iter_graphs,
    node_label,
    opset_version,
    replace_nodes,
    sole_consumer,
)
from optkit.core.shapes import infer_shapes
from optkit.passes.canonicalize import decomposed_forms
from optkit.passes.fold.affine_map import Affine, is_arithmetic, read_arithmetic, read_batchnorm
from optkit.passes.fold.into_consumer import fold_into_consumer
from optkit.passes.fold.into_producer import fold_into_producer
from optkit.passes.fold.readers import float_weight
from optkit.passes.fold.support import (
    Applied,
    FoldContext,
    Folds,
    Plan,
    all_folded,
    copy_attributes,
    folded,
    new_node,
)


def _has_constant_operand(node: ir.Node, policy: ConstantPolicy) -> bool:
    return is_arithmetic(node) and any(policy.contents(v) is not None for v in node.inputs)


def merge_into_batchnorm(affine: Affine, ctx: FoldContext) -> Plan | Decline:
    """s (gamma (x - mean) / sqrt(var + eps) + beta) + t is a BatchNorm with gamma' = s gamma and
    beta' = s beta + t."""
    if affine.shift_image is not None:
        return Decline("a per-position shift does not fit a BatchNorm")
    bn_node = affine.input.producer()
    if (
        bn_node is None
        or bn_node.op_type != "BatchNormalization"
        or not is_default_domain(bn_node.domain)
    ):
        return Decline("its input does not come from a BatchNormalization")
    if sole_consumer(affine.input) is not affine.node:
        return consumers_reason(affine.input, "BatchNormalization output")
    bn = read_batchnorm(bn_node, ctx.policy, ctx.opset)
    if isinstance(bn, Decline):
        return bn
    if bn.channels != affine.channels:
        return Decline(f"the BatchNorm has {bn.channels} channels, the constant {affine.channels}")
    gamma_in, beta_in = bn_node.inputs[1], bn_node.inputs[2]
    gamma = float_weight(ctx.policy, gamma_in, "BN scale")
    beta = float_weight(ctx.policy, beta_in, "BN bias")
    if isinstance(gamma, Decline):
        return gamma
    if isinstance(beta, Decline):
        return beta
    made = all_folded(
        folded(gamma.wide * affine.scale, gamma.dtype),
        folded(beta.wide * affine.scale + affine.shift, beta.dtype),
    )
    if isinstance(made, Decline):
        return made
    new_gamma, new_beta = made
    rule = f"bn+{affine.kind}"

    def apply() -> Applied:
        gamma_name = gamma_in.name if gamma_in is not None else "scale"
        beta_name = beta_in.name if beta_in is not None else "B"
        gamma_value = ctx.register(f"{gamma_name}_merged", new_gamma)
        beta_value = ctx.register(f"{beta_name}_merged", new_beta)
        inputs = [bn_node.inputs[0], gamma_value, beta_value, bn_node.inputs[3], bn_node.inputs[4]]
        node = new_node("BatchNormalization", inputs, copy_attributes(bn_node), bn_node.name)
        removed = (node_label(bn_node), node_label(affine.node))
        replace_nodes(ctx.graph, [bn_node, affine.node], [node], [affine.output], [node.outputs[0]])
        return Applied(rule, removed, (node_label(node),))

    return Plan(rule, apply)


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
        forms = decomposed_forms(model)
        ctx = FoldContext(
            model.graph, policy, Namer(model), opset_version(model), keep=frozenset(forms)
        )

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
