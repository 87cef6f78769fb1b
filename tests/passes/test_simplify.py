"""simplify: If on a constant condition inlined, no-op shape ops removed, pairs merged; all bitwise.

Every rewrite is checked for structure, for exact equality on ONNX Runtime (at two batch sizes where
the batch is dynamic), for idempotence, and its near-misses for the reason they give.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import optkit
from helpers import F32, assert_same_outputs, fold, make_model, op_types, ort_outputs, sites
from optkit import PassOptions
from optkit.passes.simplify import Simplify

I64 = TensorProto.INT64
BOOL = TensorProto.BOOL
PASSES = ("simplify", "unused")


def _feeds(model: onnx.ModelProto, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Seeded inputs for every graph input, with `batch` for each dynamic dim."""
    feeds = {}
    inits = {i.name for i in model.graph.initializer}
    for value in model.graph.input:
        if value.name in inits:
            continue
        tensor = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else batch for d in tensor.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type)
        if dtype.kind == "f":
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[value.name] = rng.integers(0, 2, shape).astype(dtype)
        else:
            info = np.iinfo(dtype)
            feeds[value.name] = rng.integers(info.min, info.max, shape, endpoint=True, dtype=dtype)
    return feeds


def simplified(
    model: onnx.ModelProto,
    rng: np.random.Generator,
    *,
    batches: Sequence[int] = (1, 3),
    passes: Sequence[str] = PASSES,
    feeds: Sequence[dict[str, np.ndarray]] = (),
) -> optkit.FuseResult:
    """Run the pass; outputs equal bit for bit at every batch size; a second run applies nothing."""
    result = fold(model, passes=passes)
    for fed in [*(_feeds(model, b, rng) for b in batches), *feeds]:
        assert_same_outputs(model, result.model, fed, exact=True)
    assert [v.name for v in result.model.graph.inputs] == [v.name for v in model.graph.input]
    assert [v.name for v in result.model.graph.outputs] == [v.name for v in model.graph.output]
    again = fold(result.to_proto(), passes=passes)
    assert [s for s in sites(again, "simplify") if s.applied] == []
    assert op_types(again.model) == op_types(result.model)
    return result


def applied(result: optkit.FuseResult) -> list[str]:
    return [s.rule for s in sites(result, "simplify") if s.applied]


def declined(result: optkit.FuseResult) -> list[tuple[str, str]]:
    return [(s.rule, s.reason) for s in sites(result, "simplify") if not s.applied]


def const(name: str, array: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name))


def ints(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


# --- If on a constant condition -----------------------------------------------------------------


def _branches(out: str = "y", k: str = "k") -> tuple[onnx.GraphProto, onnx.GraphProto]:
    then = helper.make_graph(
        [helper.make_node("Add", ["x", k], ["t"]), helper.make_node("Relu", ["t"], [out])],
        "then",
        [],
        [helper.make_tensor_value_info(out, F32, None)],
        [numpy_helper.from_array(np.array([1.5, -2.0, 0.25], np.float32), k)],
    )
    other = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["t"]), helper.make_node("Sigmoid", ["t"], [out])],
        "else",
        [],
        [helper.make_tensor_value_info(out, F32, None)],
    )
    return then, other


@pytest.mark.parametrize("taken", [True, False])
def test_if_on_constant_condition_is_inlined(rng, taken):
    then, other = _branches("b")
    nodes = [
        const("c", np.array(taken)),
        helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other, name="if"),
    ]
    model = make_model(nodes, [("x", F32, ["N", 3])], [("y", F32, ["N", 3])], {})
    result = simplified(model, rng)
    assert op_types(result.model) == (["Add", "Relu"] if taken else ["Neg", "Sigmoid"])
    assert result.model.graph.outputs[0].name == "y"
    assert result.model.graph.outputs[0].producer().op_type == ("Relu" if taken else "Sigmoid")
    (site,) = sites(result, "simplify")
    assert site.rule == "if-constant" and site.removed == ("if",) and len(site.added) == 2


def test_if_output_read_by_later_nodes_keeps_its_name(rng):
    then, other = _branches("b")
    nodes = [
        helper.make_node("If", ["c"], ["h"], then_branch=then, else_branch=other),
        helper.make_node("Mul", ["h", "x"], ["y"]),
    ]
    model = make_model(
        nodes, [("x", F32, ["N", 3])], [("y", F32, None)], {"c": np.array(False)}, opset=13
    )
    result = simplified(model, rng)
    assert op_types(result.model) == ["Neg", "Sigmoid", "Mul"]
    assert result.model.graph.node(-1).inputs[0].name == "h"


def test_if_with_non_constant_condition_is_declined(rng):
    then, other = _branches()
    nodes = [helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]
    model = make_model(nodes, [("x", F32, [2, 3]), ("c", BOOL, [])], [("y", F32, None)], {})
    result = fold(model, passes=PASSES)
    assert op_types(result.model) == ["If"]
    assert declined(result) == [
        ("if-constant", "its condition is not a constant: 'c' is a graph input, not a constant")
    ]


def test_if_on_overridable_initializer_is_declined_unless_frozen(rng):
    then, other = _branches()
    nodes = [helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]
    model = make_model(
        nodes, [("x", F32, [2, 3])], [("y", F32, None)], {"c": np.array(True)}, inits_as_inputs=True
    )
    result = fold(model, passes=PASSES)
    assert op_types(result.model) == ["If"]
    ((_, reason),) = declined(result)
    assert "overridable" in reason and "--freeze-initializer-inputs" in reason
    frozen = fold(model, passes=PASSES, options=PassOptions(freeze_initializer_inputs=True))
    assert op_types(frozen.model) == ["Add", "Relu"]


def _initializer_and_twice(outputs: Sequence[str]) -> onnx.ModelProto:
    then = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"])],
        "then",
        [],
        [helper.make_tensor_value_info(v, F32, [2]) for v in outputs],
        [numpy_helper.from_array(np.array([3.0, -1.0], np.float32), "k")],
    )
    other = helper.make_graph(
        [helper.make_node("Neg", ["x"], [f"n{i}"]) for i in range(len(outputs))],
        "else",
        [],
        [helper.make_tensor_value_info(f"n{i}", F32, [2]) for i in range(len(outputs))],
    )
    names = [f"y{i}" for i in range(len(outputs))]
    nodes = [helper.make_node("If", ["c"], names, then_branch=then, else_branch=other)]
    outs = [(v, F32, [2]) for v in names]
    return make_model(nodes, [("x", F32, [2])], outs, {"c": np.array(True)})


def test_if_branch_initializer_as_graph_output_gets_an_identity(rng):
    """A branch output that is an initializer (or a value the branch returns twice) cannot be
    renamed into a graph output: an Identity keeps the signature."""
    result = simplified(_initializer_and_twice(["k", "r"]), rng)
    assert sorted(op_types(result.model)) == ["Identity", "Relu"]
    got = {v.name: v.producer().op_type for v in result.model.graph.outputs}
    assert got == {"y0": "Identity", "y1": "Relu"}
    # ONNX Runtime 1.32 returns garbage for a branch that returns one value twice (as `r, r`
    # here), so the inlined model is checked against numpy instead of against the original.
    result = fold(_initializer_and_twice(["k", "r", "r"]), passes=PASSES)
    got = {v.name: v.producer().op_type for v in result.model.graph.outputs}
    assert got == {"y0": "Identity", "y1": "Relu", "y2": "Identity"}
    x = rng.standard_normal(2).astype(np.float32)
    y0, y1, y2 = ort_outputs(result.model, {"x": x})
    np.testing.assert_array_equal(y0, [3.0, -1.0])
    np.testing.assert_array_equal(y1, np.maximum(x, 0))
    np.testing.assert_array_equal(y2, np.maximum(x, 0))


def test_if_inlined_names_do_not_clash(rng):
    """Two Ifs whose branches both define 't' and 'b' (legal in sibling subgraphs): once both are
    inlined into one graph, the second's get fresh names. (ONNX Runtime refuses sibling branches
    with initializers of one name, so those differ.)"""
    then, other = _branches("b")
    then2, other2 = _branches("b", k="k2")
    nodes = [
        helper.make_node("If", ["c"], ["h1"], then_branch=then, else_branch=other),
        helper.make_node("If", ["c"], ["h2"], then_branch=then2, else_branch=other2),
        helper.make_node("Sub", ["h1", "h2"], ["y"]),
    ]
    model = make_model(nodes, [("x", F32, ["N", 3])], [("y", F32, None)], {"c": np.array(True)})
    result = simplified(model, rng)
    assert op_types(result.model) == ["Add", "Relu", "Add", "Relu", "Sub"]
    names = [v.name for n in result.model.graph for v in n.outputs]
    names += list(result.model.graph.initializers)
    assert len(names) == len(set(names))
    assert {"h1", "h2"} <= set(names)


def test_nested_constant_ifs_and_if_in_a_subgraph(rng):
    """An If in the taken branch is inlined too; an If inside a branch of an If whose condition is
    an input is inlined into that branch."""
    inner_then, inner_else = _branches("ib")
    inner = helper.make_node(
        "If", ["c"], ["o"], then_branch=inner_then, else_branch=inner_else, name="inner"
    )
    outer_then = helper.make_graph(
        [inner, helper.make_node("Tanh", ["o"], ["ob"])],
        "outer_then",
        [],
        [helper.make_tensor_value_info("ob", F32, None)],
    )
    outer_else = helper.make_graph(
        [helper.make_node("Abs", ["x"], ["e"])],
        "outer_else",
        [],
        [helper.make_tensor_value_info("e", F32, None)],
    )
    for cond, want in (("c", ["Add", "Relu", "Tanh"]), ("d", ["If"])):
        nodes = [
            helper.make_node(
                "If", [cond], ["y"], then_branch=outer_then, else_branch=outer_else, name="outer"
            )
        ]
        model = make_model(
            nodes, [("x", F32, ["N", 3]), ("d", BOOL, [])], [("y", F32, None)], {"c": np.array(1)}
        )
        model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.array(True), "c"))
        fed = [{**_feeds(model, 2, rng), "d": np.array(v)} for v in (True, False)]
        result = simplified(model, rng, batches=(), feeds=fed)
        assert op_types(result.model) == want
        if cond == "d":
            branch = result.model.graph.node(0).attributes["then_branch"].as_graph()
            assert [n.op_type for n in branch] == ["Add", "Relu", "Tanh"]
            assert "if-constant" in applied(result)


# --- no-ops -----------------------------------------------------------------------------------


def _between(op: onnx.NodeProto) -> list[onnx.NodeProto]:
    """Relu -> op -> Neg, so that the op's input and output are neither graph input nor output."""
    return [
        helper.make_node("Relu", ["x"], [op.input[0]]),
        op,
        helper.make_node("Neg", [op.output[0]], ["y"]),
    ]


NOOPS = {
    "transpose": (helper.make_node("Transpose", ["a"], ["b"], perm=[0, 1, 2]), {}, ["N", 3, 4]),
    "transpose-rank1": (helper.make_node("Transpose", ["a"], ["b"]), {}, ["N"]),
    "cast": (helper.make_node("Cast", ["a"], ["b"], to=F32), {}, ["N", 3]),
    "reshape-copy": (helper.make_node("Reshape", ["a", "s"], ["b"]), {"s": ints(0, 3, 4)}, ["N", 3, 4]),
    "reshape-infer": (helper.make_node("Reshape", ["a", "s"], ["b"]), {"s": ints(-1, 3, 4)}, ["N", 3, 4]),
    "reshape-static": (helper.make_node("Reshape", ["a", "s"], ["b"]), {"s": ints(2, 3, 4)}, [2, 3, 4]),
    "expand-ones": (helper.make_node("Expand", ["a", "s"], ["b"]), {"s": ints(1, 4)}, ["N", 3, 4]),
    "expand-equal": (helper.make_node("Expand", ["a", "s"], ["b"]), {"s": ints(3, 1)}, ["N", 3, 4]),
    "squeeze-nothing": (helper.make_node("Squeeze", ["a"], ["b"]), {}, [2, 3]),
    "unsqueeze-empty": (helper.make_node("Unsqueeze", ["a", "e"], ["b"]), {"e": ints()}, ["N", 3]),
    "slice-static": (
        helper.make_node("Slice", ["a", "s", "e", "ax"], ["b"]),
        {"s": ints(-9), "e": ints(3), "ax": ints(-1)},
        ["N", 4, 3],
    ),
    "slice-dynamic": (
        helper.make_node("Slice", ["a", "s", "e"], ["b"]),
        {"s": ints(0, 0), "e": ints(np.iinfo(np.int64).max, 4)},
        ["N", 4],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(NOOPS))
def test_noop_is_removed(rng, case):
    op, inits, shape = NOOPS[case]
    model = make_model(_between(op), [("x", F32, shape)], [("y", F32, None)], inits)
    result = simplified(model, rng)
    assert op_types(result.model) == ["Relu", "Neg"]
    assert applied(result) == [f"noop-{op.op_type.lower()}"]
    (site,) = sites(result, "simplify")
    assert site.removed == (f"{op.op_type}->b",)


def test_noop_slice_before_opset_10_attributes(rng):
    op = helper.make_node("Slice", ["a"], ["b"], starts=[0, 0], ends=[100, 4], axes=[1, 2])
    model = make_model(_between(op), [("x", F32, ["N", 3, 4])], [("y", F32, None)], {}, opset=9)
    result = simplified(model, rng)
    assert op_types(result.model) == ["Relu", "Neg"]


NOT_NOOPS = {
    "transpose": (helper.make_node("Transpose", ["a"], ["b"], perm=[1, 0]), {}, [3, 3]),
    "transpose-no-perm": (helper.make_node("Transpose", ["a"], ["b"]), {}, [3, 3]),
    "cast": (helper.make_node("Cast", ["a"], ["b"], to=F32), {}, [2]),
    "reshape": (helper.make_node("Reshape", ["a", "s"], ["b"]), {"s": ints(4, 3)}, [3, 4]),
    "expand": (helper.make_node("Expand", ["a", "s"], ["b"]), {"s": ints(2, 3, 4)}, [3, 4]),
    "expand-broadcasts": (helper.make_node("Expand", ["a", "s"], ["b"]), {"s": ints(3, 4)}, [1, 4]),
    "squeeze": (helper.make_node("Squeeze", ["a"], ["b"]), {}, [2, 1]),
    "slice": (helper.make_node("Slice", ["a", "s", "e"], ["b"]), {"s": ints(1), "e": ints(3)}, [3]),
    "slice-reversed": (
        helper.make_node("Slice", ["a", "s", "e", "ax", "st"], ["b"]),
        {"s": ints(-1), "e": ints(-9), "ax": ints(0), "st": ints(-1)},
        [3],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(NOT_NOOPS))
def test_op_that_changes_its_input_is_left_alone_silently(rng, case):
    op, inits, shape = NOT_NOOPS[case]
    x_type = TensorProto.DOUBLE if case == "cast" else F32  # a Cast to float from double
    model = make_model(_between(op), [("x", x_type, shape)], [("y", F32, None)], inits)
    result = simplified(model, rng)
    assert op_types(result.model) == ["Relu", op.op_type, "Neg"]
    assert sites(result, "simplify") == []


DYNAMIC_NEAR_MISSES = {
    "reshape": (
        helper.make_node("Reshape", ["a", "s"], ["b"]), {"s": ints(2, 3)}, ["N", 3],
        "noop-reshape", "a no-op only if the input's dims [0] (known at run time) are [2]",
    ),
    "expand": (
        helper.make_node("Expand", ["a", "s"], ["b"]), {"s": ints(2, 3)}, ["N", 3],
        "noop-expand", "a no-op only if the input's dims [0] (known at run time) equal the target's",
    ),
    "squeeze": (
        helper.make_node("Squeeze", ["a"], ["b"]), {}, ["N", 3],
        "noop-squeeze",
        "squeezes every size-1 dim, and the input's dims [0] are known only at run time",
    ),
    "slice": (
        helper.make_node("Slice", ["a", "s", "e"], ["b"]), {"s": ints(0), "e": ints(2**31 - 1)},
        ["N", 3], "noop-slice",
        "keeps all of axes [0] only if their run-time size is at most the end (an end of "
        "INT64_MAX always does)",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(DYNAMIC_NEAR_MISSES))
def test_noop_only_at_some_batch_sizes_is_declined(rng, case):
    """A no-op at batch 2 only: removing it would be right for one shape; both shapes run."""
    op, inits, shape, rule, reason = DYNAMIC_NEAR_MISSES[case]
    model = make_model(_between(op), [("x", F32, shape)], [("y", F32, None)], inits)
    result = fold(model, passes=PASSES)
    assert op_types(result.model) == ["Relu", op.op_type, "Neg"]
    assert declined(result) == [(rule, reason)]


def test_reshape_allowzero_zero_is_not_a_copy(rng):
    """allowzero=1: a 0 is a zero-size dim, a no-op only on an input whose dim is 0."""
    op = helper.make_node("Reshape", ["a", "s"], ["b"], allowzero=1)
    model = make_model(_between(op), [("x", F32, [2, 3])], [("y", F32, None)], {"s": ints(0, 3)})
    onnx.checker.check_model(model)
    result = fold(model, passes=PASSES)
    assert op_types(result.model) == ["Relu", "Reshape", "Neg"]
    model = make_model(_between(op), [("x", F32, [0, 3])], [("y", F32, None)], {"s": ints(0, 3)})
    assert op_types(simplified(model, rng, batches=(1,)).model) == ["Relu", "Neg"]


def test_noop_between_graph_input_and_output_is_kept_with_reason(rng):
    nodes = [helper.make_node("Transpose", ["x"], ["y"], perm=[0, 1])]
    model = make_model(nodes, [("x", F32, [2, 3])], [("y", F32, [2, 3])], {})
    result = simplified(model, rng)
    assert op_types(result.model) == ["Transpose"]
    assert declined(result) == [
        (
            "noop-transpose",
            "a no-op, kept: connects a graph input or initializer straight to a graph output",
        )
    ]


def test_noop_producing_a_graph_output_hands_over_the_name(rng):
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Cast", ["a"], ["y"], to=F32),
    ]
    model = make_model(nodes, [("x", F32, ["N", 3])], [("y", F32, ["N", 3])], {})
    result = simplified(model, rng)
    assert op_types(result.model) == ["Relu"]
    assert result.model.graph.outputs[0].name == "y"


def test_noop_inside_a_loop_body_is_removed(rng):
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Transpose", ["v_in"], ["t"], perm=[0, 1]),
            helper.make_node("Add", ["t", "x"], ["v_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", I64, []),
            helper.make_tensor_value_info("cond_in", BOOL, []),
            helper.make_tensor_value_info("v_in", F32, ["N", 3]),
        ],
        [
            helper.make_tensor_value_info("cond_out", BOOL, []),
            helper.make_tensor_value_info("v_out", F32, ["N", 3]),
        ],
    )
    nodes = [helper.make_node("Loop", ["n", "", "x"], ["y"], body=body)]
    model = make_model(
        nodes, [("x", F32, ["N", 3])], [("y", F32, ["N", 3])], {"n": np.array(3, np.int64)}
    )
    result = simplified(model, rng)
    loop_body = result.model.graph.node(0).attributes["body"].as_graph()
    assert [n.op_type for n in loop_body] == ["Identity", "Add"]


def test_noop_returning_an_outer_value_from_a_branch_is_kept(rng):
    """A branch output cannot be a value of the enclosing graph: the no-op stays, with the reason."""
    then = helper.make_graph(
        [helper.make_node("Transpose", ["r"], ["t"], perm=[0, 1])],
        "then",
        [],
        [helper.make_tensor_value_info("t", F32, ["N", 3])],
    )
    other = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["n"])],
        "else",
        [],
        [helper.make_tensor_value_info("n", F32, ["N", 3])],
    )
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other),
    ]
    model = make_model(nodes, [("x", F32, ["N", 3]), ("c", BOOL, [])], [("y", F32, None)], {})
    fed = [{**_feeds(model, b, rng), "c": np.array(v)} for b in (1, 3) for v in (True, False)]
    result = simplified(model, rng, batches=(), feeds=fed)
    assert ("noop-transpose", "a no-op, kept: its input comes from an enclosing graph") in (
        declined(result)
    )


# --- pairs --------------------------------------------------------------------------------


def _pair(first: onnx.NodeProto, second: onnx.NodeProto) -> list[onnx.NodeProto]:
    return [
        helper.make_node("Relu", ["x"], [first.input[0]]),
        first,
        second,
        helper.make_node("Neg", [second.output[0]], ["y"]),
    ]


def test_transpose_pair_merges_into_one(rng):
    first = helper.make_node("Transpose", ["a"], ["b"], perm=[0, 2, 3, 1])
    second = helper.make_node("Transpose", ["b"], ["c"], perm=[0, 2, 1, 3])
    model = make_model(_pair(first, second), [("x", F32, ["N", 2, 3, 4])], [("y", F32, None)], {})
    result = simplified(model, rng)
    assert op_types(result.model) == ["Relu", "Transpose", "Neg"]
    perm = result.model.graph.node(1).attributes["perm"].as_ints()
    assert list(perm) == [0, 3, 2, 1]  # r[j] = p[q[j]]


def test_inverse_transposes_vanish(rng):
    first = helper.make_node("Transpose", ["a"], ["b"], perm=[0, 2, 3, 1])
    second = helper.make_node("Transpose", ["b"], ["c"], perm=[0, 3, 1, 2])
    model = make_model(_pair(first, second), [("x", F32, ["N", 2, 3, 4])], [("y", F32, None)], {})
    result = simplified(model, rng)
    assert op_types(result.model) == ["Relu", "Neg"]
    reversed_twice = [
        helper.make_node("Transpose", ["a"], ["b"]),
        helper.make_node("Transpose", ["b"], ["c"]),
    ]
    model = make_model(_pair(*reversed_twice), [("x", F32, [2, 3, 4])], [("y", F32, None)], {})
    assert op_types(simplified(model, rng).model) == ["Relu", "Neg"]


def test_inverse_pair_from_graph_input_to_output_becomes_identity(rng):
    nodes = [
        helper.make_node("Transpose", ["x"], ["b"], perm=[1, 0]),
        helper.make_node("Transpose", ["b"], ["y"], perm=[1, 0]),
    ]
    model = make_model(nodes, [("x", F32, ["N", 3])], [("y", F32, ["N", 3])], {})
    result = simplified(model, rng, passes=("identity", *PASSES))
    assert op_types(result.model) == ["Identity"]
    assert result.model.graph.outputs[0].name == "y"


def test_pair_with_shared_or_output_intermediate_is_declined(rng):
    nodes = [
        helper.make_node("Transpose", ["x"], ["b"], perm=[1, 0]),
        helper.make_node("Transpose", ["b"], ["c"], perm=[1, 0]),
        helper.make_node("Relu", ["b"], ["r"]),
        helper.make_node("Neg", ["c"], ["y"]),
    ]
    model = make_model(nodes, [("x", F32, [2, 3])], [("y", F32, None), ("r", F32, None)], {})
    result = simplified(model, rng)
    assert op_types(result.model) == ["Transpose", "Transpose", "Relu", "Neg"]
    assert declined(result) == [("transpose-pair", "the Transpose output 'b' has 2 consumers")]
    nodes = [*nodes[:2], nodes[3]]
    model = make_model(nodes, [("x", F32, [2, 3])], [("y", F32, None), ("b", F32, None)], {})
    result = simplified(model, rng)
    assert declined(result) == [("transpose-pair", "the Transpose output 'b' is a graph output")]


CAST_MERGES = {
    # x, t1, t2: ops after
    "f16-f32-f64": (TensorProto.FLOAT16, TensorProto.FLOAT, TensorProto.DOUBLE, ["Cast"]),
    "i8-i32-i64": (TensorProto.INT8, TensorProto.INT32, TensorProto.INT64, ["Cast"]),
    "u8-i16-f32": (TensorProto.UINT8, TensorProto.INT16, TensorProto.FLOAT, ["Cast"]),
    "u8-i16-u8": (TensorProto.UINT8, TensorProto.INT16, TensorProto.UINT8, []),
    "f16-f32-f16": (TensorProto.FLOAT16, TensorProto.FLOAT, TensorProto.FLOAT16, []),
    "bool-i64-bool": (TensorProto.BOOL, TensorProto.INT64, TensorProto.BOOL, []),
    "i32-f64-i32": (TensorProto.INT32, TensorProto.DOUBLE, TensorProto.INT32, []),
}


def _cast_model(x: int, t1: int, t2: int) -> onnx.ModelProto:
    nodes = [
        helper.make_node("Identity", ["x"], ["a"]) if x == BOOL else helper.make_node("Abs", ["x"], ["a"]),
        helper.make_node("Cast", ["a"], ["b"], to=t1),
        helper.make_node("Cast", ["b"], ["c"], to=t2),
        helper.make_node("Identity", ["c"], ["y"]),
    ]  # fmt: skip
    return make_model(nodes, [("x", x, ["N", 5])], [("y", t2, None)], {})


def _special(dtype: np.dtype) -> np.ndarray:
    """Extremes of a type: NaN, infinities, the largest and smallest values, both zeros."""
    if dtype.kind == "f":
        info = np.finfo(dtype)
        values = [np.nan, np.inf, -np.inf, info.max, -info.max, info.tiny, -0.0, 0.0, 1.5, -2.5]
        return np.array(values, dtype=dtype).reshape(2, 5)
    if dtype == np.bool_:
        return np.array([True, False] * 5).reshape(2, 5)
    iinfo = np.iinfo(dtype)
    return np.array([iinfo.min, iinfo.max, 0, 1, iinfo.max - 1] * 2, dtype=dtype).reshape(2, 5)


@pytest.mark.parametrize("case", sorted(CAST_MERGES))
def test_exact_cast_pairs_merge(rng, case):
    x, t1, t2, ops = CAST_MERGES[case]
    model = _cast_model(x, t1, t2)
    dtype = helper.tensor_dtype_to_np_dtype(x)
    result = simplified(model, rng, feeds=[{"x": _special(dtype)}], passes=("simplify", "unused"))
    assert [op for op in op_types(result.model) if op == "Cast"] == ops
    assert applied(result) == ["cast-pair"]


CAST_DECLINES = {
    "f32-f16-f32": (
        TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.FLOAT,
        "the first Cast (FLOAT -> FLOAT16) can change values; merging would skip that rounding",
    ),
    "f32-i32-f32": (
        TensorProto.FLOAT, TensorProto.INT32, TensorProto.FLOAT,
        "the first Cast (FLOAT -> INT32) can change values; merging would skip that rounding",
    ),
    "i64-f64-i64": (
        TensorProto.INT64, TensorProto.DOUBLE, TensorProto.INT64,
        "the first Cast (INT64 -> DOUBLE) can change values; merging would skip that rounding",
    ),
    "f16-f32-i32": (
        TensorProto.FLOAT16, TensorProto.FLOAT, TensorProto.INT32,
        "FLOAT16 -> FLOAT -> INT32: the last step is not exact for every FLOAT16 value, and a "
        "direct Cast may round or overflow differently",
    ),
    "i32-i64-i8": (
        TensorProto.INT32, TensorProto.INT64, TensorProto.INT8,
        "INT32 -> INT64 -> INT8: the last step is not exact for every INT32 value, and a direct "
        "Cast may round or overflow differently",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CAST_DECLINES))
def test_lossy_cast_pairs_are_declined(rng, case):
    x, t1, t2, reason = CAST_DECLINES[case]
    model = _cast_model(x, t1, t2)
    result = fold(model, passes=PASSES)
    assert op_types(result.model).count("Cast") == 2
    assert declined(result) == [("cast-pair", reason)]


@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_of_unsqueeze_on_same_axes_vanishes(rng, opset):
    def node(op: str, src: str, dst: str, axes: list[int], name: str) -> list[onnx.NodeProto]:
        if opset < 13:
            return [helper.make_node(op, [src], [dst], axes=axes)]
        return [const(name, ints(*axes)), helper.make_node(op, [src, name], [dst])]

    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        *node("Unsqueeze", "a", "b", [1, -1], "ua"),
        *node("Squeeze", "b", "c", [4, 1], "sa"),
        helper.make_node("Neg", ["c"], ["y"]),
    ]
    model = make_model(nodes, [("x", F32, ["N", 3, 4])], [("y", F32, None)], {}, opset=opset)
    result = simplified(model, rng)
    assert op_types(result.model) == ["Relu", "Neg"]
    assert applied(result) == ["unsqueeze-squeeze"]

    nodes[-1 - len(node("Squeeze", "b", "c", [1], "sa")) : -1] = node(
        "Squeeze", "b", "c", [1], "sa"
    )
    model = make_model(nodes, [("x", F32, ["N", 3, 4])], [("y", F32, None)], {}, opset=opset)
    result = simplified(model, rng)
    assert (
        "unsqueeze-squeeze",
        "the Squeeze removes axes [1], the Unsqueeze inserted [1, -1]",
    ) in (declined(result))


def test_squeeze_without_axes_after_unsqueeze_is_declined(rng):
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Unsqueeze", ["a", "ax"], ["b"]),
        helper.make_node("Squeeze", ["b"], ["c"]),
        helper.make_node("Neg", ["c"], ["y"]),
    ]
    model = make_model(nodes, [("x", F32, ["N", 3])], [("y", F32, None)], {"ax": ints(0)})
    result = simplified(model, rng, batches=(1,))  # at N = 1 the Squeeze drops x's batch too
    assert op_types(result.model) == ["Relu", "Unsqueeze", "Squeeze", "Neg"]
    assert (
        "unsqueeze-squeeze",
        "the Squeeze has no axes: it would drop x's own size-1 dims too",
    ) in declined(result)


@pytest.mark.parametrize("opset", [11, 13])
def test_unsqueeze_of_squeeze_needs_static_ones(rng, opset):
    def node(op: str, src: str, dst: str, axes: list[int], name: str) -> list[onnx.NodeProto]:
        if opset < 13:
            return [helper.make_node(op, [src], [dst], axes=axes)]
        return [const(name, ints(*axes)), helper.make_node(op, [src, name], [dst])]

    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        *node("Squeeze", "a", "b", [-2], "sa"),
        *node("Unsqueeze", "b", "c", [1], "ua"),
        helper.make_node("Neg", ["c"], ["y"]),
    ]
    model = make_model(nodes, [("x", F32, ["N", 1, 4])], [("y", F32, None)], {}, opset=opset)
    assert op_types(simplified(model, rng).model) == ["Relu", "Neg"]
    model = make_model(nodes, [("x", F32, ["N", "M", 4])], [("y", F32, None)], {}, opset=opset)
    result = fold(model, passes=PASSES)
    assert declined(result) == [("squeeze-unsqueeze", "x's dims [1] are not known to be 1")]


def test_reshape_chain_merges_and_then_vanishes(rng):
    """Reshape(Reshape(x, [0, 3, 4]), [0, -1]): the 0 copies the batch of the intermediate, which
    is x's batch at the same axis, so the merged Reshape(x, [0, -1]) is a no-op on [N, 12]."""
    first = helper.make_node("Reshape", ["a", "s1"], ["b"])
    second = helper.make_node("Reshape", ["b", "s2"], ["c"])
    inits = {"s1": ints(0, 3, 4), "s2": ints(0, -1)}
    model = make_model(_pair(first, second), [("x", F32, ["N", 12])], [("y", F32, None)], inits)
    result = simplified(model, rng)
    assert op_types(result.model) == ["Relu", "Neg"]
    assert applied(result) == ["reshape-chain", "noop-reshape"]


def test_reshape_chain_keeps_target_when_it_has_no_copies(rng):
    first = helper.make_node("Reshape", ["a", "s1"], ["b"])
    second = helper.make_node("Reshape", ["b", "s2"], ["c"])
    inits = {"s1": ints(-1, 6), "s2": ints(4, -1, 1)}
    model = make_model(_pair(first, second), [("x", F32, ["N", 3, 4])], [("y", F32, None)], inits)
    result = simplified(model, rng, batches=(2, 4))
    assert op_types(result.model) == ["Relu", "Reshape", "Neg"]
    assert result.model.graph.node(1).inputs[1].name == "s2"


def test_reshape_chain_zero_copying_a_run_time_dim_is_declined(rng):
    """[N, 12] -> [-1, 6] -> [0, 3, 2]: the 0 copies the intermediate's inferred dim (2N), which is
    not x's dim 0: there is no constant target for one Reshape."""
    first = helper.make_node("Reshape", ["a", "s1"], ["b"])
    second = helper.make_node("Reshape", ["b", "s2"], ["c"])
    inits = {"s1": ints(-1, 6), "s2": ints(0, 3, 2)}
    model = make_model(_pair(first, second), [("x", F32, ["N", 12])], [("y", F32, None)], inits)
    result = simplified(model, rng)
    assert op_types(result.model) == ["Relu", "Reshape", "Reshape", "Neg"]
    assert declined(result) == [
        (
            "reshape-chain",
            "its target copies dim 0 (a 0) of the intermediate, which is known only at run time",
        )
    ]
    model = make_model(_pair(first, second), [("x", F32, [2, 12])], [("y", F32, None)], inits)
    result = simplified(model, rng)  # static: the 0 becomes the intermediate's 4
    assert op_types(result.model) == ["Relu", "Reshape", "Neg"]
    assert result.model.graph.node(1).inputs[1].const_value.numpy().tolist() == [4, 3, 2]


@pytest.mark.parametrize("opset", [11, 13, 14])
def test_squeeze_unsqueeze_around_reshape_merge(rng, opset):
    def node(op: str, src: str, dst: str, axes: list[int], name: str) -> list[onnx.NodeProto]:
        if opset < 13:
            return [helper.make_node(op, [src], [dst], axes=axes)]
        return [const(name, ints(*axes)), helper.make_node(op, [src, name], [dst])]

    inits = {"s1": ints(0, -1), "s2": ints(0, 2, 6)}
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        *node("Unsqueeze", "a", "b", [3], "u1"),  # [N, 3, 4, 1]
        helper.make_node("Reshape", ["b", "s1"], ["c"]),  # [N, 12]: 0 copies x's N
        *node("Unsqueeze", "c", "d", [1], "u2"),  # [N, 1, 12]
        helper.make_node("Relu", ["d"], ["e"]),
        *node("Squeeze", "e", "f", [1], "s3"),  # [N, 12]
        helper.make_node("Reshape", ["f", "s2"], ["g"]),  # [N, 2, 6]
        helper.make_node("Neg", ["g"], ["y"]),
    ]
    model = make_model(nodes, [("x", F32, ["N", 3, 4])], [("y", F32, None)], inits, opset=opset)
    result = simplified(model, rng)
    assert op_types(result.model) == ["Relu", "Reshape", "Relu", "Reshape", "Neg"]
    reshapes = [n for n in result.model.graph if n.op_type == "Reshape"]
    assert [n.inputs[1].const_value.numpy().tolist() for n in reshapes] == [[0, 1, -1], [0, 2, 6]]


def test_reshape_then_squeeze_of_an_inferred_dim_is_declined(rng):
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Reshape", ["a", "s"], ["b"]),
        helper.make_node("Squeeze", ["b", "ax"], ["c"]),
        helper.make_node("Neg", ["c"], ["y"]),
    ]
    inits = {"s": ints(2, -1, 6), "ax": ints(1)}  # [2, N, 6]: squeezable at N = 1 only
    model = make_model(nodes, [("x", F32, ["N", 12])], [("y", F32, None)], inits, opset=13)
    result = fold(model, passes=PASSES)
    assert declined(result) == [
        ("reshape-chain", "the Reshape's output dims [1] are not known to be 1")
    ]


def test_merged_pair_producing_a_graph_output(rng):
    nodes = [
        helper.make_node("Transpose", ["x"], ["b"], perm=[1, 0, 2]),
        helper.make_node("Transpose", ["b"], ["y"], perm=[0, 2, 1]),
    ]
    model = make_model(nodes, [("x", F32, ["N", 3, 4])], [("y", F32, None)], {})
    result = simplified(model, rng)
    assert op_types(result.model) == ["Transpose"]
    assert result.model.graph.outputs[0].name == "y"


def test_the_pass_itself_is_idempotent_on_an_ir_model(rng):
    first = helper.make_node("Cast", ["a"], ["b"], to=TensorProto.DOUBLE)
    second = helper.make_node("Cast", ["b"], ["c"], to=F32)
    model = make_model(_pair(first, second), [("x", F32, ["N", 3])], [("y", F32, None)], {})
    ir_model = ir.from_proto(model)
    sites_first = Simplify().run(ir_model, PassOptions())
    assert [s.rule for s in sites_first if s.applied] == ["cast-pair"]
    assert [s for s in Simplify().run(ir_model, PassOptions()) if s.applied] == []


def test_default_pipeline_with_simplify_is_exact(rng):
    """The whole default pipeline over a model with every kind of rewrite stays exact."""
    then, other = _branches("b")
    nodes = [
        helper.make_node("If", ["c"], ["h"], then_branch=then, else_branch=other),
        helper.make_node("Unsqueeze", ["h", "ax"], ["u"]),
        helper.make_node("Transpose", ["u"], ["t1"], perm=[1, 0, 2]),
        helper.make_node("Transpose", ["t1"], ["t2"], perm=[1, 0, 2]),
        helper.make_node("Squeeze", ["t2", "ax"], ["s"]),
        helper.make_node("Cast", ["s"], ["d"], to=TensorProto.DOUBLE),
        helper.make_node("Cast", ["d"], ["y"], to=F32),
    ]
    inits = {"c": np.array(True), "ax": ints(1)}
    model = make_model(nodes, [("x", F32, ["N", 3])], [("y", F32, None)], inits)
    result = simplified(model, rng, passes=[p.spec.name for p in optkit.passes.DEFAULT_PASSES])
    assert op_types(result.model) == ["Add", "Relu"]
