"""Fully connected networks with BatchNorm1d after (and before) Linear layers."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """Linear -> BatchNorm1d -> ReLU stacks, a Linear head. With `bn_first`, a BatchNorm1d normalizes
    the input before the first Linear (BN before the layer)."""

    def __init__(
        self,
        in_features: int = 64,
        hidden: tuple[int, ...] = (128, 64),
        num_classes: int = 10,
        bn_first: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.BatchNorm1d(in_features)] if bn_first else []
        f = in_features
        for h in hidden:
            layers += [nn.Linear(f, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True)]
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
    ) -> None:
        super().__init__()
        c, h, w = image
        self.net = nn.Sequential(nn.Flatten(), MLP(c * h * w, hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
