"""The pipeline: order, fixed point, timing and hit counts, verification with rollback."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper

import optkit
from helpers import F32, bn_node, bn_params, make_model
from optkit.check.verify import verify_rewrite
from optkit.core.contract import Decline, Exactness, PassOptions, PassSpec, RewritePass, Site
from optkit.passes import DEFAULT_PASSES


class NegateOutput(RewritePass):
    """A deliberately wrong pass: puts a Neg in front of the graph output."""

    spec = PassSpec("negate", Exactness.REASSOCIATE, "broken on purpose")

    def run(self, model: ir.Model, options: PassOptions) -> list[Site]:
        graph = model.graph
        out = graph.outputs[0]
        producer = out.producer()
        neg = ir.Node("", "Neg", [out], name="evil")
        graph.insert_after(producer, neg)
        ir.convenience.replace_all_uses_with(out, neg.outputs[0], replace_graph_outputs=True)
        neg.outputs[0].name, out.name = out.name, f"{out.name}_pre"
        neg.outputs[0].type, neg.outputs[0].shape = out.type, out.shape
        return [Site("negate", "evil", True)]


def small_model(rng):
    inits = {"W": rng.standard_normal((4, 3, 3, 3)).astype(np.float32), **bn_params(rng, 4)}
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["h"]),
        bn_node("h", "b"),
        helper.make_node("Identity", ["b"], ["y"]),
    ]
    return make_model(nodes, [("x", F32, [1, 3, 6, 6])], [("y", F32, None)], inits)


def verifier(before, after, exactness):
    verdict = verify_rewrite(before, after, exactness)
    if isinstance(verdict, Decline) or verdict.ok:
        return None
    return Decline(verdict.summary())


def test_failing_pass_is_rolled_back_and_the_run_goes_on(rng):
    model = optkit.load(small_model(rng))
    passes = [NegateOutput(), *DEFAULT_PASSES]
    result, report = optkit.Pipeline(passes, verifier=verifier).run(model)
    negate = report.passes[0]
    assert negate.rolled_back and "NOT equivalent" in negate.rollback_reason
    assert not negate.modified
    assert [n.op_type for n in result.graph] == ["Conv"]  # the other passes still ran
    assert report.hits()["conv+bn"] == 1 and report.hits()["identity"] == 1


def test_without_verifier_a_wrong_pass_is_caught_by_the_final_check(rng):
    model = optkit.load(small_model(rng))
    original = optkit.load(small_model(rng))
    result, _ = optkit.Pipeline([NegateOutput()]).run(model)
    verdict = verify_rewrite(original, result, Exactness.REASSOCIATE)
    assert not verdict.ok


def test_fixed_point_stops_when_nothing_changes_and_times_each_pass(rng):
    model = optkit.load(small_model(rng))
    _, report = optkit.Pipeline(DEFAULT_PASSES, fixed_point=True, max_iterations=5).run(model)
    assert report.iterations == 2  # one that changes, one that confirms nothing more does
    # A pass reruns only if the model changed since it last ran: `unused` made the last change, so
    # it and the passes after it are not rerun.
    assert {p.name: p.iterations for p in report.passes} == {
        "identity": 2,
        "dropout": 2,
        "constants": 2,
        "shapes": 2,
        "simplify": 2,
        "activations": 2,
        "norms": 2,
        "batchnorm": 2,
        "affine": 2,
        "permute": 2,
        "unused": 1,
        "dedupe": 1,
        "cse": 1,
        "toposort": 1,
    }
    assert all(p.seconds >= 0 for p in report.passes)
    assert report.exactness() is Exactness.REASSOCIATE


def test_only_bitwise_passes_give_a_bitwise_verdict(rng):
    result = optkit.fuse(small_model(rng), passes=["identity"])
    assert result.report.verdict is not None
    assert result.report.verdict.exactness is Exactness.BITWISE
    assert result.report.verdict.max_abs_error == 0.0


def test_fuse_never_modifies_its_input(rng):
    proto = small_model(rng)
    before = proto.SerializeToString()
    model = optkit.load(proto)
    optkit.fuse(proto)
    optkit.fuse(model)
    assert proto.SerializeToString() == before
    assert [n.op_type for n in model.graph] == ["Conv", "BatchNormalization", "Identity"]


def test_output_is_reproducible(rng):
    proto = small_model(rng)
    first = optkit.fuse(proto).to_proto().SerializeToString()
    second = optkit.fuse(proto).to_proto().SerializeToString()
    assert first == second


def test_input_optkit_cannot_make_leaves_the_result_unverified_not_an_error(rng):
    """The model is fine; only verification cannot make a sequence input: say so, do not fail."""
    model = small_model(rng)
    seq_type = helper.make_sequence_type_proto(helper.make_tensor_type_proto(F32, [2]))
    model.graph.input.append(helper.make_value_info("seq", seq_type))
    model.graph.node.append(helper.make_node("SequenceLength", ["seq"], ["n"]))
    model.graph.output.append(helper.make_tensor_value_info("n", onnx.TensorProto.INT64, []))
    result = optkit.fuse(model)
    assert result.report.verdict is None
    assert "'seq' is not a tensor" in result.report.unverified_reason
    assert result.report.batchnorm_after == 0


def test_fuse_finds_the_pass_whose_rewrite_fails_the_final_check_and_keeps_the_rest(
    rng, monkeypatch, capsys, tmp_path
):
    """The final check failing used to refuse the whole run; now the wrong pass is found by
    verifying pass by pass, rolled back, named as an optkit bug, and the rest is written."""
    import optkit.fusion

    class NegateOnce(RewritePass):
        """Negates the Conv's weight, once: a wrong 'fold'."""

        spec = PassSpec("negate", Exactness.REASSOCIATE, "broken on purpose")

        def run(self, model: ir.Model, options: PassOptions) -> list[Site]:
            conv = next(n for n in model.graph if n.op_type == "Conv")
            weight = conv.inputs[1]
            if conv.name == "negated" or weight is None or weight.const_value is None:
                return []
            weight.const_value = ir.Tensor(-weight.const_value.numpy(), name=weight.name)
            conv.name = "negated"
            return [Site("negate", "negated", True)]

    monkeypatch.setattr(
        optkit.fusion,
        "select_passes",
        lambda passes=None, skip=(): [NegateOnce(), *DEFAULT_PASSES],
    )
    original = small_model(rng)
    result = optkit.fuse(original)
    report = result.report
    assert report.ok and report.faulty_passes == ["negate"]
    assert "NOT equivalent" in report.recovered_from
    assert [n.op_type for n in result.model.graph] == ["Conv"]
    assert "rolled back negate: an optkit bug" in report.format_text()
    assert optkit.verify(original, result.model).ok
    path = tmp_path / "m.onnx"
    onnx.save(original, str(path))
    from helpers import run_main

    code, out, err = run_main(
        monkeypatch, capsys, "fuse", str(path), "-o", str(tmp_path / "o.onnx")
    )
    assert code == 0 and "an optkit bug" in out and (tmp_path / "o.onnx").exists(), out + err
