"""`optkit.passes.forms.pattern` on its own: producers, constants compared in ULPs, Mul / Div trees
flattened into products, the privacy check and the end-to-start walk, on small hand-built graphs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import pytest
from form_graphs import F32, node, reader, value
from onnx import helper, numpy_helper

from optkit.core.contract import Decline
from optkit.core.graph import ConstantPolicy
from optkit.passes.forms.pattern import (
    Match,
    Product,
    Reader,
    close,
    forms_from_the_end,
    match,
    private,
    producer,
)


def build(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[str],
    outputs: Sequence[str],
    inits: dict[str, Any] | None = None,
    *,
    ir_version: int = 10,
    inits_as_inputs: Sequence[str] = (),
) -> ir.Model:
    """A float32 model of rank-1 inputs (size 4); `inits_as_inputs` also lists those initializers as
    graph inputs."""
    graph_inputs = [helper.make_tensor_value_info(n, F32, [4]) for n in (*inputs, *inits_as_inputs)]
    graph = helper.make_graph(
        list(nodes),
        "g",
        graph_inputs,
        [helper.make_tensor_value_info(n, F32, None) for n in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = ir_version
    return ir.from_proto(proto)


def fine(result: object) -> bool:
    """A check's "nothing stands in the way" (it returns `Decline | None`)."""
    return result is None


def reason(result: object) -> str:
    assert isinstance(result, Decline), result
    return result.reason


def mk(op: str, inputs: Sequence[str], output: str, **attrs: Any) -> onnx.NodeProto:
    return helper.make_node(op, list(inputs), [output], name=output, **attrs)


# --- producer ---------------------------------------------------------------------------------


def test_producer_of_the_given_op_types_only():
    model = build([mk("Mul", ["x", "y"], "m"), mk("Relu", ["m"], "r")], ["x", "y"], ["r"])
    m = value(model, "m")
    assert producer(m, "Mul") is node(model, "m")
    assert producer(m, "Add", "Mul") is node(model, "m")
    assert producer(m, "Add") is None
    assert producer(value(model, "x"), "Mul") is None  # a graph input has no producer
    assert producer(None, "Mul") is None


def test_producer_ignores_other_domains():
    custom = helper.make_node("Mul", ["x", "y"], ["m"], name="m", domain="com.example")
    model = build([custom, mk("Relu", ["m"], "r")], ["x", "y"], ["r"])
    assert producer(value(model, "m"), "Mul") is None


# --- close --------------------------------------------------------------------------------------


def test_close_accepts_a_constant_rounded_to_its_storage_type():
    assert close(float(np.float32(0.044715)), 0.044715)
    assert close(float(np.float16(0.044715)), 0.044715, np.dtype(np.float16))
    assert not close(0.0447, 0.044715)


def test_close_uses_the_epsilon_of_the_given_dtype():
    assert close(1.003, 1.0, np.dtype(np.float16))  # 4 ulps of float16 is 3.9e-3
    assert not close(1.003, 1.0)  # float32 by default
    assert close(1.0 + 3e-7, 1.0)
    assert not close(1.0 + 3e-7, 1.0, np.dtype(np.float64))
    assert close(1.02, 1.0, np.dtype(ml_dtypes.bfloat16))  # bfloat16: eps 2^-7
    assert not close(1.04, 1.0, np.dtype(ml_dtypes.bfloat16))


def test_close_is_relative_to_the_expected_value():
    assert close(1000.0 + 1e-4, 1000.0)
    assert not close(1e-3 + 1e-7, 1e-3)


# --- match / Match ------------------------------------------------------------------------------


def test_match_builds_a_match_and_reports_what_it_computes():
    model = build([mk("Relu", ["x"], "r")], ["x"], ["r"])
    relu, x = node(model, "r"), value(model, "x")
    found = match("LeakyRelu", "LeakyRelu", {"alpha": 0.1, "beta": 2}, x, [relu], [np.ones(2)])
    assert isinstance(found, Match)
    assert found.x is x and found.nodes == [relu] and found.output is relu.outputs[0]
    assert len(found.constants) == 1
    assert found.describe() == "LeakyRelu(alpha=0.1, beta=2)"
    assert not found.fused  # Relu is not LeakyRelu
    assert match("Relu", "Relu", {}, x, [relu]).fused  # type: ignore[union-attr]
    assert match("Relu", "Relu", {}, x, [relu]).describe() == "Relu"  # type: ignore[union-attr]


def test_match_is_none_when_an_operand_is_missing():
    model = build([mk("Relu", ["x"], "r")], ["x"], ["r"])
    relu, x = node(model, "r"), value(model, "x")
    assert match("Relu", "Relu", {}, None, [relu]) is None
    assert match("Relu", "Relu", {}, x, [relu, None]) is None
    assert match("Relu", "Relu", {}, x, [relu], [np.ones(1), None]) is None


def test_describe_rounds_floats_to_six_digits():
    model = build([mk("Relu", ["x"], "r")], ["x"], ["r"])
    found = Match("Gelu", "Gelu", {"b": 1 / 3, "a": "tanh"}, value(model, "x"), [node(model, "r")])
    assert found.describe() == "Gelu(a=tanh, b=0.333333)"


# --- Product.only -------------------------------------------------------------------------------


def test_product_only_compares_terms_as_a_multiset_by_identity():
    model = build([mk("Mul", ["x", "y"], "m")], ["x", "y"], ["m"])
    x, y = value(model, "x"), value(model, "y")
    assert Product(terms=[x, x, y]).only(x, y, x)
    assert not Product(terms=[x, x, y]).only(x, y, y)
    assert not Product(terms=[x, y]).only(x)
    assert not Product(terms=[x], divisors=[y]).only(x)
    assert Product().only()


# --- Reader.scalar / dtype / split --------------------------------------------------------------


SCALARS = {
    "f": np.array(2.5, np.float32),
    "v1": np.array([3.0], np.float32),
    "m11": np.array([[4.0]], np.float32),
    "i": np.array(7, np.int64),
    "b": np.array(True),
    "vec": np.array([1.0, 2.0], np.float32),
    "h": np.array(0.5, np.float16),
}


def scalar_model() -> ir.Model:
    ops = [mk("Identity", [name], f"{name}_out") for name in SCALARS]
    return build(ops, ["x"], [f"{name}_out" for name in SCALARS], SCALARS)


@pytest.mark.parametrize(
    ("name", "max_rank", "expected"),
    [("f", 1, 2.5), ("v1", 1, 3.0), ("m11", 1, None), ("m11", 2, 4.0), ("i", 1, 7.0),
     ("b", 1, None), ("vec", 1, None), ("h", 1, 0.5), ("x", 1, None)],
)  # fmt: skip
def test_scalar_reads_one_element_constants(name, max_rank, expected):
    model = scalar_model()
    assert reader(model).scalar(value(model, name), max_rank=max_rank) == expected


def test_scalar_is_none_for_an_overridable_initializer():
    ops = [mk("Mul", ["x", "c"], "m")]
    overridable = build(ops, ["x"], ["m"], {"c": np.array(2.0, np.float32)}, inits_as_inputs=["c"])
    assert reader(overridable).scalar(value(overridable, "c")) is None
    ir3 = build(ops, ["x"], ["m"], {"c": np.array(2.0, np.float32)}, ir_version=3,
                inits_as_inputs=["c"])  # fmt: skip
    assert reader(ir3).scalar(value(ir3, "c")) == 2.0  # IR 3 lists every initializer as an input


def test_dtype_of_constants():
    model = scalar_model()
    r = reader(model)
    assert r.dtype(value(model, "h")) == np.dtype(np.float16)
    assert r.dtype(value(model, "x")) is None
    assert r.dtype(None) is None


def test_split_finds_the_constant_on_either_side():
    c = {"c": np.array(3.0, np.float32), "d": np.array(5.0, np.float32)}
    ops = [mk("Mul", ["x", "c"], "a"), mk("Mul", ["c", "x"], "b"), mk("Mul", ["c", "d"], "cc"),
           mk("Mul", ["x", "y"], "xy")]  # fmt: skip
    model = build(ops, ["x", "y"], ["a", "b", "cc", "xy"], c)
    r, x = reader(model), value(model, "x")
    assert r.split(node(model, "a")) == (3.0, x)
    assert r.split(node(model, "b")) == (3.0, x)
    assert r.split(node(model, "cc")) is None  # both constant: constant folding's job
    assert r.split(node(model, "xy")) is None


# --- Reader.product -----------------------------------------------------------------------------


def test_product_flattens_mul_div_trees():
    """((x * 2) / (y * 4)) * z = 0.5 * x * z / y: y's product sits under the Div, so its 4 divides."""
    consts = {"two": np.array(2.0, np.float32), "four": np.array(4.0, np.float32)}
    ops = [mk("Mul", ["x", "two"], "a"), mk("Mul", ["y", "four"], "b"), mk("Div", ["a", "b"], "d"),
           mk("Mul", ["d", "z"], "root")]  # fmt: skip
    model = build(ops, ["x", "y", "z"], ["root"], consts)
    p = reader(model).product(node(model, "root"))
    assert p is not None
    assert p.coefficient == pytest.approx(0.5)
    assert p.terms == [value(model, "x"), value(model, "z")]
    assert p.divisors == [value(model, "y")]
    assert [n.name for n in p.nodes] == ["root", "d", "a", "b"]
    assert p.dtype == np.dtype(np.float32)


def test_product_reads_small_integer_powers_as_repeated_terms():
    consts = {"three": np.array(3.0, np.float32), "five": np.array(5.0, np.float32)}
    ops = [mk("Pow", ["x", "three"], "cube"), mk("Pow", ["x", "five"], "fifth"),
           mk("Mul", ["cube", "y"], "p3"), mk("Mul", ["fifth", "y"], "p5")]  # fmt: skip
    model = build(ops, ["x", "y"], ["p3", "p5"], consts)
    r, x, y = reader(model), value(model, "x"), value(model, "y")
    cubed = r.product(node(model, "p3"))
    assert cubed is not None and cubed.only(x, x, x, y)
    assert [n.name for n in cubed.nodes] == ["p3", "cube"]
    fifth = r.product(node(model, "p5"))
    assert fifth is not None and fifth.terms == [value(model, "fifth"), y]  # not expanded


def test_product_does_not_expand_a_power_it_divides_by():
    ops = [mk("Pow", ["x", "two"], "sq"), mk("Div", ["y", "sq"], "q")]
    model = build(ops, ["x", "y"], ["q"], {"two": np.array(2.0, np.float32)})
    p = reader(model).product(node(model, "q"))
    assert p is not None and p.divisors == [value(model, "sq")] and p.terms == [value(model, "y")]


def test_product_stops_at_values_read_elsewhere_or_graph_outputs():
    ops = [mk("Mul", ["x", "y"], "shared"), mk("Mul", ["shared", "z"], "root"),
           mk("Relu", ["shared"], "other"), mk("Mul", ["x", "z"], "out"),
           mk("Mul", ["out", "y"], "root2")]  # fmt: skip
    model = build(ops, ["x", "y", "z"], ["root", "other", "out", "root2"])
    r = reader(model)
    p = r.product(node(model, "root"))
    assert p is not None and p.terms == [value(model, "shared"), value(model, "z")]
    p2 = r.product(node(model, "root2"))
    assert p2 is not None and p2.terms == [value(model, "out"), value(model, "y")]


def test_product_inverts_divided_constants():
    ops = [mk("Div", ["x", "c"], "d"), mk("Div", ["c", "x"], "e"), mk("Div", ["x", "z"], "f")]
    consts = {"c": np.array(4.0, np.float32), "z": np.array(0.0, np.float32)}
    model = build(ops, ["x"], ["d", "e", "f"], consts)
    r, x = reader(model), value(model, "x")
    d = r.product(node(model, "d"))
    assert d is not None and d.coefficient == 0.25 and d.terms == [x] and not d.divisors
    e = r.product(node(model, "e"))
    assert e is not None and e.coefficient == 4.0 and e.divisors == [x] and not e.terms
    f = r.product(node(model, "f"))
    assert f is not None and f.coefficient == np.inf  # x / 0


def test_product_of_other_ops_is_none():
    ops = [mk("Add", ["x", "y"], "a"), mk("Mul", ["a", "y"], "m")]
    model = build(ops, ["x", "y"], ["m"])
    r = reader(model)
    assert r.product(node(model, "a")) is None
    assert r.product_of(value(model, "a")) is None
    assert r.product_of(value(model, "x")) is None
    p = r.product_of(value(model, "m"))
    assert p is not None and p.terms == [value(model, "a"), value(model, "y")]


def test_interior_and_expandable():
    ops = [mk("Mul", ["x", "y"], "inner"), mk("Mul", ["inner", "y"], "outer"),
           mk("Mul", ["x", "x"], "into_add"), mk("Add", ["into_add", "y"], "sum"),
           mk("Mul", ["y", "y"], "twice"), mk("Mul", ["twice", "x"], "t1"),
           mk("Mul", ["twice", "y"], "t2")]  # fmt: skip
    model = build(ops, ["x", "y"], ["outer", "sum", "t1", "t2"])
    r = reader(model)
    assert r.interior(node(model, "inner"))
    assert not r.interior(node(model, "outer"))  # a graph output
    assert not r.interior(node(model, "into_add"))
    assert not r.interior(node(model, "twice"))  # read twice
    assert r.expandable(value(model, "inner"))
    assert not r.expandable(value(model, "outer"))
    assert not r.expandable(value(model, "twice"))
    assert not r.expandable(value(model, "x"))  # no producer
    assert not r.expandable(None)


# --- private ------------------------------------------------------------------------------------


def chain_model(extra_reader: bool, intermediate_is_output: bool) -> ir.Model:
    ops = [mk("Exp", ["x"], "e"), mk("Log", ["e"], "l")]
    outputs = ["l"]
    if extra_reader:
        ops.append(mk("Relu", ["e"], "leak"))
        outputs.append("leak")
    if intermediate_is_output:
        outputs.append("e")
    return build(ops, ["x"], outputs)


def test_private_when_only_the_output_leaves():
    model = chain_model(False, False)
    nodes = [node(model, "l"), node(model, "e")]
    assert fine(private(nodes, value(model, "l"), model.graph))


def test_private_names_the_outside_reader():
    model = chain_model(True, False)
    why = private([node(model, "l"), node(model, "e")], value(model, "l"), model.graph)
    assert not fine(why)
    assert reason(why) == "intermediate 'e' is also read by leak"


def test_private_refuses_an_intermediate_graph_output():
    model = chain_model(False, True)
    why = private([node(model, "l"), node(model, "e")], value(model, "l"), model.graph)
    assert not fine(why) and reason(why) == "intermediate 'e' is a graph output"


def test_private_refuses_nodes_of_another_graph():
    body = helper.make_graph(
        [mk("Neg", ["x"], "inner")], "body", [], [helper.make_tensor_value_info("inner", F32, [4])]
    )
    cond = helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, [])
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], name="if", then_branch=body, else_branch=body)],
        "g",
        [helper.make_tensor_value_info("x", F32, [4]), cond],
        [helper.make_tensor_value_info("y", F32, [4])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 10
    model = ir.from_proto(proto)
    then = node(model, "if").attributes["then_branch"].as_graph()
    inner = next(iter(then))
    why = private([inner], inner.outputs[0], model.graph)
    assert not fine(why) and reason(why) == "inner is in another graph"


# --- forms_from_the_end -------------------------------------------------------------------------


def test_forms_from_the_end_visits_backwards_and_skips_claimed_nodes():
    ops = [mk("Relu", ["x"], "a"), mk("Exp", ["a"], "b"), mk("Log", ["b"], "c"),
           mk("Neg", ["c"], "d")]  # fmt: skip
    model = build(ops, ["x"], ["d"])
    visited: list[str] = []

    def recognize(n: ir.Node, r: Reader) -> Match | Decline | None:
        visited.append(n.name or "")
        if n.op_type == "Log":  # claims Log and Exp
            return match("Softplus", "Softplus", {}, n.inputs[0], [n, node(model, "b")])
        if n.op_type == "Neg":
            return Decline("a reason")
        return None

    found = list(forms_from_the_end(model, ConstantPolicy(model), recognize))
    assert visited == ["d", "c", "a"]  # b was claimed by the match at c
    shown = [(g is model.graph, n.name, reason(f) if isinstance(f, Decline) else f.kind)
             for g, n, f in found]  # fmt: skip
    assert shown == [(True, "d", "a reason"), (True, "c", "Softplus")]


def test_forms_from_the_end_skips_nodes_removed_between_steps():
    ops = [mk("Relu", ["x"], "a"), mk("Neg", ["a"], "b"), mk("Neg", ["b"], "c")]
    model = build(ops, ["x"], ["c"])
    visited: list[str] = []

    def recognize(n: ir.Node, r: Reader) -> Decline:
        visited.append(n.name or "")
        return Decline("seen")

    walk = forms_from_the_end(model, ConstantPolicy(model), recognize)
    next(walk)  # at c: remove b as a rewrite would (c then reads a)
    c, b = node(model, "c"), node(model, "b")
    c.replace_input_with(0, value(model, "a"))
    model.graph.remove(b)
    rest = list(walk)
    assert visited == ["c", "a"] and [n.name for _, n, _ in rest] == ["a"]
