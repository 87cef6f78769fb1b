"""ResNet-50 and DenseNet-121 in torchvision's layout (built from torch.nn here): torchvision's
parameter counts and key names, and with calibrated BatchNorm statistics each exports with BatchNorm
kept and fuses to a verified model: ResNet-50 with no BatchNorm left, DenseNet-121 with the 62 that
follow a concatenation and precede a ReLU (pre-activation: no Conv to fold into, as in the onnx
package's light zoo DenseNet-121)."""

from __future__ import annotations

import pytest
import torch

import optkit
from optkit.models import calibrate_batchnorm
from optkit.models.reference import densenet121, resnet50
from optkit.torch import export_onnx

CASES = {
    "resnet50": (resnet50, 25_557_032, (53, 0),
                 ["layer1.0.downsample.1.running_mean", "layer3.5.conv3.weight", "fc.bias"]),
    "densenet121": (densenet121, 7_978_856, (121, 62),
                    ["features.denseblock3.denselayer24.norm2.running_var",
                     "features.transition2.conv.weight", "features.norm5.bias",
                     "classifier.weight"]),
}  # fmt: skip


@pytest.mark.parametrize("name", CASES)
def test_layout_export_and_fuse(name: str) -> None:
    factory, parameters, batchnorms, keys = CASES[name]
    torch.manual_seed(0)
    model = factory()
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert all(key in model.state_dict() for key in keys)
    before = [m.running_var.clone() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    calibrate_batchnorm(model, (2, 3, 64, 64), steps=2)  # at the size it is exported at
    assert not model.training
    after = [m.running_var for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    proto = export_onnx(model, torch.zeros(1, 3, 64, 64))
    assert sum(n.op_type == "BatchNormalization" for n in proto.graph.node) == batchnorms[0]
    result = optkit.fuse(proto)
    assert (result.report.batchnorm_before, result.report.batchnorm_after) == batchnorms
    assert result.report.state == "equivalent", result.report.unverified_reason
    assert not any(p.rolled_back for p in result.report.pipeline.passes)


def test_calibrated_resnet50_at_224_folds_within_float32_rounding() -> None:
    """With calibrated statistics at 224x224 the 53 folds move a logit by ~4e-5 (2e-5 of the
    largest), past the reassociation tolerance, and the model is too large for the float64
    reference: the second arbiter measures ONNX Runtime's own optimizations moving the original as
    far, and the fold stands (it was rolled back, reported as an optkit bug)."""
    torch.manual_seed(0)
    model = resnet50()
    calibrate_batchnorm(model, (4, 3, 224, 224), steps=2)
    result = optkit.fuse(export_onnx(model, torch.zeros(1, 3, 224, 224)))
    assert result.report.batchnorm_after == 0
    assert result.report.state == "equivalent", result.report.format_text()
    assert not any(p.rolled_back for p in result.report.pipeline.passes)
