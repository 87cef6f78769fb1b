"""PyTorch model definitions used by the torch side, the tests and the benchmarks (needs torch).

`ZOO` maps a name to (factory, sample input shape) for the BN-heavy models tests and benchmarks
export and fuse.
"""

from __future__ import annotations

from collections.abc import Callable

try:
    from torch import nn
except ImportError:  # torch is the `torch` extra; say how to get it, not just "no module torch"
    raise ImportError(
        "optkit.models needs PyTorch, which is not installed: pip install 'optkit[torch]'"
    ) from None

from .cnn import BasicBlock, ConvTransposeDecoder, DepthwiseNet, InputNormNet, ResNetStyle, VGGStyle
from .common import calibrate_batchnorm, conv_bn_relu, randomize_batchnorm
from .layers import ACTIVATIONS, NORMS, Maxout, make_activation, make_norm
from .mlp import MLP, ImageMLP
from .transformer import Encoder, EncoderBlock

ZOO: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "resnet": (ResNetStyle, (2, 3, 32, 32)),
    "vgg": (VGGStyle, (2, 3, 32, 32)),
    "mlp": (MLP, (4, 64)),
    "mlp-bn-first": (lambda: MLP(bn_first=True), (4, 64)),
    "decoder": (ConvTransposeDecoder, (2, 16, 4, 4)),
    "depthwise": (DepthwiseNet, (2, 3, 32, 32)),
    "input-norm": (InputNormNet, (2, 3, 16, 16)),
    "image-mlp": (ImageMLP, (4, 3, 8, 8)),
}

# Models whose exports carry decomposed activations and norms (the `activations` / `norms` passes).
CANONICALIZE_ZOO: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "encoder": (EncoderBlock, (2, 6, 32)),
    "encoder-tanh": (lambda: EncoderBlock(approximate="tanh"), (2, 6, 32)),
}

__all__ = [
    "ACTIVATIONS",
    "CANONICALIZE_ZOO",
    "MLP",
    "NORMS",
    "ZOO",
    "BasicBlock",
    "ConvTransposeDecoder",
    "DepthwiseNet",
    "Encoder",
    "EncoderBlock",
    "ImageMLP",
    "InputNormNet",
    "Maxout",
    "ResNetStyle",
    "VGGStyle",
    "calibrate_batchnorm",
    "conv_bn_relu",
    "make_activation",
    "make_norm",
    "randomize_batchnorm",
]
