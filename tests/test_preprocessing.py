"""Preprocessing into the graph: spec, fitting, embedding, folding into the first layer, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from onnx import helper

import optkit
from helpers import F32, make_model, ort_outputs, run_main
from optkit.embedding import embed
from optkit.models import ZOO, randomize_batchnorm
from optkit.preprocessing import PreprocessSpec, apply, fit
from optkit.torch import export_onnx

PLUMBING = PreprocessSpec(dtype="uint8", layout="NHWC", channel_order=[2, 1, 0], scale=1 / 255)
VARIANTS = ["mean-image", "per-channel-mean", "per-channel-mean-std"]  # AlexNet, VGG, ResNet


@pytest.fixture(scope="module", params=["resnet", "image-mlp"])
def exported(request):
    """A CNN with padding in its first conv, and a fully connected model on images."""
    factory, shape = ZOO[request.param]
    torch.manual_seed(0)
    model = randomize_batchnorm(factory()).eval()
    proto = export_onnx(model, torch.randn(*shape))
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, (shape[0], *shape[2:], shape[1]), dtype=np.uint8)  # NHWC, "BGR"
    return request.param, proto, raw


@pytest.fixture(scope="module")
def resnet_proto():
    torch.manual_seed(0)
    return export_onnx(randomize_batchnorm(ZOO["resnet"][0]()).eval(), torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize("mode", VARIANTS)
def test_lecture_variants_embed_exactly_and_fold_away(exported, mode):
    name, proto, raw = exported
    spec = fit([raw[:2], raw[2:]], mode, PLUMBING)
    want = ort_outputs(proto, {"input": apply(spec, raw)})[0]
    embedded = embed(proto, spec)
    np.testing.assert_array_equal(ort_outputs(embedded, {"input": raw})[0], want)  # bit for bit
    folded = optkit.fuse(embedded, shapes={"input": raw.shape}).model
    got = ort_outputs(folded, {"input": raw})[0]
    assert np.max(np.abs(got - want)) <= 1e-6 + 1e-4 * np.max(np.abs(want))
    ops = [n.op_type for n in folded.graph]
    first_layer = next(i for i, op in enumerate(ops) if op in ("Conv", "Gemm"))
    assert not {"Gather", "Mul", "Sub", "Div"} & set(ops[: first_layer + 1])
    if name == "resnet":  # a padded Conv: the shift stays on the 3-channel input, the cheaper side
        assert ops[: first_layer + 2] == ["Cast", "Transpose", "Add", "Conv", "Relu"]
    else:
        assert ops[:first_layer] == ["Cast", "Transpose", "Flatten"]


def test_embedded_model_records_the_spec(exported):
    _, proto, _ = exported
    spec = PreprocessSpec(dtype="uint8", layout="NHWC", scale=0.5, mean=0.25, std=2.0)
    model = embed(proto, spec)
    assert PreprocessSpec.from_json(model.metadata_props["optkit.preprocessing"]) == spec
    assert model.graph.inputs[0].name == "input"
    assert model.graph.inputs[0].type.dtype.name == "UINT8"


def test_fitted_specs_match_numpy_by_hand():
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (12, 5, 6, 4), dtype=np.uint8)  # NHWC, 4 channels
    base = PreprocessSpec(dtype="uint8", layout="NHWC", channel_order=[3, 2, 1, 0], scale=0.5)
    x = raw.astype(np.float64).transpose(0, 3, 1, 2)[:, [3, 2, 1, 0]] * 0.5
    chunks = [raw[:5], raw[5:]]
    image = fit(chunks, "mean-image", base).mean_array()
    np.testing.assert_allclose(image, x.mean(axis=0), rtol=1e-6)
    per_channel = fit(chunks, "per-channel-mean-std", base)
    np.testing.assert_allclose(per_channel.mean_array(), x.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(per_channel.std_array(), x.std(axis=(0, 2, 3)), rtol=1e-5)
    standardized = apply(per_channel, raw)
    np.testing.assert_allclose(standardized.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(standardized.std(axis=(0, 2, 3)), 1, atol=1e-5)


def test_whitening_decorrelates_flat_data():
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((400, 6)) @ rng.standard_normal((6, 6))).astype(np.float32)
    spec = fit([data[:150], data[150:]], "whiten", PreprocessSpec(layout="flat"))
    white = apply(spec, data).astype(np.float64)
    np.testing.assert_allclose(np.cov(white.T, bias=True), np.eye(6), atol=1e-3)
    pca = fit([data], "pca", PreprocessSpec(layout="flat"), components=2)
    assert pca.projection_array().shape == (6, 2)
    variances = np.var(apply(pca, data), axis=0)
    assert (
        variances[0] >= variances[1]
        and variances[1] >= np.sort(np.linalg.eigvalsh(np.cov(data.T)))[-2] * 0.99
    )


def test_pca_embeds_into_a_flat_model(rng):
    nodes = [helper.make_node("Gemm", ["x", "W"], ["y"])]
    model = make_model(
        nodes,
        [("x", F32, ["N", 3])],
        [("y", F32, ["N", 2])],
        {"W": rng.standard_normal((3, 2)).astype(np.float32)},
    )
    data = rng.standard_normal((50, 5)).astype(np.float32)
    spec = fit([data], "pca", PreprocessSpec(layout="flat"), components=3)
    embedded = embed(model, spec)
    want = ort_outputs(model, {"x": apply(spec, data)})[0]
    np.testing.assert_array_equal(ort_outputs(embedded, {"x": data})[0], want)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"dtype": "int8"}, "dtype 'int8'"),
        ({"layout": "HWC"}, "layout 'HWC'"),
        ({"std": [1.0, 0.0, 1.0]}, "std must be positive"),
        ({"scale": 0.0}, "scale must be finite and non-zero"),
        ({"channel_order": [0, 0, 1]}, "not a permutation"),
        ({"projection": [[1.0]]}, "needs layout 'flat'"),
    ],
)
def test_invalid_specs_are_clear_errors(fields, message):
    with pytest.raises(optkit.InputError, match=message):
        PreprocessSpec(**fields)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mean": [0.1, 0.2]}, "mean has 2 values, the input has 3 channels"),
        ({"channel_order": [1, 0]}, "channel_order has 2 entries"),
        ({"mean": np.zeros((3, 4, 4)).tolist()}, "mean image has shape (3, 4, 4)"),
        ({"layout": "flat"}, "layout 'flat' needs a (N, D) model input"),
    ],
)
def test_specs_that_do_not_fit_the_model_are_clear_errors(resnet_proto, fields, message):
    proto = resnet_proto
    with pytest.raises(optkit.InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        embed(proto, PreprocessSpec(**fields))


@pytest.mark.parametrize(
    ("order", "weight_shape", "group", "reason"),
    [
        ([1, 0, 3, 2], (4, 2, 1, 1), 2, "grouped Conv"),
        # indices 2, 0, 1 of a 4-channel input select three channels (found by tools/fuzz.py)
        ([2, 0, 1], (4, 3, 1, 1), 1, "it picks 3 of 4 channels"),
    ],
)
def test_a_permutation_that_cannot_fold_is_declined(rng, order, weight_shape, group, reason):
    nodes = [
        helper.make_node("Gather", ["x", "order"], ["p"], axis=1),
        helper.make_node("Conv", ["p", "W"], ["y"], group=group),
    ]
    inits = {
        "order": np.array(order, np.int64),
        "W": rng.standard_normal(weight_shape).astype(np.float32),
    }
    model = make_model(nodes, [("x", F32, [1, 4, 3, 3])], [("y", F32, None)], inits)
    result = optkit.fuse(model)
    declined = [s for p in result.report.pipeline.passes if p.name == "permute" for s in p.declined]
    assert [n.op_type for n in result.model.graph] == ["Gather", "Conv"]
    assert reason in declined[0].reason


def test_cli_fit_then_embed_and_fold(tmp_path, monkeypatch, capsys):
    factory, shape = ZOO["resnet"]
    torch.manual_seed(0)
    proto = export_onnx(randomize_batchnorm(factory()).eval(), torch.randn(*shape))
    model = tmp_path / "net.onnx"
    import onnx

    onnx.save(proto, str(model))
    np.save(
        tmp_path / "train.npy",
        np.random.default_rng(0).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8),
    )
    code, out, err = run_main(
        monkeypatch,
        capsys,
        "preprocess",
        "fit",
        "--data",
        str(tmp_path / "train.npy"),
        "--mode",
        "per-channel-mean-std",
        "--dtype",
        "uint8",
        "--layout",
        "NHWC",
        "--channel-order",
        "bgr",
        "--scale",
        str(1 / 255),
        "-o",
        str(tmp_path / "spec.json"),
    )
    assert code == 0, err
    assert json.loads(out)["extra"]["fitted"] == "per-channel-mean-std"
    code, out, err = run_main(
        monkeypatch,
        capsys,
        "preprocess",
        str(model),
        "--spec",
        str(tmp_path / "spec.json"),
        "--json",
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["verification"]["ok"] and result["first_ops"][:4] == [
        "Cast",
        "Transpose",
        "Add",
        "Conv",
    ]
    assert (tmp_path / "net.raw.onnx").exists()
    code, _, err = run_main(monkeypatch, capsys, "preprocess", str(model), "--mean", "0.5,0.5")
    assert code == 2 and "mean has 2 values" in err


def test_a_permutation_moves_past_the_input_shift_and_folds(rng):
    """Gather(p) -> Sub(m) -> padded Conv: the Sub stays on the input (cheaper than a border
    correction), so the permutation goes in front of it (m permuted with it) and folds into the
    Conv. Before a Relu there is no layer to reach, and the Gather stays."""
    order = np.array([2, 0, 1], np.int64)
    inits = {
        "order": order,
        "m": rng.uniform(-1, 1, (1, 3, 1, 1)).astype(np.float32),
        "W": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
    }
    gather_sub = [
        helper.make_node("Gather", ["x", "order"], ["p"], axis=1),
        helper.make_node("Sub", ["p", "m"], ["h"]),
    ]
    x = {"x": rng.standard_normal((2, 3, 6, 6)).astype(np.float32)}
    conv = helper.make_node("Conv", ["h", "W"], ["y"], pads=[1, 1, 1, 1])
    model = make_model([*gather_sub, conv], [("x", F32, ["N", 3, 6, 6])], [("y", F32, None)], inits)
    result = optkit.fuse(model)
    assert [n.op_type for n in result.model.graph] == ["Sub", "Conv"]
    permute = [s for p in result.report.pipeline.passes if p.name == "permute" for s in p.applied]
    assert [s.rule for s in permute] == ["permute+sub", "permute+conv"]
    want = ort_outputs(model, x)[0]
    np.testing.assert_allclose(ort_outputs(result.model, x)[0], want, rtol=1e-5, atol=1e-5)
    relu = helper.make_node("Relu", ["h"], ["y"])
    model = make_model([*gather_sub, relu], [("x", F32, ["N", 3, 6, 6])], [("y", F32, None)], inits)
    result = optkit.fuse(model)
    assert [n.op_type for n in result.model.graph] == ["Gather", "Sub", "Relu"]
