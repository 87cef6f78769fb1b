"""BatchNorm after Conv / ConvTranspose / Gemm / MatMul: structure, numerics on ORT, idempotence."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from helpers import F32, assert_same_outputs, bn_node, bn_params, fold, make_model, op_types, sites

# (name, spatial dims, c_in, c_out, group, attributes, bias)
CONV_CASES = [
    ("1d", (9,), 3, 4, 1, {"pads": [1, 1]}, True),
    (
        "2d-stride-dilation",
        (11, 9),
        3,
        5,
        1,
        {"pads": [1, 2, 1, 0], "strides": [2, 1], "dilations": [2, 1]},
        True,
    ),
    ("3d", (5, 6, 4), 2, 3, 1, {}, False),
    ("grouped", (8, 8), 4, 6, 2, {"pads": [1, 1, 1, 1]}, True),
    ("depthwise", (8, 8), 4, 4, 4, {"pads": [1, 1, 1, 1]}, False),
    ("depthwise-multiplier", (8, 8), 4, 8, 4, {}, True),
    ("same-upper", (7, 8), 3, 4, 1, {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, False),
    ("same-lower", (7, 8), 3, 4, 1, {"auto_pad": "SAME_LOWER"}, True),
    ("valid", (7, 8), 3, 4, 1, {"auto_pad": "VALID"}, True),
]


def conv_bn_model(rng, spatial, c_in, c_out, group, attrs, bias, op="Conv", dtype=np.float32):
    k = (3,) * len(spatial)
    w_shape = (c_out, c_in // group, *k) if op == "Conv" else (c_in, c_out // group, *k)
    inits = {"W": rng.standard_normal(w_shape).astype(dtype)}
    conv_inputs = ["x", "W"]
    if bias:
        inits["b"] = rng.standard_normal(c_out).astype(dtype)
        conv_inputs.append("b")
    inits.update(bn_params(rng, c_out, dtype=dtype))
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes = [
        helper.make_node(op, conv_inputs, ["h"], name="layer", group=group, **attrs),
        bn_node("h", "y"),
    ]
    return make_model(nodes, [("x", elem, ["N", c_in, *spatial])], [("y", elem, None)], inits)


@pytest.mark.parametrize(
    ("name", "spatial", "c_in", "c_out", "group", "attrs", "bias"),
    CONV_CASES,
    ids=[c[0] for c in CONV_CASES],
)
def test_conv_bn_folds(rng, name, spatial, c_in, c_out, group, attrs, bias):
    model = conv_bn_model(rng, spatial, c_in, c_out, group, attrs, bias)
    result = fold(model)
    assert op_types(result.model) == ["Conv"]
    assert result.model.graph.outputs[0].name == "y"  # the folded Conv carries the BN's output name
    assert [s.rule for s in sites(result) if s.applied] == ["conv+bn"]
    x = rng.standard_normal((2, c_in, *spatial)).astype(np.float32)
    assert_same_outputs(model, result.model, {"x": x})


CONV_TRANSPOSE_CASES = [
    ("plain", (5, 5), 4, 6, 1, {"strides": [2, 2]}, True),
    ("grouped", (5, 5), 4, 6, 2, {"strides": [2, 2], "pads": [1, 1, 1, 1]}, False),
    ("depthwise", (5, 5), 4, 4, 4, {}, True),
    (
        "grouped-output-padding",
        (4, 4),
        6,
        9,
        3,
        {"strides": [2, 2], "output_padding": [1, 1]},
        True,
    ),
    ("1d", (7,), 2, 4, 2, {}, True),
]


@pytest.mark.parametrize(
    ("name", "spatial", "c_in", "c_out", "group", "attrs", "bias"),
    CONV_TRANSPOSE_CASES,
    ids=[c[0] for c in CONV_TRANSPOSE_CASES],
)
def test_conv_transpose_bn_folds(rng, name, spatial, c_in, c_out, group, attrs, bias):
    model = conv_bn_model(rng, spatial, c_in, c_out, group, attrs, bias, op="ConvTranspose")
    result = fold(model)
    assert op_types(result.model) == ["ConvTranspose"]
    assert [s.rule for s in sites(result) if s.applied] == ["convtranspose+bn"]
    x = rng.standard_normal((2, c_in, *spatial)).astype(np.float32)
    assert_same_outputs(model, result.model, {"x": x})


GEMM_CASES = [  # transA, transB, alpha, beta, C shape (None: no C)
    (0, 0, 1.0, 1.0, None),
    (0, 1, 1.0, 1.0, (6,)),
    (1, 0, 0.5, 1.0, (1, 6)),
    (1, 1, 2.0, 0.3, (3, 6)),
    (0, 1, 1.0, 0.0, (6,)),
    (0, 0, 1.0, 2.0, (1,)),
    (0, 1, 1.5, 1.0, (3, 1)),
]


@pytest.mark.parametrize(("trans_a", "trans_b", "alpha", "beta", "c_shape"), GEMM_CASES)
def test_gemm_bn_folds(rng, trans_a, trans_b, alpha, beta, c_shape):
    n, k, m = 3, 5, 6
    inits = {"B": rng.standard_normal((m, k) if trans_b else (k, m)).astype(np.float32)}
    inputs = ["a", "B"]
    if c_shape is not None:
        inits["C"] = rng.standard_normal(c_shape).astype(np.float32)
        inputs.append("C")
    inits.update(bn_params(rng, m))
    nodes = [
        helper.make_node(
            "Gemm", inputs, ["h"], transA=trans_a, transB=trans_b, alpha=alpha, beta=beta
        ),
        bn_node("h", "y"),
    ]
    model = make_model(
        nodes, [("a", F32, [k, n] if trans_a else [n, k])], [("y", F32, None)], inits
    )
    result = fold(model)
    assert op_types(result.model) == ["Gemm"]
    a = rng.standard_normal((k, n) if trans_a else (n, k)).astype(np.float32)
    assert_same_outputs(model, result.model, {"a": a})


@pytest.mark.parametrize("with_add", ["none", "bias-right", "bias-left", "bias-2d"])
def test_matmul_bn_becomes_one_gemm(rng, with_add):
    inits = {"W": rng.standard_normal((5, 6)).astype(np.float32), **bn_params(rng, 6)}
    nodes = [helper.make_node("MatMul", ["x", "W"], ["mm"], name="fc")]
    source = "mm"
    if with_add != "none":
        inits["c"] = rng.standard_normal((1, 6) if with_add == "bias-2d" else (6,)).astype(
            np.float32
        )
        operands = ["c", "mm"] if with_add == "bias-left" else ["mm", "c"]
        nodes.append(helper.make_node("Add", operands, ["h"]))
        source = "h"
    nodes.append(bn_node(source, "y"))
    model = make_model(nodes, [("x", F32, ["N", 5])], [("y", F32, None)], inits)
    result = fold(model)
    assert op_types(result.model) == ["Gemm"]
    expected = "matmul+bn" if with_add == "none" else "matmul+add+bn"
    assert [s.rule for s in sites(result) if s.applied] == [expected]
    assert_same_outputs(model, result.model, {"x": rng.standard_normal((4, 5)).astype(np.float32)})


def test_matmul_on_rank3_input_is_declined(rng):
    """BN normalizes axis 1; for a (N, L, K) input that is L, not MatMul's feature axis."""
    inits = {"W": rng.standard_normal((5, 6)).astype(np.float32), **bn_params(rng, 7)}
    nodes = [helper.make_node("MatMul", ["x", "W"], ["mm"]), bn_node("mm", "y")]
    model = make_model(nodes, [("x", F32, [2, 7, 5])], [("y", F32, None)], inits)
    result = fold(model)
    assert "BatchNormalization" in op_types(result.model)
    (site,) = sites(result)
    assert not site.applied and "rank 3" in site.reason


def test_chain_of_batchnorms_after_conv_folds_completely(rng):
    inits = {
        "W": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        **bn_params(rng, 4, "bn1"),
        **bn_params(rng, 4, "bn2"),
        **bn_params(rng, 4, "bn3"),
    }
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["h"], pads=[1, 1, 1, 1]),
        bn_node("h", "b1", "bn1"),
        bn_node("b1", "b2", "bn2"),
        bn_node("b2", "y", "bn3"),
    ]
    model = make_model(nodes, [("x", F32, [1, 3, 6, 6])], [("y", F32, None)], inits)
    result = fold(model)
    assert op_types(result.model) == ["Conv"]
    assert_same_outputs(
        model, result.model, {"x": rng.standard_normal((1, 3, 6, 6)).astype(np.float32)}
    )


@pytest.mark.parametrize("opset", [6, 7, 9, 14, 15])
def test_batchnorm_opsets(rng, opset):
    attrs = {"is_test": 1} if opset < 7 else {}
    model = conv_bn_model(rng, (6, 6), 3, 4, 1, {}, True)
    del model.graph.node[1].attribute[:]
    model.graph.node[1].attribute.extend([helper.make_attribute(k, v) for k, v in attrs.items()])
    model.graph.node[1].attribute.append(helper.make_attribute("epsilon", 1e-3))
    model.opset_import[0].version = opset
    model.ir_version = 3 if opset < 7 else 7
    if opset < 7:  # IR version 3: initializers must be listed as inputs (and are constants there)
        model.graph.input.extend(
            [
                helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                for t in model.graph.initializer
            ]
        )
    onnx.checker.check_model(model)
    result = fold(model)
    assert op_types(result.model) == ["Conv"], sites(result)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    if opset >= 7:  # ORT implements BatchNormalization from opset 7
        assert_same_outputs(model, result.model, {"x": x})


def test_fp16_conv_bn_is_rounded_once_from_float64(rng):
    model = conv_bn_model(rng, (6, 6), 3, 4, 1, {"pads": [1, 1, 1, 1]}, True, dtype=np.float16)
    result = fold(model)
    assert op_types(result.model) == ["Conv"]
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    s64 = inits["bn.scale"].astype(np.float64) / np.sqrt(inits["bn.var"].astype(np.float64) + 1e-5)
    exact = inits["W"].astype(np.float64) * s64[:, None, None, None]
    conv = next(iter(result.model.graph))
    folded = conv.inputs[1].const_value.numpy()
    assert folded.dtype == np.float16
    np.testing.assert_array_equal(folded, exact.astype(np.float16))  # correctly rounded, once
    # Folding in fp16 (as peers do) is never closer to the float64 result than optkit's fold.
    s16 = inits["bn.scale"] / np.sqrt(inits["bn.var"] + np.float16(1e-5))
    naive = inits["W"] * s16[:, None, None, None]
    assert np.all(np.abs(folded - exact) <= np.abs(naive.astype(np.float64) - exact))
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float16)
    assert_same_outputs(model, result.model, {"x": x}, rtol=1e-2, atol=1e-3)


def test_bf16_weights_fold_with_one_rounding(rng):
    import ml_dtypes

    model = conv_bn_model(rng, (6, 6), 3, 4, 1, {}, True)
    bf16 = ml_dtypes.bfloat16
    for init in model.graph.initializer:
        if init.name in ("W", "b"):
            init.CopyFrom(
                onnx.numpy_helper.from_array(
                    onnx.numpy_helper.to_array(init).astype(bf16), init.name
                )
            )
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.elem_type = onnx.TensorProto.BFLOAT16
    result = fold(model)
    conv = next(iter(result.model.graph))
    assert conv.op_type == "Conv"
    inits = {
        i.name: onnx.numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer
    }
    s = inits["bn.scale"] / np.sqrt(inits["bn.var"] + 1e-5)
    expected_w = (inits["W"] * s[:, None, None, None]).astype(bf16)
    expected_b = (inits["b"] * s + inits["bn.B"] - inits["bn.mean"] * s).astype(bf16)
    np.testing.assert_array_equal(conv.inputs[1].const_value.numpy(), expected_w)
    np.testing.assert_array_equal(conv.inputs[2].const_value.numpy(), expected_b)


def test_fp64_gemm_bn(rng):
    inits = {"B": rng.standard_normal((5, 6)), **bn_params(rng, 6, dtype=np.float64)}
    nodes = [helper.make_node("Gemm", ["a", "B"], ["h"]), bn_node("h", "y")]
    model = make_model(
        nodes,
        [("a", onnx.TensorProto.DOUBLE, [3, 5])],
        [("y", onnx.TensorProto.DOUBLE, None)],
        inits,
    )
    result = fold(model)
    assert op_types(result.model) == ["Gemm"]
    assert_same_outputs(
        model, result.model, {"a": rng.standard_normal((3, 5))}, rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("case", CONV_CASES[:3] + CONV_TRANSPOSE_CASES[:2], ids=lambda c: c[0])
def test_fold_is_idempotent(rng, case):
    _, spatial, c_in, c_out, group, attrs, bias = case
    op = "ConvTranspose" if case in CONV_TRANSPOSE_CASES else "Conv"
    first = fold(conv_bn_model(rng, spatial, c_in, c_out, group, attrs, bias, op=op))
    second = fold(first.to_proto())
    assert not [s for s in sites(second) if s.applied]
    assert op_types(second.model) == op_types(first.model)
