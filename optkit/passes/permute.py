"""A constant channel permutation (Gather on axis 1, as a BGR -> RGB swap), folded into the weights
of the layer that reads it:

    Conv (group 1):       Conv(x[:, p], W)  = Conv(x, W[:, q])       q = p^-1 (argsort of p)
    Gemm (transA 0):      x[:, p] @ B       = x @ B[q, :]            (columns of B when transB = 1)
    MatMul (2-D):         x[:, p] @ W       = x @ W[q, :]
    Flatten -> Gemm:      the permutation is moved past the Flatten, over channel blocks of features
    op(., c) -> layer:    a Mul / Add / Sub / Div by a per-channel constant moves in front of the
                          Gather (c permuted with it, bit for bit); the permutation folds next run

The Gather must pick every channel of its input once (indices 2, 0, 1 of a 4-channel tensor select).

Exactness `reassociate`: the sums run in another order.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from optkit.core.contract import Decline, Exactness, PassOptions, PassSpec, RewritePass, Site
from optkit.core.graph import (
    ConstantPolicy,
    Namer,
    attr_int,
    consumers_reason,
    dims_after_batch,
    input_at,
    is_default_domain,
    iter_graphs,
    node_label,
    replace_nodes,
    sole_consumer,
)
from optkit.core.shapes import ShapesOnDemand
from optkit.passes.fold.affine_map import Affine, is_arithmetic, read_arithmetic
from optkit.passes.fold.readers import layer_weight
from optkit.passes.fold.support import (
    Applied,
    FoldContext,
    Plan,
    base_name,
    copy_attributes,
    folded,
    new_node,
)


def read_permutation(node: ir.Node, policy: ConstantPolicy) -> np.ndarray | None:
    """The permutation a Gather(axis=1) applies, when its indices are a constant permutation."""
    if (
        node.op_type != "Gather"
        or not is_default_domain(node.domain)
        or attr_int(node, "axis", 0) != 1
    ):
        return None
    indices = policy.contents(input_at(node, 1))
    if indices is None or indices.ndim != 1:
        return None
    order = indices.astype(np.int64)
    # Negative indices count from the end: with as many indices as channels (which
    # `fold_permutation` checks before folding), -1 is the last channel.
    order = np.where(order < 0, order + len(order), order)
    return order if sorted(order.tolist()) == list(range(len(order))) else None


def fold_permutation(gather: ir.Node, order: np.ndarray, ctx: FoldContext) -> Plan | Decline:
    layer = sole_consumer(gather.outputs[0])
    if layer is None:
        return consumers_reason(gather.outputs[0], "its output")
    if not is_default_domain(layer.domain) or layer.inputs[0] is not gather.outputs[0]:
        return Decline(f"its output is not the data input of a layer ({node_label(layer)})")
    data = gather.inputs[0]
    if data is None:
        return Decline("its data input is missing")
    ctx.ensure_shapes()
    shape = data.shape
    channels = shape[1] if shape is not None and len(shape) > 1 else None
    if channels != len(order):
        what = channels if isinstance(channels, int) else "an unknown number of"
        return Decline(
            f"it picks {len(order)} of {what} channels: not known to be a permutation of them"
        )
    inverse = np.argsort(order)
    if layer.op_type == "Flatten":
        return _through_flatten(gather, order, layer, ctx)
    if is_arithmetic(layer):
        return _before_arithmetic(gather, inverse, layer, ctx)
    if layer.op_type not in ("Conv", "Gemm", "MatMul"):
        return Decline(f"its output feeds {layer.op_type}, which cannot absorb it")
    if layer.op_type in ("Gemm", "MatMul") and (shape is None or len(shape) != 2):
        rank = "unknown" if shape is None else len(shape)
        return Decline(
            f"{layer.op_type} contracts the last axis of its input, and axis 1 is the last only "
            f"at rank 2 (the input's rank is {rank})"
        )
    stored = layer_weight(ctx.policy, layer)
    if isinstance(stored, Decline):
        return stored
    weight = stored.wide
    if layer.op_type == "Conv":
        if attr_int(layer, "group", 1) != 1:
            return Decline("grouped Conv: a permutation across groups does not fold")
        axis = 1  # W[:, q]
    elif layer.op_type == "Gemm":
        if attr_int(layer, "transA", 0):
            return Decline("Gemm has transA=1")
        axis = 1 if attr_int(layer, "transB", 0) else 0  # B[:, q] or B[q, :]
    else:
        if weight.ndim != 2:
            return Decline(f"MatMul weight has rank {weight.ndim}, not 2")
        axis = 0  # W[q, :]
    if weight.ndim <= axis or weight.shape[axis] != len(order):
        return Decline(
            f"the permutation has {len(order)} entries, the {layer.op_type} weight's shape is "
            f"{weight.shape}"
        )
    new_weight = folded(np.take(weight, inverse, axis=axis), stored.dtype)
    if isinstance(new_weight, Decline):
        return new_weight
    rule = f"permute+{layer.op_type.lower()}"

    def apply() -> Applied:
        value = ctx.register(base_name(input_at(layer, 1), "W"), new_weight)
        inputs = [gather.inputs[0], value, *layer.inputs[2:]]
        node = new_node(layer.op_type, inputs, copy_attributes(layer), layer.name)
        replace_nodes(ctx.graph, [gather, layer], [node], [layer.outputs[0]], [node.outputs[0]])
        return Applied(rule, (node_label(gather), node_label(layer)), (node_label(node),))

    return Plan(rule, apply)


def _through_flatten(
    gather: ir.Node, order: np.ndarray, flatten: ir.Node, ctx: FoldContext
) -> Plan | Decline:
    """Gather(x, p, axis=1) -> Flatten  ==  Flatten(x) -> Gather(features, p expanded over blocks)."""
    if attr_int(flatten, "axis", 1) != 1:
        return Decline("the Flatten after it does not flatten from axis 1")
    ctx.ensure_shapes()
    assert gather.inputs[0] is not None  # fold_permutation checked it
    dims = dims_after_batch(gather.inputs[0].shape)
    if dims is None:
        return Decline("the input's shape is not static, so its flattened features are unknown")
    positions = math.prod(dims[1:])
    features = (order[:, None] * positions + np.arange(positions)[None, :]).reshape(-1)
    indices = folded(features, ir.DataType.INT64)
    assert not isinstance(indices, Decline)  # integers are not rounded
    data = gather.inputs[0]

    def apply() -> Applied:
        value = ctx.register(f"{gather.name or 'gather'}_features", indices)
        new_flatten = new_node("Flatten", [data], copy_attributes(flatten), flatten.name)
        new_flatten.outputs[0].name = ctx.namer.fresh(f"{flatten.outputs[0].name}_unpermuted")
        new_flatten.outputs[0].type = flatten.outputs[0].type
        new_gather = new_node(
            "Gather", [new_flatten.outputs[0], value], copy_attributes(gather), gather.name
        )
        replace_nodes(
            ctx.graph,
            [gather, flatten],
            [new_flatten, new_gather],
            [flatten.outputs[0]],
            [new_gather.outputs[0]],
        )
        return Applied(
            "permute+flatten",
            (node_label(gather), node_label(flatten)),
            (node_label(new_flatten), node_label(new_gather)),
        )

    return Plan("permute+flatten", apply)


def _before_arithmetic(
    gather: ir.Node, inverse: np.ndarray, op: ir.Node, ctx: FoldContext
) -> Plan | Decline:
    """Gather(x, p) -> op(., c)  ==  op(x, c') -> Gather(., p), with c' = c[:, p^-1] along the
    channel axis, for a Mul / Add / Sub / Div by a per-channel constant (or a constant image) whose
    output a layer reads: the permutation then reaches that layer and folds on the next run (the
    input's shift the `affine` pass leaves before a padded Conv sits here). Bit for bit: the same
    operations on the same values, in another channel order."""
    follower = sole_consumer(op.outputs[0])
    if follower is None or follower.op_type not in ("Conv", "Gemm", "MatMul", "Flatten"):
        return Decline(
            f"its output feeds {op.op_type}, and no layer that could absorb it reads that"
        )
    affine = read_arithmetic(op, ctx.policy)
    if not isinstance(affine, Affine) or affine.input is not gather.outputs[0]:
        return Decline(f"its output feeds {op.op_type} by a constant that is not per channel")
    index = 1 if op.inputs[0] is affine.input else 0
    constant_in = op.inputs[index]
    assert constant_in is not None and isinstance(constant_in.type, ir.TensorType)
    constant = ctx.policy.contents(constant_in)
    assert constant is not None
    shape = affine.input.shape or op.outputs[0].shape
    assert shape is not None  # read_arithmetic needs one of them
    if constant.ndim > len(shape):
        return Decline(f"its output feeds {op.op_type} by a constant of higher rank than its input")
    aligned = constant.reshape((1,) * (len(shape) - constant.ndim) + constant.shape)
    if aligned.shape[1] == len(inverse):
        aligned = np.take(aligned, inverse, axis=1)
    permuted = folded(aligned, constant_in.type.dtype)
    if isinstance(permuted, Decline):
        return permuted
    rule = f"permute+{op.op_type.lower()}"

    def apply() -> Applied:
        value = ctx.register(base_name(constant_in, "c"), permuted)
        inputs = [gather.inputs[0], value] if index == 1 else [value, gather.inputs[0]]
        moved = new_node(op.op_type, inputs, copy_attributes(op), op.name)
        moved.outputs[0].name = ctx.namer.fresh(f"{op.outputs[0].name}_unpermuted")
        moved.outputs[0].type = op.outputs[0].type
        new_gather = new_node("Gather", [moved.outputs[0], gather.inputs[1]],
                              copy_attributes(gather), gather.name)  # fmt: skip
        replace_nodes(ctx.graph, [gather, op], [moved, new_gather], [op.outputs[0]],
                      [new_gather.outputs[0]])  # fmt: skip
        return Applied(
            rule, (node_label(gather), node_label(op)), (node_label(moved), node_label(new_gather))
        )

    return Plan(rule, apply)


class FoldPermutation(RewritePass):
    spec = PassSpec(
        "permute",
        Exactness.REASSOCIATE,
        "fold constant channel permutations (Gather on axis 1) into the weights that read them",
    )

    def run(self, model: ir.Model, options: PassOptions) -> list[Site]:
        policy = ConstantPolicy(model, freeze_initializer_inputs=options.freeze_initializer_inputs)
        candidates = [
            (g, n)
            for g in iter_graphs(model.graph)
            for n in g
            if read_permutation(n, policy) is not None
        ]
        if not candidates:
            return []
        namer, shapes = Namer(model), ShapesOnDemand(model)
        sites = []
        for graph, node in candidates:
            if node.graph is None:
                continue
            order = read_permutation(node, policy)
            assert order is not None
            ctx = FoldContext(graph, policy, namer, ensure_shapes=shapes)
            label = node_label(node)
            plan = fold_permutation(node, order, ctx)
            if isinstance(plan, Decline):
                sites.append(Site("permute", label, False, plan.reason))
                continue
            result = plan.apply()
            sites.append(Site(result.rule, label, True, removed=result.removed, added=result.added))
        return sites
