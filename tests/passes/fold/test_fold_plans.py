"""Fold rules read, check and plan without touching the model; only `Plan.apply` mutates it.

A rule that declines (an overflow of the weight dtype included, found while planning) leaves the
model byte for byte as it was, with no leftover initializer; a plan that is applied gives the model
the pass gives."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper

from helpers import F32, assert_same_outputs, bn_node, bn_params, make_model, sites
from optkit.core.contract import Decline
from optkit.core.graph import ConstantPolicy, Namer, iter_graphs
from optkit.passes.affine import merge_into_batchnorm
from optkit.passes.batchnorm import to_mul_add
from optkit.passes.fold.affine_map import Affine, read_arithmetic, read_batchnorm
from optkit.passes.fold.into_consumer import fold_into_consumer
from optkit.passes.fold.into_producer import fold_into_producer
from optkit.passes.fold.support import FoldContext, Plan
from optkit.passes.permute import fold_permutation, read_permutation

F16 = onnx.TensorProto.FLOAT16


def model_bytes(model: ir.Model) -> bytes:
    return ir.to_proto(model).SerializeToString()


def context(model: ir.Model) -> FoldContext:
    return FoldContext(model.graph, ConstantPolicy(model), Namer(model), opset=17)


def node_named(model: ir.Model, name: str) -> ir.Node:
    return next(n for g in iter_graphs(model.graph) for n in g if n.name == name)


def bn_of(model: ir.Model, name: str = "bn") -> Affine:
    affine = read_batchnorm(node_named(model, name), ConstantPolicy(model), 17)
    assert isinstance(affine, Affine), affine
    return affine


def conv_bn_model(rng, dtype=np.float32, *, bias=None, gamma=None, bn_first=False):
    """x -> Conv -> BN -> y, or x -> BN -> Conv -> y (`bn_first`), in `dtype`; weights in
    [-1, 1] but W[0, 0, 0, 0] = 2, and var = 1 where `gamma` is given (s = gamma / 1.000005)."""
    elem = F16 if dtype == np.float16 else F32
    params = bn_params(rng, 3 if bn_first else 4, dtype=dtype)
    if gamma is not None:
        params["bn.scale"] = np.asarray(gamma, dtype)
        params["bn.var"] = np.ones(len(gamma), dtype)
    weight = rng.uniform(-1, 1, (4, 3, 3, 3)).astype(dtype)
    weight[0, 0, 0, 0] = 2
    inits = {"W": weight, **params}
    conv_inputs = ["h" if bn_first else "x", "W"]
    if bias is not None:
        inits["b"] = np.asarray(bias, dtype)
        conv_inputs.append("b")
    if bn_first:
        nodes = [bn_node("x", "h"), helper.make_node("Conv", conv_inputs, ["y"], name="conv")]
    else:
        nodes = [helper.make_node("Conv", conv_inputs, ["h"], name="conv"), bn_node("h", "y")]
    proto = make_model(nodes, [("x", elem, [1, 3, 6, 6])], [("y", elem, None)], inits)
    return proto, ir.from_proto(proto)


def test_weight_overflow_in_fp16_declines_before_any_change(rng):
    """gamma = 6e4 on a weight of 2: the folded weight overflows fp16 -> a Decline, nothing
    registered."""
    _, model = conv_bn_model(rng, np.float16, gamma=[6e4, 1, 1, 1])
    before = model_bytes(model)
    plan = fold_into_producer(bn_of(model), context(model))
    assert isinstance(plan, Decline)
    assert "beyond FLOAT16's range" in plan.reason
    assert model_bytes(model) == before


def test_bias_overflow_after_a_fitting_weight_leaves_no_initializer(rng):
    """The weight folds fine and the bias overflows: the case an undo log once had to clean up."""
    _, model = conv_bn_model(rng, np.float16, bias=[6e4, 0, 0, 0], gamma=[1.9, 1, 1, 1])
    affine = bn_of(model)
    assert abs(affine.scale[0]) > 1.05  # 6e4 * s reaches beyond fp16's 65504
    names = set(model.graph.initializers)
    before = model_bytes(model)
    plan = fold_into_producer(affine, context(model))
    assert isinstance(plan, Decline) and "beyond FLOAT16's range" in plan.reason
    assert set(model.graph.initializers) == names
    assert model_bytes(model) == before


def test_pass_declining_on_overflow_reports_it_and_changes_nothing(rng):
    import optkit

    proto, model = conv_bn_model(rng, np.float16, bias=[6e4, 0, 0, 0], gamma=[1.9, 1, 1, 1])
    result = optkit.fuse(proto, passes=["batchnorm"], verify_result=False)
    (site,) = sites(result)
    assert not site.applied
    assert "not into its producer (folded values reach" in site.reason
    assert set(result.model.graph.initializers) == set(model.graph.initializers)


@pytest.mark.parametrize("bn_first", [False, True], ids=["into-producer", "into-consumer"])
def test_plan_is_pure_and_apply_gives_the_pass_result(rng, bn_first):
    import optkit

    proto, model = conv_bn_model(rng, bias=[0.1, 0.2, 0.3, 0.4], bn_first=bn_first)
    rule = fold_into_consumer if bn_first else fold_into_producer
    before = model_bytes(model)
    plan = rule(bn_of(model), context(model))
    assert isinstance(plan, Plan)
    assert model_bytes(model) == before  # planning changed nothing
    applied = plan.apply()
    assert applied.rule == plan.rule == ("bn+conv" if bn_first else "conv+bn")
    assert [n.op_type for n in model.graph] == ["Conv"]
    by_pass = optkit.fuse(proto, passes=["batchnorm", "unused"], verify_result=False).model
    ir.passes.common.RemoveUnusedNodesPass()(model)
    assert model_bytes(model) == model_bytes(by_pass)
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    assert_same_outputs(proto, model, {"x": x}, rtol=1e-4)


def test_to_mul_add_declines_on_overflow_without_change(rng):
    """BN with var + eps tiny and a large gamma: s overflows fp16 as a Mul constant."""
    params = bn_params(rng, 2, dtype=np.float16)
    params["bn.scale"] = np.array([6e4, 1], np.float16)
    params["bn.var"] = np.array([1e-3, 1], np.float16)
    proto = make_model([bn_node("x", "y")], [("x", F16, [1, 2, 3])], [("y", F16, None)], params)
    model = ir.from_proto(proto)
    before = model_bytes(model)
    plan = to_mul_add(bn_of(model), context(model))
    assert isinstance(plan, Decline) and "beyond FLOAT16's range" in plan.reason
    assert model_bytes(model) == before


def test_merge_into_batchnorm_declines_on_overflow_without_change(rng):
    params = bn_params(rng, 3, dtype=np.float16)
    inits = {**params, "c": np.array([1, 3e4, 1], np.float16).reshape(3, 1, 1)}
    params["bn.scale"][1] = 4.0
    inits["bn.scale"] = params["bn.scale"]
    nodes = [bn_node("x", "h"), helper.make_node("Mul", ["h", "c"], ["y"], name="mul")]
    proto = make_model(nodes, [("x", F16, [1, 3, 4, 4])], [("y", F16, None)], inits)
    model = ir.from_proto(proto)
    ir.passes.common.ShapeInferencePass()(model)
    affine = read_arithmetic(node_named(model, "mul"), ConstantPolicy(model))
    assert isinstance(affine, Affine)
    before = model_bytes(model)
    plan = merge_into_batchnorm(affine, context(model))
    assert isinstance(plan, Decline) and "beyond FLOAT16's range" in plan.reason
    assert model_bytes(model) == before


def test_permutation_plan_is_pure(rng):
    inits = {"W": rng.standard_normal((4, 3, 1, 1)).astype(np.float32),
             "idx": np.array([2, 0, 1], np.int64)}  # fmt: skip
    nodes = [helper.make_node("Gather", ["x", "idx"], ["g"], axis=1, name="gather"),
             helper.make_node("Conv", ["g", "W"], ["y"], name="conv")]  # fmt: skip
    proto = make_model(nodes, [("x", F32, [1, 3, 4, 4])], [("y", F32, None)], inits)
    model = ir.from_proto(proto)
    gather = node_named(model, "gather")
    order = read_permutation(gather, ConstantPolicy(model))
    assert order is not None
    before = model_bytes(model)
    plan = fold_permutation(gather, order, context(model))
    assert isinstance(plan, Plan) and model_bytes(model) == before
    assert plan.apply().rule == "permute+conv"
    assert [n.op_type for n in model.graph] == ["Conv"]
    x = rng.standard_normal((1, 3, 4, 4)).astype(np.float32)
    assert_same_outputs(proto, model, {"x": x})
