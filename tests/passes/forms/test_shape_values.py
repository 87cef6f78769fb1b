"""`optkit.passes.forms.shape_values.ShapeValues` on its own: what it knows, element by element,
about the small integer tensors that Shape / Gather / Slice / Concat / Cast / arithmetic compute,
and where it stops knowing."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from form_graphs import F32, G, serialized, value

from optkit.core.graph import ConstantPolicy
from optkit.passes.forms.shape_values import MAX_ELEMENTS, Dim, ShapeValues, Tracked

I64 = np.int64


def track(g: G, *names: str) -> tuple[ir.Model, list[Tracked | None]]:
    model = g.model(*names)
    before = serialized(model)
    values = ShapeValues(model, ConstantPolicy(model))
    tracked = [values.of(value(model, name)) for name in names]
    assert serialized(model) == before  # tracking reads only
    return model, tracked


def elements(model: ir.Model, t: Tracked | None) -> tuple[object, ...] | None:
    """The elements with Dim(x, i) written as "x:i", for comparing with literals."""
    if t is None:
        return None
    return tuple(f"{e.source.name}:{e.axis}" if isinstance(e, Dim) else e for e in t.elements)


def nchw(opset: int = 17) -> G:
    return G(shape=("N", 3, 8, 8), opset=opset)


# --- Shape, Size --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [({}, ("x:0", 3, 8, 8)), ({"start": 1}, (3, 8, 8)), ({"start": -2}, (8, 8)),
     ({"end": -1}, ("x:0", 3, 8)), ({"start": 9}, ()), ({"start": -9, "end": 1}, ("x:0",))],
)  # fmt: skip
def test_shape_gives_static_dims_and_dims_of_x(attrs, expected):
    g = nchw()
    g("Shape", "x", name="s", **attrs)
    model, (s,) = track(g, "s")
    assert s is not None and not s.scalar and s.dtype == ir.DataType.INT64
    assert elements(model, s) == expected
    assert s.known == all(isinstance(e, int) for e in expected)


def test_size_of_a_static_tensor_only():
    g = G(inputs={"x": (F32, (2, 3, 4)), "y": (F32, ("N", 3))})
    g("Size", "x", name="sx")
    g("Size", "y", name="sy")
    _, (sx, sy) = track(g, "sx", "sy")
    assert sx == Tracked((24,), True, ir.DataType.INT64)
    assert sy is None


def test_known_values_give_their_array():
    g = nchw()
    g("Shape", "x", start=1, name="s")
    g("Size", "x", name="n")
    _, (s, n) = track(g, "s", "n")
    assert n is None  # the batch N is symbolic
    assert s is not None and s.known
    np.testing.assert_array_equal(s.array(), np.array([3, 8, 8], np.int64))
    assert s.array().dtype == np.int64
    g2 = G(shape=(2, 3))
    g2("Size", "x", name="n")
    _, (size,) = track(g2, "n")
    assert size is not None and size.array().shape == () and int(size.array()) == 6


# --- Gather, Slice, Concat ----------------------------------------------------------------------


def test_gather_picks_elements():
    g = nchw()
    shape = g("Shape", "x")
    g("Gather", shape, g.const(0, I64), name="batch")
    g("Gather", shape, g.const([1, -1], I64), name="pair")
    g("Gather", shape, g.const(4, I64), name="outside")
    model, (batch, pair, outside) = track(g, "batch", "pair", "outside")
    assert batch is not None and batch.scalar and elements(model, batch) == ("x:0",)
    assert pair is not None and not pair.scalar and elements(model, pair) == (3, 8)
    assert outside is None  # out of range: the runtime's error, not a value


def test_gather_needs_constant_integer_indices():
    g = G(inputs={"x": (F32, ("N", 3, 8, 8)), "i": (onnx.TensorProto.INT64, ())})
    g("Gather", g("Shape", "x"), "i", name="picked")
    _, (picked,) = track(g, "picked")
    assert picked is None


@pytest.mark.parametrize(
    ("starts", "ends", "axes", "steps", "expected"),
    [([1], [3], None, None, (3, 8)), ([0], [9], [0], [2], ("x:0", 8)), ([-2], [100], [-1], None,
     (8, 8)), ([3], [0], None, [-1], None), ([0, 1], [1, 2], None, None, None)],
    ids=["range", "step", "negative-start", "negative-step", "two-axes"],
)  # fmt: skip
def test_slice_with_constant_parameters(starts, ends, axes, steps, expected):
    g = nchw()
    inputs = [g("Shape", "x"), g.const(starts, I64), g.const(ends, I64)]
    if axes is not None or steps is not None:
        inputs.append(g.const(axes, I64) if axes is not None else None)
    if steps is not None:
        inputs.append(g.const(steps, I64))
    g("Slice", *inputs, name="s")
    model, (s,) = track(g, "s")
    assert elements(model, s) == expected


def test_slice_with_axes_computed_at_run_time_is_unknown():
    g = G(inputs={"x": (F32, ("N", 3, 8, 8)), "axes": (onnx.TensorProto.INT64, (1,))})
    g("Slice", g("Shape", "x"), g.const([1], I64), g.const([3], I64), "axes", name="s")
    _, (s,) = track(g, "s")
    assert s is None


def test_slice_before_opset_10_reads_attributes():
    g = nchw(opset=9)
    g("Slice", g("Shape", "x"), starts=[1], ends=[3], name="s")
    model, (s,) = track(g, "s")
    assert elements(model, s) == (3, 8)


def test_concat_joins_elements():
    g = nchw()
    batch = g("Unsqueeze", g("Gather", g("Shape", "x"), g.const(0, I64)), g.const([0], I64))
    g("Concat", batch, g.const([-1], I64), g.const([3, 2], I64), axis=0, name="target")
    model, (target,) = track(g, "target")
    assert elements(model, target) == ("x:0", -1, 3, 2)
    assert target is not None and not target.known


def test_concat_of_different_integer_types_is_unknown():
    g = nchw()
    g("Concat", g.const([1], np.int32), g.const([2], np.int32), axis=0, name="same")
    model = g.model("same")
    g.nodes[-1].input[1] = g.const([2], I64)  # an invalid Concat: int32 with int64
    mixed = g.model("same", infer=False)
    assert ShapeValues(model, ConstantPolicy(model)).of(value(model, "same")) == Tracked(
        (1, 2), False, ir.DataType.INT32
    )
    assert ShapeValues(mixed, ConstantPolicy(mixed)).of(value(mixed, "same")) is None


# --- rank changes, Cast -------------------------------------------------------------------------


def test_unsqueeze_squeeze_reshape_keep_elements():
    g = nchw()
    shape = g("Shape", "x")
    channels = g("Gather", shape, g.const(1, I64), name="ch")
    g("Unsqueeze", channels, g.const([0], I64), name="ch1")
    g("Squeeze", "ch1", g.const([0], I64), name="ch0")
    g("Reshape", shape, g.const([-1], I64), name="flat")
    g("Reshape", shape, g.const([2, 2], I64), name="square")
    g("Identity", shape, name="same")
    model, (c1, c0, flat, square, same) = track(g, "ch1", "ch0", "flat", "square", "same")
    assert c1 == Tracked((3,), False, ir.DataType.INT64)
    assert c0 == Tracked((3,), True, ir.DataType.INT64)
    assert elements(model, flat) == ("x:0", 3, 8, 8)
    assert square is None  # rank 2: not a shape tensor
    assert elements(model, same) == ("x:0", 3, 8, 8)


def test_cast_keeps_dims_only_in_types_that_hold_any_dim():
    g = nchw()
    shape = g("Shape", "x")
    g("Cast", shape, to=onnx.TensorProto.UINT64, name="u64")
    g("Cast", shape, to=onnx.TensorProto.INT32, name="i32")
    g("Cast", g.const([300, -1], I64), to=onnx.TensorProto.INT8, name="i8")
    g("Cast", shape, to=onnx.TensorProto.FLOAT, name="f")
    model, (u64, i32, i8, f) = track(g, "u64", "i32", "i8", "f")
    assert u64 is not None and u64.dtype == ir.DataType.UINT64
    assert elements(model, u64) == ("x:0", 3, 8, 8)
    assert i32 is not None and i32.dtype == ir.DataType.INT32
    assert elements(model, i32) == (None, 3, 8, 8)
    assert i8 is not None and i8.elements == (None, -1)  # 300 does not fit an int8
    assert f is None


# --- arithmetic ---------------------------------------------------------------------------------


def test_arithmetic_on_known_elements_with_broadcasting():
    g = nchw()
    shape = g("Shape", "x")
    h = g("Gather", shape, g.const(2, I64))
    w = g("Gather", shape, g.const(3, I64))
    g("Mul", h, w, name="hw")
    g("Div", shape, g.const([2], I64), name="half")
    g("Sub", g.const([10, 20], I64), g.const(4, I64), name="sub")
    g("Add", shape, shape, name="twice")
    g("Neg", shape, name="neg")
    model, tracked = track(g, "hw", "half", "sub", "twice", "neg")
    hw, half, sub, twice, neg = (elements(model, t) for t in tracked)
    assert hw == (64,) and tracked[0] is not None and tracked[0].scalar
    assert half == (None, 1, 4, 4)  # Dim / 2 is not known here
    assert sub == (6, 16)
    assert twice == (None, 6, 16, 16)
    assert neg == (None, -3, -8, -8)


def test_division_only_where_truncation_and_flooring_agree():
    g = G()
    g("Div", g.const([-7, 7, 7], I64), g.const([2, -2, 2], I64), name="q")
    g("Div", g.const([5], I64), g.const([0], I64), name="by_zero")
    model, (q, by_zero) = track(g, "q", "by_zero")
    assert elements(model, q) == (None, None, 3)
    assert elements(model, by_zero) == (None,)


def test_results_that_do_not_fit_the_type_are_unknown():
    g = G()
    g("Add", g.const([100, 1], np.int8), g.const([100, 1], np.int8), name="s")
    g("Neg", g.const([-128], np.int8), name="n")
    model, (s, n) = track(g, "s", "n")
    assert elements(model, s) == (None, 2)
    assert elements(model, n) == (None,)


def test_arithmetic_of_mismatched_lengths_is_unknown():
    g = G()
    g("Add", g.const([1, 2], I64), g.const([1, 2, 3], I64), name="s")
    model = g.model("s", infer=False)
    assert ShapeValues(model, ConstantPolicy(model)).of(value(model, "s")) is None


# --- what is not tracked ------------------------------------------------------------------------


def test_constants_that_are_not_shape_tensors():
    g = G()
    g("Identity", g.const(np.arange(MAX_ELEMENTS + 1), I64), name="long")
    g("Identity", g.const([1.0, 2.0]), name="floats")
    g("Identity", g.const(np.ones((2, 2)), I64), name="matrix")
    g("Identity", g.const(np.arange(MAX_ELEMENTS), I64), name="longest")
    _, (long, floats, matrix, longest) = track(g, "long", "floats", "matrix", "longest")
    assert long is None and floats is None and matrix is None
    assert longest is not None and len(longest.elements) == MAX_ELEMENTS


def test_graph_inputs_other_domains_and_multi_output_nodes_are_unknown():
    g = G(inputs={"x": (F32, ("N", 4)), "s": (onnx.TensorProto.INT64, (2,))})
    g("Identity", "s", name="si")
    shape = g("Shape", "x")
    g.nodes.append(onnx.helper.make_node("Split", [shape], ["a", "b"], name="split", axis=0,
                                         num_outputs=2))  # fmt: skip
    g("Identity", shape, name="custom", domain="com.example")
    model = g.model("si", "a", "custom", infer=False)
    values = ShapeValues(model, ConstantPolicy(model))
    assert values.of(value(model, "si")) is None
    assert values.of(value(model, "a")) is None
    assert values.of(value(model, "custom")) is None
    assert values.of(None) is None


def test_a_declared_type_that_disagrees_is_unknown():
    g = G()
    g("Shape", "x", name="s")
    proto = g.proto("s")
    proto.graph.output[0].type.tensor_type.elem_type = onnx.TensorProto.INT32
    model = ir.from_proto(proto)
    assert ShapeValues(model, ConstantPolicy(model)).of(value(model, "s")) is None


def test_dims_compare_by_the_value_they_come_from():
    a = G(shape=("N", 3))
    a("Shape", "x", name="s")
    first, second = a.model("s"), a.model("s")
    x1, x2 = value(first, "x"), value(second, "x")
    assert Dim(x1, 0) == Dim(x1, 0) and hash(Dim(x1, 0)) == hash(Dim(x1, 0))
    assert Dim(x1, 0) != Dim(x1, 1)
    assert Dim(x1, 0) != Dim(x2, 0)  # same name, another value
    assert Dim(x1, 0) != 0


def test_results_are_memoized():
    g = nchw()
    g("Shape", "x", name="s")
    model = g.model("s")
    values = ShapeValues(model, ConstantPolicy(model))
    s = value(model, "s")
    assert values.of(s) is values.of(s)
