"""Models exported from `models/` (BatchNorm kept): every foldable BN is gone, outputs match."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import optkit
from helpers import assert_same_outputs
from optkit.models import ZOO, randomize_batchnorm
from optkit.torch import export_onnx


@pytest.mark.parametrize("name", sorted(ZOO))
def test_exported_model_folds_every_batchnorm(name):
    factory, shape = ZOO[name]
    torch.manual_seed(0)
    model = randomize_batchnorm(factory()).eval()
    sample = torch.randn(*shape)
    proto = export_onnx(model, sample)
    assert sum(n.op_type == "BatchNormalization" for n in proto.graph.node) > 0
    result = optkit.fuse(proto, shapes={"input": shape})
    report = result.report
    assert report.batchnorm_after == 0, report.format_text(verbose=True)
    assert report.verdict is not None and report.verdict.ok
    feeds = {"input": sample.numpy()}
    assert_same_outputs(proto, result.model, feeds, rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # and the fused model still computes what PyTorch computes
        expected = model(sample).numpy()
    from helpers import ort_outputs

    (got,) = ort_outputs(result.model, feeds)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)


def test_training_mode_export_is_caught():
    """Forgetting eval(): BN exported in training mode keeps batch statistics and is not folded."""
    torch.manual_seed(0)
    model = randomize_batchnorm(ZOO["mlp"][0]()).train()
    import io as _io

    import onnx

    buffer = _io.BytesIO()
    torch.onnx.export(
        model,
        (torch.randn(4, 64),),
        buffer,
        dynamo=False,
        opset_version=17,
        training=torch.onnx.TrainingMode.TRAINING,
        do_constant_folding=False,
    )
    result = optkit.fuse(onnx.load_from_string(buffer.getvalue()), verify_result=False)
    assert result.report.batchnorm_after == result.report.batchnorm_before > 0
    reasons = [
        s.reason for p in result.report.pipeline.passes for s in p.declined if p.name == "batchnorm"
    ]
    assert all("training_mode=1" in r or "running-statistics" in r for r in reasons), reasons


def test_dynamo_exported_resnet_folds():
    """torch's default (dynamo) exporter, without its own optimizer, keeps BN for optkit to fold."""
    torch.manual_seed(0)
    model = randomize_batchnorm(ZOO["resnet"][0]()).eval()
    sample = torch.randn(2, 3, 32, 32)
    program = torch.onnx.export(model, (sample,), dynamo=True, optimize=False, verbose=False)
    ir_model = program.model
    assert sum(n.op_type == "BatchNormalization" for n in ir_model.graph) == 9
    result = optkit.fuse(ir_model)
    assert result.report.batchnorm_after == 0 and result.report.verdict.ok
    with torch.no_grad():
        expected = model(sample).numpy()
    from helpers import ort_outputs

    (got,) = ort_outputs(result.model, {ir_model.graph.inputs[0].name: sample.numpy()})
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)
