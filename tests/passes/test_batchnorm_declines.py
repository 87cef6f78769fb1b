"""Where BatchNorm must not fold, and says why; shared weights; subgraphs; other domains; Mul+Add."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from helpers import F32, assert_same_outputs, bn_node, bn_params, fold, make_model, op_types, sites
from optkit import PassOptions


def conv_bn(rng, *, extra_nodes=(), outputs=(("y", F32, None),), **model_kwargs):
    inits = {"W": rng.standard_normal((4, 3, 3, 3)).astype(np.float32), **bn_params(rng, 4)}
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["h"], name="conv"),
        bn_node("h", "y"),
        *extra_nodes,
    ]
    return make_model(nodes, [("x", F32, [1, 3, 6, 6])], list(outputs), inits, **model_kwargs)


def only_site(result):
    (site,) = sites(result)
    return site


def test_conv_output_with_another_consumer(rng):
    model = conv_bn(
        rng,
        extra_nodes=[helper.make_node("Relu", ["h"], ["z"])],
        outputs=[("y", F32, None), ("z", F32, None)],
    )
    result = fold(model)
    assert "BatchNormalization" in op_types(result.model)
    site = only_site(result)
    assert not site.applied and "'h' has 2 consumers" in site.reason


def test_conv_output_that_is_a_graph_output(rng):
    model = conv_bn(rng, outputs=[("y", F32, None), ("h", F32, None)])
    site = only_site(fold(model))
    assert "graph output" in site.reason


def test_weight_is_a_graph_input(rng):
    inits = bn_params(rng, 4)
    nodes = [helper.make_node("Conv", ["x", "W"], ["h"]), bn_node("h", "y")]
    model = make_model(
        nodes, [("x", F32, [1, 3, 6, 6]), ("W", F32, [4, 3, 3, 3])], [("y", F32, None)], inits
    )
    site = only_site(fold(model))
    assert "'W' is a graph input, not a constant" in site.reason


def test_bn_parameters_that_are_overridable_inputs_are_not_folded(rng):
    model = conv_bn(rng, inits_as_inputs=True, ir_version=7)
    site = only_site(fold(model))
    assert "also a graph input" in site.reason and "--freeze-initializer-inputs" in site.reason


def test_freeze_initializer_inputs_folds_them(rng):
    model = conv_bn(rng, inits_as_inputs=True, ir_version=7)
    result = fold(model, options=PassOptions(freeze_initializer_inputs=True))
    assert op_types(result.model) == ["Conv"]
    assert_same_outputs(
        model, result.model, {"x": rng.standard_normal((1, 3, 6, 6)).astype(np.float32)}
    )


def test_ir_version_3_initializer_inputs_are_constants(rng):
    model = conv_bn(rng, inits_as_inputs=True, ir_version=3, opset=8)
    result = fold(model)
    assert op_types(result.model) == ["Conv"]
    listed = {v.name for v in result.model.graph.inputs}
    assert {name for name in result.model.graph.initializers} <= listed  # IR 3 rule kept
    assert_same_outputs(
        model, result.model, {"x": rng.standard_normal((1, 3, 6, 6)).astype(np.float32)}
    )


def test_training_mode_is_declined(rng):
    model = conv_bn(rng)
    model.graph.node[1].attribute.append(helper.make_attribute("training_mode", 1))
    site = only_site(fold(model))
    assert "training_mode=1" in site.reason


def test_running_stat_outputs_used_is_declined(rng):
    model = conv_bn(rng, opset=9, outputs=[("y", F32, None), ("running_mean", F32, [4])])
    model.graph.node[1].output.extend(["running_mean", "running_var", "saved_mean", "saved_var"])
    site = only_site(fold(model))
    assert "running-statistics outputs are used" in site.reason


def test_nonpositive_variance_plus_epsilon_is_declined(rng):
    model = conv_bn(rng)
    for init in model.graph.initializer:
        if init.name == "bn.var":
            var = onnx.numpy_helper.to_array(init).copy()
            var[2] = -1.0
            init.CopyFrom(onnx.numpy_helper.from_array(var, "bn.var"))
    result = fold(model)
    assert "BatchNormalization" in op_types(result.model)
    assert "variance + epsilon <= 0 in channel(s) [2]" in only_site(result).reason
    for init in result.model.graph.initializers.values():
        assert np.all(np.isfinite(init.const_value.numpy()))


def test_spatial_zero_with_per_activation_parameters_is_declined(rng):
    inits = {
        "W": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        **{k: np.resize(v, (4, 4, 4)) for k, v in bn_params(rng, 4).items()},
    }
    nodes = [helper.make_node("Conv", ["x", "W"], ["h"]), bn_node("h", "y", spatial=0)]
    model = make_model(
        nodes,
        [("x", F32, [1, 3, 6, 6])],
        [("y", F32, [1, 4, 4, 4])],
        inits,
        opset=7,
        ir_version=3,
        inits_as_inputs=True,
    )
    site = only_site(fold(model))
    assert "spatial=0" in site.reason


def test_shared_weight_is_cloned_never_overwritten(rng):
    inits = {
        "W": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        **bn_params(rng, 4, "bn1"),
        **bn_params(rng, 4, "bn2"),
    }
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["h1"]),
        bn_node("h1", "y1", "bn1"),
        helper.make_node("Conv", ["x", "W"], ["h2"]),
        bn_node("h2", "y2", "bn2"),
        helper.make_node("Conv", ["x", "W"], ["y3"]),
    ]
    model = make_model(
        nodes,
        [("x", F32, [1, 3, 6, 6])],
        [("y1", F32, None), ("y2", F32, None), ("y3", F32, None)],
        inits,
    )
    result = fold(model)
    assert op_types(result.model) == ["Conv", "Conv", "Conv"]
    weights = [n.inputs[1] for n in result.model.graph]
    assert len({id(w) for w in weights}) == 3
    np.testing.assert_array_equal(weights[2].const_value.numpy(), inits["W"])  # the unfolded user
    assert_same_outputs(
        model, result.model, {"x": rng.standard_normal((1, 3, 6, 6)).astype(np.float32)}
    )


def test_bn_after_an_unknown_domain_op_is_left_alone(rng):
    inits = bn_params(rng, 3)
    nodes = [helper.make_node("Foo", ["x"], ["h"], domain="com.example"), bn_node("h", "y")]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", F32, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", F32, [1, 3, 4, 4])],
        [onnx.numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    )
    result = fold(model)
    assert [(n.domain, n.op_type) for n in result.model.graph] == [
        ("com.example", "Foo"),
        ("", "BatchNormalization"),
    ]
    assert "com.example::Foo" in only_site(result).reason


def test_folds_inside_if_branches(rng):
    """Rewrites recurse into subgraphs; branch nodes may read the outer graph's initializers."""
    inits = {"W": rng.standard_normal((4, 3, 3, 3)).astype(np.float32), **bn_params(rng, 4)}
    then_graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W"], ["th"], pads=[1, 1, 1, 1]), bn_node("th", "t_out")],
        "then",
        [],
        [helper.make_tensor_value_info("t_out", F32, [1, 4, 6, 6])],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W"], ["e_out"], pads=[1, 1, 1, 1])],
        "else",
        [],
        [helper.make_tensor_value_info("e_out", F32, [1, 4, 6, 6])],
    )
    nodes = [
        helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph)
    ]
    model = make_model(
        nodes,
        [("x", F32, [1, 3, 6, 6]), ("cond", onnx.TensorProto.BOOL, [])],
        [("y", F32, [1, 4, 6, 6])],
        inits,
    )
    result = fold(model)
    then_ops = [
        n.op_type for n in next(iter(result.model.graph)).attributes["then_branch"].as_graph()
    ]
    assert then_ops == ["Conv"]
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    for cond in (True, False):
        assert_same_outputs(model, result.model, {"x": x, "cond": np.array(cond)})


def test_lone_bn_declined_by_default_and_mul_add_on_request(rng):
    inits = {**bn_params(rng, 3, "bn1"), **bn_params(rng, 3, "bn2")}
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        bn_node("r", "h", "bn1"),
        bn_node("h", "y", "bn2"),
    ]
    model = make_model(nodes, [("x", F32, ["N", 3, 4, 4])], [("y", F32, None)], inits)
    default = fold(model)
    assert op_types(default.model).count("BatchNormalization") == 2
    assert all("not into its producer" in s.reason for s in sites(default))
    affine = fold(model, options=PassOptions(bn_to_affine=True))
    assert op_types(affine.model) == ["Relu", "Mul", "Add"]  # the chain became one Mul + Add
    assert [s.rule for s in sites(affine) if s.applied] == ["bn-chain->mul+add"]
    assert affine.model.graph.outputs[0].name == "y"
    assert_same_outputs(
        model, affine.model, {"x": rng.standard_normal((2, 3, 4, 4)).astype(np.float32)}
    )


@pytest.mark.parametrize("passes", [("batchnorm",), ("batchnorm", "unused")])
def test_declined_sites_do_not_change_the_graph(rng, passes):
    model = conv_bn(
        rng,
        extra_nodes=[helper.make_node("Relu", ["h"], ["z"])],
        outputs=[("y", F32, None), ("z", F32, None)],
    )
    result = fold(model, passes=passes)
    assert op_types(result.model) == ["Conv", "BatchNormalization", "Relu"]
    assert_same_outputs(
        model, result.model, {"x": rng.standard_normal((1, 3, 6, 6)).astype(np.float32)}, exact=True
    )


def test_new_names_never_clash_with_existing_ones(rng):
    """onnxoptimizer once reused names that already existed; optkit's new initializers are fresh."""
    taken = rng.standard_normal((4, 1, 1)).astype(np.float32)
    inits = {
        "W": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        **bn_params(rng, 4),
        "W_bnfold": taken,
    }  # the name optkit's folded weight would take first
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["h"]),
        bn_node("h", "b"),
        helper.make_node("Relu", ["b"], ["r"]),
        helper.make_node("Add", ["r", "W_bnfold"], ["y"]),
    ]
    model = make_model(nodes, [("x", F32, [1, 3, 6, 6])], [("y", F32, None)], inits)
    result = fold(model, passes=("batchnorm", "unused"))
    initializers = result.model.graph.initializers
    np.testing.assert_array_equal(initializers["W_bnfold"].const_value.numpy(), taken)
    conv = next(iter(result.model.graph))
    assert conv.op_type == "Conv" and conv.inputs[1].name not in ("W", "W_bnfold")
    assert_same_outputs(
        model, result.model, {"x": rng.standard_normal((1, 3, 6, 6)).astype(np.float32)}
    )


def test_a_fold_whose_weights_would_overflow_the_dtype_declines(rng):
    """A Conv weight near float32's maximum and a BN scale above 1: the folded weight would round
    to infinity, so the fold declines (found by fuzzing) and the model keeps its BatchNorm."""
    model = conv_bn(rng)
    weight = next(t for t in model.graph.initializer if t.name == "W")
    values = onnx.numpy_helper.to_array(weight).copy()
    values[0, 0, 0, 0] = 3.0e38
    weight.CopyFrom(onnx.numpy_helper.from_array(values, "W"))
    scale = next(t for t in model.graph.initializer if t.name == "bn.scale")
    scale.CopyFrom(onnx.numpy_helper.from_array(np.full(4, 4.0, np.float32), "bn.scale"))
    result = fold(model, verify=True)
    site = only_site(result)
    assert not site.applied and "beyond FLOAT's range" in site.reason
    assert "BatchNormalization" in op_types(result.model) and result.report.ok
