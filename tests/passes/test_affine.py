"""Per-channel Mul / Add / Sub / Div by constants: folded into layers, merged into BatchNorm."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper

from helpers import F32, assert_same_outputs, bn_node, bn_params, fold, make_model, op_types, sites

PASSES = ("affine", "unused")


def conv_then(rng, ops, consts, c=4):
    """x -> Conv -> op_1(., const_1) -> ... -> y."""
    inits = {"W": rng.standard_normal((c, 3, 3, 3)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "W"], ["h0"], pads=[1, 1, 1, 1])]
    for i, (op, const) in enumerate(zip(ops, consts, strict=True)):
        inits[f"c{i}"] = const.astype(np.float32)
        out = "y" if i == len(ops) - 1 else f"h{i + 1}"
        operands = [f"c{i}", f"h{i}"] if op.endswith("-left") else [f"h{i}", f"c{i}"]
        nodes.append(helper.make_node(op.removesuffix("-left"), operands, [out]))
    return make_model(nodes, [("x", F32, ["N", 3, 6, 6])], [("y", F32, None)], inits)


X = {"x": np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32)}


@pytest.mark.parametrize(
    ("ops", "shapes"),
    [
        (["Mul", "Add"], [(4, 1, 1), (1, 4, 1, 1)]),
        (["Mul"], [()]),
        (["Sub"], [(4, 1, 1)]),
        (["Sub-left"], [(4, 1, 1)]),
        (["Div", "Add-left"], [(4, 1, 1), (1,)]),
    ],
)
def test_per_channel_arithmetic_after_conv_folds_into_it(rng, ops, shapes):
    consts = [rng.uniform(0.5, 1.5, s) for s in shapes]
    model = conv_then(rng, ops, consts)
    result = fold(model, passes=PASSES)
    assert op_types(result.model) == ["Conv"]
    assert result.model.graph.outputs[0].name == "y"
    assert_same_outputs(model, result.model, X)
    second = fold(result.to_proto(), passes=PASSES)
    assert not [s for s in sites(second, "affine") if s.applied]


def test_constant_that_is_not_per_channel_is_not_a_candidate(rng):
    model = conv_then(rng, ["Mul"], [rng.uniform(size=(1, 1, 6, 6))])
    result = fold(model, passes=PASSES)
    assert op_types(result.model) == ["Conv", "Mul"]
    assert sites(result, "affine") == []


def test_division_by_zero_is_declined(rng):
    divisor = np.array([1.0, 0.0, 2.0, 3.0]).reshape(4, 1, 1)
    result = fold(conv_then(rng, ["Div"], [divisor]), passes=PASSES)
    assert op_types(result.model) == ["Conv", "Div"]
    assert "divides by a constant with zeros" in sites(result, "affine")[0].reason


def test_residual_add_of_two_computed_values_is_untouched(rng):
    inits = {"W": rng.standard_normal((3, 3, 1, 1)).astype(np.float32)}
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["h"]),
        helper.make_node("Add", ["h", "x"], ["y"]),
    ]
    model = make_model(nodes, [("x", F32, [1, 3, 4, 4])], [("y", F32, None)], inits)
    result = fold(model, passes=PASSES)
    assert op_types(result.model) == ["Conv", "Add"] and sites(result, "affine") == []


def test_mul_add_after_unfoldable_batchnorm_merge_into_it(rng):
    """DenseNet as exported from Caffe2: Concat -> BN -> Mul -> Add -> Relu. One BN is left."""
    inits = {
        **bn_params(rng, 4),
        "s": rng.uniform(0.5, 2, (4, 1, 1)).astype(np.float32),
        "t": rng.uniform(-1, 1, (4, 1, 1)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Concat", ["a", "b"], ["cat"], axis=1),
        bn_node("cat", "n"),
        helper.make_node("Mul", ["n", "s"], ["m"]),
        helper.make_node("Add", ["m", "t"], ["r"]),
        helper.make_node("Relu", ["r"], ["y"]),
    ]
    model = make_model(
        nodes, [("a", F32, [1, 2, 5, 5]), ("b", F32, [1, 2, 5, 5])], [("y", F32, None)], inits
    )
    result = fold(model, passes=("batchnorm", *PASSES))
    assert op_types(result.model) == ["Concat", "BatchNormalization", "Relu"]
    assert [s.rule for s in sites(result, "affine") if s.applied] == ["bn+mul", "bn+add"]
    feeds = {k: rng.standard_normal((1, 2, 5, 5)).astype(np.float32) for k in ("a", "b")}
    assert_same_outputs(model, result.model, feeds)


def test_mul_before_conv_folds_into_the_conv(rng):
    inits = {
        "s": rng.uniform(0.5, 2, (1, 3, 1, 1)).astype(np.float32),
        "W": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Mul", ["r", "s"], ["m"]),
        helper.make_node("Conv", ["m", "W"], ["y"], pads=[1, 1, 1, 1]),
    ]
    model = make_model(nodes, [("x", F32, ["N", 3, 6, 6])], [("y", F32, None)], inits)
    result = fold(model, passes=PASSES)
    assert op_types(result.model) == ["Relu", "Conv"]  # a pure scale needs no border correction
    assert [s.rule for s in sites(result, "affine") if s.applied] == ["mul+conv"]
    assert_same_outputs(model, result.model, X)


def test_gemm_then_per_feature_scale_and_shift(rng):
    inits = {
        "B": rng.standard_normal((5, 6)).astype(np.float32),
        "s": rng.uniform(0.5, 2, 6).astype(np.float32),
        "t": rng.uniform(-1, 1, 6).astype(np.float32),
    }
    nodes = [
        helper.make_node("Gemm", ["a", "B"], ["g"]),
        helper.make_node("Mul", ["s", "g"], ["m"]),
        helper.make_node("Sub", ["m", "t"], ["y"]),
    ]
    model = make_model(nodes, [("a", F32, [3, 5])], [("y", F32, None)], inits)
    result = fold(model, passes=PASSES)
    assert op_types(result.model) == ["Gemm"]
    assert_same_outputs(model, result.model, {"a": rng.standard_normal((3, 5)).astype(np.float32)})


def _shift_before_padded_conv(rng, nodes, inits, c_in=3, c_out=8, spatial=(6, 6), **conv):
    """`nodes` compute 'h' from 'x' (c_in channels, 6x6 unless `spatial` says otherwise: names are
    dynamic dims); a padded 3x3 Conv reads 'h'."""
    inits = {**inits, "W": rng.standard_normal((c_out, c_in, 3, 3)).astype(np.float32)}
    conv = conv or {"pads": [1, 1, 1, 1]}
    nodes = [*nodes, helper.make_node("Conv", ["h", "W"], ["y"], **conv)]
    return make_model(nodes, [("x", F32, ["N", c_in, *spatial])], [("y", F32, None)], inits)


def test_a_shift_before_a_padded_conv_stays_on_the_input_where_that_is_cheaper(rng):
    """Sub(x, m) -> Conv with 3 input and 8 output channels: folding the shift needs a border
    correction over 8x6x6 outputs, more than the 3x6x6 Sub it would remove."""
    inits = {"m": rng.uniform(-1, 1, (1, 3, 1, 1)).astype(np.float32)}
    model = _shift_before_padded_conv(rng, [helper.make_node("Sub", ["x", "m"], ["h"])], inits)
    result = fold(model, passes=PASSES)
    assert op_types(result.model) == ["Sub", "Conv"]
    (site,) = sites(result, "affine")
    assert not site.applied
    assert "an Add over its 108 input values per sample costs less than" in site.reason
    assert "border correction over the Conv's 288 outputs" in site.reason


def test_scale_then_shift_before_a_padded_conv_leave_one_add_on_the_input(rng):
    """x * a - m = a (x - m / a): the scale folds into the weights, x - m / a stays (one Add)."""
    inits = {
        "a": rng.uniform(0.5, 2, (1, 3, 1, 1)).astype(np.float32),
        "m": rng.uniform(-1, 1, (1, 3, 1, 1)).astype(np.float32),
    }
    nodes = [helper.make_node("Mul", ["x", "a"], ["s"]), helper.make_node("Sub", ["s", "m"], ["h"])]
    model = _shift_before_padded_conv(rng, nodes, inits)
    result = fold(model, passes=PASSES)
    assert op_types(result.model) == ["Add", "Conv"]
    assert [s.rule for s in sites(result, "affine") if s.applied] == ["sub+conv(shift on input)"]
    assert_same_outputs(model, result.model, X)


def test_batchnorm_before_a_padded_conv_folds_where_it_costs_least(rng):
    """BN's scale and shift: the shift onto the input (3 -> 8 channels), or the border correction
    when the Conv has fewer outputs than inputs (8 -> 2), or when a scale is zero (t / s)."""
    for c_in, c_out, zero_scale, ops in (
        (3, 8, False, ["Add", "Conv"]),
        (8, 2, False, ["Conv", "Add"]),
        (3, 8, True, ["Conv", "Add"]),
    ):
        params = bn_params(rng, c_in)
        if zero_scale:
            params["bn.scale"][1] = 0
        model = _shift_before_padded_conv(rng, [bn_node("x", "h")], params, c_in, c_out)
        result = fold(model, passes=("batchnorm", "affine", "unused"))
        assert op_types(result.model) == ops, (c_in, c_out, zero_scale)
        feeds = {"x": rng.standard_normal((2, c_in, 6, 6)).astype(np.float32)}
        assert_same_outputs(model, result.model, feeds)


def test_a_conv_with_malformed_pads_is_declined_not_a_crash(rng):
    inits = {"m": rng.uniform(-1, 1, (1, 3, 1, 1)).astype(np.float32)}
    model = _shift_before_padded_conv(rng, [helper.make_node("Sub", ["x", "m"], ["h"])], inits)
    model.graph.node[-1].attribute[0].ints[:] = [1, 1, 1]  # found by tools/fuzz.py
    result = fold(model, passes=PASSES)
    assert op_types(result.model) == ["Sub", "Conv"]
    assert "Conv pads (1, 1, 1) for a rank-2 kernel" in sites(result, "affine")[0].reason


def test_the_scale_of_a_decomposed_gelu_is_not_taken_with_the_shift_after_it(rng):
    """Opset 17 has no Gelu op, so the chain stays whole for runtimes to fuse: the shift after it
    stays on the input without taking the chain's final Mul by 0.5 along."""
    inits = {
        "r2": np.array(np.sqrt(2), np.float32),
        "one": np.array(1, np.float32),
        "half": np.array(0.5, np.float32),
        "m": rng.uniform(-1, 1, (1, 3, 1, 1)).astype(np.float32),
    }
    gelu_then_shift = [
        helper.make_node("Div", ["x", "r2"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["a"]),
        helper.make_node("Mul", ["x", "a"], ["xa"]),
        helper.make_node("Mul", ["xa", "half"], ["g"]),
        helper.make_node("Add", ["g", "m"], ["h"]),
    ]
    model = _shift_before_padded_conv(rng, gelu_then_shift, inits)
    model.opset_import[0].version = 17
    result = fold(model, passes=PASSES)
    assert op_types(result.model) == ["Div", "Erf", "Add", "Mul", "Mul", "Add", "Conv"]
    assert_same_outputs(model, result.model, X)


def test_a_fold_that_overflows_leaves_no_initializers_behind(rng):
    """x * a - m before a padded Conv: the shift's constant m / a is made before the weights times a
    overflow float32; the declined rule must not leave it in the graph (a declining pass reports no
    change, so `unused` would not run after it; found by tools/fuzz.py checking that fuse on its
    own output applies nothing)."""
    inits = {
        "a": np.full((1, 3, 1, 1), 1e37, np.float32),
        "m": np.ones((1, 3, 1, 1), np.float32),
    }
    nodes = [helper.make_node("Mul", ["x", "a"], ["s"]), helper.make_node("Sub", ["s", "m"], ["h"])]
    model = _shift_before_padded_conv(rng, nodes, inits)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 1e3  # replaces the helper's W
    model.graph.initializer[-1].CopyFrom(numpy_helper.from_array(w, "W"))
    result = fold(model, passes=("affine",))
    assert op_types(result.model) == ["Mul", "Sub", "Conv"]
    assert any("beyond FLOAT's range" in s.reason for s in sites(result, "affine"))
    assert sorted(result.model.graph.initializers) == ["W", "a", "m"]


DYNAMIC = ("N", "H", "W")


def _at_two_sizes(rng, model, result, c_in=3):
    for shape in ((1, c_in, 9, 7), (3, c_in, 16, 16)):
        feeds = {"x": rng.standard_normal(shape).astype(np.float32)}
        assert_same_outputs(model, result.model, feeds)


def test_a_pure_scale_before_a_padded_conv_folds_at_a_dynamic_size(rng):
    """pad0(x / s) = pad0(x) / s: a scale needs no border correction, so no static size either (it
    used to become an Add of zeros on the input, which kept a shift before it from folding)."""
    inits = {"s": rng.uniform(0.5, 2, (3, 1, 1)).astype(np.float32)}
    model = _shift_before_padded_conv(
        rng, [helper.make_node("Div", ["x", "s"], ["h"])], inits, spatial=DYNAMIC[1:]
    )
    result = fold(model, passes=PASSES)
    assert op_types(result.model) == ["Conv"]
    assert [s.rule for s in sites(result, "affine") if s.applied] == ["div+conv"]
    assert len(next(iter(result.model.graph)).inputs) == 2  # no bias made up where there was none
    _at_two_sizes(rng, model, result)


@pytest.mark.parametrize(
    "conv",
    [
        {"pads": [1, 1, 1, 1]},
        {"pads": [1, 0, 1, 2], "strides": [2, 2], "dilations": [1, 2]},
        {"auto_pad": "SAME_UPPER"},
    ],
)
def test_scale_shift_and_std_before_a_padded_conv_at_a_dynamic_size_leave_one_add(rng, conv):
    """(x a - m) / std at a dynamic size: 1/std and a into the weights, one Add(x, -m / a) on the
    input (the border correction is a constant per output position: it needs a static size)."""
    inits = {
        "a": np.array(1 / 255, np.float32),
        "m": rng.uniform(0, 1, (1, 3, 1, 1)).astype(np.float32),
        "std": rng.uniform(0.2, 0.3, (3, 1, 1)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Mul", ["x", "a"], ["s"]),
        helper.make_node("Sub", ["s", "m"], ["d"]),
        helper.make_node("Div", ["d", "std"], ["h"]),
    ]
    model = _shift_before_padded_conv(rng, nodes, inits, spatial=DYNAMIC[1:], **conv)
    result = fold(model, passes=PASSES)
    assert op_types(result.model) == ["Add", "Conv"]
    assert [s.rule for s in sites(result, "affine") if s.applied] == [
        "div+conv",
        "sub+conv(shift on input)",
    ]
    _at_two_sizes(rng, model, result)
    second = fold(result.to_proto(), passes=PASSES)
    assert not [s for s in sites(second, "affine") if s.applied]
    (site,) = sites(second, "affine")
    assert "a border correction needs a static size" in site.reason


def test_a_batchnorm_with_a_zero_scale_before_a_padded_conv_at_a_dynamic_size_stays(rng):
    """t / s has no value where s = 0, and the border correction needs a static size: declined."""
    params = bn_params(rng, 3)
    params["bn.scale"][1] = 0
    model = _shift_before_padded_conv(rng, [bn_node("x", "h")], params, spatial=DYNAMIC[1:])
    result = fold(model, passes=("batchnorm", "affine", "unused"))
    assert op_types(result.model) == ["BatchNormalization", "Conv"]
    assert any("needs a static size" in s.reason for s in sites(result, "batchnorm"))
