"""The PyTorch side of optkit (needs the `torch` extra). Nothing in the ONNX side imports this.

`export_onnx` (BatchNorm kept for `optkit fuse`), `export_checked` (checked against torch, with
preprocessing embedded and fused), `initialize` (the lecture's init schemes, see `init`),
`activation_stats` / `gradient_stats` (per-layer statistics, see `stats`); training and transfer
learning live in `optkit.torch.train` and `optkit.torch.transfer` (`fit` / `train` take any
nn.Module and a Dataset or DataLoader), train and finetune runs from the command line's options in
`optkit.torch.runs`, checkpoint -> ONNX export (one or an ensemble) in `optkit.torch.exporting`,
data in `optkit.torch.data`, the user's own model (a factory, a state_dict file, its
head and stages) in `optkit.torch.usermodel`.
"""

try:
    import torch  # noqa: F401
except ImportError:
    raise ImportError(
        "optkit.torch needs PyTorch, which is not installed: pip install 'optkit[torch]'"
    ) from None

from optkit.torch.export import export_checked, export_onnx
from optkit.torch.init import initialize
from optkit.torch.stats import activation_stats, gradient_stats

__all__ = ["activation_stats", "export_checked", "export_onnx", "gradient_stats", "initialize"]
