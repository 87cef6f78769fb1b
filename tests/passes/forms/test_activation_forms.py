"""The activation recognizers of `optkit.passes.forms.activations`, each on a small hand-built chain:
what they match (op, attributes, input, the nodes the form spans), the near-misses they leave (None)
or decline with a reason, and that recognizing never changes the graph."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx
import pytest
from form_graphs import G, node, reader, reason, serialized, value

from optkit.core.contract import Decline
from optkit.passes.forms import activations
from optkit.passes.forms.activations import find_activations, native, recognize
from optkit.passes.forms.pattern import Match

SQRT2 = math.sqrt(2.0)


def gelu(g: G) -> None:
    half = g("Mul", "x", 0.5)
    erf = g("Erf", g("Div", "x", SQRT2))
    g("Mul", half, g("Add", erf, 1.0), name="y")


def gelu_other_order(g: G) -> None:
    erf = g("Erf", g("Mul", math.sqrt(0.5), "x"))
    g("Mul", g("Mul", "x", g("Add", 1.0, erf)), 0.5, name="y")


def gelu_tanh_pow(g: G) -> None:
    cubic = g("Mul", 0.044715, g("Pow", "x", 3.0))
    inner = g("Mul", g("Add", "x", cubic), math.sqrt(2 / math.pi))
    g("Mul", g("Mul", 0.5, "x"), g("Add", g("Tanh", inner), 1.0), name="y")


def gelu_tanh_products(g: G) -> None:
    cubic = g("Mul", g("Mul", g("Mul", "x", "x"), "x"), 0.044715)
    inner = g("Mul", math.sqrt(2 / math.pi), g("Add", "x", cubic))
    g("Mul", g("Mul", "x", g("Add", 1.0, g("Tanh", inner))), 0.5, name="y")


def swish(g: G) -> None:
    g("Mul", "x", g("Sigmoid", "x"), name="y")


def swish_alpha(g: G) -> None:
    g("Mul", g("Sigmoid", g("Mul", "x", 1.702)), "x", name="y")


def hard_swish_op(g: G) -> None:
    g("Mul", "x", g("HardSigmoid", "x", alpha=1 / 6, beta=0.5), name="y")


def hard_swish_clip(g: G) -> None:
    relu6 = g("Clip", g("Add", "x", 3.0), 0.0, 6.0)
    g("Div", g("Mul", "x", relu6), 6.0, name="y")


def hard_sigmoid_div(g: G) -> None:
    g("Div", g("Clip", g("Add", 3.0, "x"), 0.0, 6.0), 6.0, name="y")


def hard_sigmoid_clip01(g: G) -> None:
    g("Clip", g("Add", g("Mul", "x", 0.25), 0.375), 0.0, 1.0, name="y")


def mish(g: G) -> None:
    g("Mul", "x", g("Tanh", g("Softplus", "x")), name="y")


def softplus_log(g: G) -> None:
    g("Log", g("Add", g("Exp", "x"), 1.0), name="y")


def softplus_threshold(g: G) -> None:
    g("Where", g("Greater", "x", 20.0), "x", g("Softplus", "x"), name="y")


def elu_plain(g: G) -> None:
    g("Where", g("Greater", "x", 0.0), "x", g("Sub", g("Exp", "x"), 1.0), name="y")


def elu_alpha(g: G) -> None:
    negative = g("Mul", 0.7, g("Sub", g("Exp", "x"), 1.0))
    g("Where", g("LessOrEqual", "x", 0.0), negative, "x", name="y")


def selu(g: G) -> None:
    g("Mul", g("Elu", "x", alpha=1.6732632), 1.0507010, name="y")


def celu(g: G) -> None:
    expm1 = g("Sub", g("Exp", g("Div", "x", 2.0)), 1.0)
    g("Add", g("Max", "x", 0.0), g("Min", 0.0, g("Mul", 2.0, expm1)), name="y")


def celu_relu(g: G) -> None:
    expm1 = g("Sub", g("Exp", g("Mul", "x", 4.0)), 1.0)
    g("Add", g("Min", g("Mul", expm1, 0.25), 0.0), g("Relu", "x"), name="y")


def leaky_max(g: G) -> None:
    g("Max", g("Mul", 0.1, "x"), "x", name="y")


def leaky_where(g: G) -> None:
    g("Where", g("GreaterOrEqual", "x", 0.0), "x", g("Mul", "x", 0.2), name="y")


def leaky_prelu(g: G) -> None:
    g("PRelu", "x", g.const([[0.3]]), name="y")


def relu_max(g: G) -> None:
    g("Max", 0.0, "x", name="y")


def relu_clip_inf(g: G) -> None:
    g("Clip", "x", 0.0, np.inf, name="y")


def relu_clip_attrs(g: G) -> None:
    g("Clip", "x", min=0.0, max=float("inf"), name="y")


def relu_where(g: G) -> None:
    g("Where", g("Less", "x", 0.0), 0.0, "x", name="y")


FORMS: list[tuple[Callable[[G], None], str, str, dict[str, object], int, int]] = [
    # builder, kind, op, attributes (approx for floats), number of nodes, opset
    (gelu, "Gelu", "Gelu", {}, 5, 17),
    (gelu_other_order, "Gelu", "Gelu", {}, 5, 17),
    (gelu_tanh_pow, "Gelu:tanh", "Gelu", {"approximate": "tanh"}, 8, 17),
    (gelu_tanh_products, "Gelu:tanh", "Gelu", {"approximate": "tanh"}, 9, 17),
    (swish, "Swish", "Swish", {"alpha": 1.0}, 2, 17),
    (swish_alpha, "Swish", "Swish", {"alpha": 1.702}, 3, 17),
    (hard_swish_op, "HardSwish", "HardSwish", {}, 2, 17),
    (hard_swish_clip, "HardSwish", "HardSwish", {}, 4, 17),
    (hard_sigmoid_div, "HardSigmoid", "HardSigmoid", {"alpha": 1 / 6, "beta": 0.5}, 3, 17),
    (hard_sigmoid_clip01, "HardSigmoid", "HardSigmoid", {"alpha": 0.25, "beta": 0.375}, 3, 17),
    (mish, "Mish", "Mish", {}, 3, 17),
    (softplus_log, "Softplus", "Softplus", {}, 3, 17),
    (softplus_threshold, "Softplus", "Softplus", {}, 3, 17),
    (elu_plain, "Elu", "Elu", {"alpha": 1.0}, 4, 17),
    (elu_alpha, "Elu", "Elu", {"alpha": 0.7}, 5, 17),
    (selu, "Selu", "Selu", {"alpha": 1.6732632, "gamma": 1.0507010}, 2, 17),
    (celu, "Celu", "Celu", {"alpha": 2.0}, 7, 17),
    (celu_relu, "Celu", "Celu", {"alpha": 0.25}, 7, 17),
    (leaky_max, "LeakyRelu", "LeakyRelu", {"alpha": 0.1}, 2, 17),
    (leaky_where, "LeakyRelu", "LeakyRelu", {"alpha": 0.2}, 3, 17),
    (leaky_prelu, "LeakyRelu", "LeakyRelu", {"alpha": 0.3}, 1, 17),
    (relu_max, "Relu", "Relu", {}, 1, 17),
    (relu_clip_inf, "Relu", "Relu", {}, 1, 17),
    (relu_clip_attrs, "Relu", "Relu", {}, 1, 6),
    (relu_where, "Relu", "Relu", {}, 2, 17),
]


@pytest.mark.parametrize(
    ("build", "kind", "op", "attributes", "count", "opset"),
    FORMS,
    ids=[f[0].__name__ for f in FORMS],
)
def test_form_is_recognized(build, kind, op, attributes, count, opset):
    g = G(opset=opset)
    build(g)
    model = g.model("y")
    before = serialized(model)
    found = recognize(node(model, "y"), reader(model))
    assert isinstance(found, Match), reason(found)
    assert (found.kind, found.op_type) == (kind, op)
    assert set(found.attributes) == set(attributes)
    for name, expected in attributes.items():
        got = found.attributes[name]
        assert got == (
            pytest.approx(expected, rel=1e-6) if isinstance(expected, float) else expected
        )
    assert found.x is value(model, "x")
    assert found.nodes[0] is node(model, "y") and found.output is value(model, "y")
    assert len(found.nodes) == count and len({id(n) for n in found.nodes}) == count
    assert serialized(model) == before  # recognizing reads only


def test_every_node_of_a_form_computes_part_of_it():
    """The nodes listed are exactly the form's: every node between x and y, nothing else."""
    g = G()
    gelu_tanh_pow(g)
    g("Relu", "x", name="unrelated")
    model = g.model("y", "unrelated")
    found = recognize(node(model, "y"), reader(model))
    assert isinstance(found, Match)
    assert {n.name for n in found.nodes} == {n.name for n in model.graph} - {"unrelated"}


# --- near misses: no form (None) ----------------------------------------------------------------


def leaky_slope_above_one(g: G) -> None:
    g("Max", "x", g("Mul", "x", 2.0), name="y")


def swish_scaled(g: G) -> None:
    g("Mul", g("Mul", "x", g("Sigmoid", "x")), 2.0, name="y")


def swish_of_another_value(g: G) -> None:
    g("Mul", "x", g("Sigmoid", "z"), name="y")


def softplus_plus_two(g: G) -> None:
    g("Log", g("Add", g("Exp", "x"), 2.0), name="y")


def softplus_threshold_ten(g: G) -> None:
    g("Where", g("Greater", "x", 10.0), "x", g("Softplus", "x"), name="y")


def prelu_per_channel(g: G) -> None:
    g("PRelu", "x", g.const([0.1, 0.2, 0.3, 0.4]), name="y")


def hard_swish_wrong_shift(g: G) -> None:
    g("Div", g("Mul", "x", g("Clip", g("Add", "x", 2.0), 0.0, 6.0)), 6.0, name="y")


def clip_zero_to_two(g: G) -> None:
    g("Clip", "x", 0.0, 2.0, name="y")


def where_positive_branch_other(g: G) -> None:
    g("Where", g("Greater", "x", 0.0), "z", g("Mul", "x", 0.1), name="y")


def where_threshold_not_zero(g: G) -> None:
    g("Where", g("Greater", "x", 1.0), "x", g("Mul", "x", 0.1), name="y")


def celu_mismatched_alpha(g: G) -> None:
    expm1 = g("Sub", g("Exp", g("Div", "x", 3.0)), 1.0)
    g("Add", g("Max", "x", 0.0), g("Min", 0.0, g("Mul", 2.0, expm1)), name="y")


NEAR_MISSES = [
    leaky_slope_above_one, swish_scaled, swish_of_another_value, softplus_plus_two,
    softplus_threshold_ten, prelu_per_channel, hard_swish_wrong_shift, clip_zero_to_two,
    where_positive_branch_other, where_threshold_not_zero, celu_mismatched_alpha,
]  # fmt: skip


@pytest.mark.parametrize("build", NEAR_MISSES, ids=[f.__name__ for f in NEAR_MISSES])
def test_near_miss_is_no_form(build):
    g = G(inputs=("x", "z"))
    build(g)
    model = g.model("y")
    before = serialized(model)
    assert recognize(node(model, "y"), reader(model)) is None
    assert serialized(model) == before


def test_a_wrong_constant_inside_a_larger_product_is_not_reported():
    g = G(inputs=("x", "z"))
    erf = g("Erf", g("Div", "x", SQRT2))
    inner = g("Mul", g("Mul", "x", 0.4), g("Add", erf, 1.0), name="inner")
    g("Mul", inner, "z", name="y")
    model = g.model("y")
    assert recognize(node(model, "inner"), reader(model)) is None


# --- declines: the form is there, but may not be rewritten --------------------------------------


def gelu_wrong_half(g: G) -> None:
    erf = g("Erf", g("Div", "x", SQRT2))
    g("Mul", g("Mul", "x", 0.4), g("Add", erf, 1.0), name="y")


def gelu_wrong_sqrt(g: G) -> None:
    erf = g("Erf", g("Div", "x", 1.5))
    g("Mul", g("Mul", "x", 0.5), g("Add", erf, 1.0), name="y")


def gelu_tanh_wrong_cubic(g: G) -> None:
    cubic = g("Mul", 0.0447, g("Pow", "x", 3.0))
    inner = g("Mul", g("Add", "x", cubic), math.sqrt(2 / math.pi))
    g("Mul", g("Mul", 0.5, "x"), g("Add", g("Tanh", inner), 1.0), name="y")


def relu_clip_without_max(g: G) -> None:
    g("Clip", "x", 0.0, name="y")


def relu_where_greater(g: G) -> None:
    g("Where", g("Greater", "x", 0.0), "x", 0.0, name="y")


def relu_where_greater_or_equal(g: G) -> None:
    g("Where", g("GreaterOrEqual", "x", 0.0), "x", 0.0, name="y")


DECLINES = [
    (gelu_wrong_half, "Gelu pattern, but its constant 0.4 is not 0.5 = 0.5"),
    (gelu_wrong_sqrt, "Gelu pattern, but its constant 0.6666667 is not 1/sqrt(2) = 0.7071068"),
    (
        gelu_tanh_wrong_cubic,
        "Gelu:tanh pattern, but its constant 0.0447 is not 0.044715 = 0.044715",
    ),
    (relu_clip_without_max, "Clip(x, 0) without a max is not Relu"),
    (relu_where_greater, "Where(x > 0, x, 0) is not Relu"),
    (relu_where_greater_or_equal, "Where(x >= 0, x, 0) is not Relu"),
]


@pytest.mark.parametrize(("build", "why"), DECLINES, ids=[d[0].__name__ for d in DECLINES])
def test_decline_says_why(build, why):
    g = G()
    build(g)
    model = g.model("y")
    before = serialized(model)
    found = recognize(node(model, "y"), reader(model))
    assert isinstance(found, Decline), found
    assert reason(found).startswith(why)
    assert serialized(model) == before


def test_constants_are_compared_in_their_own_precision():
    """0.5 and 1/sqrt(2) stored as float16 still read as Gelu's (float16's ulps, not float32's)."""
    g = G()
    half = g("Mul", "x", g.const(0.5, np.float16))
    erf = g("Erf", g("Mul", "x", g.const(math.sqrt(0.5), np.float16)))
    g("Mul", half, g("Add", erf, 1.0), name="y")
    model = g.model("y")
    found = recognize(node(model, "y"), reader(model))
    assert isinstance(found, Match) and found.kind == "Gelu"


def test_other_domains_are_not_read():
    g = G()
    g("Max", "x", 0.0, name="y")
    g.nodes[-1].domain = "com.example"
    model = g.model("y", infer=False)
    assert recognize(node(model, "y"), reader(model)) is None


# --- native ops and find_activations ------------------------------------------------------------


def test_native_reads_single_activation_ops():
    g = G(opset=20)
    g("Gelu", "x", approximate="tanh", name="gt")
    g("LeakyRelu", "x", alpha=0.3, name="lr")
    g("Clip", "x", 0.0, 6.0, name="clip")
    g("Exp", "x", name="exp")
    model = g.model("gt", "lr", "clip", "exp")
    r = reader(model)
    gt = native(node(model, "gt"), r)
    assert gt is not None and gt.kind == "Gelu:tanh" and gt.fused
    assert gt.attributes == {"approximate": "tanh"}
    lr = native(node(model, "lr"), r)
    assert (
        lr is not None and lr.kind == "LeakyRelu" and lr.attributes["alpha"] == pytest.approx(0.3)
    )
    assert native(node(model, "clip"), r) is None  # Clip is read by its bounds, not as itself
    assert native(node(model, "exp"), r) is None


def test_find_activations_lists_forms_and_native_ops_in_node_order():
    g = G()
    gelu(g)
    g("Relu", "y", name="r")
    model = g.model("r")
    before = serialized(model)
    found = find_activations(model)
    assert [(graph is model.graph, m.kind, m.nodes[0].name) for graph, m in found] == [
        (True, "Gelu", "y"),
        (True, "Relu", "r"),
    ]
    assert serialized(model) == before


def test_find_activations_skips_a_form_whose_inside_is_read_elsewhere():
    g = G()
    sig = g("Sigmoid", "x", name="sig")
    g("Mul", "x", sig, name="y")
    g("Neg", sig, name="other")
    model = g.model("y", "other")
    kinds = [(m.kind, m.nodes[0].name) for _, m in find_activations(model)]
    assert kinds == [("Sigmoid", "sig")]  # the Swish form is not private: its Sigmoid stays


def test_min_opset_matches_the_onnx_schemas():
    for op, version in activations.MIN_OPSET.items():
        schema = onnx.defs.get_schema(op, version, "")
        assert schema.since_version <= version, op
    for op in ("Gelu", "Swish", "Mish", "HardSwish", "Celu"):  # new ops: their first opset
        with pytest.raises(onnx.defs.SchemaError):
            onnx.defs.get_schema(op, activations.MIN_OPSET[op] - 1, "")
