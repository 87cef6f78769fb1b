"""Test-time BatchNorm folding ("zero overhead at test time").

Each BatchNormalization is read as y = s x + t per channel (`affine_map.read_batchnorm`), then:

Each rule plans first (reads, checks, computes the folded constants) and only an accepted plan
changes the graph. In order:

1. folded into the layer that produces its input (`fold.into_producer`: Conv, ConvTranspose, Gemm,
   MatMul, MatMul + Add);
2. else folded into the one layer that reads its output (`fold.into_consumer`: Conv, Gemm, MatMul);
3. else, only with the `bn_to_affine` option, rewritten as Mul + Add (a chain of BNs as one Mul + Add).

Every BN gets one site in the report: the rule that applied, or why each step declined. The pass repeats
until nothing more folds (a BN -> BN chain after a Conv folds one BN per round).
"""

from __future__ import annotations

import onnx_ir as ir

from optkit.core.contract import Decline, Exactness, PassOptions, PassSpec, RewritePass, Site
from optkit.core.graph import (
    ConstantPolicy,
    Namer,
    is_default_domain,
    iter_graphs,
    node_label,
    opset_version,
    replace_nodes,
    sole_consumer,
)
from optkit.core.shapes import ShapesOnDemand
from optkit.passes.fold.affine_map import Affine, along, read_batchnorm
from optkit.passes.fold.into_consumer import fold_into_consumer
from optkit.passes.fold.into_producer import fold_into_producer
from optkit.passes.fold.support import (
    Applied,
    FoldContext,
    Folded,
    Folds,
    Plan,
    all_folded,
    folded,
    new_node,
)


def is_batchnorm(node: ir.Node) -> bool:
    return node.op_type == "BatchNormalization" and is_default_domain(node.domain)


FOLDS = (("into its producer", fold_into_producer), ("into its consumer", fold_into_consumer))


class FoldBatchNorm(RewritePass):
    spec = PassSpec(
        "batchnorm",
        Exactness.REASSOCIATE,
        "fold test-time BatchNorm into adjacent Conv / ConvTranspose / Gemm / MatMul",
    )

    def run(self, model: ir.Model, options: PassOptions) -> list[Site]:
        if not _live_batchnorms(model):
            return []
        opset = opset_version(model)
        ctx = FoldContext(
            model.graph,
            ConstantPolicy(model, freeze_initializer_inputs=options.freeze_initializer_inputs),
            Namer(model),
            opset,
            ShapesOnDemand(model),  # the MatMul rank and Conv border checks read shapes
        )

        def read(node: ir.Node, policy: ConstantPolicy) -> Affine | Decline:
            return read_batchnorm(node, policy, opset)

        applied, declined = Folds(is_batchnorm, read, FOLDS, "batchnorm").to_fixed_point(model, ctx)
        if options.bn_to_affine:
            affine_folds = Folds(is_batchnorm, read, [("to Mul+Add", to_mul_add)], "batchnorm")
            done, not_affine = affine_folds.sweep(model, ctx)
            applied += done
            for key, site in not_affine.items():
                if key in declined and site.reason != declined[key].reason:
                    reason = f"{declined[key].reason}; {site.reason}"
                    declined[key] = Site(site.rule, site.node, False, reason)
        live = _live_batchnorms(model)
        return applied + [site for key, site in declined.items() if key in live]


def _live_batchnorms(model: ir.Model) -> set[int]:
    return {id(n) for g in iter_graphs(model.graph) for n in g if is_batchnorm(n)}


def to_mul_add(bn: Affine, ctx: FoldContext) -> Plan | Decline:
    """y = s x + t as Mul + Add; BNs that follow it alone are merged in (s = s1 s2, t = t1 s2 + t2).

    Needs the input's rank to shape s and t along axis 1.
    """
    ctx.ensure_shapes()
    shape = bn.input.shape
    if shape is None:
        return Decline("the input's rank is unknown")
    if len(shape) < 2:
        return Decline(f"the input has rank {len(shape)}")
    chain = [bn]
    scale, shift = bn.scale, bn.shift
    while (nxt := sole_consumer(chain[-1].output)) is not None and is_batchnorm(nxt):
        follower = read_batchnorm(nxt, ctx.policy, ctx.opset)
        if (
            isinstance(follower, Decline)
            or follower.channels != bn.channels
            or nxt.graph is not ctx.graph
        ):
            break
        scale, shift = scale * follower.scale, shift * follower.scale + follower.shift
        chain.append(follower)
    dtype = _float_type(bn.input)
    if dtype is None:
        return Decline("the input's element type is unknown or not float")
    made = all_folded(
        folded(along(scale, 0, len(shape) - 1), dtype),
        folded(along(shift, 0, len(shape) - 1), dtype),
    )
    if isinstance(made, Decline):
        return made
    rule = "bn-chain->mul+add" if len(chain) > 1 else "bn->mul+add"
    return Plan(rule, lambda: _mul_add(chain, made[0], made[1], rule, ctx))


def _mul_add(
    chain: list[Affine], scale: Folded, shift: Folded, rule: str, ctx: FoldContext
) -> Applied:
    """Replace the BNs of `chain` by Mul(x, scale) -> Add(., shift)."""
    bn = chain[0]
    base = bn.node.name or "bn"
    s_value = ctx.register(f"{base}_scale", scale)
    t_value = ctx.register(f"{base}_shift", shift)
    mul = new_node("Mul", [bn.input, s_value], [], ctx.namer.fresh(f"{base}_mul"))
    mul.outputs[0].name = ctx.namer.fresh(f"{bn.output.name}_scaled")
    mul.outputs[0].type = bn.output.type
    add = new_node("Add", [mul.outputs[0], t_value], [], ctx.namer.fresh(f"{base}_add"))
    old = [b.node for b in chain]
    replace_nodes(ctx.graph, old, [mul, add], [chain[-1].output], [add.outputs[0]])
    return Applied(rule, tuple(node_label(n) for n in old), (node_label(mul), node_label(add)))


def _float_type(value: ir.Value) -> ir.DataType | None:
    from optkit.core.graph import FLOAT_TYPES

    if isinstance(value.type, ir.TensorType) and value.type.dtype in FLOAT_TYPES:
        return value.type.dtype
    return None
