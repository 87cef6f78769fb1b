"""Verification: dtype-aware tolerances, in both directions."""

from __future__ import annotations

import numpy as np
import pytest

from optkit.check.compare import compare_arrays, compare_outputs
from optkit.core.contract import Exactness, tolerance_for


def test_identical_arrays_pass_bitwise():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert compare_arrays("y", a, a.copy(), Exactness.BITWISE).ok


def test_one_ulp_fails_bitwise_but_passes_reassociate():
    a = np.ones((2, 3), np.float32)
    b = np.nextafter(a, 2).astype(np.float32)
    assert not compare_arrays("y", a, b, Exactness.BITWISE).ok
    assert compare_arrays("y", a, b, Exactness.REASSOCIATE).ok


@pytest.mark.parametrize(
    ("dtype", "relative_error", "ok"),
    [
        (np.float32, 1e-6, True),
        (np.float32, 1e-3, False),
        (np.float16, 2e-3, True),
        (np.float16, 5e-2, False),
        (np.float64, 1e-12, True),
        (np.float64, 1e-6, False),
    ],
)
def test_tolerance_depends_on_dtype(rng, dtype, relative_error, ok):
    a = rng.standard_normal((4, 8)).astype(dtype)
    b = (a.astype(np.float64) + relative_error * np.max(np.abs(a))).astype(dtype)
    assert compare_arrays("y", a, b, Exactness.REASSOCIATE).ok is ok


def test_integer_outputs_are_always_exact():
    a = np.array([1, 2, 3], np.int64)
    assert not compare_arrays("y", a, a + np.array([0, 0, 1]), Exactness.REASSOCIATE).ok
    assert tolerance_for(Exactness.REASSOCIATE, "int64").rtol == 0


def test_nan_positions_must_match():
    a = np.array([1.0, np.nan, 3.0], np.float32)
    assert compare_arrays("y", a, a.copy(), Exactness.REASSOCIATE).ok
    b = np.array([1.0, 2.0, 3.0], np.float32)
    result = compare_arrays("y", a, b, Exactness.REASSOCIATE)
    assert not result.ok and "NaN" in result.problem


def test_shape_mismatch_fails_with_reason():
    result = compare_arrays("y", np.zeros((2, 3)), np.zeros((3, 2)), Exactness.REASSOCIATE)
    assert not result.ok and "shape" in result.problem


def test_top1_agreement_for_classifier_outputs(rng):
    logits = rng.standard_normal((8, 10)).astype(np.float32)
    swapped = logits.copy()
    swapped[0] = -swapped[0]
    verdict = compare_outputs({"logits": logits}, {"logits": swapped}, Exactness.REASSOCIATE)
    assert not verdict.ok
    assert verdict.outputs[0].top1_agreement == pytest.approx(7 / 8)


def test_synthetic_inputs_of_4_bit_and_undefined_types():
    """4-bit integers are synthesized in range; an undefined element type is refused clearly."""
    import onnx_ir as ir

    from optkit.check.inputs import UnsynthesizableInput, random_array

    rng = np.random.default_rng(0)
    values = random_array(rng, ir.DataType.UINT4, (4, 4), (0, 100))
    assert values.astype(np.int64).max() <= 15
    with pytest.raises(UnsynthesizableInput, match="UNDEFINED"):
        random_array(rng, ir.DataType.UNDEFINED, (2,), (0, 10))
