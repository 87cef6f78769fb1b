"""The normalization recognizers of `optkit.passes.forms.normalizations` on hand-built chains:
LayerNormalization from Sub / ReduceMean / Sqrt (axis, epsilon, scale and bias broadcast to the
normalized shape) and GroupNormalization from Reshape / InstanceNormalization / Reshape (groups,
epsilon, per-channel scale and bias), and every near-miss: None, or a decline with its reason."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from form_graphs import F32, G, node, reader, reason, serialized, value

from optkit.core.contract import Decline
from optkit.passes.forms.normalizations import recognize
from optkit.passes.forms.pattern import Match

I64 = np.int64


def recognized(g: G, anchor: str = "y") -> object:
    """What `recognize` finds at `anchor`, checking that reading changed nothing."""
    model = g.model(anchor)
    before = serialized(model)
    found = recognize(node(model, anchor), reader(model))
    assert serialized(model) == before
    if isinstance(found, Match):
        assert found.x is value(model, "x") and found.nodes[0] is node(model, anchor)
    return found


def declined(found: object) -> str:
    assert isinstance(found, Decline), found
    return reason(found)


# --- LayerNormalization -------------------------------------------------------------------------


def layer_norm(
    g: G,
    *,
    axes: list[int] | None = None,
    eps: float = 1e-5,
    gamma: np.ndarray | None = None,
    beta: np.ndarray | None = None,
    reciprocal: bool = False,
    square_by_mul: bool = False,
    var_axes: list[int] | None = None,
    keepdims: int = 1,
) -> str:
    """(x - mean) / sqrt(var + eps) [* gamma] [+ beta]; returns the last node's output name."""
    axes = axes or [-1]

    def mean(v: str, over: list[int]) -> str:
        if g.opset >= 18:
            return g("ReduceMean", v, g.const(over, I64), keepdims=keepdims)
        return g("ReduceMean", v, axes=over, keepdims=keepdims)

    d = g("Sub", "x", mean("x", axes))
    square = g("Mul", d, d) if square_by_mul else g("Pow", d, 2.0)
    std = g("Sqrt", g("Add", mean(square, var_axes or axes), eps))
    n = g("Mul", d, g("Reciprocal", std)) if reciprocal else g("Div", d, std)
    if gamma is not None:
        n = g("Mul", n, g.const(gamma))
    if beta is not None:
        n = g("Add", n, g.const(beta))
    g.nodes[-1].output[0] = g.nodes[-1].name = "y"
    return "y"


def test_layer_norm_with_scale_and_bias():
    g = G(shape=(2, 3, 4))
    gamma, beta = np.arange(1, 5, dtype=np.float32), np.full(4, 0.5, np.float32)
    layer_norm(g, eps=1e-3, gamma=gamma, beta=beta)
    found = recognized(g)
    assert isinstance(found, Match), reason(found)
    assert (found.kind, found.op_type) == ("LayerNormalization", "LayerNormalization")
    assert found.attributes["axis"] == -1
    assert found.attributes["epsilon"] == pytest.approx(1e-3, rel=1e-6)
    assert len(found.nodes) == 9
    scale, bias = found.constants
    np.testing.assert_array_equal(scale, gamma)
    np.testing.assert_array_equal(bias, beta)


def test_layer_norm_reciprocal_square_by_mul_axes_as_input():
    """Opset 18 (axes as an input), positive axes over a known rank, no affine: ones and zeros."""
    g = G(shape=(2, 3, 4), opset=18)
    layer_norm(g, axes=[1, 2], reciprocal=True, square_by_mul=True)
    found = recognized(g)
    assert isinstance(found, Match), reason(found)
    assert found.attributes["axis"] == 1
    scale, bias = found.constants
    np.testing.assert_array_equal(scale, np.ones((3, 4)))
    np.testing.assert_array_equal(bias, np.zeros((3, 4)))
    assert len(found.nodes) == 8  # Mul, Reciprocal, Sqrt, Add, ReduceMean, Mul, Sub, ReduceMean


@pytest.mark.parametrize(
    ("gamma", "expected"),
    [(np.float32(2.0), np.full(4, 2.0)), (np.ones((1, 1, 4), np.float32) * 3, np.full(4, 3.0))],
    ids=["scalar", "leading-ones"],
)
def test_layer_norm_broadcasts_the_scale_over_the_normalized_axes(gamma, expected):
    g = G(shape=(2, 3, 4))
    layer_norm(g, gamma=np.asarray(gamma))
    found = recognized(g)
    assert isinstance(found, Match), reason(found)
    np.testing.assert_array_equal(found.constants[0], expected)
    np.testing.assert_array_equal(found.constants[1], np.zeros(4))


def test_layer_norm_takes_the_normalized_shape_from_the_scale_when_dims_are_symbolic():
    g = G(shape=("N", "T", "D"))
    layer_norm(g, gamma=np.arange(1, 6, dtype=np.float32))
    found = recognized(g)
    assert isinstance(found, Match), reason(found)
    np.testing.assert_array_equal(found.constants[1], np.zeros(5))


@pytest.mark.parametrize(
    ("shape", "options", "why"),
    [
        ((2, 3, 4), {"axes": [1]}, "LayerNorm pattern over axes [1], which are not the last axes"),
        ((2, 3, 4), {"axes": [-3, -1]}, "LayerNorm pattern over axes [-3, -1], which are not"),
        (("N", "T", "D"), {}, "LayerNorm pattern, but the normalized shape is unknown"),
        ((2, 3, 4), {"gamma": np.ones(3, np.float32)}, "LayerNorm pattern, but its scale or bias "
         "does not broadcast over the normalized axes"),
        ((2, 3, 4), {"beta": np.ones((3, 1), np.float32)}, "LayerNorm pattern, but its scale or "
         "bias does not broadcast"),
        ((3, 4), {"gamma": np.ones((1, 1, 4), np.float32)}, "LayerNorm pattern, but its scale or "
         "bias has rank 3, more than the input's (2)"),
    ],
    ids=["middle-axis", "gap", "symbolic", "scale-length", "bias-varies-per-row", "scale-rank"],
)  # fmt: skip
def test_layer_norm_declines(shape, options, why):
    g = G(shape=shape)
    layer_norm(g, **options)
    assert declined(recognized(g)).startswith(why)


@pytest.mark.parametrize(
    "options",
    [{"keepdims": 0}, {"var_axes": [-2, -1]}],
    ids=["keepdims-0", "variance-over-other-axes"],
)
def test_layer_norm_near_misses_are_no_form(options):
    g = G(shape=(2, 3, 4))
    layer_norm(g, **options)
    assert recognized(g) is None


def test_layer_norm_variance_of_another_value_is_no_form():
    g = G(shape=(2, 3, 4))
    d = g("Sub", "x", g("ReduceMean", "x", axes=[-1]))
    var = g("ReduceMean", g("Pow", "x", 2.0), axes=[-1])  # E[x^2], not E[d^2]
    g("Div", d, g("Sqrt", g("Add", var, 1e-5)), name="y")
    assert recognized(g) is None


# --- GroupNormalization -------------------------------------------------------------------------


def group_norm(
    g: G,
    *,
    groups: int = 3,
    target: list[int] | None = None,
    norm_groups: int | None = None,
    scale: float = 1.0,
    back: list[int] | str = "shape",
    gamma: np.ndarray | None = None,
    beta: np.ndarray | None = None,
    allowzero: int = 0,
    eps: float = 1e-4,
) -> str:
    """Reshape(x, target) -> InstanceNormalization -> Reshape back [* gamma] [+ beta] -> y."""
    count = norm_groups or groups
    front = g("Reshape", "x", g.const(target or [0, groups, -1], I64), allowzero=allowzero)
    norm = g("InstanceNormalization", front, g.const(np.full(count, scale)),
             g.const(np.zeros(count)), epsilon=eps)  # fmt: skip
    if back == "shape":
        shape = g("Shape", "x")
    elif back == "shape-of-front":
        shape = g("Shape", front)
    elif back == "shape-slice":
        shape = g("Shape", "x", start=0)
    else:
        shape = g.const(back, I64)
    out = g("Reshape", norm, shape)
    if gamma is not None:
        out = g("Mul", out, g.const(gamma))
    if beta is not None:
        out = g("Add", out, g.const(beta))
    g.nodes[-1].output[0] = g.nodes[-1].name = "y"
    return "y"


def test_group_norm_as_torch_exports_it():
    g = G(shape=("N", 6, 4, 4))
    gamma = np.arange(1, 7, dtype=np.float32).reshape(6, 1, 1)
    beta = -np.arange(6, dtype=np.float32).reshape(6, 1, 1)
    group_norm(g, gamma=gamma, beta=beta)
    found = recognized(g)
    assert isinstance(found, Match), reason(found)
    assert (found.kind, found.op_type) == ("GroupNormalization", "GroupNormalization")
    assert found.attributes["num_groups"] == 3
    assert found.attributes["epsilon"] == pytest.approx(1e-4, rel=1e-6)
    assert [n.op_type for n in found.nodes] == [
        "Add", "Mul", "Reshape", "Shape", "InstanceNormalization", "Reshape"
    ]  # fmt: skip
    np.testing.assert_array_equal(found.constants[0], gamma.reshape(-1))
    np.testing.assert_array_equal(found.constants[1], beta.reshape(-1))


@pytest.mark.parametrize("back", [[2, 6, 4, 4], [0, 6, 4, -1], [-1, 6, 4, 4]])
def test_group_norm_static_export(back):
    """The batch and group size as numbers, and a constant shape back that restores x's."""
    g = G(shape=(2, 6, 4, 4))
    group_norm(g, target=[2, 3, 32], back=back)
    found = recognized(g)
    assert isinstance(found, Match), reason(found)
    assert found.attributes["num_groups"] == 3
    np.testing.assert_array_equal(found.constants[0], np.ones(6))
    np.testing.assert_array_equal(found.constants[1], np.zeros(6))


def test_group_norm_with_a_scalar_scale():
    g = G(shape=(2, 6, 4, 4))
    group_norm(g, gamma=np.array(2.0, np.float32))
    found = recognized(g)
    assert isinstance(found, Match), reason(found)
    np.testing.assert_array_equal(found.constants[0], np.full(6, 2.0))


@pytest.mark.parametrize(
    ("shape", "options", "why"),
    [
        ((2, 6, 4, 4), {"scale": 2.0}, "has a scale or bias of its own"),
        ((2, 6, 4, 4), {"target": [0, 2, -1]},
         "the first Reshape makes 2 groups, its InstanceNormalization normalizes 3"),
        ((2, 6, 4, 4), {"allowzero": 1}, "the first Reshape has allowzero=1"),
        ((2, 6, 4, 4), {"target": [1, 3, -1]}, "the first Reshape's batch 1 is not its input's (2)"),
        ((2, 6, 4, 4), {"target": [0, 3, 16]},
         "the first Reshape's group size 16 is not its input's 96 / 3"),
        ((2, 6, 4, 4), {"target": [0, 3, 4, -1]}, "the first Reshape's target [0, 3, 4, -1] is not"),
        ((2, 5, "H", "W"), {}, "its 5 channels do not split into 3 groups"),
        ((2, 6), {}, "over (N, C) features"),
        ((2, 6, 4, 4), {"back": "shape-of-front"}, "reads the shape of another value"),
        ((2, 6, 4, 4), {"back": "shape-slice"}, "reads a slice of Shape"),
        ((2, 6, 4, 4), {"back": [2, 6, 16]}, "does not restore its input's shape"),
        ((2, 6, 4, 4), {"back": [2, 6, 4, 5]}, "does not restore its input's shape"),
        ((2, 6, 4, 4), {"gamma": np.ones((1, 1, 4, 4), np.float32)},
         "its scale or bias is not one value per channel"),
        ((2, 6, 4, 4), {"beta": np.ones((6, 1), np.float32)},
         "its scale or bias is not one value per channel"),
    ],
    ids=["own-scale", "groups", "allowzero", "batch", "group-size", "target-rank", "channels",
         "features", "shape-of-other", "shape-slice", "back-rank", "back-dims", "scale-image",
         "bias-rank"],
)  # fmt: skip
def test_group_norm_declines(shape, options, why):
    g = G(shape=shape)
    group_norm(g, **options)
    found = declined(recognized(g))
    assert found.startswith("GroupNorm pattern (Reshape, InstanceNormalization, Reshape)")
    assert why in found


def test_group_norm_is_reported_from_the_root_of_its_affine_only():
    """Recognized at the Add that ends it; at the Mul or the Reshape inside it: None (no second
    report of the same form)."""
    g = G(shape=(2, 6, 4, 4))
    group_norm(g, scale=2.0, gamma=np.ones((6, 1, 1), np.float32),
               beta=np.ones((6, 1, 1), np.float32))  # fmt: skip
    model = g.model("y")
    r = reader(model)
    assert "scale or bias of its own" in declined(recognize(node(model, "y"), r))
    mul = node(model, "y").inputs[0].producer()
    back = mul.inputs[0].producer()
    assert (mul.op_type, back.op_type) == ("Mul", "Reshape")
    assert recognize(mul, r) is None
    assert recognize(back, r) is None


def test_group_norm_needs_constant_instance_norm_parameters():
    g = G(inputs={"x": (F32, (2, 6, 4, 4)), "s": (F32, (3,))})
    front = g("Reshape", "x", g.const([0, 3, -1], I64))
    norm = g("InstanceNormalization", front, "s", g.const(np.zeros(3)))
    g("Reshape", norm, g("Shape", "x"), name="y")
    why = declined(recognized(g))
    assert "InstanceNormalization's scale or bias: 's' is a graph input, not a constant" in why


def test_other_ops_and_domains_are_not_read():
    g = G(shape=(2, 3, 4))
    layer_norm(g)
    g("Relu", "y", name="r")
    model = g.model("r")
    assert recognize(node(model, "r"), reader(model)) is None
    proto = g.proto("y")
    next(n for n in proto.graph.node if n.name == "y").domain = "com.example"
    proto.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    custom = ir.from_proto(proto)
    assert recognize(node(custom, "y"), reader(custom)) is None
