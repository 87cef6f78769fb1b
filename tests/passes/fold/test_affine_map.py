"""`optkit.passes.fold.affine_map` on its own: a test-time BatchNormalization and a Mul / Add / Sub /
Div by a per-channel constant (or a whole constant image) read as y = s * x + t, checked against
numpy and ONNX Runtime, with every decline and non-candidate."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper

from helpers import F32, bn_node, bn_params, make_model, ort_outputs
from optkit.core.graph import ConstantPolicy
from optkit.passes.fold.affine_map import (
    Affine,
    along,
    channel_vector,
    is_arithmetic,
    read_arithmetic,
    read_batchnorm,
)

SHAPE = (2, 3, 4, 4)


def outcome(result: object) -> tuple[Affine | None, str]:
    """(the map or None, the decline's reason or ''), from `(Affine | None, str)` or from
    `Affine | Decline | None`."""
    if isinstance(result, tuple):
        return result
    if isinstance(result, Affine) or result is None:
        return result, ""
    return None, str(getattr(result, "reason", result))


def bn_model(
    params: dict[str, np.ndarray], *, opset: int = 17, inputs_too: tuple[str, ...] = (), **attrs
) -> tuple[onnx.ModelProto, ir.Model]:
    """x -> BatchNormalization -> y; `inputs_too` parameters are graph inputs, not initializers."""
    inits = {k: v for k, v in params.items() if k not in inputs_too}
    extra = [(k, F32, list(params[k].shape)) for k in inputs_too]
    proto = make_model([bn_node("x", "y", **attrs)], [("x", F32, SHAPE), *extra],
                       [("y", F32, SHAPE)], inits, opset=opset)  # fmt: skip
    return proto, ir.from_proto(proto)


def read_bn(model: ir.Model, opset: int = 17) -> tuple[Affine | None, str]:
    return outcome(read_batchnorm(next(iter(model.graph)), ConstantPolicy(model), opset))


# --- read_batchnorm -----------------------------------------------------------------------------


@pytest.mark.parametrize("epsilon", [None, 1e-3, 0.5])
def test_batchnorm_as_scale_and_shift(rng, epsilon):
    params = bn_params(rng, 3)
    attrs = {} if epsilon is None else {"epsilon": epsilon}
    proto, model = bn_model(params, **attrs)
    affine, why = read_bn(model)
    assert affine is not None, why
    eps = np.float64(np.float32(1e-5 if epsilon is None else epsilon))
    gamma, beta, mean, var = (params[f"bn.{p}"].astype(np.float64) for p in ("scale", "B", "mean",
                                                                              "var"))  # fmt: skip
    np.testing.assert_allclose(affine.scale, gamma / np.sqrt(var + eps), rtol=1e-12)
    np.testing.assert_allclose(affine.shift, beta - mean * gamma / np.sqrt(var + eps), rtol=1e-12)
    assert affine.scale.dtype == np.float64 and affine.shift.dtype == np.float64
    assert affine.channels == 3 and affine.kind == "bn" and affine.what == "BatchNorm"
    assert affine.input is model.graph.inputs[0] and affine.output.name == "y"
    assert affine.shift_image is None
    x = rng.standard_normal(SHAPE).astype(np.float32)
    (want,) = ort_outputs(proto, {"x": x})
    got = along(affine.scale, 1, 4) * x + along(affine.shift, 1, 4)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("opset", "attrs", "why"),
    [(17, {"training_mode": 1}, "training_mode=1: BN uses batch statistics"),
     (6, {"is_test": 0}, "is_test=0: BatchNormalization-6 in training mode")],
)  # fmt: skip
def test_batchnorm_in_training_mode_is_declined(rng, opset, attrs, why):
    _, model = bn_model(bn_params(rng, 3), opset=opset, **attrs)
    assert read_bn(model, opset) == (None, why)


def test_batchnorm_6_in_test_mode_is_read(rng):
    _, model = bn_model(bn_params(rng, 3), opset=6, is_test=1)
    affine, why = read_bn(model, 6)
    assert affine is not None and affine.channels == 3, why


def test_batchnorm_with_used_running_statistics_is_declined(rng):
    params = bn_params(rng, 3)
    names = [f"bn.{p}" for p in ("scale", "B", "mean", "var")]
    node = helper.make_node("BatchNormalization", ["x", *names], ["y", "m", "v"], name="bn")
    proto = make_model([node], [("x", F32, SHAPE)], [("y", F32, SHAPE), ("m", F32, [3])], params,
                       opset=9)  # fmt: skip
    assert read_bn(ir.from_proto(proto), 9) == (None, "its running-statistics outputs are used")


def test_batchnorm_with_a_computed_parameter_is_declined(rng):
    _, model = bn_model(bn_params(rng, 3), inputs_too=("bn.mean",))
    assert read_bn(model) == (None, "BN mean is not a constant: 'bn.mean' is a graph input, not a "
                                    "constant")  # fmt: skip


def test_batchnorm_without_its_five_inputs_is_declined(rng):
    params = bn_params(rng, 3)
    node = helper.make_node("BatchNormalization", ["x", "bn.scale", "bn.B", "bn.mean"], ["y"])
    proto = make_model([node], [("x", F32, SHAPE)], [("y", F32, SHAPE)], params)
    assert read_bn(ir.from_proto(proto)) == (None, "BatchNormalization does not have its 5 inputs")


def test_batchnorm_parameters_of_different_lengths_are_declined(rng):
    params = bn_params(rng, 3)
    params["bn.var"] = np.ones(4, np.float32)
    _, model = bn_model(params)
    assert read_bn(model) == (None, "BN parameters are not 1-D vectors of one length")
    per_activation = {k: np.ones((3, 4, 4), np.float32) for k in params}
    _, model = bn_model(per_activation, opset=7, spatial=0)
    assert read_bn(model, 7) == (None, "BN parameters are not 1-D vectors of one length "
                                       "(spatial=0: per-activation statistics)")  # fmt: skip


def test_batchnorm_with_non_positive_variance_names_the_channels(rng):
    params = bn_params(rng, 4)
    params["bn.var"] = np.array([-1.0, 1.0, -2.0, -1e-5], np.float32)
    _, model = bn_model(params, epsilon=1e-5)
    assert read_bn(model) == (None, "variance + epsilon <= 0 in channel(s) [0, 2, 3]")


def test_batchnorm_with_an_infinite_scale_is_declined(rng):
    params = bn_params(rng, 3)
    params["bn.scale"][1] = np.inf
    _, model = bn_model(params)
    assert read_bn(model) == (None, "BN parameters give a non-finite scale or shift")


# --- along, is_arithmetic, channel_vector -------------------------------------------------------


def test_along_shapes_a_vector_for_broadcasting():
    v = np.arange(3.0)
    assert along(v, 1, 4).shape == (1, 3, 1, 1)
    assert along(v, 0, 2).shape == (3, 1)
    np.testing.assert_array_equal((np.ones((2, 3, 2)) * along(v, 1, 3))[1, :, 0], v)


def test_is_arithmetic():
    mul = ir.node("Mul", [None, None])
    assert is_arithmetic(mul)
    assert not is_arithmetic(ir.node("Pow", [None, None]))
    assert not is_arithmetic(ir.node("Mul", [None, None], domain="com.example"))
    assert not is_arithmetic(ir.node("Add", [None]))


@pytest.mark.parametrize(
    ("shape", "rank", "channels", "expected"),
    [((3, 1, 1), 4, 3, [0, 1, 2]), ((1, 3, 1, 1), 4, 3, [0, 1, 2]), ((3, 1, 1), 4, None, [0, 1, 2]),
     ((3,), 2, 3, [0, 1, 2]), ((1, 3), 2, 3, [0, 1, 2]), ((), 4, 3, [0, 0, 0]), ((1, 1), 4, 2, [0, 0]),
     ((), 4, None, None), ((3,), 4, 3, None), ((3, 1, 1), 4, 5, None), ((1, 1, 3, 1, 1), 4, 3, None),
     ((3,), 1, 3, None), ((2, 3, 1, 1), 4, 3, None)],
)  # fmt: skip
def test_channel_vector(shape, rank, channels, expected):
    constant = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)
    got = channel_vector(constant, rank, channels)
    if expected is None:
        assert got is None
    else:
        assert got is not None and got.tolist() == expected


# --- read_arithmetic ----------------------------------------------------------------------------


def arith_model(op: str, constant: np.ndarray, constant_first: bool = False,
                shape: tuple | None = SHAPE) -> ir.Model:  # fmt: skip
    ins = ["c", "x"] if constant_first else ["x", "c"]
    proto = make_model([helper.make_node(op, ins, ["y"], name="op")], [("x", F32, shape)],
                       [("y", F32, shape)], {"c": constant})  # fmt: skip
    return ir.from_proto(proto)


def read_arith(model: ir.Model) -> tuple[Affine | None, str]:
    return outcome(read_arithmetic(next(iter(model.graph)), ConstantPolicy(model)))


NUMPY = {"Mul": np.multiply, "Add": np.add, "Sub": np.subtract, "Div": np.divide}


@pytest.mark.parametrize(
    ("op", "constant_first"),
    [("Mul", False), ("Mul", True), ("Add", False), ("Add", True), ("Sub", False), ("Sub", True),
     ("Div", False)],  # c / x is no affine map: see the non-candidates
)  # fmt: skip
def test_arithmetic_by_a_channel_constant_is_affine(rng, op, constant_first):
    c = rng.uniform(0.5, 2.0, (3, 1, 1)).astype(np.float32)
    model = arith_model(op, c, constant_first)
    affine, why = read_arith(model)
    assert affine is not None, why
    assert affine.kind == op.lower() and affine.what == f"{op} constant" and affine.channels == 3
    assert affine.input is model.graph.inputs[0]
    x = rng.standard_normal(SHAPE)
    wide = c.astype(np.float64)
    want = NUMPY[op](wide, x) if constant_first else NUMPY[op](x, wide)
    got = along(affine.scale, 1, 4) * x + along(affine.shift, 1, 4)
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_a_scalar_constant_applies_to_every_channel():
    affine, why = read_arith(arith_model("Sub", np.array(2.0, np.float32), constant_first=True))
    assert affine is not None, why
    np.testing.assert_array_equal(affine.scale, [-1.0, -1.0, -1.0])
    np.testing.assert_array_equal(affine.shift, [2.0, 2.0, 2.0])


def test_features_of_rank_two():
    c = np.array([1.0, 2.0, 4.0], np.float32)
    affine, why = read_arith(arith_model("Div", c, shape=(5, 3)))
    assert affine is not None, why
    np.testing.assert_array_equal(affine.scale, [1.0, 0.5, 0.25])
    np.testing.assert_array_equal(affine.shift, [0.0, 0.0, 0.0])


@pytest.mark.parametrize(
    ("op", "constant", "why"),
    [("Mul", np.array([1.0, np.inf, 1.0], np.float32).reshape(3, 1, 1),
      "its constant holds inf or NaN (folded, 0 * inf would make NaN weights)"),
     ("Add", np.array([np.nan], np.float32), "its constant holds inf or NaN"),
     ("Div", np.array([1.0, 0.0, 2.0], np.float32).reshape(3, 1, 1),
      "divides by a constant with zeros")],
)  # fmt: skip
def test_arithmetic_declines(op, constant, why):
    affine, got = read_arith(arith_model(op, constant))
    assert affine is None and got.startswith(why)


def test_arithmetic_non_candidates():
    """No reason: none of these is a per-channel affine map the fold could use."""
    per_channel = np.ones((3, 1, 1), np.float32)
    cases = [
        arith_model("Div", per_channel, constant_first=True),  # c / x
        arith_model("Mul", np.ones((1, 1, 4, 1), np.float32)),  # varies along H
        arith_model("Mul", np.ones((3, 4, 4), np.float32)),  # an image, but Mul
        arith_model("Add", np.ones((3, 4, 1), np.float32)),  # neither channel nor image
        arith_model("Add", per_channel, shape=None),  # x's rank is unknown
    ]
    for model in cases:
        assert read_arith(model) == (None, "")
    both_computed = make_model(
        [helper.make_node("Add", ["x", "z"], ["y"])],
        [("x", F32, SHAPE), ("z", F32, SHAPE)],
        [("y", F32, SHAPE)],
        {},
    )
    assert read_arith(ir.from_proto(both_computed)) == (None, "")
    both_constant = arith_model("Add", per_channel)
    node = next(iter(both_constant.graph))
    node.replace_input_with(0, both_constant.graph.initializers["c"])
    assert read_arith(both_constant) == (None, "")


def test_an_integer_constant_is_no_candidate():
    proto = make_model(
        [helper.make_node("Add", ["x", "c"], ["y"])],
        [("x", onnx.TensorProto.INT64, SHAPE)],
        [("y", onnx.TensorProto.INT64, SHAPE)],
        {"c": np.ones((3, 1, 1), np.int64)},
    )
    assert read_arith(ir.from_proto(proto)) == (None, "")


@pytest.mark.parametrize(
    ("op", "constant_first", "scale"),
    [("Add", False, 1.0), ("Add", True, 1.0), ("Sub", False, 1.0), ("Sub", True, -1.0)],
)
@pytest.mark.parametrize("leading_one", [False, True])
def test_a_whole_constant_image_is_a_per_position_shift(rng, op, constant_first, scale,
                                                        leading_one):  # fmt: skip
    image = rng.standard_normal((3, 4, 4)).astype(np.float32)
    stored = image[None] if leading_one else image
    affine, why = read_arith(arith_model(op, stored, constant_first))
    assert affine is not None, why
    assert affine.kind == f"{op.lower()}-image"
    np.testing.assert_array_equal(affine.scale, np.full(3, scale))
    np.testing.assert_array_equal(affine.shift, np.zeros(3))
    assert affine.shift_image is not None and affine.shift_image.shape == (3, 4, 4)
    x = rng.standard_normal(SHAPE)
    wide = image.astype(np.float64)
    want = NUMPY[op](wide, x) if constant_first else NUMPY[op](x, wide)
    got = along(affine.scale, 1, 4) * x + along(affine.shift, 1, 4) + affine.shift_image
    np.testing.assert_allclose(got, want, rtol=1e-12)
