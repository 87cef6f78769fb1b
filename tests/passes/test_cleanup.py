"""Identity / Dropout removal, unused and duplicate initializers, topological order: all bitwise."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper

from helpers import F32, assert_same_outputs, fold, make_model, op_types, ort_outputs, sites
from optkit import PassOptions
from optkit.passes.toposort import TopologicalSort


def test_identity_chain_removed_and_output_name_kept(rng):
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Identity", ["a"], ["b"]),
        helper.make_node("Identity", ["b"], ["y"]),
    ]
    model = make_model(nodes, [("x", F32, [2, 3])], [("y", F32, [2, 3])], {})
    result = fold(model, passes=("identity",))
    assert op_types(result.model) == ["Relu"]
    assert result.model.graph.outputs[0].name == "y"
    assert_same_outputs(
        model, result.model, {"x": rng.standard_normal((2, 3)).astype(np.float32)}, exact=True
    )


def test_identity_from_input_to_output_is_kept():
    model = make_model(
        [helper.make_node("Identity", ["x"], ["y"])], [("x", F32, [2])], [("y", F32, [2])], {}
    )
    result = fold(model, passes=("identity",))
    assert op_types(result.model) == ["Identity"]
    (site,) = sites(result, "identity")
    assert "graph input or initializer straight to a graph output" in site.reason


def test_dropout_removed_at_inference(rng):
    nodes = [
        helper.make_node("Dropout", ["x"], ["d"], name="drop"),
        helper.make_node("Relu", ["d"], ["y"]),
    ]
    model = make_model(nodes, [("x", F32, [2, 3])], [("y", F32, [2, 3])], {})
    result = fold(model, passes=("dropout",))
    assert op_types(result.model) == ["Relu"]
    assert_same_outputs(
        model, result.model, {"x": rng.standard_normal((2, 3)).astype(np.float32)}, exact=True
    )


def test_dropout_with_mask_used_or_training_mode_is_kept():
    nodes = [helper.make_node("Dropout", ["x"], ["y", "mask"], name="drop")]
    model = make_model(
        nodes,
        [("x", F32, [2, 3])],
        [("y", F32, [2, 3]), ("mask", onnx.TensorProto.BOOL, [2, 3])],
        {},
    )
    result = fold(model, passes=("dropout",))
    assert op_types(result.model) == ["Dropout"]
    assert "mask output is used" in sites(result, "dropout")[0].reason

    nodes = [
        helper.make_node("Dropout", ["x", "", "train"], ["d"]),
        helper.make_node("Relu", ["d"], ["y"]),
    ]
    model = make_model(
        nodes, [("x", F32, [2, 3]), ("train", onnx.TensorProto.BOOL, [])], [("y", F32, [2, 3])], {}
    )
    result = fold(model, passes=("dropout",))
    assert "training_mode is not a constant" in sites(result, "dropout")[0].reason


def test_unused_nodes_and_initializers_removed_signature_kept(rng):
    inits = {"unused_w": np.ones(3, np.float32), "w": np.ones(3, np.float32)}
    nodes = [helper.make_node("Add", ["x", "w"], ["y"]), helper.make_node("Neg", ["x"], ["dead"])]
    model = make_model(nodes, [("x", F32, [3])], [("y", F32, [3])], inits)
    result = fold(model, passes=("unused",))
    assert op_types(result.model) == ["Add"]
    assert set(result.model.graph.initializers) == {"w"}
    assert [v.name for v in result.model.graph.inputs] == ["x"]


def test_duplicate_initializers_merged(rng):
    w = rng.standard_normal(4).astype(np.float32)
    nodes = [
        helper.make_node("Add", ["x", "w1"], ["a"]),
        helper.make_node("Mul", ["a", "w2"], ["y"]),
    ]
    model = make_model(nodes, [("x", F32, [4])], [("y", F32, [4])], {"w1": w, "w2": w.copy()})
    result = fold(model, passes=("dedupe",))
    assert len(result.model.graph.initializers) == 1
    assert_same_outputs(
        model, result.model, {"x": rng.standard_normal(4).astype(np.float32)}, exact=True
    )


def test_toposort_orders_an_unsorted_graph():
    """(`fuse` refuses unsorted input at the checker; the pass itself sorts what a rewrite disordered.)"""
    nodes = [helper.make_node("Neg", ["a"], ["y"]), helper.make_node("Relu", ["x"], ["a"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", F32, [2])],
        [helper.make_tensor_value_info("y", F32, [2])],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    site_list = TopologicalSort().run(model, PassOptions())
    assert [n.op_type for n in model.graph] == ["Relu", "Neg"]
    assert len(site_list) == 1
    assert TopologicalSort().run(model, PassOptions()) == []


def test_common_subexpressions_merge_and_readers_follow(rng):
    """Two Shape(x) and two equal LeakyRelu(x) become one each; a LeakyRelu with another alpha and
    the random op stay; a duplicate that is a graph output stays a node."""
    nodes = [
        helper.make_node("LeakyRelu", ["x"], ["a"], alpha=0.1),
        helper.make_node("LeakyRelu", ["x"], ["b"], alpha=0.1),
        helper.make_node("LeakyRelu", ["x"], ["c"], alpha=0.2),
        helper.make_node("Add", ["a", "b"], ["ab"]),
        helper.make_node("Add", ["ab", "c"], ["y"]),
        helper.make_node("LeakyRelu", ["x"], ["z"], alpha=0.1),  # a graph output
        helper.make_node("RandomUniformLike", ["x"], ["r1"]),
        helper.make_node("RandomUniformLike", ["x"], ["r2"]),
        helper.make_node("Sub", ["r1", "r2"], ["d"]),
    ]
    model = make_model(
        nodes, [("x", F32, ["N", 3])], [("y", F32, None), ("z", F32, None), ("d", F32, None)], {}
    )
    result = fold(model, passes=("cse",))
    assert op_types(result.model).count("LeakyRelu") == 3  # a (kept), c, z
    assert op_types(result.model).count("RandomUniformLike") == 2
    (site,) = sites(result, "cse")
    assert site.applied and site.reason == "same as LeakyRelu->a"
    add = next(n for n in result.model.graph if n.op_type == "Add")
    assert add.inputs[0] is add.inputs[1]
    for n in (2, 5):  # y and z exactly (d is random)
        feeds = {"x": rng.standard_normal((n, 3)).astype(np.float32)}
        want, got = ort_outputs(model, feeds), ort_outputs(result.model, feeds)
        for w, g in list(zip(want, got, strict=True))[:2]:
            np.testing.assert_array_equal(w, g)
    assert not sites(fold(ir.to_proto(result.model), passes=("cse",)), "cse")  # idempotent


def test_common_subexpressions_inside_a_subgraph_merge_there():
    body = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["p"]),
            helper.make_node("Relu", ["x"], ["q"]),
            helper.make_node("Add", ["p", "q"], ["r"]),
        ],
        "then",
        [],
        [helper.make_tensor_value_info("r", F32, None)],
    )
    other = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["s"])],
        "else",
        [],
        [helper.make_tensor_value_info("s", F32, None)],
    )
    nodes = [helper.make_node("If", ["c"], ["y"], then_branch=body, else_branch=other)]
    model = make_model(
        nodes, [("x", F32, [2]), ("c", onnx.TensorProto.BOOL, [])], [("y", F32, [2])], {}
    )
    result = fold(model, passes=("cse",))
    (site,) = sites(result, "cse")
    assert site.applied
    then_graph = next(iter(result.model.graph)).attributes["then_branch"].as_graph()
    assert [n.op_type for n in then_graph] == ["Relu", "Add"]


def test_cse_compares_float_attributes_by_their_bits(rng):
    """alpha 0.0 and -0.0 give zeros of other signs, which 1 / y tells apart."""
    nodes = [
        helper.make_node("LeakyRelu", ["x"], ["a"], alpha=0.0),
        helper.make_node("LeakyRelu", ["x"], ["b"], alpha=-0.0),
        helper.make_node("Reciprocal", ["a"], ["ya"]),
        helper.make_node("Reciprocal", ["b"], ["yb"]),
    ]
    model = make_model(nodes, [("x", F32, ["N"])], [("ya", F32, None), ("yb", F32, None)], {})
    result = fold(model, passes=("cse",))
    assert op_types(result.model).count("LeakyRelu") == 2
    assert_same_outputs(model, result.model, {"x": np.array([-2.0, 1.0], np.float32)}, exact=True)


def test_cse_never_merges_dropouts():
    nodes = [
        helper.make_node("Dropout", ["x", "r", "t"], ["d1"]),
        helper.make_node("Dropout", ["x", "r", "t"], ["d2"]),
        helper.make_node("Sub", ["d1", "d2"], ["y"]),
    ]
    inits = {"r": np.array(0.5, np.float32), "t": np.array(True)}
    model = make_model(nodes, [("x", F32, [32])], [("y", F32, None)], inits)
    result = fold(model, passes=("cse",))
    assert op_types(result.model).count("Dropout") == 2


def test_cse_merges_only_nodes_with_the_same_outputs_present(rng):
    """A LayerNormalization without its Mean output cannot stand in for one whose Mean is read."""
    gamma, beta = np.ones(4, np.float32), np.zeros(4, np.float32)
    nodes = [
        helper.make_node("LayerNormalization", ["x", "g", "b"], ["y1", "", "r1"]),
        helper.make_node("LayerNormalization", ["x", "g", "b"], ["y2", "m2", "r2"]),
        helper.make_node("Neg", ["m2"], ["m"]),
        helper.make_node("Add", ["y1", "y2"], ["y"]),
    ]
    model = make_model(
        nodes, [("x", F32, ["N", 4])], [("y", F32, None), ("m", F32, None)], {"g": gamma, "b": beta}
    )
    result = fold(model, passes=("cse",))
    assert op_types(result.model).count("LayerNormalization") == 2
    assert_same_outputs(
        model, result.model, {"x": rng.standard_normal((3, 4)).astype(np.float32)}, exact=True
    )
