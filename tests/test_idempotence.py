"""`fuse` run on its own output changes nothing: every pass is idempotent (the pipeline relies on it
to skip passes), on the models of `models/`, an encoder with decomposed GELU / LayerNorm, a model
with embedded preprocessing before a padded Conv, and the fuzzing seeds."""

from __future__ import annotations

import pytest
import torch
from fuzzing import SEEDS

import optkit
from optkit.embedding import embed
from optkit.models import CANONICALIZE_ZOO, ZOO, randomize_batchnorm
from optkit.preprocessing import PreprocessSpec
from optkit.torch import export_onnx

SPEC = PreprocessSpec(
    dtype="uint8", layout="NHWC", channel_order=[2, 1, 0], scale=1 / 255, mean=[0.5, 0.4, 0.3],
    std=[0.2, 0.25, 0.3],
)  # fmt: skip


def _exported(name: str):
    torch.manual_seed(0)
    if name in CANONICALIZE_ZOO:
        factory, shape = CANONICALIZE_ZOO[name]
        return export_onnx(factory().eval(), torch.randn(*shape), opset=17)
    factory, shape = ZOO[name]
    return export_onnx(randomize_batchnorm(factory()).eval(), torch.randn(*shape))


CASES = [*sorted(ZOO), "encoder", "resnet+preprocessing", *(f"seed:{s}" for s in sorted(SEEDS))]


@pytest.mark.parametrize("case", CASES)
def test_fuse_applied_to_its_own_output_changes_nothing(case):
    if case.startswith("seed:"):
        proto = SEEDS[case.removeprefix("seed:")]()
    elif case == "resnet+preprocessing":
        proto = optkit.io.to_proto(embed(_exported("resnet"), SPEC))
    else:
        proto = _exported(case)
    first = optkit.fuse(proto, verify_result=False)
    second = optkit.fuse(first.to_proto(), verify_result=False)
    applied = [(p.name, s.rule) for p in second.report.pipeline.passes for s in p.applied]
    assert applied == []
    assert [n.op_type for n in second.model.graph] == [n.op_type for n in first.model.graph]
