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


def calibrate_batchnorm(
    model: nn.Module, shape: tuple[int, ...], steps: int = 3, seed: int = 0
) -> nn.Module:
    """Give every BatchNorm the statistics a forward pass computes, as training would, and put the
    model in eval mode.

    The running statistics are reset and set to the cumulative average (momentum None) of the batch
    statistics over `steps` forward passes in train mode on seeded standard-normal inputs of
    `shape`, layer by layer as the data flows, so each BatchNorm normalizes what actually reaches
    it (unlike `randomize_batchnorm`, whose random statistics blow activations up in deep nets).
    No parameter changes; the momenta are restored.
    """
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, _NORM_LAYERS) and m.track_running_stats]
    momenta = [m.momentum for m in norms]
    for module in norms:
        module.reset_running_stats()
        module.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(shape, generator=generator))
    for module, momentum in zip(norms, momenta, strict=True):
        module.momentum = momentum
    return model.eval()


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
