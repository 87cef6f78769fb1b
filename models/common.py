"""Pieces the model definitions share."""

from __future__ import annotations

import torch
from torch import nn

_NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters, as training would.

    A fresh BN has mean 0, var 1, gamma 1, beta 0, which makes folding trivially exact; tests and
    benchmarks want the real thing without training.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _NORM_LAYERS):
                if module.running_mean is None or module.running_var is None:
                    continue  # no running statistics to set
                c = module.num_features
                module.running_mean.copy_(torch.rand(c, generator=generator) * 2 - 1)
                module.running_var.copy_(torch.rand(c, generator=generator) * 1.5 + 0.5)
                if module.affine:
                    module.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                    module.bias.copy_(torch.rand(c, generator=generator) - 0.5)
    return model


def conv_bn_relu(
    c_in: int,
    c_out: int,
    kernel: int = 3,
    stride: int = 1,
    groups: int = 1,
    activation: str = "relu",
    norm: str = "batch",
) -> nn.Sequential:
    """Conv -> norm -> activation, 'same' padding (no conv bias when a norm with a shift follows).

    The defaults are the classic Conv -> BatchNorm -> ReLU."""
    from .layers import make_activation, make_norm

    act = make_activation(activation, c_out, "image", inplace_relu=True)
    return nn.Sequential(
        nn.Conv2d(
            c_in,
            c_out,
            kernel,
            stride=stride,
            padding=kernel // 2,
            groups=groups,
            bias=norm == "none",
        ),
        make_norm(norm, c_out, "image"),
        act,
    )
