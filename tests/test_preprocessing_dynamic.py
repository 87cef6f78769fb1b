"""Preprocessing embedded before a padded first Conv of a model whose input is (N, 3, H, W) with N,
H and W all dynamic: `fuse` folds it as far as at a static size. 1/std and the scale go into the
Conv's weights, the channel order by permuting them, and the mean shift stays as one Add on the raw
3-channel input (`a x - m = a (x - m / a)`): the border correction, a constant per output position,
needs a static size. The fused model matches the embedded one at any batch and spatial size."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from torch import nn

import optkit
from helpers import ort_outputs
from optkit.embedding import embed
from optkit.models import ResNetStyle, conv_bn_relu, randomize_batchnorm
from optkit.preprocessing import PreprocessSpec

SPEC = PreprocessSpec(
    dtype="uint8",
    layout="NHWC",
    channel_order=[2, 1, 0],  # BGR in, RGB to the model
    scale=1 / 255,
    mean=[0.485, 0.456, 0.406],
    std=[0.229, 0.224, 0.225],
)
SIZES = [(1, 9, 7), (3, 9, 7), (1, 32, 32), (3, 32, 32)]  # (N, H, W)


def _vgg_style() -> nn.Module:
    """VGG-style: padded conv-bn-relu pairs and max pooling; global pooling before the head, so it
    takes any spatial size."""
    return nn.Sequential(
        conv_bn_relu(3, 16),
        nn.MaxPool2d(2),
        conv_bn_relu(16, 32),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


MODELS = {"resnet": ResNetStyle, "vgg": _vgg_style}


def _export_dynamic(module: nn.Module) -> onnx.ModelProto:
    """`module` as ONNX with input (N, 3, H, W), all three dynamic (BatchNorm kept, as optkit's
    `export_onnx` does; that one makes only the batch dynamic)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            (torch.randn(2, 3, 32, 32),),
            buffer,
            dynamo=False,
            opset_version=17,
            training=torch.onnx.TrainingMode.PRESERVE,
            do_constant_folding=False,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "N", 2: "H", 3: "W"}, "output": {0: "N"}},
        )
    return onnx.load_from_string(buffer.getvalue())


@pytest.fixture(scope="module", params=sorted(MODELS))
def fused(request):
    torch.manual_seed(0)
    proto = _export_dynamic(randomize_batchnorm(MODELS[request.param]()))
    embedded = optkit.io.to_proto(embed(proto, SPEC))
    return embedded, optkit.fuse(embedded)


def test_the_input_stays_dynamic(fused):
    _, result = fused
    (raw,) = result.model.graph.inputs
    assert isinstance(raw.type, ir.TensorType) and raw.type.dtype == ir.DataType.UINT8
    assert raw.shape is not None
    assert [d if isinstance(d, int) else None for d in raw.shape] == [None, None, None, 3]


def test_only_cast_transpose_and_one_add_stay_before_the_first_conv(fused):
    _, result = fused
    assert result.report.ok
    ops = [n.op_type for n in result.model.graph]
    assert ops[: ops.index("Conv") + 1] == ["Cast", "Transpose", "Add", "Conv"]
    rules = [s.rule for p in result.report.pipeline.passes for s in p.applied]
    for rule in ("div+conv", "sub+conv(shift on input)", "permute+add", "permute+conv"):
        assert rule in rules
    add = next(n for n in result.model.graph if n.op_type == "Add")
    assert add.inputs[1] is not None and add.inputs[1].const_value is not None
    assert add.inputs[1].const_value.numpy().shape == (1, 3, 1, 1)  # per raw channel


@pytest.mark.parametrize(("batch", "height", "width"), SIZES)
def test_fused_matches_embedded_at_any_size(fused, batch, height, width):
    embedded, result = fused
    rng = np.random.default_rng(batch * 100 + height)
    raw = rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
    want = ort_outputs(embedded, {"input": raw})[0]
    got = ort_outputs(result.model, {"input": raw})[0]
    assert got.shape == want.shape == (batch, 10)
    assert np.max(np.abs(got - want)) <= 1e-6 + 1e-4 * np.max(np.abs(want))


def test_fuse_of_its_own_output_applies_nothing(fused):
    _, result = fused
    again = optkit.fuse(result.to_proto(), verify_result=False)
    assert [(p.name, s.rule) for p in again.report.pipeline.passes for s in p.applied] == []
