"""Regression tests for issue 19's findings at the engine's edges: models built to sit just beside
what the rules expect. Outputs are checked on ONNX Runtime directly (tests/helpers), never through
optkit's own verification."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import optkit
from helpers import F32, assert_same_outputs, bn_node, bn_params, make_model, run_main

BOOL = onnx.TensorProto.BOOL


def _outer_scope_model(case: str, rng: np.random.Generator) -> onnx.ModelProto:
    """The layer sits in the main graph, its only reader inside the If's then-branch."""
    channels_in, channels = 3, 4
    inits: dict[str, np.ndarray] = {
        "W": rng.standard_normal((channels, channels_in, 3, 3)).astype(np.float32),
        "s4": rng.uniform(0.5, 2, (channels, 1, 1)).astype(np.float32),
        "s3": rng.uniform(0.5, 2, (channels_in, 1, 1)).astype(np.float32),
        "perm": np.array([2, 1, 0], np.int64),
        "Wm": rng.standard_normal((5, channels)).astype(np.float32),
        "bm": rng.standard_normal(channels).astype(np.float32),
        **bn_params(rng, channels),
        **bn_params(rng, channels_in, prefix="bn3"),
    }
    x_shape, out_shape = [1, channels_in, 8, 8], [1, channels, 6, 6]
    outer: list[onnx.NodeProto]
    inner: list[onnx.NodeProto]
    if case == "conv->bn":
        outer = [helper.make_node("Conv", ["x", "W"], ["h"])]
        inner = [bn_node("h", "t")]
    elif case == "conv->mul":
        outer = [helper.make_node("Conv", ["x", "W"], ["h"])]
        inner = [helper.make_node("Mul", ["h", "s4"], ["t"])]
    elif case == "bn->mul":
        outer = [bn_node("x", "h", prefix="bn3")]
        inner = [helper.make_node("Mul", ["h", "s3"], ["t"])]
        out_shape = x_shape
    elif case == "bn->conv":
        outer = [bn_node("x", "h", prefix="bn3")]
        inner = [helper.make_node("Conv", ["h", "W"], ["t"])]
    elif case == "gather->conv":
        outer = [helper.make_node("Gather", ["x", "perm"], ["h"], axis=1)]
        inner = [helper.make_node("Conv", ["h", "W"], ["t"])]
    else:  # matmul+add->bn
        x_shape, out_shape = [2, 5], [2, channels]
        outer = [helper.make_node("MatMul", ["x", "Wm"], ["m"]),
                 helper.make_node("Add", ["m", "bm"], ["h"])]  # fmt: skip
        inner = [bn_node("h", "t")]
    zeros = numpy_helper.from_array(np.zeros(out_shape, np.float32), "z")
    branch_out = [helper.make_tensor_value_info("t", F32, out_shape)]
    then = helper.make_graph(inner, "then", [], branch_out)
    other = helper.make_graph(
        [helper.make_node("Constant", [], ["t"], value=zeros)], "else", [], branch_out
    )
    nodes = [*outer, helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]
    return make_model(nodes, [("x", F32, x_shape), ("c", BOOL, [])], [("y", F32, out_shape)], inits)


OUTER_SCOPE_CASES = [
    "conv->bn",
    "conv->mul",
    "bn->mul",
    "bn->conv",
    "gather->conv",
    "matmul+add->bn",
]


@pytest.mark.parametrize("case", OUTER_SCOPE_CASES)
def test_a_layer_read_only_inside_an_if_branch_is_left_alone(tmp_path, monkeypatch, capsys, case):
    """KeyError in batchnorm / affine / permute (exit 3, inspect too) before."""
    rng = np.random.default_rng(0)
    model = _outer_scope_model(case, rng)
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    for command in (["fuse", str(path), "-o", str(tmp_path / "out.onnx")], ["inspect", str(path)]):
        code, _, err = run_main(monkeypatch, capsys, *command)
        assert code == 0, err
    fused = onnx.load(str(tmp_path / "out.onnx"))
    x_shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    for flag in (True, False):
        feeds = {"x": rng.standard_normal(x_shape).astype(np.float32), "c": np.array(flag)}
        assert_same_outputs(model, fused, feeds, rtol=1e-5, atol=1e-5)


def _layer_norm_times(gamma: np.ndarray, x_shape: list[int]) -> onnx.ModelProto:
    """A decomposed LayerNorm over the last axis, then Mul by `gamma`."""
    nodes = [
        helper.make_node("ReduceMean", ["x", "axes"], ["mu"], keepdims=1),
        helper.make_node("Sub", ["x", "mu"], ["d"]),
        helper.make_node("Mul", ["d", "d"], ["d2"]),
        helper.make_node("ReduceMean", ["d2", "axes"], ["var"], keepdims=1),
        helper.make_node("Add", ["var", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["sd"]),
        helper.make_node("Div", ["d", "sd"], ["n"]),
        helper.make_node("Mul", ["n", "g"], ["y"]),
    ]
    inits = {"axes": np.array([-1], np.int64), "eps": np.array(1e-5, np.float32), "g": gamma}
    out_shape = list(np.broadcast_shapes(tuple(x_shape), gamma.shape))
    return make_model(nodes, [("x", F32, x_shape)], [("y", F32, out_shape)], inits, opset=18)


@pytest.mark.parametrize(
    ("gamma_shape", "x_shape"),
    [((5, 8), [2, 5, 8]), ((1, 1, 8), [4, 8])],
    ids=["gamma varies along T (ValueError before)", "gamma of higher rank (rank dropped before)"],
)
@pytest.mark.parametrize("skip", [[], ["norms"]])
def test_layer_norm_times_a_constant_it_cannot_absorb(gamma_shape, x_shape, skip):
    rng = np.random.default_rng(0)
    model = _layer_norm_times(rng.standard_normal(gamma_shape).astype(np.float32), x_shape)
    result = optkit.fuse(model, skip=skip)
    assert result.report.ok, result.report.format_text()
    feeds = {"x": rng.standard_normal(x_shape).astype(np.float32)}
    assert_same_outputs(model, result.to_proto(), feeds, rtol=1e-5, atol=1e-5)


def test_constant_of_shape_with_a_negative_dim_is_left_to_the_runtime(
    tmp_path, monkeypatch, capsys
):
    """ValueError in `constants` (exit 3) before; ORT refuses the model, so exit 2."""
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["z"]),
             helper.make_node("Add", ["x", "z"], ["y"])]  # fmt: skip
    model = make_model(nodes, [("x", F32, [2])], [("y", F32, None)],
                       {"shape": np.array([-2], np.int64)})  # fmt: skip
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    code, _, err = run_main(monkeypatch, capsys, "fuse", str(path), "-o", str(tmp_path / "o.onnx"))
    assert code == 2 and "non-negative" in err and not (tmp_path / "o.onnx").exists()
    result = optkit.fuse(model, verify_result=False)
    assert [n.op_type for n in result.model.graph] == ["ConstantOfShape", "Add"]


def _fp16_bn_before_padded_conv(shape: list) -> onnx.ModelProto:
    """fp16 BN with s = 1e-3, t = 50 before a padded Conv that has more outputs than inputs."""
    rng = np.random.default_rng(0)
    channels = 3
    params = {
        "bn.scale": np.full(channels, 1e-3, np.float16),
        "bn.B": np.full(channels, 50, np.float16),
        "bn.mean": np.zeros(channels, np.float16),
        "bn.var": np.full(channels, 1 - 1e-5, np.float16),
        "W": (rng.standard_normal((16, channels, 3, 3)) * 0.1).astype(np.float16),
    }
    nodes = [bn_node("x", "h"), helper.make_node("Conv", ["h", "W"], ["y"], pads=[1, 1, 1, 1])]
    f16 = onnx.TensorProto.FLOAT16
    return make_model(nodes, [("x", f16, shape)], [("y", f16, None)], params)


@pytest.mark.parametrize("shape", [[1, 3, 8, 8], ["N", 3, "H", "W"]], ids=["static", "dynamic"])
def test_an_fp16_shift_too_large_for_the_input_is_not_moved_onto_it(shape):
    """Add(x, t/s = 50000) fits fp16, x + 50000 does not: onnx's reference evaluator (true fp16
    arithmetic) gave 896 of 1024 outputs non-finite."""
    from onnx.reference import ReferenceEvaluator

    model = _fp16_bn_before_padded_conv(shape)
    result = optkit.fuse(model, shapes={"x": (1, 3, 8, 8)})
    assert result.report.ok, result.report.format_text()
    adds = [n for n in result.model.graph if n.op_type == "Add" and n.inputs[0].name == "x"]
    assert not adds, "the shift was moved onto the fp16 input"
    if shape[0] == "N":  # no border correction without a static size: declined, with the reason
        assert any(n.op_type == "BatchNormalization" for n in result.model.graph)
        reasons = [s.reason for p in result.report.pipeline.passes for s in p.declined]
        assert any("x + t / s could overflow" in r for r in reasons), reasons
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float16) * 100
    (want,) = ReferenceEvaluator(model).run(None, {"x": x})
    (got,) = ReferenceEvaluator(result.to_proto()).run(None, {"x": x})
    assert np.all(np.isfinite(got)) and np.all(np.isfinite(want))
    scale = float(np.max(np.abs(want.astype(np.float64))))
    assert float(np.max(np.abs(want.astype(np.float64) - got))) <= 2e-2 * scale


def test_a_gather_on_axis_1_of_a_3d_input_is_not_folded_into_a_matmul():
    """(B, T, F) with T == F: axis 1 is T, MatMul contracts F; it was folded into W's rows."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gather", ["x", "idx"], ["h"], axis=1),
             helper.make_node("MatMul", ["h", "W"], ["y"])]  # fmt: skip
    inits = {"idx": np.array([2, 0, 3, 1], np.int64),
             "W": rng.standard_normal((4, 5)).astype(np.float32)}  # fmt: skip
    model = make_model(nodes, [("x", F32, [2, 4, 4])], [("y", F32, [2, 4, 5])], inits)
    result = optkit.fuse(model)
    assert result.report.ok and "Gather" in [n.op_type for n in result.model.graph]
    reasons = [s.reason for p in result.report.pipeline.passes for s in p.declined]
    assert any("axis 1 is the last only at rank 2" in r for r in reasons), reasons
    feeds = {"x": rng.standard_normal((2, 4, 4)).astype(np.float32)}
    assert_same_outputs(model, result.to_proto(), feeds)


def test_a_permutation_with_negative_indices_folds():
    """Gather(x, [-1, -3, -2]) on axis 1 is a permutation; it got no report line before."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gather", ["x", "idx"], ["h"], axis=1),
             helper.make_node("Conv", ["h", "W"], ["y"])]  # fmt: skip
    inits = {"idx": np.array([-1, -3, -2], np.int64),
             "W": rng.standard_normal((4, 3, 3, 3)).astype(np.float32)}  # fmt: skip
    model = make_model(nodes, [("x", F32, [1, 3, 8, 8])], [("y", F32, None)], inits)
    result = optkit.fuse(model)
    assert [n.op_type for n in result.model.graph] == ["Conv"]
    feeds = {"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)}
    assert_same_outputs(model, result.to_proto(), feeds)


def _made_dynamic(model: onnx.ModelProto, inputs: dict, outputs: dict) -> onnx.ModelProto:
    """Shape inference first, then the dims made dynamic: intermediates keep stale static shapes."""
    from onnx.tools import update_model_dims

    inferred = onnx.shape_inference.infer_shapes(model)
    return update_model_dims.update_inputs_outputs_dims(inferred, inputs, outputs)


def test_shape_and_size_of_a_stale_declaration_are_not_folded():
    """At batch 2 the Size-based mean was off by 2x and the flatten gave (1, 64), not (2, 32)."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("Size", ["h"], ["n"]),
        helper.make_node("ReduceSum", ["h"], ["s"], keepdims=0),
        helper.make_node("Cast", ["n"], ["nf"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Div", ["s", "nf"], ["mean"]),
        helper.make_node("Shape", ["h"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        helper.make_node("Unsqueeze", ["batch", "axis0"], ["batch1"]),
        helper.make_node("Concat", ["batch1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["h", "target"], ["flat"]),
    ]
    inits = {
        "W": rng.standard_normal((2, 4, 3, 3)).astype(np.float32),
        "zero": np.array(0, np.int64),
        "axis0": np.array([0], np.int64),
        "minus1": np.array([-1], np.int64),
    }
    outputs = [("mean", F32, []), ("flat", F32, [1, 32])]
    model = make_model(nodes, [("x", F32, [1, 4, 4, 4])], outputs, inits)
    model = _made_dynamic(model, {"x": ["N", 4, 4, 4]}, {"mean": [], "flat": ["N", -1]})
    assert any(v.name == "h" and v.type.tensor_type.shape.dim[0].dim_value == 1
               for v in model.graph.value_info)  # fmt: skip
    result = optkit.fuse(model)
    assert result.report.ok
    assert [v.type.tensor_type.shape for v in result.to_proto().graph.output] == [
        v.type.tensor_type.shape for v in model.graph.output
    ]  # the declared signature is kept
    for batch in (1, 2, 3):
        feeds = {"x": rng.standard_normal((batch, 4, 4, 4)).astype(np.float32)}
        assert_same_outputs(model, result.to_proto(), feeds)


def test_a_border_correction_is_not_computed_from_a_stale_declaration():
    """BN before a padded Conv read a declared [1, 4, 16, 16]: fused, verified at 16x16, and it
    failed at 9x7 (ORT could not even broadcast the correction)."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        bn_node("r", "h"),
        helper.make_node("Conv", ["h", "W"], ["y"], pads=[1, 1, 1, 1]),
    ]
    inits = {"W": rng.standard_normal((2, 4, 3, 3)).astype(np.float32), **bn_params(rng, 4)}
    model = make_model(nodes, [("x", F32, [1, 4, 16, 16])], [("y", F32, [1, 2, 16, 16])], inits)
    model = _made_dynamic(model, {"x": ["N", 4, "H", "W"]}, {"y": ["N", 2, "H", "W"]})
    result = optkit.fuse(model)
    assert result.report.ok
    for shape in ((1, 4, 16, 16), (2, 4, 9, 7)):
        feeds = {"x": rng.standard_normal(shape).astype(np.float32)}
        assert_same_outputs(model, result.to_proto(), feeds)


def test_matmul_of_a_vector_plus_a_matrix_bias_then_bn_is_not_made_a_gemm():
    """A 1-D MatMul input + a (2, 4) bias + BN became a Gemm with a rank-1 A (ORT refused it)."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]),
             helper.make_node("Add", ["m", "b"], ["h"]), bn_node("h", "y")]  # fmt: skip
    inits = {"W": rng.standard_normal((3, 4)).astype(np.float32),
             "b": rng.standard_normal((2, 4)).astype(np.float32), **bn_params(rng, 4)}  # fmt: skip
    model = make_model(nodes, [("x", F32, [3])], [("y", F32, [2, 4])], inits)
    result = optkit.fuse(model)
    assert result.report.ok and "Gemm" not in [n.op_type for n in result.model.graph]
    feeds = {"x": rng.standard_normal(3).astype(np.float32)}
    assert_same_outputs(model, result.to_proto(), feeds)


@pytest.mark.parametrize("special", [np.inf, -np.inf, np.nan])
def test_a_layer_times_a_constant_holding_inf_or_nan_is_not_folded(special):
    """Conv * [1, inf, 2] was folded into NaN weights (0 * inf) instead of declining."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["h"]),
        helper.make_node("Mul", ["h", "s"], ["y"]),
    ]
    inits = {"W": rng.standard_normal((3, 2, 3, 3)).astype(np.float32),
             "s": np.array([1, special, 2], np.float32).reshape(3, 1, 1)}  # fmt: skip
    model = make_model(nodes, [("x", F32, [1, 2, 5, 5])], [("y", F32, None)], inits)
    result = optkit.fuse(model)
    assert result.report.ok and [n.op_type for n in result.model.graph] == ["Conv", "Mul"]
    reasons = [s.reason for p in result.report.pipeline.passes for s in p.declined]
    assert any("holds inf or NaN" in r for r in reasons), reasons


@pytest.mark.parametrize("op", ["Mul", "Div"])
def test_a_pure_scale_before_a_padded_conv_at_a_dynamic_size_folds_without_an_add(op):
    """It left Add(x, [0, 0, 0]) in front of the Conv (issue 19, missed or wasted)."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node(op, ["x", "s"], ["h"]),
             helper.make_node("Conv", ["h", "W"], ["y"], pads=[1, 1, 1, 1])]  # fmt: skip
    inits = {"s": np.array([1, 2, 3], np.float32).reshape(3, 1, 1),
             "W": rng.standard_normal((8, 3, 3, 3)).astype(np.float32)}  # fmt: skip
    model = make_model(nodes, [("x", F32, ["N", 3, "H", "W"])], [("y", F32, None)], inits)
    result = optkit.fuse(model)
    assert [n.op_type for n in result.model.graph] == ["Conv"]
    feeds = {"x": rng.standard_normal((2, 3, 9, 7)).astype(np.float32)}
    assert_same_outputs(model, result.to_proto(), feeds)


def test_a_dead_identity_reading_a_graph_output_does_not_rename_it():
    """tools/fuzz.py: the output 'drop', also read by a dead Identity -> 'logits', came out named
    'logits' (the signature changed) and lost its declared shape (the checker refused it: exit 3)."""
    nodes = [helper.make_node("Relu", ["x"], ["drop"]),
             helper.make_node("Identity", ["drop"], ["logits"])]  # fmt: skip
    model = make_model(nodes, [("x", F32, ["N", 4])], [("drop", F32, ["N", 4])], {})
    result = optkit.fuse(model)
    proto = result.to_proto()
    assert [o.name for o in proto.graph.output] == ["drop"]
    assert proto.graph.output[0].type == model.graph.output[0].type
    assert [n.op_type for n in proto.graph.node] == ["Relu"]
