"""The per-op readers both fold directions share (`fold/readers.py`), the one way initializers are
made (`core.graph.add_initializer` / `rounded`), and a plan's constants (`fold/support.py`)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper

from helpers import F32, make_model
from optkit.core.contract import Decline
from optkit.core.graph import (
    FLOAT_TYPES,
    ConstantPolicy,
    InitializerOverflow,
    Namer,
    add_initializer,
    rounded,
)
from optkit.passes.fold import support
from optkit.passes.fold.readers import (
    GemmAttributes,
    channel_bias,
    float_weight,
    gemm_b,
    gemm_c,
    layer_weight,
    matmul_weight,
    optional_bias,
)
from optkit.passes.fold.support import Folded, all_folded, folded, folded_scaled


def layer_model(op: str, inits: dict[str, np.ndarray], inputs: list[str], **attrs) -> ir.Model:
    node = helper.make_node(op, ["x", *inputs], ["y"], name="layer", **attrs)
    proto = make_model([node], [("x", F32, None)], [("y", F32, None)], inits)
    return ir.from_proto(proto)


def the_layer(model: ir.Model) -> ir.Node:
    return next(iter(model.graph))


def test_float_weight_reads_stored_array_and_dtype(rng):
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float16)
    model = layer_model("Conv", {"W": w}, ["W"])
    weight = layer_weight(ConstantPolicy(model), the_layer(model), min_rank=3)
    assert not isinstance(weight, Decline)
    assert weight.dtype == ir.DataType.FLOAT16 and weight.array.dtype == np.float16
    assert weight.wide.dtype == np.float64 and np.array_equal(weight.wide, w.astype(np.float64))
    assert weight.shape == (4, 3, 3, 3) and weight.ndim == 4


def test_float_weight_declines_with_the_reason_texts():
    model = layer_model("Conv", {"W": np.ones((4, 3), np.int64)}, ["W"])
    policy, conv = ConstantPolicy(model), the_layer(model)
    assert float_weight(policy, None, "Conv weight") == Decline("Conv weight is missing")
    assert layer_weight(policy, conv) == Decline(
        "Conv weight has element type INT64, not a float type"
    )
    ranked = layer_model("Conv", {"W": np.ones((4, 3), np.float32)}, ["W"])
    assert layer_weight(ConstantPolicy(ranked), the_layer(ranked), min_rank=3) == Decline(
        "Conv weight has rank 2, below 3"
    )
    computed = the_layer(model).inputs[0]
    assert float_weight(policy, computed, "Conv weight") == Decline(
        "Conv weight is not a constant: 'x' is a graph input, not a constant"
    )


def test_gemm_readers(rng):
    b = rng.standard_normal((5, 4)).astype(np.float32)
    c = rng.standard_normal(4).astype(np.float32)
    model = layer_model("Gemm", {"B": b, "C": c}, ["B", "C"], transB=1, alpha=2.0, beta=0.5)
    policy, gemm = ConstantPolicy(model), the_layer(model)
    attrs = GemmAttributes.of(gemm)
    assert attrs == GemmAttributes(alpha=2.0, beta=0.5, trans_a=False, trans_b=True)
    b_read = gemm_b(policy, gemm)
    assert not isinstance(b_read, Decline) and np.array_equal(b_read.array, b)
    c_read = gemm_c(policy, gemm)
    assert isinstance(c_read, np.ndarray) and c_read.dtype == np.float64
    assert np.array_equal(c_read, c.astype(np.float64))
    no_c = layer_model("Gemm", {"B": b}, ["B"])
    assert gemm_c(ConstantPolicy(no_c), the_layer(no_c)).shape == ()
    cube = layer_model("Gemm", {"B": np.ones((2, 2, 2), np.float32)}, ["B"])
    assert gemm_b(ConstantPolicy(cube), the_layer(cube)) == Decline("Gemm B has rank 3")


def test_matmul_weight_must_be_a_matrix():
    model = layer_model("MatMul", {"W": np.ones((2, 3, 4), np.float32)}, ["W"])
    assert matmul_weight(ConstantPolicy(model), the_layer(model)) == Decline(
        "MatMul weight has rank 3, not 2"
    )


def test_bias_readers():
    bias = np.array([1.0, 2.0, 3.0], np.float32)
    model = layer_model("Conv", {"W": np.ones((3, 1, 1, 1), np.float32), "b": bias}, ["W", "b"])
    policy, conv = ConstantPolicy(model), the_layer(model)
    read = optional_bias(policy, conv, 2)
    assert isinstance(read, np.ndarray) and read.dtype == np.float64
    assert optional_bias(policy, conv, 3) is None
    assert np.array_equal(channel_bias(policy, conv, 3, 4), np.zeros(4))
    assert channel_bias(policy, conv, 2, 4) == Decline("Conv bias has shape (3,), expected (4,)")


def test_constant_policy_says_why_a_value_is_no_constant():
    model = layer_model("Conv", {"W": np.ones((3, 1, 1, 1), np.float32)}, ["W"])
    policy = ConstantPolicy(model)
    assert policy.array(None) == Decline("input is missing")
    assert isinstance(policy.array(model.graph.initializers["W"]), np.ndarray)
    assert policy.contents(the_layer(model).outputs[0]) is None
    assert policy.array(the_layer(model).inputs[0]) == Decline(
        "'x' is a graph input, not a constant"
    )


@pytest.mark.parametrize("dtype", [ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.FLOAT])
def test_rounded_declines_on_finite_overflow_only(dtype):
    largest = float(ml_dtypes.finfo(FLOAT_TYPES[dtype]).max)
    fits = np.array([1.0, -largest, np.inf, np.nan])
    assert rounded(fits, dtype).dtype == FLOAT_TYPES[dtype]
    over = np.array([1.0, largest * 4])
    result = rounded(over, dtype)
    assert isinstance(result, Decline)
    assert result.reason == f"folded values reach {largest * 4:.3g}, beyond {dtype.name}'s range"


def test_add_initializer_refuses_overflow_and_registers_nothing():
    model = layer_model("Conv", {"W": np.ones((3, 1, 1, 1), np.float32)}, ["W"])
    names = set(model.graph.initializers)
    with pytest.raises(InitializerOverflow, match="beyond FLOAT16's range"):
        add_initializer(model.graph, Namer(model), "big", np.array([7e4]), ir.DataType.FLOAT16)
    assert set(model.graph.initializers) == names
    value = add_initializer(
        model.graph, Namer(model), "W", np.array([1.0, 2.0]), ir.DataType.FLOAT16
    )
    assert value.name == "W_1" and value.const_value.numpy().dtype == np.float16
    ints = add_initializer(model.graph, Namer(model), "i", [1, 2], ir.DataType.INT64)
    assert ints.const_value.numpy().tolist() == [1, 2]


def test_folded_scaled_is_folded_of_the_float64_product(rng, monkeypatch):
    monkeypatch.setattr(support, "CHUNK_BYTES", 64)  # several chunks
    weight = rng.standard_normal((9, 4, 3)).astype(np.float16)
    factor = rng.uniform(-3, 3, (9, 1, 1))
    chunked = folded_scaled(weight, factor, ir.DataType.FLOAT16, (9, 12))
    whole = folded(weight.astype(np.float64) * factor, ir.DataType.FLOAT16)
    assert isinstance(chunked, Folded) and isinstance(whole, Folded)
    assert chunked.array.shape == (9, 12)
    assert chunked.array.tobytes() == whole.array.tobytes()
    weight[3, 1, 1] = 3e4
    over = folded_scaled(weight, np.full((9, 1, 1), 4.0), ir.DataType.FLOAT16)
    assert isinstance(over, Decline) and "beyond FLOAT16's range" in over.reason


def test_all_folded_gives_the_first_decline_in_order():
    ok = folded(np.ones(2), ir.DataType.FLOAT)
    first = folded(np.array([1e6]), ir.DataType.FLOAT16)
    second = folded(np.array([1e7]), ir.DataType.FLOAT16)
    assert all_folded(ok, first, second) == first != second
    made = all_folded(ok, ok)
    assert isinstance(made, list) and len(made) == 2


def test_scaled_has_no_float64_copy_of_an_onnx_weight(rng):
    """`folded_scaled` on a stored float32 weight gives float32 straight away (no float64 tensor
    kept), bit for bit the float64 fold."""
    w = rng.standard_normal((16, 8)).astype(np.float32)
    proto = onnx.numpy_helper.from_array(w, "W")
    stored = onnx.numpy_helper.to_array(proto)
    got = folded_scaled(stored, np.full((16, 1), 1 / 3), ir.DataType.FLOAT)
    assert isinstance(got, Folded) and got.array.dtype == np.float32
    expected = (w.astype(np.float64) * (1 / 3)).astype(np.float32)
    assert got.array.tobytes() == expected.tobytes()
