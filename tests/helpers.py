"""Builders and independent checks the tests share.

The numeric checks here call ONNX Runtime directly (graph optimizations off), not optkit's verify, so
a bug in optkit's verification cannot hide a bug in a pass.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import optkit
from optkit.core.contract import PassOptions

F32 = onnx.TensorProto.FLOAT


def bn_params(
    rng: np.random.Generator, channels: int, prefix: str = "bn", dtype: type = np.float32
) -> dict[str, np.ndarray]:
    """Non-trivial BN parameters: gamma, beta, mean, var (var in [0.5, 2])."""
    return {
        f"{prefix}.scale": rng.uniform(0.5, 1.5, channels).astype(dtype),
        f"{prefix}.B": rng.uniform(-0.5, 0.5, channels).astype(dtype),
        f"{prefix}.mean": rng.uniform(-1, 1, channels).astype(dtype),
        f"{prefix}.var": rng.uniform(0.5, 2.0, channels).astype(dtype),
    }


def bn_node(x: str, y: str, prefix: str = "bn", **attrs) -> onnx.NodeProto:
    names = [f"{prefix}.{p}" for p in ("scale", "B", "mean", "var")]
    return helper.make_node("BatchNormalization", [x, *names], [y], name=prefix, **attrs)


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[tuple[str, int, Sequence]],
    outputs: Sequence[tuple[str, int, Sequence | None]],
    initializers: dict[str, np.ndarray],
    *,
    opset: int = 17,
    ir_version: int | None = None,
    inits_as_inputs: bool = False,
) -> onnx.ModelProto:
    init_protos = [numpy_helper.from_array(v, k) for k, v in initializers.items()]
    graph_inputs = [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs]
    if inits_as_inputs:
        graph_inputs += [
            helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
            for k, v in initializers.items()
        ]
    graph = helper.make_graph(
        list(nodes),
        "test",
        graph_inputs,
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        init_protos,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version or min(onnx.IR_VERSION, 10)
    if any(
        shape is None for _, _, shape in outputs
    ):  # let shape inference fill unknown output shapes
        inferred = onnx.shape_inference.infer_shapes(model)
        for out, new in zip(model.graph.output, inferred.graph.output, strict=True):
            if not out.type.tensor_type.HasField("shape"):
                out.CopyFrom(new)
                if not out.type.tensor_type.HasField("shape"):
                    out.type.tensor_type.shape.SetInParent()  # rank unknown to inference: say so
    return model


def ort_outputs(
    model: onnx.ModelProto | ir.Model, feeds: dict[str, np.ndarray]
) -> list[np.ndarray]:
    proto = model if isinstance(model, onnx.ModelProto) else ir.to_proto(model)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, feeds)


def assert_same_outputs(
    before, after, feeds, *, rtol: float = 1e-5, atol: float = 1e-5, exact: bool = False
) -> None:
    """Both models agree on `feeds`: exactly, or within `atol + rtol * max|reference|`."""
    want = ort_outputs(before, feeds)
    got = ort_outputs(after, feeds)
    assert len(want) == len(got)
    for w, g in zip(want, got, strict=True):
        assert w.shape == g.shape and w.dtype == g.dtype
        if exact:
            np.testing.assert_array_equal(w, g)
        else:
            bound = atol + rtol * float(np.max(np.abs(w.astype(np.float64))))
            err = float(np.max(np.abs(w.astype(np.float64) - g.astype(np.float64))))
            assert err <= bound, f"max abs error {err:.3g} > {bound:.3g}"


def channel_errors(
    want: np.ndarray, got: np.ndarray, finite: np.ndarray, tolerance
) -> tuple[bool, float]:
    """(within tolerance, max abs error) over the `finite` elements, each judged against its
    channel's largest magnitude (axis 1; the element itself for rank 0 and 1), never below 10% of
    the output's largest: the rule of optkit.check.compare.tolerance_scale, written again here so that a
    bug in optkit's comparison cannot hide one in a rewrite."""
    a = np.where(finite, want, 0).astype(np.float64)
    b = np.where(finite, got, 0).astype(np.float64)
    scale = np.abs(a)
    if a.ndim >= 2:
        scale = np.max(scale, axis=tuple(i for i in range(a.ndim) if i != 1), keepdims=True)
    scale = np.maximum(scale, 0.1 * float(np.abs(a).max(initial=0)))
    error = np.abs(a - b)
    return bool(np.all(error <= tolerance.atol + tolerance.rtol * scale)), float(
        error.max(initial=0)
    )


def op_types(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph]


def fold(
    proto: onnx.ModelProto,
    *,
    passes: Sequence[str] = ("batchnorm", "unused"),
    options: PassOptions | None = None,
    verify: bool = False,
) -> optkit.FuseResult:
    """Run only the named passes."""
    return optkit.fuse(proto, passes=list(passes), options=options, verify_result=verify)


def sites(result: optkit.FuseResult, name: str = "batchnorm") -> list[optkit.Site]:
    return [s for r in result.report.pipeline.passes if r.name == name for s in r.sites]


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run the `optkit` entry point in-process: exit code, stdout, stderr."""
    from optkit.cli import main

    monkeypatch.setattr(sys, "argv", ["optkit", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err
