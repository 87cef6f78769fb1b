"""Verdicts that cannot be fooled by their own comparison (issue 19's false verdicts): integers
compared exactly, outputs matched by name or by a position that is safe, a tolerance that sees a
wrong small channel, and samples of data-dependent shapes compared one by one."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper

import optkit
from helpers import F32, bn_node, bn_params, make_model, run_main
from optkit.check.compare import compare_arrays, compare_outputs
from optkit.core.contract import Exactness
from optkit.errors import InputError

I64 = onnx.TensorProto.INT64


def _add_constant(value: int, path) -> str:
    """y = x + value, int64."""
    nodes = [helper.make_node("Add", ["x", "c"], ["y"])]
    model = make_model(
        nodes, [("x", I64, [4])], [("y", I64, [4])], {"c": np.array(value, np.int64)}
    )
    onnx.save(model, str(path))
    return str(path)


@pytest.mark.parametrize("base", [2**60, 2**63 - 20])
def test_int64_outputs_one_apart_near_their_range_differ(tmp_path, monkeypatch, capsys, base):
    """Through float64, 2**60 and 2**60 + 1 are the same number: 'equivalent, max abs 0' before."""
    a = _add_constant(base, tmp_path / "a.onnx")
    b = _add_constant(base + 1, tmp_path / "b.onnx")
    code, out, err = run_main(monkeypatch, capsys, "verify", a, b)
    assert code == 1, out + err
    assert "NOT equivalent" in out and "integers compare exactly" in out
    verdict = compare_outputs(
        {"y": np.array([base], np.int64)}, {"y": np.array([base + 1], np.int64)}, Exactness.BITWISE
    )
    assert not verdict.ok and verdict.outputs[0].max_abs_error == 1.0


def _two_outputs(path, names: tuple[str, str], scale: float = 1.0) -> str:
    """Outputs names[0] = x * 2, names[1] = x * 3 * scale."""
    nodes = [
        helper.make_node("Mul", ["x", "two"], [names[0]]),
        helper.make_node("Mul", ["x", "three"], [names[1]]),
    ]
    inits = {"two": np.array(2, np.float32), "three": np.array(3 * scale, np.float32)}
    outputs = [(n, F32, [2, 3]) for n in names]
    onnx.save(make_model(nodes, [("x", F32, [2, 3])], outputs, inits), str(path))
    return str(path)


def test_outputs_named_at_other_positions_are_one_line_not_a_guess(tmp_path, monkeypatch, capsys):
    """A [p, q] vs B [q, r] compared q twice and r (100x off) never: exit 0 before."""
    a = _two_outputs(tmp_path / "a.onnx", ("p", "q"))
    b = _two_outputs(tmp_path / "b.onnx", ("q", "r"), scale=100.0)
    code, out, err = run_main(monkeypatch, capsys, "verify", a, b)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "match neither by name nor by position" in err and "'q'" in err


def test_outputs_with_other_names_match_by_position_and_say_so(tmp_path, monkeypatch, capsys):
    a = _two_outputs(tmp_path / "a.onnx", ("p", "q"))
    renamed = _two_outputs(tmp_path / "b.onnx", ("u", "v"))
    wrong = _two_outputs(tmp_path / "c.onnx", ("u", "v"), scale=100.0)
    code, out, err = run_main(monkeypatch, capsys, "verify", a, renamed)
    assert code == 0 and "matched by position" in out and "'p' ~ 'u'" in out, out + err
    code, out, _ = run_main(monkeypatch, capsys, "verify", a, wrong)
    assert code == 1 and "NOT equivalent" in out


def test_outputs_of_other_types_or_counts_are_not_matched_by_position():
    x = np.ones((2, 2), np.float32)
    with pytest.raises(InputError, match="differ in name and type at position 0"):
        compare_outputs({"p": x}, {"u": x.astype(np.int64)}, Exactness.REASSOCIATE)
    with pytest.raises(InputError, match="have 1 and 2 outputs"):
        compare_outputs({"p": x}, {"p": x, "q": x}, Exactness.REASSOCIATE)


def test_a_negated_small_channel_next_to_large_ones_fails():
    """The tolerance was relative to the output's largest magnitude: 0.1 -> -0.1 beside ~100 passed."""
    rng = np.random.default_rng(0)
    y = rng.uniform(90, 110, (2, 3, 4, 4)).astype(np.float32)
    y[:, 2] = rng.uniform(0.05, 0.1, (2, 4, 4))
    wrong = y.copy()
    wrong[:, 2] *= -1
    result = compare_arrays("y", y, wrong, Exactness.REASSOCIATE)
    assert not result.ok and "(channel 2)" in result.problem
    assert compare_arrays("y", y, y * np.float32(1 + 1e-6), Exactness.REASSOCIATE).ok


def test_a_small_element_of_a_vector_is_judged_by_its_own_size():
    a = np.array([1000, 0.05], np.float32)
    assert not compare_arrays("y", a, np.array([1000, 0.1], np.float32), Exactness.REASSOCIATE).ok
    assert compare_arrays("y", a, a * np.float32(1 + 1e-6), Exactness.REASSOCIATE).ok


def test_a_channel_crossing_zero_is_judged_by_its_largest_magnitude():
    """Values near zero in a channel whose other values are ~1: rounding there is fine."""
    a = np.array([[1.0, -1.0], [1e-7, 1e-7]], np.float32).T  # channel 1 of rank 2 is a column
    b = a + np.float32(3e-7)
    assert compare_arrays("y", a.reshape(2, 2), b.reshape(2, 2), Exactness.REASSOCIATE).ok


def _fp16_conv_bn(path, rng) -> str:
    """An fp16 Conv -> BN whose channels span three orders of magnitude."""
    channels = 8
    weight = (
        rng.standard_normal((channels, 3, 3, 3)) * np.logspace(-2, 1, channels)[:, None, None, None]
    )
    inits = {"W": weight.astype(np.float16)}
    inits.update(bn_params(rng, channels, dtype=np.float16))
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["h"], pads=[1, 1, 1, 1]),
        bn_node("h", "y"),
    ]
    f16 = onnx.TensorProto.FLOAT16
    model = make_model(nodes, [("x", f16, [2, 3, 8, 8])], [("y", f16, [2, channels, 8, 8])], inits)
    onnx.save(model, str(path))
    return str(path)


def test_fp16_folds_still_verify_channel_by_channel(tmp_path, rng):
    source = _fp16_conv_bn(tmp_path / "fp16.onnx", rng)
    result = optkit.fuse(source)
    assert result.report.ok and result.report.verdict is not None, result.report.format_text()
    assert [n.op_type for n in result.model.graph] == ["Conv"]
    assert optkit.verify(source, result.model, samples=4).ok


def _nonzero(path) -> str:
    nodes = [helper.make_node("NonZero", ["x"], ["y"])]
    onnx.save(make_model(nodes, [("x", F32, [6])], [("y", I64, [1, "k"])], {}), str(path))
    return str(path)


def test_samples_of_data_dependent_shapes_are_compared_one_by_one(tmp_path, monkeypatch, capsys):
    """NonZero's output has another length per sample; concatenating them was an exit 2."""
    model = _nonzero(tmp_path / "nz.onnx")
    feeds = [{"x": np.array(v, np.float32)} for v in ([0, 1, 0, 2, 0, 0], [1, 1, 1, 0, 0, 3])]
    verdict = optkit.verify(model, model, feeds)
    assert verdict.ok and [o.name for o in verdict.outputs] == ["y (sample 0)", "y (sample 1)"]
    code, out, err = run_main(monkeypatch, capsys, "verify", model, model, "--samples", "3")
    assert code == 0, out + err


def _relu_model(extra: list, inits: dict, output: str = "y") -> onnx.ModelProto:
    nodes = [helper.make_node("Relu", ["x"], ["r"]), *extra]
    return make_model(nodes, [("x", F32, ["N", 3, "H", "W"])], [(output, F32, None)], inits)


def test_dynamic_dims_are_verified_at_a_second_size():
    """A rewrite right only at the default 16 x 16 (as one computed from a stale declaration)."""
    from optkit.check.verify import verify_rewrite

    before = optkit.load(_relu_model([helper.make_node("Identity", ["r"], ["y"])], {}))
    only_at_16 = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "two"], ["h"], axis=0),
        helper.make_node("Equal", ["h", "sixteen"], ["eq"]),
        helper.make_node("Cast", ["eq"], ["f"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Mul", ["r", "f"], ["y"]),
    ]
    inits = {"two": np.array(2, np.int64), "sixteen": np.array(16, np.int64)}
    after = optkit.load(_relu_model(only_at_16, inits))
    verdict = verify_rewrite(before, after, Exactness.REASSOCIATE)
    assert isinstance(verdict, optkit.Verdict) and not verdict.ok
    assert [o.name for o in verdict.outputs] == ["y", "y at x=2x3x9x7"]
    assert [o.ok for o in verdict.outputs] == [True, False]
    same = verify_rewrite(before, before, Exactness.REASSOCIATE)
    assert isinstance(same, optkit.Verdict) and same.ok and "two sizes" in same.notes[-1]
    fixed = verify_rewrite(before, after, Exactness.REASSOCIATE, shapes={"x": (1, 3, 16, 16)})
    assert isinstance(fixed, optkit.Verdict) and fixed.ok and len(fixed.outputs) == 1


def test_a_model_dynamic_in_name_only_is_verified_at_its_one_size_and_says_so():
    reshape = [helper.make_node("Reshape", ["r", "target"], ["y"])]
    model = optkit.load(_relu_model(reshape, {"target": np.array([1, 768], np.int64)}))
    from optkit.check.verify import verify_rewrite

    verdict = verify_rewrite(model, model, Exactness.BITWISE)
    assert isinstance(verdict, optkit.Verdict) and verdict.ok
    assert "checked at one size only" in verdict.notes[-1]


def test_a_random_op_inside_a_model_local_function_is_named(tmp_path, monkeypatch, capsys):
    """The scan skipped functions, and a fresh session repeats an unseeded op's draws: 'equivalent'."""
    noisy = helper.make_function(
        "local", "Noisy", ["a"], ["b"],
        [helper.make_node("RandomNormalLike", ["a"], ["r"]), helper.make_node("Add", ["a", "r"], ["b"])],
        opset_imports=[helper.make_opsetid("", 17)],
    )  # fmt: skip
    graph = helper.make_graph(
        [helper.make_node("Noisy", ["x"], ["y"], domain="local")], "g",
        [helper.make_tensor_value_info("x", F32, [4, 8])],
        [helper.make_tensor_value_info("y", F32, [4, 8])],
    )  # fmt: skip
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)]
    model = helper.make_model(graph, opset_imports=opsets, functions=[noisy], ir_version=8)
    path = tmp_path / "random_in_function.onnx"
    onnx.save(model, str(path))
    for args in (
        ["verify", str(path), str(path)],
        ["fuse", str(path), "-o", str(tmp_path / "o.onnx")],
    ):
        code, _, err = run_main(monkeypatch, capsys, *args)
        assert code == 2 and "not deterministic" in err and "in function local::Noisy" in err, err
    assert not (tmp_path / "o.onnx").exists()


def test_a_candidate_that_fails_to_run_is_a_difference_not_bad_input(tmp_path, monkeypatch, capsys):
    identity = make_model([helper.make_node("Identity", ["x"], ["y"])], [("x", F32, [4, 8])],
                          [("y", F32, [4, 8])], {})  # fmt: skip
    broken = make_model([helper.make_node("Reshape", ["x", "t"], ["y"])], [("x", F32, [4, 8])],
                        [("y", F32, [4, 8])], {"t": np.array([5, 7], np.int64)})  # fmt: skip
    onnx.save(identity, str(tmp_path / "a.onnx"))
    onnx.save(broken, str(tmp_path / "b.onnx"))
    code, out, err = run_main(monkeypatch, capsys, "verify", str(tmp_path / "a.onnx"),
                              str(tmp_path / "b.onnx"))  # fmt: skip
    assert code == 1 and "NOT equivalent" in out and "cannot run" in out, out + err
    # ORT logs to the process's stderr, below Python: only a real process shows it
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "optkit",
            "verify",
            str(tmp_path / "a.onnx"),
            str(tmp_path / "b.onnx"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 1 and process.stderr == "", process.stderr
    verdict = optkit.verify(identity, broken)
    assert not verdict and "cannot run" in verdict.outputs[0].problem


def _save(path, nodes, inputs, outputs, inits=None) -> str:
    onnx.save(make_model(nodes, inputs, outputs, inits or {}), str(path))
    return str(path)


def test_inputs_sharing_a_dim_name_get_one_size(tmp_path, monkeypatch, capsys):
    """--shape ids=3x5 gave `mask` (batch, seq) the defaults 1x16: ORT could not broadcast."""
    nodes = [helper.make_node("Cast", ["ids"], ["f"], to=onnx.TensorProto.FLOAT),
             helper.make_node("Add", ["f", "mask"], ["y"])]  # fmt: skip
    two = _save(tmp_path / "two.onnx", nodes, [("ids", I64, ["batch", "seq"]),
                ("mask", F32, ["batch", "seq"])], [("y", F32, ["batch", "seq"])])  # fmt: skip
    for command in (["verify", two, two], ["fuse", two, "-o", str(tmp_path / "o.onnx")]):
        code, out, err = run_main(monkeypatch, capsys, *command, "--shape", "ids=3x5")
        assert code == 0, out + err
    code, _, err = run_main(monkeypatch, capsys, "verify", two, two, "--shape", "ids=3x5",
                            "--shape", "mask=3x6")  # fmt: skip
    assert code == 2 and "give the dim 'seq' two sizes (5 and 6)" in err
    code, _, err = run_main(monkeypatch, capsys, "verify", two, two, "--shape", "ids=3x5",
                            "--shape", "ids=3x6")  # fmt: skip
    assert code == 2 and "given a shape twice" in err


def test_verify_fits_its_inputs_to_both_models(tmp_path, monkeypatch, capsys):
    """A dynamic-batch original against its static-batch export: the default batch of 1 did not
    fit the candidate, and a --shape was checked against the reference only (ORT's cut message)."""
    relu = [helper.make_node("Relu", ["x"], ["y"])]
    dynamic = _save(tmp_path / "d.onnx", relu, [("x", F32, ["N", 3, 8, 8])], [("y", F32, None)])
    static = _save(tmp_path / "s.onnx", relu, [("x", F32, [2, 3, 8, 8])], [("y", F32, None)])
    code, out, err = run_main(monkeypatch, capsys, "verify", dynamic, static)
    assert code == 0, out + err
    code, _, err = run_main(monkeypatch, capsys, "verify", dynamic, static, "--shape", "x=3x3x8x8")
    assert code == 2 and "the candidate: --shape x=3x3x8x8 contradicts the model" in err


def test_the_api_saves_no_model_whose_verification_failed_or_did_not_run(tmp_path):
    """The CLI refused these; `result.save` wrote them without a word."""
    custom = helper.make_model(
        helper.make_graph(
            [helper.make_node("Foo", ["x"], ["y"], domain="com.acme")],
            "g",
            [helper.make_tensor_value_info("x", F32, [2])],
            [helper.make_tensor_value_info("y", F32, [2])],
        ),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.acme", 1)],
    )
    result = optkit.fuse(custom)
    assert result.report.state == "unverified" and not result.report.ok
    with pytest.raises(InputError, match="not written: verification could not run"):
        result.save(tmp_path / "unverified.onnx")
    assert not (tmp_path / "unverified.onnx").exists()
    result.save(tmp_path / "unverified.onnx", force=True)
    unchecked = optkit.fuse(custom, verify_result=False)
    assert unchecked.report.state == "disabled"
    unchecked.save(tmp_path / "disabled.onnx")  # asked for no verification: written


def test_a_fold_more_accurate_than_its_original_passes_on_the_float64_reference():
    """Conv bias 1e5 -> BN mean 1e5: float32 cancellation leaves the original ~4e-3 off the exact
    result, the fold (computed in float64) ~2e-6; it was refused as 'not equivalent'."""
    rng = np.random.default_rng(0)
    channels = 4
    inits = {
        "W": rng.standard_normal((channels, 3, 3, 3)).astype(np.float32),
        "b": np.full(channels, 1e5, np.float32),
        "bn.scale": np.ones(channels, np.float32),
        "bn.B": np.zeros(channels, np.float32),
        "bn.mean": np.full(channels, 1e5, np.float32),
        "bn.var": np.ones(channels, np.float32),
    }
    nodes = [helper.make_node("Conv", ["x", "W", "b"], ["h"]), bn_node("h", "y")]
    model = make_model(nodes, [("x", F32, [1, 3, 8, 8])], [("y", F32, None)], inits)
    result = optkit.fuse(model)
    assert result.report.ok and result.report.verdict is not None
    assert any("the rewrite is the more accurate" in n for n in result.report.verdict.notes)


def test_a_bitwise_claim_is_checked_on_nan_and_inf_inputs():
    """Where(x > 0, x, 0) and Relu agree on every finite input and differ on NaN."""
    from optkit.check.verify import verify_rewrite

    where = [helper.make_node("Greater", ["x", "zero"], ["positive"]),
             helper.make_node("Where", ["positive", "x", "zero"], ["y"])]  # fmt: skip
    before = optkit.load(make_model(where, [("x", F32, [2, 8])], [("y", F32, [2, 8])],
                                    {"zero": np.array(0, np.float32)}))  # fmt: skip
    relu = [helper.make_node("Relu", ["x"], ["y"])]
    after = optkit.load(make_model(relu, [("x", F32, [2, 8])], [("y", F32, [2, 8])], {}))
    verdict = verify_rewrite(before, after, Exactness.BITWISE)
    assert isinstance(verdict, optkit.Verdict) and not verdict.ok
    assert [(o.name, o.ok) for o in verdict.outputs] == [
        ("y", True),
        ("y (NaN / inf inputs)", False),
    ]
    same = verify_rewrite(before, before, Exactness.BITWISE)
    assert isinstance(same, optkit.Verdict) and same.ok and len(same.outputs) == 2


def test_swap_and_preprocess_take_a_shape_for_dynamic_dims(tmp_path, monkeypatch, capsys):
    """A model whose channel dim is dynamic: the default 16 channels cannot run it, and these two
    commands had no --shape (only fuse, verify and bench did)."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    model = make_model(nodes, [("x", F32, ["N", "C", "H", "W"])], [("y", F32, None)],
                       {"W": rng.standard_normal((4, 3, 3, 3)).astype(np.float32)})  # fmt: skip
    path = str(tmp_path / "m.onnx")
    onnx.save(model, path)
    swap = [
        "swap",
        path,
        "--map",
        "Relu=LeakyRelu:0.01",
        "--allow-lossy",
        "-o",
        str(tmp_path / "s.onnx"),
    ]
    assert run_main(monkeypatch, capsys, *swap)[0] == 2
    code, out, err = run_main(monkeypatch, capsys, *swap, "--shape", "x=1x3x8x8")
    assert code == 0, out + err
    embed = [
        "preprocess",
        "embed",
        path,
        "--mean",
        "0.5",
        "--std",
        "0.25",
        "-o",
        str(tmp_path / "r.onnx"),
    ]
    code, out, err = run_main(monkeypatch, capsys, *embed, "--shape", "x=1x3x8x8")
    assert code == 0, out + err


def test_more_dynamic_dims_than_second_sizes_still_verify(tmp_path, monkeypatch, capsys):
    """21 dynamic dims ran out of second sizes: StopIteration, exit 3."""
    count = 21
    nodes = [helper.make_node("Relu", [f"x{i}"], [f"r{i}"]) for i in range(count)]
    nodes.append(helper.make_node("Concat", [f"r{i}" for i in range(count)], ["y"], axis=1))
    inputs = [(f"x{i}", F32, [1, f"d{i}"]) for i in range(count)]
    path = _save(tmp_path / "wide.onnx", nodes, inputs, [("y", F32, [1, None])])
    code, out, err = run_main(monkeypatch, capsys, "fuse", path, "-o", str(tmp_path / "o.onnx"))
    assert code == 0, out + err


def test_sibling_bodies_keep_their_own_declared_input_shapes(tmp_path):
    """Two Loops whose bodies both name an input v_in: one got the other's declared shape back,
    and ORT (optimizations on) folded Shape(v_in) from it: 15 instead of 18."""
    import onnxruntime as ort

    i64, boolean = onnx.TensorProto.INT64, onnx.TensorProto.BOOL

    def body(shape, tag):
        return helper.make_graph(
            [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
             helper.make_node("Shape", ["v_in"], ["s"]),
             helper.make_node("ReduceProd", ["s"], ["p"], keepdims=0),
             helper.make_node("Cast", ["p"], ["pf"], to=F32),
             helper.make_node("Add", ["v_in", "pf"], ["v_out"])],
            f"body{tag}",
            [helper.make_tensor_value_info("iter", i64, []),
             helper.make_tensor_value_info("cond_in", boolean, []),
             helper.make_tensor_value_info("v_in", F32, shape)],
            [helper.make_tensor_value_info("cond_out", boolean, []),
             helper.make_tensor_value_info("v_out", F32, shape)],
        )  # fmt: skip

    loops = [helper.make_node("Loop", ["M", "", x], [y], body=body(shape, tag))
             for x, y, shape, tag in (("a", "ya", [2, 3], "1"), ("b", "yb", [5], "2"))]  # fmt: skip
    model = make_model(loops, [("a", F32, [2, 3]), ("b", F32, [5])],
                       [("ya", F32, [2, 3]), ("yb", F32, [5])], {"M": np.array(3, np.int64)})  # fmt: skip
    result = optkit.fuse(model)
    assert result.report.ok
    fused = result.to_proto()
    onnx.checker.check_model(fused, full_check=True)
    declared = [[d.dim_value for d in n.attribute[0].g.input[2].type.tensor_type.shape.dim]
                for n in fused.graph.node if n.op_type == "Loop"]  # fmt: skip
    assert declared == [[2, 3], [5]]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    feeds = {"a": np.zeros((2, 3), np.float32), "b": np.zeros(5, np.float32)}
    want = ort.InferenceSession(model.SerializeToString(), options).run(None, feeds)
    got = ort.InferenceSession(fused.SerializeToString(), options).run(None, feeds)
    assert all(np.array_equal(w, g) for w, g in zip(want, got, strict=True))


def test_the_float64_judge_stays_out_of_models_that_round_on_purpose():
    """A Cast to float16 and back overflows at 1e5 * x: the widened 'truth' skipped it and passed a
    candidate that dropped the round trip."""
    from optkit.check.verify import verify_rewrite

    def model(round_trip: bool) -> onnx.ModelProto:
        nodes = [helper.make_node("Mul", ["x", "k"], ["s"])]
        if round_trip:
            nodes += [helper.make_node("Cast", ["s"], ["h"], to=onnx.TensorProto.FLOAT16),
                      helper.make_node("Cast", ["h"], ["y"], to=F32)]  # fmt: skip
        else:
            nodes.append(helper.make_node("Identity", ["s"], ["y"]))
        return make_model(nodes, [("x", F32, [4, 8])], [("y", F32, [4, 8])],
                          {"k": np.array(1e5, np.float32)})  # fmt: skip

    verdict = verify_rewrite(
        optkit.load(model(True)), optkit.load(model(False)), Exactness.REASSOCIATE
    )
    assert isinstance(verdict, optkit.Verdict) and not verdict.ok


def test_a_bitwise_claim_sees_the_sign_of_zero():
    """x + 0 turns -0.0 into +0.0; Identity keeps -0.0: 1 / y is +inf against -inf."""
    from optkit.check.verify import verify_rewrite

    add = [helper.make_node("Add", ["x", "zeros"], ["y"])]
    before = optkit.load(make_model(add, [("x", F32, [2, 4])], [("y", F32, [2, 4])],
                                    {"zeros": np.zeros((2, 4), np.float32)}))  # fmt: skip
    identity = [helper.make_node("Identity", ["x"], ["y"])]
    after = optkit.load(make_model(identity, [("x", F32, [2, 4])], [("y", F32, [2, 4])], {}))
    verdict = verify_rewrite(before, after, Exactness.BITWISE)
    assert isinstance(verdict, optkit.Verdict) and not verdict.ok
    assert "sign of a zero" in verdict.outputs[-1].problem


def test_a_float64_reference_never_excuses_an_inf_of_the_other_sign():
    """LeakyRelu alpha 0.0 vs -0.0 give zeros of other signs, so 1 / y is -inf in one and +inf in
    the other for x < 0 (what a CSE comparing attributes with == made of them). The float64 arbiter,
    there for cancellation in reassociated sums, passed it; it must not."""
    from optkit.check.verify import verify_rewrite

    def model(alpha_b: float) -> onnx.ModelProto:
        nodes = [
            helper.make_node("LeakyRelu", ["x"], ["a"], alpha=0.0),
            helper.make_node("LeakyRelu", ["x"], ["b"], alpha=alpha_b),
            helper.make_node("Reciprocal", ["a"], ["ya"]),
            helper.make_node("Reciprocal", ["b"], ["yb"]),
        ]
        outputs = [("ya", F32, ["N", 16]), ("yb", F32, ["N", 16])]
        return make_model(nodes, [("x", F32, ["N", 16])], outputs, {})

    verdict = verify_rewrite(
        optkit.load(model(-0.0)), optkit.load(model(0.0)), Exactness.REASSOCIATE
    )
    assert not verdict.ok
    assert any("inf or NaN where the original differs" in note for note in verdict.notes)


def test_as_accurate_as_the_original_is_judged_channel_by_channel():
    from optkit.check.verify import as_accurate_as_original
    from optkit.core.contract import Decline

    rng = np.random.default_rng(3)
    truth = {"y": rng.standard_normal((1, 3, 8, 8))}
    noise = rng.standard_normal((1, 3, 8, 8)) * 1e-4
    noise[:, 0] *= 1e3  # channel 0 badly conditioned: its float32 error is 1000x the others'
    reference = {"y": (truth["y"] + noise).astype(np.float32)}
    shuffled = truth["y"] + rng.permutation(noise.reshape(3, -1), axis=1).reshape(noise.shape)
    candidate = {"y": shuffled.astype(np.float32)}  # as accurate, errors elsewhere in each channel
    judged = as_accurate_as_original(truth, reference, candidate, 2.0)
    assert not isinstance(judged, Decline)
    [worst] = judged
    assert worst.group == "'y' channel 0" and worst.rewrite <= 2 * worst.original + 1e-3
    wrong = candidate["y"].copy()
    wrong[:, 1] *= np.float32(1.01)  # a wrong channel hides behind channel 0's error no more
    refused = as_accurate_as_original(truth, reference, {"y": wrong}, 2.0)
    assert isinstance(refused, Decline) and "channel 1" in refused.reason
    logits = {"y": rng.standard_normal((1, 1000))}  # one element per class: element by element
    off = {"y": (logits["y"] + rng.standard_normal((1, 1000)) * 1e-4).astype(np.float32)}
    also_off = {"y": (logits["y"] + rng.standard_normal((1, 1000)) * 1e-4).astype(np.float32)}
    judged = as_accurate_as_original(logits, off, also_off, 2.0)
    assert not isinstance(judged, Decline) and judged[0].group.startswith("'y' at index (0, ")
    skewed = off["y"].copy()
    skewed[0, 0] += np.float32(10.0)  # class 0 badly conditioned in the original
    wrong = also_off["y"].copy()
    wrong[0, 1] *= np.float32(1.01)  # class 1 wrong by 1%: class 0's error does not excuse it
    refused = as_accurate_as_original(logits, {"y": skewed}, {"y": wrong}, 2.0)
    assert isinstance(refused, Decline) and "at index (0, 1)" in refused.reason
    nan = {"y": np.full((1, 1000), np.nan, np.float32)}
    assert isinstance(as_accurate_as_original(logits, off, nan, 2.0), Decline)


def test_a_badly_conditioned_class_does_not_excuse_a_wrong_one():
    """Gemm + BN on one sample's 10 logits: class 0 cancels a bias of 3e4 against a mean of 3e4
    (0.35 lost in float32); class 1 scaled by 1.01 is refused (judging the logits as one group, as
    the first version of the accuracy arbiter did, let it pass)."""
    from optkit.check.verify import verify_rewrite

    def gemm_bn(scale_1: float) -> onnx.ModelProto:
        rng = np.random.default_rng(1)
        inits = {
            "W": rng.standard_normal((10, 32)).astype(np.float32),
            "B": np.array([3e4] + [0] * 9, np.float32),
            "bn.scale": np.array([300, scale_1] + [1] * 8, np.float32),
            "bn.B": np.zeros(10, np.float32),
            "bn.mean": np.array([3e4] + [0] * 9, np.float32),
            "bn.var": np.ones(10, np.float32),
        }
        nodes = [helper.make_node("Gemm", ["x", "W", "B"], ["g"], transB=1), bn_node("g", "y")]
        return make_model(nodes, [("x", F32, [1, 32])], [("y", F32, [1, 10])], inits)

    before = optkit.load(gemm_bn(1.0))
    verdict = verify_rewrite(before, optkit.load(gemm_bn(1.01)), Exactness.REASSOCIATE)
    assert isinstance(verdict, optkit.Verdict) and not verdict.ok
    assert any("at index (0, 1)" in note and "more than 2x" in note for note in verdict.notes)
    fused = optkit.fuse(gemm_bn(1.0))
    assert fused.report.ok and fused.report.batchnorm_after == 0


def test_a_badly_conditioned_channel_does_not_excuse_a_wrong_one():
    """Channel 0 of this Conv + BN cancels a mean of 3e4 against a bias of 3e4 (float32 loses 0.9
    there, in the original as in the fold); a rewrite with channel 1 scaled by 1.01 must still be
    refused (the first version of the accuracy arbiter, one maximum per output, let it pass)."""
    from optkit.check.verify import verify_rewrite

    def conv_bn(scale_1: float) -> onnx.ModelProto:
        rng = np.random.default_rng(1)
        inits = {
            "W": rng.standard_normal((4, 4, 1, 1)).astype(np.float32),
            "B": np.array([3e4, 0, 0, 0], np.float32),
            "bn.scale": np.array([300, scale_1, 1, 1], np.float32),
            "bn.B": np.zeros(4, np.float32),
            "bn.mean": np.array([3e4, 0, 0, 0], np.float32),
            "bn.var": np.ones(4, np.float32),
        }
        nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"]), bn_node("c", "y")]
        return make_model(nodes, [("x", F32, [1, 4, 16, 16])], [("y", F32, None)], inits)

    before = optkit.load(conv_bn(1.0))
    verdict = verify_rewrite(before, optkit.load(conv_bn(1.01)), Exactness.REASSOCIATE)
    assert isinstance(verdict, optkit.Verdict) and not verdict.ok
    assert any("channel 1" in note and "more than 2x" in note for note in verdict.notes)
    fused = optkit.fuse(conv_bn(1.0))  # the true fold of the same model passes
    assert fused.report.ok and fused.report.batchnorm_after == 0
