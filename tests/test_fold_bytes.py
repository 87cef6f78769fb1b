"""Folded weights are computed in float64 and rounded once: the chunked fold (`scaled`) gives the
bytes of the full-tensor float64 reference, for every float type, edge values included."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx_ir as ir
import pytest

import optkit
from optkit.core import memory
from optkit.core.graph import FLOAT_TYPES, InitializerOverflow
from optkit.passes.fold import support as fold_support
from optkit.passes.fold.support import scaled

DTYPES = [ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE]


def reference(weight: np.ndarray, factor: np.ndarray, dtype: ir.DataType) -> np.ndarray:
    """The fold as it was written first: a whole float64 product, rounded once."""
    with np.errstate(over="ignore", invalid="ignore"):  # inf * 0 is NaN in both
        product = weight.astype(np.float64) * factor
        rounded = product.astype(FLOAT_TYPES[dtype])
    if np.any(np.isinf(rounded) & np.isfinite(product)):
        peak = float(np.max(np.abs(product[np.isfinite(product)])))
        raise InitializerOverflow(f"folded values reach {peak:.3g}, beyond {dtype.name}'s range")
    return rounded


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def edge_weights(shape: tuple[int, ...], dtype: ir.DataType, rng: np.random.Generator):
    np_dtype = FLOAT_TYPES[dtype]
    info = ml_dtypes.finfo(np_dtype) if np_dtype == ml_dtypes.bfloat16 else np.finfo(np_dtype)
    weight = rng.standard_normal(shape).astype(np_dtype)
    flat = weight.reshape(-1)
    edges = [0.0, -0.0, float(info.smallest_subnormal), -float(info.smallest_subnormal),
             float(info.tiny), float(info.max) / 4, -float(info.max) / 4, np.inf, -np.inf, np.nan,
             1.0, -1.0, float(info.eps)]  # fmt: skip
    flat[: len(edges)] = np.array(edges).astype(np_dtype)
    flat[len(edges) :: 7] *= np_dtype.type(1e-3)  # values rounding at other exponents
    return weight


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize(
    "shape, axis", [((37, 5, 3, 3), 0), ((64, 9), 1), ((9, 64), 0), ((3, 4, 5, 2, 2), 2)]
)
def test_scaled_matches_the_float64_reference(dtype, shape, axis, monkeypatch):
    monkeypatch.setattr(fold_support, "CHUNK_BYTES", 256)  # many chunks, and ragged ones
    rng = np.random.default_rng(7)
    weight = edge_weights(shape, dtype, rng)
    scale = rng.uniform(0.3, 3.0, shape[axis]) * rng.choice([-1.0, 1.0], shape[axis])
    scale[0] = 0.0
    factor = scale.reshape([-1 if i == axis else 1 for i in range(len(shape))])
    expected = reference(weight, factor, dtype)
    got = scaled(weight, factor, dtype)
    assert same_bits(got, expected)
    assert same_bits(scaled(weight, factor[0], dtype), reference(weight, factor[0], dtype))


@pytest.mark.parametrize("dtype", DTYPES[:3], ids=lambda d: d.name)
def test_scaled_overflow_is_refused_as_the_reference(dtype, monkeypatch):
    monkeypatch.setattr(fold_support, "CHUNK_BYTES", 256)
    np_dtype = FLOAT_TYPES[dtype]
    weight = np.ones((20, 4, 3, 3), np_dtype)
    weight[13, 1, 2, 0] = np_dtype.type(1e4 if dtype == ir.DataType.FLOAT16 else 1e38)
    weight[2, 0, 0, 0] = np.inf  # infinite already: not an overflow of the fold
    factor = np.full((20, 1, 1, 1), 8.0)
    with pytest.raises(InitializerOverflow) as expected:
        reference(weight, factor, dtype)
    with pytest.raises(InitializerOverflow) as got:
        scaled(weight, factor, dtype)
    assert str(got.value) == str(expected.value)
    weight[13, 1, 2, 0] = 1
    assert same_bits(scaled(weight, factor, dtype), reference(weight, factor, dtype))


def _bench_fold():
    path = Path(__file__).parents[1] / "tools" / "bench_fold.py"
    spec = importlib.util.spec_from_file_location("bench_fold", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_folded_stack_weights_are_the_float64_reference(tmp_path, dtype, monkeypatch):
    """The benchmark's Conv + BN stack (external data), small: every folded weight and bias has
    the bytes of the float64 fold computed here from the stored parameters, in the result and in
    the file it is saved to (outputs in mapped memory and many chunks, as large weights get)."""
    monkeypatch.setattr(fold_support, "CHUNK_BYTES", 512)
    monkeypatch.setattr(memory, "MAPPED_BYTES", 0)
    (tmp_path / "in").mkdir()
    path = _bench_fold().build(str(tmp_path / "in"), 3, 24, 3, dtype, seed=3)
    original = ir.load(path)
    result = optkit.fuse(path, verify_result=False, passes=["batchnorm"])
    assert result.report.batchnorm_after == 0
    result.save(tmp_path / "out.onnx")
    saved = ir.load(tmp_path / "out.onnx")
    np_dtype = np.dtype(dtype)
    for node, saved_node in zip(result.model.graph, saved.graph, strict=True):
        assert node.op_type == "Conv"
        i = int(node.name.removeprefix("conv"))
        stored = {
            k: np.asarray(original.graph.initializers[f"{k}{i}"].const_value.numpy())
            for k in ("w", "b", "gamma", "beta", "mean", "var")
        }
        p = {k: v.astype(np.float64) for k, v in stored.items()}
        s = p["gamma"] / np.sqrt(p["var"] + np.float64(np.float32(1e-5)))
        t = p["beta"] - p["mean"] * s
        w_expected = (p["w"] * s[:, None, None, None]).astype(np_dtype)
        b_expected = (p["b"] * s + t).astype(np_dtype)
        w_got = node.inputs[1].const_value.numpy()
        b_got = node.inputs[2].const_value.numpy()
        assert same_bits(np.asarray(w_got), w_expected)
        assert same_bits(np.asarray(b_got), b_expected)
        assert same_bits(np.asarray(saved_node.inputs[1].const_value.numpy()), w_expected)
        assert same_bits(np.asarray(saved_node.inputs[2].const_value.numpy()), b_expected)
