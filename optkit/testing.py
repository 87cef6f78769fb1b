"""Assertions for test suites: a model and its rewrite (or its export) compute the same thing.

    from optkit.testing import assert_equivalent

    def test_fused_model_matches(tmp_path):
        assert_equivalent("model.onnx", optkit.fuse("model.onnx").model)

A failure raises AssertionError whose message is the per-output table `optkit verify` prints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from optkit import io
from optkit.check.compare import Verdict
from optkit.check.verify import Feeds, verify
from optkit.core.contract import Exactness, Tolerance


def assert_equivalent(
    reference: io.ModelSource,
    candidate: io.ModelSource,
    inputs: Feeds | Sequence[Feeds] | None = None,
    *,
    exactness: Exactness | str = Exactness.REASSOCIATE,
    tolerances: Mapping[str, Tolerance] | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
    samples: int = 1,
    int_range: tuple[int, int] = (0, 10),
    labels: np.ndarray | None = None,
    provider: str = "cpu",
) -> Verdict:
    """Raise AssertionError unless `candidate` computes what `reference` computes on ONNX Runtime.

    Models are paths, ModelProtos, onnx_ir Models, serialized bytes or `torch.onnx.ONNXProgram`s;
    the options are `optkit.verify`'s. The message is the per-output table of `optkit verify`
    (`Verdict.format_table`). Returns the verdict when it passes. A verification that cannot
    conclude anything (nothing to compare, a reference that is not deterministic) raises its
    `optkit.check.verify.Unverifiable` (an `InputError`), never passes.
    """
    verdict = verify(
        reference,
        candidate,
        inputs,
        exactness=Exactness(exactness),
        tolerances=tolerances,
        shapes=shapes,
        seed=seed,
        samples=samples,
        int_range=int_range,
        labels=labels,
        provider=provider,
    )
    if not verdict.ok:
        raise AssertionError(verdict.format_table(io.describe(reference), io.describe(candidate)))
    return verdict


__all__ = ["assert_equivalent"]
