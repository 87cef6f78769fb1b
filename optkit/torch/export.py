"""Export a PyTorch model to ONNX with its BatchNorm nodes kept, for `optkit fuse` to fold.

The model is exported in eval mode (BN uses running statistics) with `TrainingMode.PRESERVE`, so the
exporter does not fold BN itself: optkit folds it in float64 and reports every site.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import torch

from optkit.errors import VerificationError
from optkit.preprocessing import PreprocessSpec


def export_onnx(
    model: torch.nn.Module,
    sample: torch.Tensor,
    *,
    opset: int = 17,
    dynamic_batch: bool = True,
    input_name: str = "input",
    output_name: str = "output",
) -> onnx.ModelProto:
    """`model` (put in eval mode) as an ONNX model with BatchNormalization nodes preserved."""
    model.eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (sample,),
            buffer,  # type: ignore[arg-type]  # the TorchScript exporter writes to a file object
            dynamo=False,
            opset_version=opset,
            training=torch.onnx.TrainingMode.PRESERVE,
            do_constant_folding=False,
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}}
            if dynamic_batch
            else None,
        )
    return onnx.load_from_string(buffer.getvalue())


def check_against_torch(
    proto: onnx.ModelProto, model: torch.nn.Module, x: np.ndarray, *, atol: float = 1e-4
) -> float:
    """Max abs difference between the ONNX model on ORT and `model` in eval mode on `x`; raises
    VerificationError beyond `atol` (scaled by the output's size). This is what catches an export
    made with BatchNorm in training mode (batch statistics instead of running ones)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    model.train(was_training)
    return _ort_error(
        proto,
        x,
        want,
        atol,
        "the ONNX export differs from the eval-mode torch model",
        "on real samples; was it exported with BatchNorm or Dropout in training mode?",
    )


def export_checked(
    model: torch.nn.Module,
    samples: np.ndarray,
    *,
    spec: PreprocessSpec | None = None,
    raw_samples: np.ndarray | None = None,
    fuse_it: bool = True,
    opset: int = 17,
) -> tuple[onnx.ModelProto, dict]:
    """Export `model` (in eval mode, BatchNorm kept; its own mode is given back), check it against
    torch on `samples` (already preprocessed), then optionally embed `spec` (the model then takes
    raw input like `raw_samples`) and fuse. Returns the final model and a report of each step."""
    was_training = model.training
    try:
        return _export_checked(model.eval(), samples, spec, raw_samples, fuse_it, opset)
    finally:
        model.train(was_training)


def _export_checked(
    model: torch.nn.Module,
    samples: np.ndarray,
    spec: PreprocessSpec | None,
    raw_samples: np.ndarray | None,
    fuse_it: bool,
    opset: int,
) -> tuple[onnx.ModelProto, dict]:
    import optkit
    from optkit import io
    from optkit.embedding import embed
    from optkit.preprocessing import apply

    proto = export_onnx(model, torch.from_numpy(samples[:2]), opset=opset)
    report: dict = {"export_max_abs_error": check_against_torch(proto, model, samples)}
    final: onnx.ModelProto = proto
    if spec is not None:
        final = io.to_proto(embed(final, spec))
        if raw_samples is not None:
            with torch.no_grad():
                want = model(torch.from_numpy(apply(spec, raw_samples).astype(np.float32))).numpy()
            report["embedded_max_abs_error"] = _ort_error(
                final, raw_samples, want, 1e-3, "the model with preprocessing embedded differs"
            )
    if fuse_it:
        result = optkit.fuse(final, shapes=None)
        if not result.report.ok:
            raise VerificationError(f"fuse changed the outputs: {result.report.verdict}")
        report["fuse"] = result.report.format_text()
        final = result.to_proto()
        report["batchnorm_after"] = result.report.batchnorm_after
    return final, report


def _ort_error(
    proto: onnx.ModelProto, x: np.ndarray, want: np.ndarray, atol: float, what: str, hint: str = ""
) -> float:
    """Max abs difference of the model's output on ORT from `want`; VerificationError beyond
    `atol` scaled by the output's size."""
    from optkit.check import runtime

    session = runtime.make_session(proto)
    (got,) = session.run(None, {session.get_inputs()[0].name: x})
    error = float(np.max(np.abs(got - want)))
    bound = atol * max(1.0, float(np.max(np.abs(want))))
    if not error <= bound:
        raise VerificationError(f"{what} by {error:.3g} (> {bound:.3g}) {hint}".rstrip())
    return error
