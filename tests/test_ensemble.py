"""`optkit.ensemble` / `optkit ensemble`: members from `models/` (different architectures with one
input signature, seeds of one architecture) and small onnx.helper graphs, combined, verified
against the members run separately, fused, and verified again; bad member sets are exit 2.

The numeric checks here run every model on ONNX Runtime directly and combine in this file's own
numpy, not through optkit's verification."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper

import optkit
import optkit.combine
from helpers import F32, make_model, run_main
from optkit.embedding import embed
from optkit.ensembles import ENSEMBLE_KEY, ensemble
from optkit.models import ImageMLP, ResNetStyle, VGGStyle, randomize_batchnorm
from optkit.preprocessing import METADATA_KEY, PreprocessSpec
from optkit.torch import export_onnx

SAMPLE = (4, 1, 8, 8)


def member(arch: str, seed: int, opset: int = 17) -> onnx.ModelProto:
    torch.manual_seed(seed)
    factory = {
        "resnet": lambda: ResNetStyle(10, 8, 2, 1),
        "vgg": lambda: VGGStyle(10, (8, 16), 1, 8),
        "mlp": lambda: ImageMLP((1, 8, 8), (32,), 10),
    }[arch]
    model = randomize_batchnorm(factory(), seed)
    return export_onnx(model, torch.randn(*SAMPLE), opset=opset)


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options)
    return session.run(None, feeds)


def combined(outputs: list[np.ndarray], how: str, weights: list[float]) -> np.ndarray:
    """This file's own combination (float64), to check the graph against."""
    w = np.asarray(weights, np.float64) / np.sum(weights)
    ys = [o.astype(np.float64) for o in outputs]
    if how == "softmax-mean":
        ys = [np.exp(y - y.max(-1, keepdims=True)) for y in ys]
        ys = [y / y.sum(-1, keepdims=True) for y in ys]
    mean = sum(wi * y for wi, y in zip(w, ys, strict=True))
    if how != "vote":
        return mean
    votes = sum(wi * np.eye(y.shape[-1])[y.argmax(-1)] for wi, y in zip(w, ys, strict=True))
    tied = np.isclose(votes, votes.max(-1, keepdims=True), rtol=0, atol=1e-6)
    return np.where(tied, mean, -np.inf).argmax(-1)


def check_against_members(
    model: onnx.ModelProto, members: list[onnx.ModelProto], how: str, weights: list[float]
) -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((64, 1, 8, 8)).astype(np.float32)
    want = combined([run(m, {"input": x})[0] for m in members], how, weights)
    (got,) = run(model, {"input": x})
    if how == "vote":
        assert got.dtype == np.int64 and got.shape == (64,)
        np.testing.assert_array_equal(got, want)
    else:
        assert got.shape == (64, 10)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "archs, how, weights",
    [
        (("resnet", "vgg"), "mean", None),
        (("resnet", "vgg", "mlp"), "softmax-mean", [1.0, 2.0, 0.5]),
        (("resnet", "vgg", "mlp"), "vote", None),
        (("vgg", "mlp"), "vote", [3.0, 1.0]),
    ],
)
def test_different_architectures_are_combined_verified_fused_and_verified_again(
    archs, how, weights
):
    members = [member(a, seed) for seed, a in enumerate(archs)]
    result = ensemble(
        members, combine=how, weights=weights, fuse=True, shapes={"input": (16, 1, 8, 8)}
    )
    report = result.report
    assert report.verdict is not None and report.verdict.ok, report.format_text()
    assert report.fused is not None and report.fused.state == "equivalent"
    assert report.fused.batchnorm_before > 0 and report.fused.batchnorm_after == 0
    assert report.fused_verdict is not None and report.fused_verdict.ok
    assert report.exactness.value == ("bitwise" if how == "vote" else "reassociate")
    fused = result.to_proto()
    assert not [n for n in fused.graph.node if n.op_type == "BatchNormalization"]
    w = weights or [1.0] * len(members)
    check_against_members(fused, members, how, w)


@pytest.mark.parametrize("count", [2, 5])
def test_seeds_of_one_architecture(count):
    members = [member("resnet", seed) for seed in range(count)]
    result = ensemble(members, combine="softmax-mean", fuse=True)
    assert result.report.ok, result.report.format_text()
    proto = result.to_proto()
    names = [n.name for n in proto.graph.node]
    assert len(names) == len(set(names))  # prefixed: no clash
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    single = sum(n.op_type == "Conv" for n in members[0].graph.node)
    assert len(convs) == count * single  # every member is there, none merged (other weights)
    assert {n.name.split("/")[0] for n in convs} == {f"m{i + 1}" for i in range(count)}
    check_against_members(proto, members, "softmax-mean", [1.0] * count)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta[ENSEMBLE_KEY])["combine"] == "softmax-mean"


def test_identical_members_share_their_weights_and_nodes():
    a = member("vgg", 0)
    result = ensemble([a, a, a], combine="mean", verify_result=True)
    assert result.report.ok
    proto = result.to_proto()
    single = len(a.graph.initializer)
    # one member's weights and nodes: the other two were merged into it (dedupe, then cse)
    assert len(proto.graph.initializer) <= single + 4
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert len(convs) == sum(n.op_type == "Conv" for n in a.graph.node)
    assert any("identical node(s) merged" in d for d in result.report.details)
    check_against_members(proto, [a, a, a], "mean", [1, 1, 1])


def test_members_at_different_opsets_are_converted_and_verified():
    a, b = member("resnet", 0, opset=13), member("vgg", 1, opset=17)
    result = ensemble([a, b], combine="mean", fuse=True)
    assert result.report.ok, result.report.format_text()
    assert any("opset 13 -> 17" in d and "verified" in d for d in result.report.details)
    proto = result.to_proto()
    assert {o.domain: o.version for o in proto.opset_import}[""] == 17
    check_against_members(proto, [a, b], "mean", [1, 1])


def test_identical_embedded_preprocessing_is_hoisted_once():
    spec = PreprocessSpec(mean=[3.0], std=[5.0], scale=1.0)
    a, b = (
        optkit.io.to_proto(embed(member(arch, i), spec)) for i, arch in enumerate(("resnet", "vgg"))
    )
    result = ensemble([a, b], combine="mean", fuse=True)
    assert result.report.ok, result.report.format_text()
    assert any("hoisted once" in d for d in result.report.details), result.report.details
    model = result.model
    assert PreprocessSpec.from_json(model.metadata_props[METADATA_KEY]) == spec
    unfused = ensemble([a, b], combine="mean").model
    readers = {u.node.op_type for v in unfused.graph.inputs for u in v.uses()}
    assert len([u for v in unfused.graph.inputs for u in v.uses()]) == 1, readers
    check_against_members(result.to_proto(), [a, b], "mean", [1, 1])


def test_different_embedded_preprocessing_stays_per_member():
    a = optkit.io.to_proto(embed(member("resnet", 0), PreprocessSpec(mean=[3.0], std=[5.0])))
    b = optkit.io.to_proto(embed(member("vgg", 1), PreprocessSpec(mean=[8.0], std=[4.0])))
    result = ensemble([a, b], combine="softmax-mean", fuse=True)
    assert result.report.ok, result.report.format_text()
    assert any("kept per member" in d for d in result.report.details), result.report.details
    assert METADATA_KEY not in result.model.metadata_props
    check_against_members(result.to_proto(), [a, b], "softmax-mean", [1, 1])


def _scores(name: str, offsets: list[list[float]], opset: int = 17) -> onnx.ModelProto:
    """y = x + offsets (x: (N, 3)): a member whose scores, and so its vote, are known."""
    nodes = [helper.make_node("Add", ["x", "c"], ["y"])]
    inits = {"c": np.asarray(offsets, np.float32)}
    return make_model(nodes, [("x", F32, ["N", 3])], [("y", F32, ["N", 3])], inits, opset=opset)


def test_a_vote_is_the_majority_and_a_tie_goes_to_the_larger_mean():
    a = _scores("a", [[9, 0, 0], [0, 9, 0]])
    b = _scores("b", [[8, 0, 0], [0, 0, 5]])
    c = _scores("c", [[0, 7, 0], [0, 0, 10]])
    x = np.zeros((2, 3), np.float32)
    result = ensemble([a, b, c], combine="vote")
    assert result.report.ok, result.report.format_text()
    (got,) = run(result.to_proto(), {"x": x})
    np.testing.assert_array_equal(got, [0, 2])  # row 0: 2 votes for 0; row 1: 2 votes for 2
    result = ensemble([a, c], combine="vote")  # every row a tie 1:1; the mean decides
    (got,) = run(result.to_proto(), {"x": x})
    np.testing.assert_array_equal(got, [0, 2])  # means (4.5, 3.5, 0) and (0, 4.5, 5)
    result = ensemble([a, c], combine="vote", weights=[1, 2])  # c outvotes a
    (got,) = run(result.to_proto(), {"x": x})
    np.testing.assert_array_equal(got, [1, 2])


def test_verification_finds_a_wrong_combination(monkeypatch):
    """The reference is computed apart from the graph: a graph that combines wrongly fails."""
    a, b = member("resnet", 0), member("vgg", 1)
    real = optkit.combine.build

    def wrong(builder, values, combine, weights, like):
        return real(builder, values, combine, weights[::-1] * np.array([1.0, 1.01]), like)

    monkeypatch.setattr(optkit.combine, "build", wrong)
    result = ensemble([a, b], combine="mean", weights=[1, 3])
    assert result.report.state == "differs"
    with pytest.raises(optkit.InputError, match="not written"):
        result.save("/tmp/never-written.onnx")


# --- the command line ----------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    paths = {}
    for name, proto in {
        "a": member("resnet", 0),
        "b": member("vgg", 1),
        "old": member("mlp", 2, opset=13),
        "big": export_onnx(ImageMLP((1, 16, 16), (16,), 10), torch.randn(2, 1, 16, 16)),
        "x_named": export_onnx(
            ImageMLP((1, 8, 8), (16,), 10), torch.randn(2, 1, 8, 8), input_name="image"
        ),
        "raw": optkit.io.to_proto(embed(member("mlp", 3), PreprocessSpec(dtype="uint8"))),
        "y_named": export_onnx(
            ImageMLP((1, 8, 8), (16,), 10), torch.randn(2, 1, 8, 8), output_name="logits"
        ),
        "static": export_onnx(
            ImageMLP((1, 8, 8), (16,), 10), torch.randn(2, 1, 8, 8), dynamic_batch=False
        ),
        "five": export_onnx(ImageMLP((1, 8, 8), (16,), 5), torch.randn(2, 1, 8, 8)),
    }.items():
        path = tmp_path / f"{name}.onnx"
        onnx.save(proto, str(path))
        paths[name] = str(path)
    two = make_model(
        [
            helper.make_node("Identity", ["input"], ["output"]),
            helper.make_node("Relu", ["input"], ["extra"]),
        ],
        [("input", F32, ["batch", 1, 8, 8])],
        [("output", F32, ["batch", 1, 8, 8]), ("extra", F32, ["batch", 1, 8, 8])],
        {},
    )
    ints = make_model(
        [helper.make_node("ArgMax", ["input"], ["output"], axis=1, keepdims=0)],
        [("input", F32, ["batch", 10])],
        [("output", onnx.TensorProto.INT64, ["batch"])],
        {},
    )
    flat = make_model(
        [helper.make_node("Relu", ["input"], ["output"])],
        [("input", F32, ["batch", 10])],
        [("output", F32, ["batch", 10])],
        {},
    )
    ml = make_model(
        [helper.make_node("Relu", ["input"], ["output"])],
        [("input", F32, ["batch", 1, 8, 8])],
        [("output", F32, ["batch", 1, 8, 8])],
        {},
    )
    ml.opset_import.append(helper.make_opsetid("ai.onnx.ml", 3))
    ml2 = onnx.ModelProto()
    ml2.CopyFrom(ml)
    ml2.opset_import[-1].version = 2
    for name, proto in {"two": two, "ints": ints, "flat": flat, "ml3": ml, "ml2": ml2}.items():
        onnx.save(proto, str(tmp_path / f"{name}.onnx"))
        paths[name] = str(tmp_path / f"{name}.onnx")
    paths["dir"] = str(tmp_path)
    return paths


def test_the_command_writes_a_verified_ensemble(monkeypatch, capsys, files):
    out = Path(files["dir"]) / "e.onnx"
    code, stdout, err = run_main(
        monkeypatch,
        capsys,
        "ensemble",
        files["a"],
        files["b"],
        files["old"],
        "-o",
        str(out),
        "--combine",
        "softmax-mean",
        "--fuse",
        "--json",
    )
    assert code == 0, err
    report = json.loads(stdout)
    assert report["ok"] and report["verification"]["ok"] and report["fused_verification"]["ok"]
    assert report["fuse"]["batchnorm_after"] == 0
    assert any("opset 13 -> 17" in d for d in report["details"])
    proto = onnx.load(str(out))
    members = [onnx.load(files[k]) for k in ("a", "b", "old")]
    check_against_members(proto, members, "softmax-mean", [1, 1, 1])


BAD = {
    "one member": (["{a}"], "at least two members"),
    "input names": (["{a}", "{x_named}"], "member 2 ({x_named}): inputs image do not match"),
    "input dtypes": (["{a}", "{raw}"], "input 'input' is UINT8, member 1 ({a})'s is FLOAT"),
    "input shapes": (["{a}", "{big}"], "input 'input' has shape"),
    "static vs dynamic batch": (["{a}", "{static}"], "has shape 2x1x8x8"),
    "output names": (["{a}", "{y_named}"], "output 0 is 'logits'"),
    "output count": (["{ml3}", "{two}"], "2 output(s) (output, extra)"),
    "output shapes": (["{a}", "{five}"], "output 'output' has shape"),
    "integer outputs": (["{ints}", "{ints}"], "needs float outputs"),
    "vote on images": (["{ml3}", "{ml3}", "--combine", "vote"], "needs (rows, classes) outputs"),
    "weights count": (["{a}", "{b}", "--weights", "1,2,3"], "3 weight(s) for 2 members"),
    "negative weight": (["{a}", "{b}", "--weights", "1,-2"], "finite and >= 0"),
    "zero weights": (["{a}", "{b}", "--weights", "0,0"], "sum to 0"),
    "weights not numbers": (["{a}", "{b}", "--weights", "1,x"], "expected numbers"),
    "opset below a member": (["{a}", "{b}", "--opset", "13"], "is at opset 17"),
    "domain opsets differ": (["{ml3}", "{ml2}"], "domain 'ai.onnx.ml'"),
    "not a model": (["{a}", "{dir}/nothing.onnx"], "no such file"),
    "unknown combine": (["{a}", "{b}", "--combine", "median"], "median"),
    "output is a member": (["{a}", "{b}", "-o", "{b}"], "refusing to overwrite"),
    "output is a folder": (["{a}", "{b}", "-o", "{dir}"], "directory"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_member_sets_are_one_line_and_exit_2(monkeypatch, capsys, files, case):
    template, named = BAD[case]
    argv = [a.format(**files) for a in template]
    if "-o" not in argv:
        argv += ["-o", str(Path(files["dir"]) / "e.onnx")]
    before = {p: p.read_bytes() for p in Path(files["dir"]).iterdir()}
    code, _out, err = run_main(monkeypatch, capsys, "ensemble", *argv)
    assert code == 2, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert named.format(**files) in err, err
    assert {p: p.read_bytes() for p in Path(files["dir"]).iterdir()} == before  # nothing written


def test_a_difference_is_exit_1_and_nothing_written(monkeypatch, capsys, files):
    monkeypatch.setattr(optkit.combine, "reference", lambda outputs, how, w: outputs[0] + 1)
    out = Path(files["dir"]) / "e.onnx"
    code, _out, err = run_main(
        monkeypatch, capsys, "ensemble", files["a"], files["b"], "-o", str(out)
    )
    assert code == 1, err
    assert "nothing written" in err and not out.exists()
    code, _out, err = run_main(
        monkeypatch, capsys, "ensemble", files["a"], files["b"], "-o", str(out), "--force"
    )
    assert code == 1 and out.exists()


def test_weights_follow_the_members(monkeypatch, capsys, files):
    a, b = onnx.load(files["a"]), onnx.load(files["b"])
    result = ensemble([files["a"], files["b"]], combine="mean", weights=[3, 1])
    assert result.report.weights == [0.75, 0.25]
    check_against_members(result.to_proto(), [a, b], "mean", [3, 1])
    weights = [
        numpy_helper.to_array(i)
        for i in result.to_proto().graph.initializer
        if i.name.startswith("ensemble/weight")
    ]
    assert sorted(float(w) for w in weights) == [0.25, 0.75]


def test_optkit_fuse_on_a_written_ensemble_folds_every_member(monkeypatch, capsys, files):
    out = Path(files["dir"]) / "e.onnx"
    code, _, err = run_main(monkeypatch, capsys, "ensemble", files["a"], files["b"], "-o", str(out))
    assert code == 0, err
    assert sum(n.op_type == "BatchNormalization" for n in onnx.load(str(out)).graph.node) > 0
    fused = Path(files["dir"]) / "e.fused.onnx"
    code, stdout, err = run_main(monkeypatch, capsys, "fuse", str(out), "-o", str(fused))
    assert code == 0, err
    assert "-> 0" in stdout.splitlines()[0] and "equivalent" in stdout
    proto = onnx.load(str(fused))
    assert not [n for n in proto.graph.node if n.op_type == "BatchNormalization"]
    check_against_members(proto, [onnx.load(files["a"]), onnx.load(files["b"])], "mean", [1, 1])


def test_members_with_external_data(tmp_path):
    paths = []
    for i, arch in enumerate(("resnet", "vgg")):
        path = tmp_path / f"{arch}.onnx"
        optkit.save(optkit.load(member(arch, i)), path, external_data=f"{arch}.onnx.data")
        paths.append(path)
    result = ensemble(paths, combine="softmax-mean", fuse=True)
    assert result.report.ok, result.report.format_text()
    with pytest.raises(optkit.InputError, match="refusing to overwrite"):
        result.save(tmp_path / "vgg.onnx.data")
    result.save(tmp_path / "e.onnx")
    members = [member("resnet", 0), member("vgg", 1)]
    check_against_members(onnx.load(str(tmp_path / "e.onnx")), members, "softmax-mean", [1, 1])


def test_weights_near_the_float_maximum_and_of_the_wrong_type():
    """Weights summing past the float maximum were an internal error (exit 3) in fsum; a string of
    weights (the command line's form, given to the API) a ValueError."""
    a, b = _scores("a", [[1, 0, 0]]), _scores("b", [[0, 3, 0]])
    result = ensemble([a, b], weights=[1e308, 1e308])
    assert result.report.ok and result.report.weights == [0.5, 0.5]
    (got,) = run(result.to_proto(), {"x": np.zeros((2, 3), np.float32)})
    np.testing.assert_allclose(got, [[0.5, 1.5, 0]] * 2)
    for bad in ("1,2", [1, "x"], 3):
        with pytest.raises(optkit.InputError, match="expected a sequence of numbers"):
            ensemble([a, b], weights=bad)


def test_weights_overflowing_on_the_command_line_are_fine(monkeypatch, capsys, files):
    out = Path(files["dir"]) / "e.onnx"
    code, stdout, err = run_main(
        monkeypatch,
        capsys,
        "ensemble",
        files["a"],
        files["b"],
        "-o",
        str(out),
        "--weights",
        "1e308,1e308",
        "--json",
    )
    assert code == 0, err
    assert json.loads(stdout)["weights"] == [0.5, 0.5]


@pytest.mark.parametrize("members", [None, "a.onnx", b"x", 3])
def test_members_that_are_not_a_list_of_models_are_an_input_error(members):
    with pytest.raises(optkit.InputError, match="members: a list of models"):
        optkit.ensemble(members)
