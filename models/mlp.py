"""Fully connected networks with BatchNorm1d after (and before) Linear layers."""

from __future__ import annotations

import torch
from torch import nn

from .layers import make_activation, make_norm


class MLP(nn.Module):
    """Linear -> norm -> activation stacks (one per entry of `hidden`: width and depth), a Linear
    head. Defaults: BatchNorm1d and ReLU. With `bn_first`, a BatchNorm1d normalizes the input before
    the first Linear (BN before the layer)."""

    def __init__(
        self,
        in_features: int = 64,
        hidden: tuple[int, ...] = (128, 64),
        num_classes: int = 10,
        bn_first: bool = False,
        activation: str = "relu",
        norm: str = "batch",
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.BatchNorm1d(in_features)] if bn_first else []
        f = in_features
        for h in hidden:
            act = make_activation(activation, h, "features", inplace_relu=True)
            layers += [nn.Linear(f, h), make_norm(norm, h, "features"), act]
            f = h
        layers.append(nn.Linear(f, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ImageMLP(nn.Module):
    """A fully connected classifier on images: Flatten, then the MLP (as in the lecture's CIFAR-10
    linear and two-layer examples)."""

    def __init__(
        self,
        image: tuple[int, int, int] = (3, 8, 8),
        hidden: tuple[int, ...] = (64,),
        num_classes: int = 10,
        activation: str = "relu",
        norm: str = "batch",
    ) -> None:
        super().__init__()
        c, h, w = image
        mlp = MLP(c * h * w, hidden, num_classes, activation=activation, norm=norm)
        self.net = nn.Sequential(nn.Flatten(), mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
