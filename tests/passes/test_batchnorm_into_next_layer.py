"""BatchNorm before Gemm / MatMul / Conv (pre-activation nets), with the Conv border correction."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from helpers import F32, assert_same_outputs, bn_node, bn_params, fold, make_model, op_types, sites


@pytest.mark.parametrize(
    ("trans_b", "alpha", "beta", "c_shape"),
    [
        (0, 1.0, 1.0, None),
        (1, 1.0, 1.0, (6,)),
        (0, 0.5, 2.0, (1, 6)),
        (1, 2.0, 0.0, (6,)),
        (1, 1.0, 1.0, (3, 6)),
    ],
)
def test_bn_then_gemm(rng, trans_b, alpha, beta, c_shape):
    k, m = 5, 6
    inits = {
        "B": rng.standard_normal((m, k) if trans_b else (k, m)).astype(np.float32),
        **bn_params(rng, k),
    }
    inputs = ["h", "B"]
    if c_shape is not None:
        inits["C"] = rng.standard_normal(c_shape).astype(np.float32)
        inputs.append("C")
    nodes = [
        bn_node("x", "h"),
        helper.make_node("Gemm", inputs, ["y"], transB=trans_b, alpha=alpha, beta=beta),
    ]
    model = make_model(nodes, [("x", F32, [3, k])], [("y", F32, [3, m])], inits)
    result = fold(model)
    assert op_types(result.model) == ["Gemm"]
    assert [s.rule for s in sites(result) if s.applied] == ["bn+gemm"]
    assert_same_outputs(model, result.model, {"x": rng.standard_normal((3, k)).astype(np.float32)})


def test_bn_then_gemm_with_trans_a_is_declined(rng):
    inits = {"B": rng.standard_normal((3, 6)).astype(np.float32), **bn_params(rng, 5)}
    nodes = [bn_node("x", "h"), helper.make_node("Gemm", ["h", "B"], ["y"], transA=1)]
    model = make_model(nodes, [("x", F32, [3, 5])], [("y", F32, None)], inits)
    result = fold(model)
    (site,) = sites(result)
    assert not site.applied and "transA=1" in site.reason


def test_bn_then_matmul(rng):
    inits = {"W": rng.standard_normal((5, 6)).astype(np.float32), **bn_params(rng, 5)}
    nodes = [bn_node("x", "h"), helper.make_node("MatMul", ["h", "W"], ["y"])]
    model = make_model(nodes, [("x", F32, ["N", 5])], [("y", F32, None)], inits)
    result = fold(model)
    assert op_types(result.model) == ["Gemm"]
    assert_same_outputs(model, result.model, {"x": rng.standard_normal((4, 5)).astype(np.float32)})


# With padding the shift is folded where it costs least: an Add on the input (C_in x 9 x 8 values)
# before the Conv, or a border correction Add on its output (C_out x H' x W') after it.
CONV_CASES = [  # name, attributes, group, c_in, c_out, expected ops
    ("no-padding", {}, 1, 3, 4, ["Conv"]),
    ("no-padding-strided-grouped", {"strides": [2, 2]}, 2, 4, 6, ["Conv"]),
    ("valid", {"auto_pad": "VALID"}, 1, 3, 4, ["Conv"]),
    ("padded", {"pads": [1, 1, 1, 1]}, 1, 3, 4, ["Add", "Conv"]),
    (
        "padded-asymmetric-dilated",
        {"pads": [0, 2, 1, 0], "dilations": [2, 1]},
        1,
        3,
        4,
        ["Conv", "Add"],
    ),
    ("padded-grouped", {"pads": [1, 1, 1, 1]}, 2, 4, 6, ["Add", "Conv"]),
    ("same-upper-strided", {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, 1, 3, 4, ["Conv", "Add"]),
    ("same-lower", {"auto_pad": "SAME_LOWER"}, 3, 3, 3, ["Conv", "Add"]),
]


@pytest.mark.parametrize(
    ("name", "attrs", "group", "c_in", "c_out", "ops"), CONV_CASES, ids=[c[0] for c in CONV_CASES]
)
def test_bn_then_conv(rng, name, attrs, group, c_in, c_out, ops):
    inits = {
        "W": rng.standard_normal((c_out, c_in // group, 3, 3)).astype(np.float32),
        "b": rng.standard_normal(c_out).astype(np.float32),
        **bn_params(rng, c_in),
    }
    nodes = [
        bn_node("x", "h"),
        helper.make_node("Conv", ["h", "W", "b"], ["y"], group=group, **attrs),
    ]
    model = make_model(nodes, [("x", F32, ["N", c_in, 9, 8])], [("y", F32, None)], inits)
    result = fold(model)
    assert op_types(result.model) == ops
    assert result.model.graph.outputs[0].name == "y"
    assert_same_outputs(
        model, result.model, {"x": rng.standard_normal((2, c_in, 9, 8)).astype(np.float32)}
    )


def test_bn_then_padded_conv_with_dynamic_spatial_shape_keeps_its_shift_on_the_input(rng):
    """No border correction without a static size, but Conv(pad0(s x + t)) = Conv_(W s)(pad0(x + t/s))
    holds for every size: one Add stays. A BN with a zero scale (t / s) is declined."""
    params = bn_params(rng, 3)
    inits = {"W": rng.standard_normal((4, 3, 3, 3)).astype(np.float32), **params}
    nodes = [bn_node("x", "h"), helper.make_node("Conv", ["h", "W"], ["y"], pads=[1, 1, 1, 1])]
    model = make_model(nodes, [("x", F32, ["N", 3, "H", "W"])], [("y", F32, None)], inits)
    result = fold(model)
    assert op_types(result.model) == ["Add", "Conv"]
    feeds = {"x": rng.standard_normal((2, 3, 7, 5)).astype(np.float32)}
    assert_same_outputs(model, result.model, feeds)
    params["bn.scale"][0] = 0
    model = make_model(nodes, [("x", F32, ["N", 3, "H", "W"])], [("y", F32, None)], inits)
    result = fold(model)
    assert op_types(result.model) == ["BatchNormalization", "Conv"]
    (site,) = sites(result)
    assert "not static" in site.reason and "borders" in site.reason


def test_bn_before_padded_conv_with_zero_shift_folds_into_the_weights_only(rng):
    """With beta = mean = 0 the shift t is 0, the border correction vanishes: no Add is emitted."""
    params = bn_params(rng, 3)
    params["bn.B"][:] = 0
    params["bn.mean"][:] = 0
    inits = {"W": rng.standard_normal((4, 3, 3, 3)).astype(np.float32), **params}
    nodes = [bn_node("x", "h"), helper.make_node("Conv", ["h", "W"], ["y"], pads=[1, 1, 1, 1])]
    model = make_model(nodes, [("x", F32, [1, 3, 5, 5])], [("y", F32, None)], inits)
    result = fold(model)
    assert op_types(result.model) == ["Conv"]
    assert_same_outputs(
        model, result.model, {"x": rng.standard_normal((1, 3, 5, 5)).astype(np.float32)}
    )
