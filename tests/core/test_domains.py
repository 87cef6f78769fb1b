"""ONNX's default operator set has two spellings, '' and 'ai.onnx': every pass treats both alike.

ONNX Runtime runs nodes of domain 'ai.onnx'; onnx's checker (1.23) refuses them, so `fuse` never
sees them, and these tests run the passes on the model directly (`Pipeline`).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper

from helpers import F32, bn_node, bn_params, make_model, op_types, ort_outputs
from optkit.core.graph import DEFAULT_DOMAINS, count_ops, is_default_domain, opset_version
from optkit.core.pipeline import Pipeline
from optkit.passes import ALL_PASSES, DEFAULT_PASSES


def _conv_bn_model(domain: str, rng: np.random.Generator) -> onnx.ModelProto:
    """x -> Conv -> BatchNormalization -> Identity -> Dropout -> Relu -> y, the first four nodes
    in `domain`, which the model imports (the same parameters for every domain: `rng` is seeded
    alike)."""
    weights = {
        "w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "b": rng.standard_normal(4).astype(np.float32),
        **bn_params(rng, 4),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        bn_node("c", "n"),
        helper.make_node("Identity", ["n"], ["i"], name="identity"),
        helper.make_node("Dropout", ["i"], ["d"], name="dropout"),
        helper.make_node("Relu", ["d"], ["y"], name="relu"),
    ]
    for node in nodes[:4]:
        node.domain = domain
    model = make_model(nodes, [("x", F32, [1, 3, 8, 8])], [("y", F32, [1, 4, 8, 8])], weights)
    if domain:
        model.opset_import.append(helper.make_opsetid(domain, 17))
    return model


def _rewritten(domain: str, passes: tuple[str, ...] | None) -> ir.Model:
    """The model of `_conv_bn_model(domain)` after the named passes (None: all of `fuse`'s, to a
    fixed point)."""
    model = ir.from_proto(_conv_bn_model(domain, np.random.default_rng(0)))
    chosen = DEFAULT_PASSES if passes is None else [ALL_PASSES[name] for name in passes]
    result, _ = Pipeline(chosen, fixed_point=passes is None).run(model)
    return result


def _feeds() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(7).standard_normal((1, 3, 8, 8)).astype(np.float32)}


def test_both_spellings_and_nothing_else_are_the_default_domain():
    assert DEFAULT_DOMAINS == {"", "ai.onnx"}
    assert is_default_domain("") and is_default_domain("ai.onnx")
    assert not is_default_domain("ai.onnx.ml") and not is_default_domain("com.microsoft")


def test_ort_runs_both_spellings_alike():
    spelled = ort_outputs(_conv_bn_model("ai.onnx", np.random.default_rng(0)), _feeds())
    plain = ort_outputs(_conv_bn_model("", np.random.default_rng(0)), _feeds())
    assert all(np.array_equal(a, b) for a, b in zip(spelled, plain, strict=True))


def test_counting_and_opsets_read_ai_onnx_as_the_default_domain():
    model = ir.from_proto(_conv_bn_model("ai.onnx", np.random.default_rng(0)))
    assert count_ops(model, "BatchNormalization") == 1
    assert count_ops(model, "BatchNormalization", "ai.onnx") == 1
    assert count_ops(model, "BatchNormalization", "com.microsoft") == 0
    assert opset_version(model, "ai.onnx") == opset_version(model) == 17


@pytest.mark.parametrize(
    ("passes", "left"),
    [
        (("batchnorm",), ["Conv", "Identity", "Dropout", "Relu"]),
        (("identity",), ["Conv", "BatchNormalization", "Dropout", "Relu"]),
        (("dropout",), ["Conv", "BatchNormalization", "Identity", "Relu"]),
    ],
)
def test_each_pass_rewrites_ai_onnx_nodes_as_it_does_default_ones(passes, left):
    reference = ort_outputs(_conv_bn_model("ai.onnx", np.random.default_rng(0)), _feeds())
    for domain in ("ai.onnx", ""):
        result = _rewritten(domain, passes)
        assert op_types(result) == left, domain
        np.testing.assert_allclose(
            ort_outputs(result, _feeds())[0], reference[0], rtol=1e-5, atol=1e-5
        )


def test_the_fuse_pipeline_gives_the_same_model_for_both_spellings():
    spelled, plain = _rewritten("ai.onnx", None), _rewritten("", None)
    assert op_types(spelled) == op_types(plain) == ["Conv", "Relu"]
    got, want = ort_outputs(spelled, _feeds()), ort_outputs(plain, _feeds())
    assert np.array_equal(got[0], want[0])
    reference = ort_outputs(_conv_bn_model("ai.onnx", np.random.default_rng(0)), _feeds())
    np.testing.assert_allclose(got[0], reference[0], rtol=1e-5, atol=1e-5)
