"""GroupNorm as torch's legacy exporter (`dynamo=False`) writes it, at the opsets it writes (17, 18),
fused with `--all-canonical --upgrade-opset 21 / 24`; the form with the batch and the group size
written as numbers (a static export); and every almost-recognized form reported as a decline, once,
with its reason."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import helper
from torch import nn

import optkit
from helpers import F32, assert_same_outputs, make_model
from optkit.core.contract import PassOptions

ALL = PassOptions(all_canonical=True)


def legacy_export(
    module: nn.Module, sample: torch.Tensor, opset: int, dynamic: bool
) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            (sample,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "N"}, "y": {0: "N"}} if dynamic else None,
        )
    return onnx.load_from_string(buffer.getvalue())


def declines(result: optkit.FuseResult) -> list[str]:
    return [s.reason for p in result.report.pipeline.passes for s in p.declined]


def ops(result: optkit.FuseResult) -> list[str]:
    return [n.op_type for n in result.model.graph]


@pytest.mark.parametrize("upgrade", [21, 24])
@pytest.mark.parametrize("opset", [17, 18])
@pytest.mark.parametrize("dynamic", [True, False])
@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (3, 3, 10), (2, 3, 4, 5, 3)])
def test_legacy_export_fuses(shape, dynamic, opset, upgrade):
    conv = {4: nn.Conv2d, 3: nn.Conv1d, 5: nn.Conv3d}[len(shape)]
    torch.manual_seed(opset + upgrade)
    module = nn.Sequential(conv(3, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.ReLU())
    for p in module[1].parameters():
        nn.init.uniform_(p, -1, 1)
    sample = torch.randn(*shape)
    proto = legacy_export(module, sample, opset, dynamic)
    assert {n.op_type for n in proto.graph.node} >= {"InstanceNormalization", "Reshape", "Shape"}
    result = optkit.fuse(proto, options=ALL, upgrade_opset=upgrade)
    assert ops(result) == ["Conv", "GroupNormalization", "Relu"], (ops(result), declines(result))
    assert result.report.state == "equivalent"
    with torch.no_grad():
        want = module(sample).numpy()
    session = optkit.check.runtime.make_session(result.model)
    got = optkit.check.runtime.run(session, {"x": sample.numpy()})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def static_form(
    target: list[int],
    *,
    groups: int = 4,
    allowzero: int = 0,
    shape_of: str = "h",
    shape_attrs: dict | None = None,
    scale: float = 1.0,
    opset: int = 17,
) -> onnx.ModelProto:
    """h = Relu(x) (2, 8, 5, 5) -> Reshape(h, target) -> InstanceNormalization -> Reshape(Shape(shape_of))
    -> * gamma + beta, as a static legacy export writes it (the batch and group size as numbers)."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Relu", ["x"], ["h"]),
        helper.make_node("Reshape", ["h", "target"], ["r"], allowzero=allowzero),
        helper.make_node("InstanceNormalization", ["r", "ones", "zeros"], ["i"], epsilon=1e-5),
        helper.make_node("Shape", [shape_of], ["s"], **(shape_attrs or {})),
        helper.make_node("Reshape", ["i", "s"], ["back"]),
        helper.make_node("Mul", ["back", "gamma"], ["g"]),
        helper.make_node("Add", ["g", "beta"], ["y"]),
    ]
    inits = {
        "target": np.asarray(target, np.int64),
        "ones": np.full(groups, scale, np.float32),
        "zeros": np.zeros(groups, np.float32),
        "gamma": rng.uniform(0.5, 1.5, (8, 1, 1)).astype(np.float32),
        "beta": rng.uniform(-1, 1, (8, 1, 1)).astype(np.float32),
    }
    return make_model(
        nodes, [("x", F32, [2, 8, 5, 5])], [("y", F32, [2, 8, 5, 5])], inits, opset=opset
    )


@pytest.mark.parametrize("upgrade", [21, 24])
@pytest.mark.parametrize("opset", [17, 18])
@pytest.mark.parametrize("target", [[2, 4, -1], [2, 4, 50], [0, 4, 50]])
def test_the_batch_and_group_size_as_numbers_fuse(target, opset, upgrade):
    proto = static_form(target, opset=opset)
    result = optkit.fuse(proto, options=ALL, upgrade_opset=upgrade, passes=["norms", "unused"])
    assert ops(result) == ["Relu", "GroupNormalization"], (ops(result), declines(result))
    assert result.report.state == "equivalent"
    x = np.random.default_rng(1).standard_normal((2, 8, 5, 5)).astype(np.float32)
    assert_same_outputs(proto, result.to_proto(), {"x": x}, rtol=1e-4, atol=1e-5)


NEAR_MISSES = {
    "groups differ": (
        dict(target=[0, 2, -1]),
        "makes 2 groups, its InstanceNormalization normalizes 4",
    ),
    "a batch that is not the input's": (dict(target=[3, 4, -1]), "batch 3 is not its input's (2)"),
    "a group size that is not the input's": (dict(target=[2, 4, 25]), "group size 25"),
    "allowzero": (dict(target=[0, 4, -1], allowzero=1), "allowzero=1"),
    "a target of rank 2": (dict(target=[8, -1]), "is not (N, groups, -1)"),
    "an InstanceNormalization scale of its own": (
        dict(target=[0, 4, -1], scale=2.0),
        "scale or bias of its own",
    ),
    "the shape of another value": (dict(target=[0, 4, -1], shape_of="x"), "another value"),
    "a slice of Shape": (dict(target=[0, 4, -1], shape_attrs={"start": 0}), "a slice of Shape"),
}


@pytest.mark.parametrize("case", NEAR_MISSES)
def test_an_almost_recognized_form_is_declined_once_with_its_reason(case):
    kwargs, reason = NEAR_MISSES[case]
    proto = static_form(**kwargs)
    result = optkit.fuse(
        proto, options=ALL, upgrade_opset=24, passes=["norms"], verify_result=False
    )
    assert "GroupNormalization" not in ops(result)
    found = [r for r in declines(result) if "GroupNorm pattern" in r]
    assert len(found) == 1, declines(result)
    assert reason in found[0], found


def test_group_norm_of_features_is_declined_for_ort_accuracy():
    """torch's nn.GroupNorm after a Linear: (N, C) input. ORT's GroupNormalization is far less
    accurate than the chain there (measured in normalization_forms' docstring): declined, once per
    form, with that reason; the chain stays and the model verifies."""
    module = nn.Sequential(
        nn.Linear(6, 32), nn.GroupNorm(8, 32), nn.ReLU(), nn.Linear(32, 8), nn.GroupNorm(4, 8)
    )
    for opset in (17, 18):
        proto = legacy_export(module, torch.randn(4, 6), opset, dynamic=True)
        result = optkit.fuse(proto, options=ALL, upgrade_opset=24)
        assert "GroupNormalization" not in ops(result)
        assert result.report.state == "equivalent"
        found = [r for r in declines(result) if "over (N, C) features" in r]
        assert len(found) == 2, declines(result)


def test_without_all_canonical_the_legacy_form_is_declined_as_slower():
    module = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(4, 8))
    proto = legacy_export(module, torch.randn(2, 3, 8, 8), 18, dynamic=False)
    result = optkit.fuse(proto, upgrade_opset=21)
    assert "GroupNormalization" not in ops(result)
    assert any("slower than this chain" in r for r in declines(result)), declines(result)
