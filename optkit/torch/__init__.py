"""The PyTorch side of optkit (needs the `torch` extra). Nothing in the ONNX side imports this."""

from optkit.torch.export import export_onnx

__all__ = ["export_onnx"]
