"""The whole default pipeline over the onnx package's backend node test cases and light zoo models.

Every case must go through `fuse` without an exception other than optkit's own InputError, and every
case ONNX Runtime can run must give the same outputs after as before, within the tolerance of the
passes that applied (exactly, when only bitwise passes changed it).
"""

from __future__ import annotations

import glob
import os
import warnings
from functools import cache

import numpy as np
import onnx
import pytest

import optkit
from helpers import ort_outputs
from optkit.core.contract import tolerance_for

CHUNKS = 6


@cache
def node_cases():
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return collect_testcases()


def _feeds(case) -> dict:
    inputs, _ = case.data_sets[0]
    names = [value.name for value in case.model.graph.input]
    return {
        n: onnx.numpy_helper.to_array(v) if isinstance(v, onnx.TensorProto) else v
        for n, v in zip(names, inputs, strict=False)
    }


def _same(want, got, exactness) -> bool:
    if isinstance(want, list) or isinstance(got, list):
        return (
            isinstance(want, list)
            and isinstance(got, list)
            and len(want) == len(got)
            and all(_same(w, g, exactness) for w, g in zip(want, got, strict=True))
        )
    if want is None or got is None:
        return want is None and got is None
    want, got = np.asarray(want), np.asarray(got)
    if want.shape != got.shape or want.dtype != got.dtype:
        return False
    if want.dtype.kind != "f":
        return bool(np.array_equal(want, got, equal_nan=want.dtype.kind == "c"))
    tol = tolerance_for(exactness, want.dtype.name)
    w, g = want.astype(np.float64), got.astype(np.float64)
    if not np.array_equal(np.isnan(w), np.isnan(g)):
        return False
    finite = np.isfinite(w)
    if not np.array_equal(w[~finite & ~np.isnan(w)], g[~finite & ~np.isnan(w)]):
        return False
    if not finite.any():
        return True
    err = float(np.max(np.abs(w[finite] - g[finite])))
    return err <= tol.atol + tol.rtol * float(np.max(np.abs(w[finite])))


@pytest.mark.slow
@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_backend_node_cases_survive_the_pipeline(chunk):
    cases = node_cases()[chunk::CHUNKS]
    compared, not_runnable, failures = 0, 0, []
    for case in cases:
        try:
            result = optkit.fuse(case.model, verify_result=False)
        except optkit.InputError:
            continue  # a clear refusal (e.g. a case the checker rejects) is allowed
        feeds = _feeds(case)
        try:
            want = ort_outputs(case.model, feeds)
        except Exception:
            not_runnable += 1
            continue
        try:
            got = ort_outputs(result.model, feeds)
        except Exception as exc:
            failures.append(f"{case.name}: rewritten model fails on ORT: {str(exc)[:150]}")
            continue
        exactness = result.report.pipeline.exactness()
        if not all(_same(w, g, exactness) for w, g in zip(want, got, strict=True)):
            failures.append(f"{case.name}: outputs differ ({exactness.value})")
        compared += 1
    assert not failures, "\n".join(failures)
    # ORT runs about 4 in 5 cases; a collapse of this count means cases stopped being checked.
    assert compared >= 0.7 * len(cases), (compared, not_runnable, len(cases))


LIGHT = sorted(
    glob.glob(os.path.join(os.path.dirname(onnx.__file__), "backend/test/data/light/*.onnx"))
)


def _dummy_input(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The input onnx's own runner feeds light models (arange / n), whose outputs it stores."""
    inits = {i.name for i in model.graph.initializer}
    (value,) = [v for v in model.graph.input if v.name not in inits]
    shape = tuple(d.dim_value or 1 for d in value.type.tensor_type.shape.dim)
    n = int(np.prod(shape))
    return {value.name: (np.arange(n).reshape(shape) / n).astype(np.float32)}


@pytest.mark.slow
@pytest.mark.parametrize("path", LIGHT, ids=[os.path.basename(p)[6:-5] for p in LIGHT])
def test_light_zoo_models(path):
    assert len(LIGHT) >= 9
    original = onnx.load(path)
    result = optkit.fuse(path)
    report = result.report
    assert report.verdict is not None and report.verdict.ok, report.format_text()
    # Every BN left is one the rules call unfoldable: no absorbing layer on either side.
    for site in (s for p in report.pipeline.passes if p.name == "batchnorm" for s in p.declined):
        assert "not into its producer" in site.reason and "cannot absorb it" in site.reason, site
    if os.path.basename(path) in (
        "light_resnet50.onnx",
        "light_inception_v2.onnx",
        "light_shufflenet.onnx",
    ):
        assert report.batchnorm_before > 0 and report.batchnorm_after == 0
    feeds = _dummy_input(original)
    expected = onnx.numpy_helper.to_array(onnx.load_tensor(path.replace(".onnx", "_output_0.pb")))
    (got,) = ort_outputs(result.model, feeds)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
