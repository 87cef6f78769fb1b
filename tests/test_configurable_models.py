"""Every activation and normalization choice of the configurable models builds, exports to ONNX,
fuses (BatchNorm folded, the activation fused where opset allows) and matches PyTorch's eval output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import optkit
from helpers import ort_outputs
from optkit.core.contract import PassOptions
from optkit.models import (
    ACTIVATIONS,
    MLP,
    NORMS,
    Encoder,
    EncoderBlock,
    Maxout,
    ResNetStyle,
    VGGStyle,
    randomize_batchnorm,
)
from optkit.torch import export_onnx

FACTORIES = {
    "mlp": (lambda a, n: MLP(16, (24, 12), 5, activation=a, norm=n), (4, 16)),
    "vgg": (
        lambda a, n: VGGStyle(5, (8, 16), in_channels=1, image_size=8, activation=a, norm=n),
        (2, 1, 8, 8),
    ),
    "resnet": (
        lambda a, n: ResNetStyle(5, width=8, depth=2, in_channels=1, activation=a, norm=n),
        (2, 1, 8, 8),
    ),
    "encoder": (lambda a, n: EncoderBlock(16, 2, 32, activation=a, norm=n), (2, 5, 16)),
}
DEFAULT_NORM = {"mlp": "batch", "vgg": "batch", "resnet": "batch", "encoder": "layer"}
INVALID = {  # (model, norm) pairs without meaning: a clear ValueError
    ("mlp", "instance"),
    ("encoder", "batch"),
    ("encoder", "instance"),
    ("encoder", "group"),
}
CASES = [(m, a, DEFAULT_NORM[m]) for m in FACTORIES for a in ACTIVATIONS] + [
    (m, "relu", n) for m in FACTORIES for n in NORMS if n != DEFAULT_NORM[m]
]


@pytest.mark.parametrize("model_name, activation, norm", CASES)
def test_every_choice_exports_fuses_and_matches_torch(model_name, activation, norm):
    factory, shape = FACTORIES[model_name]
    if (model_name, norm) in INVALID:
        with pytest.raises(ValueError, match="norm"):
            factory(activation, norm)
        return
    torch.manual_seed(0)
    model = randomize_batchnorm(factory(activation, norm)).eval()
    sample = torch.randn(*shape)
    with torch.no_grad():
        want = model(sample).numpy()
    proto = export_onnx(model, sample, opset=17)
    result = optkit.fuse(proto, upgrade_opset=24, options=PassOptions(all_canonical=True))
    assert result.report.ok, result.report.format_text()
    assert result.report.batchnorm_after == 0
    ops = {n.op_type for n in result.model.graph}
    fused = {"gelu": "Gelu", "swish": "Swish", "selu": "Selu", "elu": "Elu", "prelu": "LeakyRelu"}
    if activation in fused:
        assert fused[activation] in ops, ops
    if model_name in ("vgg", "resnet") and norm in ("group", "layer"):  # layer: GroupNorm(1, C)
        assert "GroupNormalization" in ops, ops
    (got,) = ort_outputs(result.to_proto(), {"input": sample.numpy()})
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_encoder_depth_stacks_blocks_and_fuses():
    torch.manual_seed(0)
    model = Encoder(depth=3, dim=16, heads=2, hidden=32, activation="gelu", norm="layer").eval()
    sample = torch.randn(2, 5, 16)
    with torch.no_grad():
        want = model(sample).numpy()
    result = optkit.fuse(export_onnx(model, sample, opset=17), upgrade_opset=20)
    ops = [n.op_type for n in result.model.graph]
    assert ops.count("LayerNormalization") == 6 and ops.count("Gelu") == 3
    (got,) = ort_outputs(result.to_proto(), {"input": sample.numpy()})
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_maxout_is_a_max_over_affine_pieces():
    torch.manual_seed(0)
    unit = Maxout(3, pieces=4)
    x = torch.randn(5, 3)
    pieces = (x @ unit.affine.weight.T + unit.affine.bias).reshape(5, 3, 4)
    torch.testing.assert_close(unit(x), pieces.amax(-1))
    assert sum(p.numel() for p in unit.parameters()) == 3 * 12 + 12
    image = Maxout(3, pieces=2, layout="image")
    assert image(torch.randn(2, 3, 4, 4)).shape == (2, 3, 4, 4)
    with pytest.raises(ValueError, match="layout"):
        Maxout(3, layout="sideways")


def test_unknown_choices_are_clear_errors():
    with pytest.raises(ValueError, match="unknown activation 'softsign'"):
        MLP(activation="softsign")
    with pytest.raises(ValueError, match="unknown normalization 'weight'"):
        MLP(norm="weight")
