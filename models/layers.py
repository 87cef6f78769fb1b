"""The activation and normalization choices of the lecture, as layers the configurable models use.

`make_activation(name, features, layout)` and `make_norm(name, features, layout)` build one layer
for a tensor of `features` channels laid out as `layout`:

- "features": (N, C), e.g. after a Linear;
- "tokens": (N, T, C), the feature axis last (transformer blocks);
- "image": (N, C, H, W).

Maxout (Goodfellow et al.) is a real unit, max over `pieces` affine maps of its input: a Linear (or
a 1x1 Conv for images) to `pieces * C` outputs and a max over the pieces, so a model with Maxout has
more parameters than the same model with an elementwise activation, as in the lecture.
"""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = (
    "sigmoid", "tanh", "relu", "leaky_relu", "prelu", "elu", "selu", "maxout", "swish", "gelu",
)  # fmt: skip
NORMS = ("batch", "layer", "instance", "group", "none")
LAYOUTS = ("features", "tokens", "image")


class Maxout(nn.Module):
    """y = max_k (W_k x + b_k) over `pieces` affine maps from `features` to `features` channels."""

    def __init__(self, features: int, pieces: int = 2, layout: str = "features") -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
        self.features, self.pieces, self.layout = features, pieces, layout
        self.affine: nn.Module = (
            nn.Conv2d(features, features * pieces, 1)
            if layout == "image"
            else nn.Linear(features, features * pieces)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.affine(x)
        if self.layout == "image":  # (N, C*k, H, W) -> (N, C, k, H, W), max over k
            n, _, h, w = y.shape
            return y.reshape(n, self.features, self.pieces, h, w).amax(dim=2)
        return y.reshape(*y.shape[:-1], self.features, self.pieces).amax(dim=-1)


def make_activation(
    name: str, features: int, layout: str = "features", *, inplace_relu: bool = False
) -> nn.Module:
    """One activation layer by its lecture name (see ACTIVATIONS); `inplace_relu` makes a ReLU
    overwrite its input (for layers whose input nothing else reads)."""
    if name == "relu":
        return nn.ReLU(inplace=inplace_relu)
    simple = {
        "sigmoid": nn.Sigmoid,
        "tanh": nn.Tanh,
        "elu": nn.ELU,
        "selu": nn.SELU,
        "swish": nn.SiLU,
        "gelu": nn.GELU,
    }
    if name in simple:
        return simple[name]()
    if name == "leaky_relu":
        return nn.LeakyReLU(0.01)
    if name == "prelu":
        return nn.PReLU(num_parameters=1)  # one slope, as in the lecture's parametric ReLU
    if name == "maxout":
        return Maxout(features, 2, layout)
    raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")


def make_norm(name: str, features: int, layout: str = "features") -> nn.Module:
    """One normalization layer by name (see NORMS); ValueError for a combination without meaning
    (instance norm of a plain feature vector, say)."""
    if name == "none":
        return nn.Identity()
    if name == "batch":
        if layout == "tokens":
            raise ValueError("batch norm over (N, T, C) tokens is not offered; use layer norm")
        return nn.BatchNorm2d(features) if layout == "image" else nn.BatchNorm1d(features)
    if name == "layer":
        # over (C, H, W) for images: GroupNorm with one group is LayerNorm over channels and space
        return nn.GroupNorm(1, features) if layout == "image" else nn.LayerNorm(features)
    if name == "instance":
        if layout != "image":
            raise ValueError("instance norm needs spatial dims (layout 'image')")
        return nn.InstanceNorm2d(features, affine=True)
    if name == "group":
        if layout == "tokens":
            raise ValueError("group norm over (N, T, C) tokens is not offered; use layer norm")
        groups = next(g for g in (8, 4, 2, 1) if features % g == 0)
        return nn.GroupNorm(groups, features)
    raise ValueError(f"unknown normalization {name!r}; choose one of {', '.join(NORMS)}")
