"""Verification never passes what it did not check, and says why it could not (issue 12, item 3).

Empty inputs and outputs are "nothing to compare"; a --shape that contradicts a static dim is exit 2
in every command; an original that cannot be run or is not deterministic leaves `fuse` writing
nothing (exit 2) unless --no-verify; `bool(verdict)` is `verdict.ok`; `assert_equivalent` raises
the table; ONNXProgram and bytes are models; a candidate with embedded preprocessing is fed raw.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper, numpy_helper

import optkit
from helpers import F32, bn_node, bn_params, make_model, run_main
from optkit.check.compare import Verdict, compare_outputs
from optkit.check.determinism import nondeterministic_nodes
from optkit.check.inputs import check_shapes
from optkit.check.verify import Nondeterministic, Unverifiable, verify_rewrite
from optkit.cli.common import default_output
from optkit.core.contract import Decline, Exactness
from optkit.preprocessing import METADATA_KEY, PreprocessSpec
from optkit.testing import assert_equivalent


def conv_bn(rng, batch="N") -> onnx.ModelProto:
    """Conv -> BN -> Relu on an image input [batch, 3, 8, 8] (static channels and size)."""
    inits = {"W": rng.standard_normal((4, 3, 3, 3)).astype(np.float32), **bn_params(rng, 4)}
    nodes = [
        helper.make_node("Conv", ["input", "W"], ["h"], name="conv", pads=[1, 1, 1, 1]),
        bn_node("h", "y"),
        helper.make_node("Relu", ["y"], ["z"], name="relu"),
    ]
    return make_model(nodes, [("input", F32, [batch, 3, 8, 8])], [("z", F32, None)], inits)


@pytest.fixture
def model_file(tmp_path, rng):
    path = tmp_path / "net.onnx"
    onnx.save(conv_bn(rng), str(path))
    return path


def with_dropout(rng, training: bool) -> onnx.ModelProto:
    model = conv_bn(rng)
    model.graph.node[-1].output[0] = "r"
    model.graph.node.append(
        helper.make_node("Dropout", ["r", "ratio", "mode"], ["z"], name="dropout_3")
    )
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(0.5, np.float32), "ratio"),
            numpy_helper.from_array(np.array(training), "mode"),
        ]
    )
    return model


def with_random_noise(rng) -> onnx.ModelProto:
    """z = relu(bn(conv(x))) + RandomUniformLike(...): unseeded noise on the output."""
    model = conv_bn(rng)
    model.graph.node[-1].output[0] = "r"
    model.graph.node.extend(
        [
            helper.make_node("RandomUniformLike", ["r"], ["noise"], name="noise"),
            helper.make_node("Add", ["r", "noise"], ["z"], name="add_noise"),
        ]
    )
    return model


# --- 1. nothing to compare ----------------------------------------------------------------------


def test_fuse_refuses_an_empty_batch(model_file, monkeypatch, capsys):
    code, out, err = run_main(
        monkeypatch, capsys, "fuse", str(model_file), "--shape", "input=0x3x8x8"
    )
    assert code == 2, out + err
    assert "nothing to compare" in err and "input=0x3x8x8" in err
    assert not default_output(model_file).exists()


def test_fuse_with_no_verify_ignores_the_verification_shape(model_file, monkeypatch, capsys):
    args = ("fuse", str(model_file), "--shape", "input=0x3x8x8", "--no-verify")
    code, out, err = run_main(monkeypatch, capsys, *args)
    assert code == 0, err
    assert "verification: NOT RUN (disabled by --no-verify)" in out


def test_verify_refuses_an_empty_batch_and_empty_data(model_file, tmp_path, monkeypatch, capsys):
    args = ("verify", str(model_file), str(model_file))
    code, _, err = run_main(monkeypatch, capsys, *args, "--shape", "input=0x3x8x8")
    assert code == 2 and "nothing to compare" in err
    np.save(tmp_path / "empty.npy", np.zeros((0, 3, 8, 8), np.float32))  # one sample, batch 0
    code, _, err = run_main(monkeypatch, capsys, *args, "--data", str(tmp_path / "empty.npy"))
    assert code == 2 and "nothing to compare" in err and "'input' 0x3x8x8" in err
    np.save(tmp_path / "none.npy", np.zeros((0, 1, 3, 8, 8), np.float32))  # no samples at all
    code, _, err = run_main(monkeypatch, capsys, *args, "--data", str(tmp_path / "none.npy"))
    assert code == 2 and "nothing to compare" in err


def test_library_verify_never_passes_on_nothing(rng):
    model = conv_bn(rng)
    with pytest.raises(Unverifiable, match="nothing to compare"):
        optkit.verify(model, model, shapes={"input": (0, 3, 8, 8)})
    with pytest.raises(Unverifiable, match="nothing to compare"):
        optkit.verify(model, model, {"input": np.zeros((0, 3, 8, 8), np.float32)})
    with pytest.raises(Unverifiable, match="no input samples"):
        optkit.verify(model, model, [])


def test_outputs_empty_in_both_models_are_nothing_to_compare(rng):
    empty, full = np.zeros((2, 0), np.float32), np.ones((2, 3), np.float32)
    verdict = compare_outputs({"e": empty}, {"e": empty.copy()}, Exactness.BITWISE)
    assert not verdict.ok and not verdict and "nothing to compare" in verdict.problem
    assert "nothing to compare" in verdict.summary() and "NO: nothing" in verdict.format_table()
    both = compare_outputs({"e": empty, "f": full}, {"e": empty, "f": full}, Exactness.BITWISE)
    assert both.ok and "yes (empty in both)" in both.format_table()
    # an empty reference against a non-empty candidate is a difference, not "nothing"
    differ = compare_outputs({"e": empty}, {"e": full}, Exactness.BITWISE)
    assert not differ.ok and not differ.problem and "shape" in differ.outputs[0].problem


def test_a_model_whose_only_output_is_empty_cannot_be_verified(rng):
    nodes = [helper.make_node("Slice", ["x", "s", "e", "a"], ["y"], name="slice")]
    inits = {n: np.array([v], np.int64) for n, v in (("s", 0), ("e", 0), ("a", 1))}
    model = make_model(nodes, [("x", F32, ["N", 4])], [("y", F32, None)], inits)
    with pytest.raises(Unverifiable, match="every output is empty"):
        optkit.verify(model, model)
    result = optkit.fuse(model)
    assert result.report.state == "unverified" and not result.report.ok
    assert "every output is empty" in result.report.unverified_reason


def test_a_static_zero_dim_in_the_model_is_unverified_not_equivalent():
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    model = make_model(nodes, [("x", F32, [0, 4])], [("y", F32, [0, 4])], {})
    report = optkit.fuse(model).report
    assert not report.ok and not report.verified and report.state == "unverified"
    assert "nothing to compare" in report.unverified_reason
    unverified = verify_rewrite(optkit.load(model), optkit.load(model), Exactness.BITWISE)
    assert isinstance(unverified, Decline) and "nothing to compare" in unverified.reason


# --- 2. a --shape that contradicts a static dim --------------------------------------------------


def test_check_shapes_refuses_a_contradicting_static_dim(rng):
    model = optkit.load(conv_bn(rng))
    check_shapes(model, {"input": (5, 3, 8, 8)})  # the batch is dynamic: any value
    with pytest.raises(optkit.InputError, match="declares dim 1 = 3 \\(static\\), not 4"):
        check_shapes(model, {"input": (1, 4, 8, 8)})
    with pytest.raises(optkit.InputError, match="contradicts"):
        optkit.fuse(conv_bn(rng), shapes={"input": (1, 3, 9, 8)})


@pytest.mark.parametrize("command", ["fuse", "verify", "bench", "swap"])
def test_a_contradicting_shape_is_exit_2_in_every_command(
    command, model_file, tmp_path, monkeypatch, capsys
):
    from optkit.cli.activations import swap_command

    shape = ("--shape", "input=1x4x8x8")
    args = {
        "fuse": ("fuse", str(model_file), *shape),
        "verify": ("verify", str(model_file), str(model_file), *shape),
        "bench": ("bench", str(model_file), "--runs", "1", "--warmup", "0", *shape),
        "swap": ("swap", str(model_file), "--map", "Relu=LeakyRelu:0.01", "--allow-lossy"),
    }[command]
    if command == "swap":
        if any("--shape" in p.opts for p in swap_command.params):
            args = (*args, *shape)
        else:  # swap takes no --shape: its inputs come from --data, checked the same way
            np.save(tmp_path / "bad.npy", np.zeros((1, 4, 8, 8), np.float32))
            args = (*args, "--data", str(tmp_path / "bad.npy"))
    code, out, err = run_main(monkeypatch, capsys, *args)
    assert code == 2, out + err
    assert "dim 1 = 3" in err or "needs dim 1 = 3" in err
    assert not default_output(model_file).exists()
    assert not model_file.with_name("net.swapped.onnx").exists()


# --- 3. verification asked for and unable to run --------------------------------------------------


def unsynthesizable(rng) -> onnx.ModelProto:
    """A fine model with a sequence input optkit cannot make up."""
    model = conv_bn(rng)
    seq_type = helper.make_sequence_type_proto(helper.make_tensor_type_proto(F32, [2]))
    model.graph.input.append(helper.make_value_info("seq", seq_type))
    model.graph.node.append(helper.make_node("SequenceLength", ["seq"], ["n"]))
    model.graph.output.append(helper.make_tensor_value_info("n", onnx.TensorProto.INT64, []))
    return model


def unrunnable(rng) -> onnx.ModelProto:
    """Passes the checker; ONNX Runtime has no kernel for the custom op."""
    model = conv_bn(rng)
    model.graph.node[-1].output[0] = "r"
    model.graph.node.append(helper.make_node("Mystery", ["r"], ["z"], domain="com.example"))
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    return model


@pytest.mark.parametrize(
    ("build", "reason"),
    [(unsynthesizable, "'seq' is not a tensor"), (unrunnable, "ONNX Runtime cannot run")],
)
def test_fuse_writes_nothing_when_verification_cannot_run(
    build, reason, tmp_path, rng, monkeypatch, capsys
):
    path = tmp_path / "net.onnx"
    onnx.save(build(rng), str(path))
    code, out, err = run_main(monkeypatch, capsys, "fuse", str(path))
    assert code == 2, out + err
    assert reason in err and "use --no-verify to write it unverified" in err
    assert "verification could not run" in err and "nothing written" in err
    assert not default_output(path).exists()
    code, out, err = run_main(monkeypatch, capsys, "fuse", str(path), "--no-verify")
    assert code == 0, err
    assert "verification: NOT RUN (disabled by --no-verify)" in out
    assert default_output(path).exists()
    code, out, _ = run_main(monkeypatch, capsys, "fuse", str(path), "-o", str(tmp_path / "j.onnx"),
                            "--json")  # fmt: skip
    report = json.loads(out)
    assert code == 2 and report["ok"] is False and report["verification_state"] == "unverified"
    assert not (tmp_path / "j.onnx").exists()


def test_fuse_report_states(rng):
    unverified = optkit.fuse(unsynthesizable(rng)).report
    assert (unverified.ok, unverified.verified, unverified.state) == (False, False, "unverified")
    assert unverified.to_dict()["ok"] is False
    disabled = optkit.fuse(unsynthesizable(rng), verify_result=False).report
    assert (disabled.ok, disabled.verified, disabled.state) == (True, False, "disabled")
    verified = optkit.fuse(conv_bn(rng)).report
    assert (verified.ok, verified.verified, verified.state) == (True, True, "equivalent")
    verified.verdict = Verdict(False, Exactness.BITWISE)  # a failed verdict is still reported
    assert (verified.ok, verified.state) == (False, "differs")
    assert verified.to_dict()["verification"]["ok"] is False


# --- 4. an original that is not deterministic ------------------------------------------------------


def test_the_static_scan_names_random_ops_and_training_dropout(rng):
    assert nondeterministic_nodes(optkit.load(with_dropout(rng, training=True))) == [
        "node 'dropout_3' Dropout in training mode"
    ]
    assert nondeterministic_nodes(optkit.load(with_dropout(rng, training=False))) == []
    assert nondeterministic_nodes(optkit.load(with_random_noise(rng))) == [
        "node 'noise' RandomUniformLike"
    ]


@pytest.mark.parametrize(
    ("build", "node"),
    [
        (lambda rng: with_dropout(rng, True), "node 'dropout_3' Dropout in training mode"),
        (with_random_noise, "node 'noise' RandomUniformLike"),
    ],
)
def test_verify_of_a_nondeterministic_model_against_itself_is_exit_2(
    build, node, tmp_path, rng, monkeypatch, capsys
):
    path = tmp_path / "train.onnx"
    onnx.save(build(rng), str(path))
    code, out, err = run_main(monkeypatch, capsys, "verify", str(path), str(path))
    assert code == 2, out + err
    assert f"{path}: the reference is not deterministic ({node})" in err
    assert "two runs on the same inputs differ; nothing can be verified" in err
    with pytest.raises(Nondeterministic, match="not deterministic"):
        optkit.verify(str(path), str(path))
    code, out, err = run_main(monkeypatch, capsys, "fuse", str(path))
    assert code == 2, out + err
    assert f"the original is not deterministic ({node})" in err and "--no-verify" in err
    assert not default_output(path).exists()
    model = optkit.load(path)
    reason = verify_rewrite(model, model.clone(), Exactness.BITWISE)
    assert isinstance(reason, Decline) and "not deterministic" in reason.reason


def test_inference_dropout_and_dead_random_ops_still_verify(rng):
    model = with_dropout(rng, training=False)
    assert optkit.verify(model, model).ok
    dead = conv_bn(rng)  # noise computed, never used: two runs agree, so verification goes on
    dead.graph.node.append(helper.make_node("RandomNormalLike", ["z"], ["unused"], name="n"))
    assert nondeterministic_nodes(optkit.load(dead)) == ["node 'n' RandomNormalLike"]
    assert optkit.verify(dead, dead).ok


# --- 5. bool(verdict) and 6. assert_equivalent -------------------------------------------------


def broken(rng) -> onnx.ModelProto:
    """conv_bn with its Relu replaced by a Sigmoid: a different model with the same signature."""
    model = conv_bn(rng)
    model.graph.node[-1].op_type = "Sigmoid"
    return model


def test_a_verdict_is_truthy_only_when_ok():
    reference, bad = conv_bn(np.random.default_rng(0)), broken(np.random.default_rng(0))
    assert optkit.verify(reference, reference)
    verdict = optkit.verify(reference, bad)
    assert not verdict and bool(verdict) is verdict.ok is False
    with pytest.raises(AssertionError):
        assert optkit.verify(reference, bad)


def test_assert_equivalent_raises_the_verify_table():
    reference, bad = conv_bn(np.random.default_rng(0)), broken(np.random.default_rng(0))
    verdict = assert_equivalent(reference, optkit.fuse(reference).model, samples=2)
    assert verdict.ok and verdict.samples == 2
    with pytest.raises(AssertionError) as failure:
        assert_equivalent(reference, bad, exactness="bitwise")
    message = str(failure.value)
    assert message == optkit.verify(reference, bad, exactness=Exactness.BITWISE).format_table(
        "<model>", "<model>"
    )
    assert "NOT equivalent" in message and "NO: " in message
    assert "output" in message and "\n  z " in message  # the header and the row of output 'z'


def test_the_cli_prints_the_same_table(model_file, tmp_path, monkeypatch, capsys):
    other = tmp_path / "other.onnx"
    onnx.save(broken(np.random.default_rng(1234)), str(other))
    code, out, _ = run_main(monkeypatch, capsys, "verify", str(model_file), str(other))
    assert code == 1
    table = optkit.verify(str(model_file), str(other)).format_table(str(model_file), str(other))
    assert out.strip() == table


# --- 7. ONNXProgram and bytes -------------------------------------------------------------------


def test_bytes_are_a_model(rng):
    proto = conv_bn(rng)
    data = proto.SerializeToString()
    assert [n.op_type for n in optkit.load(data).graph] == ["Conv", "BatchNormalization", "Relu"]
    result = optkit.fuse(data)
    assert result.report.ok and result.report.source == "<bytes>"
    assert optkit.verify(data, result.to_proto().SerializeToString()).ok
    for bad in (b"", b"\x00\x01not a model at all\xff", b"\x08\x07"):
        with pytest.raises(optkit.InputError, match="<bytes>: not a readable ONNX model"):
            optkit.load(bad)
    with pytest.raises(optkit.InputError, match="not a readable ONNX model"):
        optkit.fuse(b"garbage")


class ONNXProgram:
    """Stand-in for torch.onnx.ONNXProgram: the attributes optkit reads."""

    def __init__(self, proto: onnx.ModelProto) -> None:
        self.model = ir.from_proto(proto)

    @property
    def model_proto(self) -> onnx.ModelProto:
        return ir.to_proto(self.model)


def test_an_onnx_program_stand_in_is_a_model(rng):
    program = ONNXProgram(conv_bn(rng))
    before = ir.to_proto(program.model).SerializeToString()
    result = optkit.fuse(program)
    assert result.report.ok and result.report.source == "<ONNXProgram>"
    assert optkit.verify(program, result.model).ok
    assert_equivalent(program, result.model)
    assert ir.to_proto(program.model).SerializeToString() == before  # never modified


def test_a_real_torch_dynamo_export_is_a_model():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU()
    ).eval()
    try:
        program = torch.onnx.export(module, (torch.randn(1, 3, 8, 8),), dynamo=True)
    except Exception as exc:  # an exporter that does not work here is not optkit's to test
        pytest.skip(f"torch.onnx.export(dynamo=True) fails here: {exc}")
    assert type(program).__name__ == "ONNXProgram"
    result = optkit.fuse(program)
    assert result.report.ok, result.report.format_text()
    assert optkit.verify(program, result.model).ok
    assert isinstance(optkit.load(program), ir.Model)


# --- 8. verify across embedded preprocessing --------------------------------------------------------


@pytest.fixture
def embedded_files(tmp_path, model_file, monkeypatch, capsys):
    """net.onnx and net.raw.onnx, made by `optkit preprocess` (uint8 NHWC BGR in, /255, mean/std)."""
    code, _, err = run_main(
        monkeypatch,
        capsys,
        "preprocess",
        str(model_file),
        "--dtype", "uint8", "--layout", "NHWC", "--channel-order", "bgr",
        "--scale", str(1 / 255), "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225",
    )  # fmt: skip
    assert code == 0, err
    embedded = model_file.with_name("net.raw.onnx")
    assert METADATA_KEY in {p.key for p in onnx.load(str(embedded)).metadata_props}
    return model_file, embedded


def test_verify_feeds_raw_inputs_to_an_embedded_candidate(embedded_files, monkeypatch, capsys):
    original, embedded = embedded_files
    code, out, err = run_main(monkeypatch, capsys, "verify", str(original), str(embedded))
    assert code == 0, out + err
    assert (
        "candidate takes raw input (embedded preprocessing): reference fed apply(spec, raw)" in out
    )
    code, out, _ = run_main(monkeypatch, capsys, "verify", str(original), str(embedded), "--json")
    assert code == 0 and "candidate takes raw input" in json.loads(out)["notes"][0]
    code, out, err = run_main(
        monkeypatch, capsys, "verify", str(original), str(embedded), "--bisect"
    )
    assert code == 0 and "no divergence" in out, out + err


def test_verify_across_embedded_preprocessing_with_raw_data_and_after_fuse(
    embedded_files, tmp_path, monkeypatch, capsys
):
    original, embedded = embedded_files
    raw = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)  # NHWC
    np.save(tmp_path / "raw.npy", raw)
    args = ("verify", str(original), str(embedded), "--data", str(tmp_path / "raw.npy"))
    code, out, err = run_main(monkeypatch, capsys, *args)
    assert code == 0, out + err
    fused = tmp_path / "fused.raw.onnx"
    code, _, err = run_main(monkeypatch, capsys, "fuse", str(embedded), "-o", str(fused))
    assert code == 0, err
    code, out, err = run_main(monkeypatch, capsys, "verify", str(original), str(fused))
    assert code == 0 and "embedded preprocessing" in out, out + err
    # the reverse direction: the reference takes raw input
    verdict = optkit.verify(str(embedded), str(original))
    assert verdict.ok and verdict.notes[0].startswith("reference takes raw input")


def test_the_adapter_uses_the_recorded_spec(embedded_files, tmp_path, monkeypatch, capsys):
    """A candidate whose graph computes other preprocessing than its metadata claims differs."""
    original, embedded = embedded_files
    model = onnx.load(str(embedded))
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            spec = json.loads(prop.value)
            spec["mean"] = [0.0, 0.0, 0.0]
            prop.value = PreprocessSpec(**spec).to_json()
    lying = tmp_path / "lying.onnx"
    onnx.save(model, str(lying))
    code, out, _ = run_main(monkeypatch, capsys, "verify", str(original), str(lying))
    assert code == 1 and "NOT equivalent" in out and "embedded preprocessing" in out
