"""The `shapes` pass: shape computations over partly static shapes fold; dynamic dims stay dynamic.

Each rewrite is checked for structure, for exact numerics at two sizes of every dynamic dim (a
rewrite right only at the verified size is the worst bug this pass could have), for the model's dim
names on its outputs, and for idempotence.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnx_ir as ir
import torch
from onnx import TensorProto, helper

import optkit
from helpers import F32, assert_same_outputs, fold, make_model, op_types, sites
from optkit.models.shufflenet import channel_shuffle

I64 = TensorProto.INT64


def _feeds(rng, *shapes: tuple[int, ...]) -> list[dict[str, np.ndarray]]:
    return [{"x": rng.standard_normal(shape).astype(np.float32)} for shape in shapes]


def _same_at(before, after, feeds_list) -> None:
    for feeds in feeds_list:
        assert_same_outputs(before, after, feeds, exact=True)


def _initializer(model: ir.Model, node: ir.Node, index: int) -> list[int]:
    value = node.inputs[index]
    assert value is not None and value.const_value is not None, f"input {index} is not constant"
    return value.const_value.numpy().tolist()


def _refold_applies_nothing(result) -> None:
    again = fold(ir.to_proto(result.model), passes=("shapes",))
    assert not any(s.applied for s in sites(again, "shapes"))


def _shape_ops(model: ir.Model) -> list[str]:
    kinds = {"Shape", "Gather", "Unsqueeze", "Concat", "Cast", "Div", "Slice", "Squeeze"}
    return [op for op in op_types(model) if op in kinds]


# --- the example: torchvision's channel shuffle with a dynamic batch ----------------------


class _Shuffle(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(torch.relu(x), 2)


def _export_shuffle() -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Shuffle(),
            (torch.randn(1, 8, 5, 6),),
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "N"}, "y": {0: "N"}},
        )
    return onnx.load_from_string(buffer.getvalue())


def test_channel_shuffle_with_dynamic_batch_folds_to_two_constant_reshapes(rng):
    model = _export_shuffle()
    assert "Shape" in [n.op_type for n in model.graph.node]  # the export computes the shape
    result = fold(model, passes=("shapes", "constants", "unused"), verify=True)
    assert op_types(result.model) == ["Relu", "Reshape", "Transpose", "Reshape"]
    first, _, second = [n for n in result.model.graph if n.op_type != "Relu"]
    assert _initializer(result.model, first, 1) == [0, 2, 4, 5, 6]  # N copied from the input
    assert _initializer(result.model, second, 1) == [-1, 8, 5, 6]  # N inferred
    assert result.report.ok, result.report.verdict
    (output,) = result.model.graph.outputs
    assert output.shape is not None and str(output.shape[0]) == "N"  # the dim keeps its name
    _same_at(model, result.model, _feeds(rng, (1, 8, 5, 6), (3, 8, 5, 6), (0, 8, 5, 6)))
    _refold_applies_nothing(result)


def test_shufflenet_export_leaves_no_shape_computation(rng):
    from optkit.models.shufflenet import ShuffleNetV2

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            ShuffleNetV2(num_classes=10, repeats=(2, 2, 2), widths=(8, 16, 32, 64), last=64).eval(),
            (torch.randn(1, 3, 64, 64),),
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "N"}, "y": {0: "N"}},
        )
    model = onnx.load_from_string(buffer.getvalue())
    result = fold(
        model, passes=("identity", "constants", "shapes", "constants", "unused"), verify=True
    )
    assert result.report.ok, result.report.verdict
    assert not {"Shape", "Gather", "Unsqueeze", "Cast", "Div"} & set(op_types(result.model))
    _same_at(model, result.model, _feeds(rng, (1, 3, 64, 64), (4, 3, 64, 64)))


# --- single rules on hand-built graphs ------------------------------------------------------------


def _gather_model(index: int) -> onnx.ModelProto:
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "i"], ["d"], axis=0),
        helper.make_node("Unsqueeze", ["d", "zero"], ["d1"]),
        helper.make_node("Concat", ["d1", "minus1"], ["t"], axis=0),
        helper.make_node("Reshape", ["x", "t"], ["y"]),
    ]
    inits = {
        "i": np.array(index, np.int64),
        "zero": np.array([0], np.int64),
        "minus1": np.array([-1], np.int64),
    }
    return make_model(nodes, [("x", F32, ["N", 3, "H", 4])], [("y", F32, None)], inits)


def test_static_dim_of_a_dynamic_shape_is_a_constant(rng):
    model = _gather_model(1)  # dim 1 (3) is static, N and H are not
    result = fold(model, passes=("shapes", "unused"))
    assert op_types(result.model) == ["Reshape"]
    (reshape,) = result.model.graph
    assert _initializer(result.model, reshape, 1) == [3, -1]
    _same_at(model, result.model, _feeds(rng, (2, 3, 5, 4), (1, 3, 7, 4)))
    _refold_applies_nothing(result)


def test_dynamic_dim_of_the_reshapes_own_input_becomes_a_copy(rng):
    model = _gather_model(0)  # N at position 0 of a Reshape of x itself: 0 copies it
    result = fold(model, passes=("shapes", "unused"))
    assert op_types(result.model) == ["Reshape"]
    assert _initializer(result.model, next(iter(result.model.graph)), 1) == [0, -1]
    _same_at(model, result.model, _feeds(rng, (2, 3, 5, 4), (5, 3, 1, 4)))


def test_dynamic_dim_at_another_position_is_not_a_copy(rng):
    """H (axis 2) at position 0 is not 'x's dim 0': no 0, and with the -1 already there, no -1."""
    model = _gather_model(2)
    result = fold(model, passes=("shapes", "unused"))
    assert "Shape" in op_types(result.model)
    (site,) = [s for s in sites(result, "shapes") if not s.applied]
    assert "target element 0 is computed at run time" in site.reason
    assert "not all positive constants" in site.reason


def test_one_unknown_element_becomes_minus_one_when_the_rest_are_positive(rng):
    """Reshape(Transpose(x), [N, 12, H]): N is not the Transpose output's own dim 0 (by identity),
    but it is the only unknown: -1."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Slice", ["s", "zero", "one"], ["n"]),
        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1, 3]),
        helper.make_node("Concat", ["n", "twelve"], ["t"], axis=0),
        helper.make_node("Reshape", ["xt", "t"], ["y"]),
    ]
    inits = {
        "zero": np.array([0], np.int64),
        "one": np.array([1], np.int64),
        "twelve": np.array([12, 5], np.int64),
    }
    model = make_model(nodes, [("x", F32, ["N", 3, 5, 4])], [("y", F32, None)], inits)
    result = fold(model, passes=("shapes", "unused"))
    assert op_types(result.model) == ["Transpose", "Reshape"]
    reshape = list(result.model.graph)[1]
    assert _initializer(result.model, reshape, 1) == [-1, 12, 5]
    assert any(s.applied and "inferred (-1)" in s.reason for s in sites(result, "shapes"))
    _same_at(model, result.model, _feeds(rng, (2, 3, 5, 4), (7, 3, 5, 4), (0, 3, 5, 4)))


def test_two_unknown_elements_are_declined_with_the_reason():
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0]),
        helper.make_node("Reshape", ["xt", "s"], ["y"]),  # target (N, M): both from x, not xt
    ]
    model = make_model(nodes, [("x", F32, ["N", "M"])], [("y", F32, None)], {})
    result = fold(model, passes=("shapes",))
    assert op_types(result.model) == ["Shape", "Transpose", "Reshape"]
    (site,) = sites(result, "shapes")
    assert not site.applied and "target elements [0, 1] are computed at run time" in site.reason


def test_allowzero_reshape_never_copies(rng):
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Reshape", ["x", "s"], ["y"], allowzero=1),
    ]
    model = make_model(nodes, [("x", F32, ["N", "M"])], [("y", F32, None)], {})
    result = fold(model, passes=("shapes",))
    assert "Shape" in op_types(result.model)
    (site,) = sites(result, "shapes")
    assert "[0, 1]" in site.reason


def test_shape_start_end_and_slices_fold_where_static(rng):
    """Shape(x, start=1) of [N, 3, 4] is [3, 4]; a Slice of the full shape taking [1:] too; the
    Mul of them (12, 12 -> 144) too; Shape of all of x stays (N is in it)."""
    nodes = [
        helper.make_node("Shape", ["x"], ["tail"], start=1),
        helper.make_node("Shape", ["x"], ["full"]),
        helper.make_node("Slice", ["full", "one", "big"], ["sliced"]),
        helper.make_node("Mul", ["tail", "sliced"], ["sq"]),
        helper.make_node("ReduceProd", ["sq"], ["prod"], keepdims=1),
        helper.make_node("Concat", ["full", "prod"], ["y"], axis=0),
    ]
    inits = {"one": np.array([1], np.int64), "big": np.array([2**62], np.int64)}
    model = make_model(nodes, [("x", F32, ["N", 3, 4])], [("y", I64, None)], inits)
    result = fold(model, passes=("shapes", "unused"))
    assert op_types(result.model) == ["Shape", "ReduceProd", "Concat"]
    reduce = list(result.model.graph)[1]
    assert _initializer(result.model, reduce, 0) == [9, 16]
    _same_at(model, result.model, _feeds(rng, (2, 3, 4), (6, 3, 4)))


def test_integer_division_of_a_negative_is_left_to_the_runtime(rng):
    """ONNX's integer Div truncates, numpy's floors: -3 / 2 is not folded here."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], start=1, end=2),
        helper.make_node("Neg", ["s"], ["m"]),
        helper.make_node("Div", ["m", "two"], ["q"]),
        helper.make_node("Add", ["q", "zero"], ["y"]),
    ]
    inits = {"two": np.array([2], np.int64), "zero": np.array([0], np.int64)}
    model = make_model(nodes, [("x", F32, ["N", 3])], [("y", I64, None)], inits)
    result = fold(model, passes=("shapes", "unused"))
    assert op_types(result.model) == ["Div", "Add"]  # Neg(3) folded to -3, the Div stays
    _same_at(model, result.model, _feeds(rng, (2, 3)))


def test_cast_keeps_a_dim_only_in_a_type_that_holds_any_dim(rng):
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Cast", ["s"], ["s32"], to=TensorProto.INT32),
        helper.make_node("Cast", ["s32"], ["s64"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["x", "s64"], ["y"]),
    ]
    model = make_model(nodes, [("x", F32, ["N", 3])], [("y", F32, None)], {})
    result = fold(model, passes=("shapes",))
    (site,) = sites(result, "shapes")  # N went through int32: not known to be x's dim any more,
    assert site.applied and "inferred (-1)" in site.reason  # so not copied, but the only unknown
    reshape = list(result.model.graph)[-1]
    assert _initializer(result.model, reshape, 1) == [-1, 3]
    _same_at(model, result.model, _feeds(rng, (2, 3), (0, 3)))


def test_expand_to_the_inputs_own_shape_is_removed(rng):
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Concat", ["n", "ones"], ["t"], axis=0),
        helper.make_node("Expand", ["x", "t"], ["e"]),
        helper.make_node("Relu", ["e"], ["y"]),
    ]
    inits = {"zero": np.array([0], np.int64), "ones": np.array([1, 4], np.int64)}
    model = make_model(nodes, [("x", F32, ["N", "H", 4])], [("y", F32, None)], inits)
    result = fold(model, passes=("shapes", "unused"))
    assert op_types(result.model) == ["Relu"]
    _same_at(model, result.model, _feeds(rng, (2, 3, 4), (5, 1, 4)))


def test_expand_that_broadcasts_stays():
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], end=1),
        helper.make_node("Concat", ["s", "wide"], ["t"], axis=0),
        helper.make_node("Expand", ["x", "t"], ["e"]),
        helper.make_node("Relu", ["e"], ["y"]),
    ]
    model = make_model(
        nodes, [("x", F32, ["N", 1])], [("y", F32, None)], {"wide": np.array([4], np.int64)}
    )
    result = fold(model, passes=("shapes", "unused"))
    assert "Expand" in op_types(result.model)


def test_graph_outputs_stay_nodes():
    nodes = [helper.make_node("Shape", ["x"], ["y"], start=1)]
    model = make_model(nodes, [("x", F32, ["N", 3])], [("y", I64, [1])], {})
    result = fold(model, passes=("shapes",))
    assert op_types(result.model) == ["Shape"]


def test_overridable_initializer_is_not_a_constant():
    """An index that is also a graph input can be fed at run time: nothing is folded from it."""
    model = _gather_model(1)
    model.graph.input.append(helper.make_tensor_value_info("i", I64, []))
    result = fold(model, passes=("shapes",))
    assert "Gather" in op_types(result.model)


def test_outer_value_read_inside_a_subgraph_is_folded_in_its_own_graph(rng):
    then_branch = helper.make_graph(
        [helper.make_node("Reshape", ["x", "d1"], ["r"])],
        "then",
        [],
        [helper.make_tensor_value_info("r", F32, None)],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["r2"])],
        "else",
        [],
        [helper.make_tensor_value_info("r2", F32, None)],
    )
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], start=1),
        helper.make_node("Concat", ["minus1", "s"], ["d1"], axis=0),
        helper.make_node("If", ["c"], ["y"], then_branch=then_branch, else_branch=else_branch),
    ]
    inits = {"minus1": np.array([-1], np.int64)}
    model = make_model(
        nodes,
        [("x", F32, ["N", 3]), ("c", TensorProto.BOOL, [])],
        [("y", F32, None)],
        inits,
    )
    result = fold(model, passes=("shapes", "unused"))
    assert op_types(result.model) == ["If"]
    assert result.model.graph.initializers["d1"].const_value.numpy().tolist() == [-1, 3]
    for n, flag in ((2, True), (4, False)):
        feeds = {"x": rng.standard_normal((n, 3)).astype(np.float32), "c": np.array(flag)}
        assert_same_outputs(model, result.model, feeds, exact=True)


# --- found by an adversarial review --------------------------------------------------------------


def test_a_negative_step_slice_of_a_shape_is_left_to_the_runtime(rng):
    """ONNX clamps Slice(start=-10, step=-1) to keep element 0; Python's slicing gives nothing."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Slice", ["s", "st", "en", "ax", "sp"], ["sl"]),
        helper.make_node("Concat", ["sl", "two"], ["c"], axis=0),
        helper.make_node("ReduceMax", ["c"], ["y"], keepdims=0),
    ]
    inits = {
        "st": np.array([-10], np.int64),
        "en": np.array([-20], np.int64),
        "ax": np.array([0], np.int64),
        "sp": np.array([-1], np.int64),
        "two": np.array([2], np.int64),
    }
    model = make_model(nodes, [("x", F32, ["N", 3, 4])], [("y", I64, [])], inits)
    result = optkit.fuse(model)
    assert result.report.ok
    _same_at(model, result.model, _feeds(rng, (1, 3, 4), (3, 3, 4), (5, 3, 4)))


def test_a_folded_scalar_stays_rank_0(rng):
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "one"], ["w"], axis=0),
        helper.make_node("Range", ["zero", "w", "step"], ["y"]),
    ]
    inits = {k: np.array(v, np.int64) for k, v in (("one", 1), ("zero", 0), ("step", 1))}
    model = make_model(nodes, [("x", F32, ["N", 5])], [("y", I64, None)], inits)
    result = fold(model, passes=("shapes", "unused"))
    (range_node,) = result.model.graph
    assert range_node.inputs[1] is not None and range_node.inputs[1].const_value is not None
    assert range_node.inputs[1].const_value.numpy().shape == ()
    _same_at(model, result.model, _feeds(rng, (0, 5), (3, 5)))


def test_an_empty_shape_slice_broadcast_against_one_element_does_not_crash(rng):
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], start=1, end=1),
        helper.make_node("Add", ["s", "one"], ["y"]),
    ]
    model = make_model(
        nodes, [("x", F32, ["N", 3])], [("y", I64, None)], {"one": np.array([1], np.int64)}
    )
    result = fold(model, passes=("shapes", "unused"))  # an empty output: nothing to verify on
    assert op_types(result.model) == ["Add"]
    _same_at(model, result.model, _feeds(rng, (2, 3)))


def test_a_target_with_0_and_minus_1_under_allowzero_stays_computed():
    """ONNX forbids it; ONNX Runtime refuses it as a constant at load time."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], start=1),
        helper.make_node("Sub", ["s", "three"], ["z"]),
        helper.make_node("Concat", ["z", "minus1"], ["t"], axis=0),
        helper.make_node("Reshape", ["x", "t"], ["y"], allowzero=1),
    ]
    inits = {"three": np.array([3], np.int64), "minus1": np.array([-1], np.int64)}
    model = make_model(nodes, [("x", F32, ["N", 3])], [("y", F32, None)], inits, opset=18)
    result = fold(model, passes=("shapes", "unused"))
    assert "Concat" in op_types(result.model)


def test_a_target_the_constants_pass_folded_lets_shapes_infer_again():
    """A second fuse applies nothing: inference runs again once a fold made a new constant."""
    nodes = [
        helper.make_node("Reshape", ["x", "t1"], ["r"]),
        helper.make_node("Shape", ["r"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["d"], axis=0),
        helper.make_node("Unsqueeze", ["d", "axes"], ["d1"]),
        helper.make_node("Concat", ["d1", "minus1"], ["t2"], axis=0),
        helper.make_node("Reshape", ["r", "t2"], ["y"]),
        helper.make_node("Concat", ["two", "three", "minus1"], ["t1"], axis=0),
    ]
    inits = {
        "two": np.array([2], np.int64),
        "three": np.array([3], np.int64),
        "minus1": np.array([-1], np.int64),
        "zero": np.array(0, np.int64),
        "axes": np.array([0], np.int64),
    }
    model = make_model(
        nodes[-1:] + nodes[:-1], [("x", F32, [3, "N"])], [("y", F32, None)], inits, opset=13
    )
    first = optkit.fuse(model)
    assert first.report.ok
    again = optkit.fuse(first.to_proto())
    assert not [
        s
        for p in again.report.pipeline.passes
        for s in p.sites
        if s.applied and p.name not in ("toposort",)
    ]
