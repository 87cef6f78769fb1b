"""Export a PyTorch model to ONNX with its BatchNorm nodes kept, for `optkit fuse` to fold.

The model is exported in eval mode (BN uses running statistics) with `TrainingMode.PRESERVE`, so the
exporter does not fold BN itself: optkit folds it in float64 and reports every site.
"""

from __future__ import annotations

import io
import warnings

import onnx
import torch


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
            buffer,
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
