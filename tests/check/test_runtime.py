"""Runtime sessions and synthetic inputs (no GPU here: CUDA must fail clearly, never silently)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from helpers import F32, make_model
from optkit.check import runtime
from optkit.check.inputs import parse_shape, synthetic_inputs
from optkit.errors import InputError


def test_cpu_provider():
    assert runtime.resolve_provider("cpu") == ["CPUExecutionProvider"]


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="GPU present")
def test_cuda_without_gpu_is_a_clear_error_and_auto_falls_back():
    with pytest.raises(InputError, match="provider 'cuda' is not available"):
        runtime.resolve_provider("cuda")
    assert runtime.resolve_provider("auto") == ["CPUExecutionProvider"]


def test_unknown_provider():
    with pytest.raises(InputError, match="unknown provider 'tpu'"):
        runtime.resolve_provider("tpu")


def test_parse_shape():
    assert parse_shape("image=1x3x224x224") == ("image", (1, 3, 224, 224))
    assert parse_shape("a=b=2x3") == ("a=b", (2, 3))
    for bad in ("image", "=1x2", "x=1xfoo", "x=-1"):
        with pytest.raises(InputError, match="bad --shape"):
            parse_shape(bad)


def test_synthetic_inputs_cover_dtypes_and_dynamic_dims():
    inputs = [
        ("f", F32, ["N", 3, "H"]),
        ("h", onnx.TensorProto.FLOAT16, [2]),
        ("i", onnx.TensorProto.INT64, [4]),
        ("b", onnx.TensorProto.BOOL, [3]),
        ("u", onnx.TensorProto.UINT8, [5]),
    ]
    nodes = [onnx.helper.make_node("Identity", [n], [f"{n}_out"]) for n, _, _ in inputs]
    outputs = [(f"{n}_out", t, s) for n, t, s in inputs]
    model = ir.from_proto(make_model(nodes, inputs, outputs, {}))
    feeds = synthetic_inputs(model, {"f": (2, 3, 5)}, seed=3)
    assert feeds["f"].shape == (2, 3, 5) and feeds["f"].dtype == np.float32
    assert feeds["h"].dtype == np.float16 and feeds["b"].dtype == np.bool_
    assert feeds["i"].dtype == np.int64 and feeds["i"].min() >= 0 and feeds["i"].max() < 10
    assert feeds["u"].dtype == np.uint8
    again = synthetic_inputs(model, {"f": (2, 3, 5)}, seed=3)
    assert all(np.array_equal(feeds[k], again[k]) for k in feeds)  # seeded
    default = synthetic_inputs(model)
    assert default["f"].shape == (1, 3, 16)  # batch 1, other dynamic dims 16


def test_shape_for_unknown_input_or_wrong_rank():
    model = ir.from_proto(
        make_model(
            [onnx.helper.make_node("Relu", ["x"], ["y"])],
            [("x", F32, ["N", 3])],
            [("y", F32, ["N", 3])],
            {},
        )
    )
    with pytest.raises(InputError, match="unknown input"):
        synthetic_inputs(model, {"nope": (1,)})
    with pytest.raises(InputError, match="rank 3"):
        synthetic_inputs(model, {"x": (1, 2, 3)})
