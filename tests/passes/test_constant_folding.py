"""Constant folding: weights computed from constants become initializers, within a size cap."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper

from helpers import F32, assert_same_outputs, bn_node, bn_params, fold, make_model, op_types, sites
from optkit import PassOptions


def test_weight_computed_from_constants_folds_then_bn_folds(rng):
    """Transpose(Constant) feeding a Conv weight becomes an initializer, so the BN after it folds."""
    w = rng.standard_normal((3, 4, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["w_t"], value=numpy_helper.from_array(w)),
        helper.make_node("Transpose", ["w_t"], ["W"], perm=[1, 0, 2, 3]),
        helper.make_node("Conv", ["x", "W"], ["h"]),
        bn_node("h", "y"),
    ]
    model = make_model(nodes, [("x", F32, [1, 3, 5, 5])], [("y", F32, None)], bn_params(rng, 4))
    result = fold(model, passes=("constants", "batchnorm", "unused"))
    assert op_types(result.model) == ["Conv"]
    assert_same_outputs(
        model, result.model, {"x": rng.standard_normal((1, 3, 5, 5)).astype(np.float32)}
    )


def test_shape_of_static_input_folds(rng):
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Reshape", ["x", "s"], ["y"]),
    ]
    model = make_model(nodes, [("x", F32, [2, 3])], [("y", F32, [2, 3])], {})
    result = fold(model, passes=("constants", "unused"))
    assert op_types(result.model) == ["Reshape"]
    assert result.model.graph.initializers["s"].const_value.numpy().tolist() == [2, 3]
    assert_same_outputs(
        model, result.model, {"x": rng.standard_normal((2, 3)).astype(np.float32)}, exact=True
    )


def test_size_cap_declines_large_results():
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["big"]),
        helper.make_node("Add", ["x", "big"], ["y"]),
    ]
    inits = {"shape": np.array([64, 64], np.int64)}
    model = make_model(nodes, [("x", F32, [64, 64])], [("y", F32, [64, 64])], inits)
    result = fold(model, passes=("constants",), options=PassOptions(constant_fold_max_elements=100))
    assert "ConstantOfShape" in op_types(result.model)
    (site,) = [s for s in sites(result, "constants") if not s.applied]
    assert "4096 elements, above the cap of 100" in site.reason


def test_random_ops_and_graph_outputs_are_not_folded():
    nodes = [
        helper.make_node("RandomNormal", [], ["r"], shape=[2]),
        helper.make_node("Add", ["x", "r"], ["y"]),
        helper.make_node("Constant", [], ["c"], value_floats=[1.0, 2.0]),
    ]
    model = make_model(nodes, [("x", F32, [2])], [("y", F32, [2]), ("c", F32, [2])], {})
    result = fold(model, passes=("constants",))
    assert op_types(result.model) == ["RandomNormal", "Add", "Constant"]


def test_castlike_of_a_constant_folds_using_only_the_target_type(rng):
    """torch's dynamo exporter builds zero biases as CastLike(0, x) -> Expand: all of it folds."""
    nodes = [
        helper.make_node("CastLike", ["zero", "x"], ["z"]),
        helper.make_node("Expand", ["z", "shape"], ["b"]),
        helper.make_node("Add", ["x", "b"], ["y"]),
    ]
    inits = {"zero": np.array(0.0, np.float64), "shape": np.array([3], np.int64)}
    model = make_model(nodes, [("x", F32, [2, 3])], [("y", F32, [2, 3])], inits)
    result = fold(model, passes=("constants", "unused"))
    assert op_types(result.model) == ["Add"]
    assert result.model.graph.initializers["b"].const_value.numpy().dtype == np.float32
    assert_same_outputs(
        model, result.model, {"x": rng.standard_normal((2, 3)).astype(np.float32)}, exact=True
    )


@pytest.mark.parametrize("opset", [9, 14])
def test_a_batchnorm_of_constants_folds_to_its_test_mode_value(rng, opset):
    """onnx.reference's BatchNormalization-9 uses the batch's statistics (tools/fuzz.py found it);
    the fold must give what ONNX Runtime gives."""
    inits = {"c": rng.standard_normal((1, 4, 1, 1)).astype(np.float32), **bn_params(rng, 4)}
    nodes = [bn_node("c", "h"), helper.make_node("Add", ["x", "h"], ["y"])]
    model = make_model(nodes, [("x", F32, [1, 4, 1, 1])], [("y", F32, None)], inits, opset=opset)
    result = fold(model, passes=("constants",))
    assert op_types(result.model) == ["Add"]
    assert_same_outputs(model, result.model, {"x": np.zeros((1, 4, 1, 1), np.float32)})
