"""A ShuffleNetV2-layout network built from torch.nn (torchvision's compiled ops do not load here).

Its channel shuffle reads the batch, height and width from the tensor (`x.shape`), as torchvision's
does, so an export with a dynamic batch carries the Shape -> Gather -> Unsqueeze -> Concat -> Reshape
computations that `optkit fuse`'s `shapes` pass folds where the dims are static.
"""

from __future__ import annotations

import torch
from torch import nn


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(n, g * c, h, w) -> (n, c * g, h, w): channel g * j + i moves to i * groups + j."""
    n, channels, height, width = x.shape
    x = x.view(n, groups, channels // groups, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(n, channels, height, width)


def _branch(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, stride, 1, groups=c_out, bias=False),
        nn.BatchNorm2d(c_out),
        nn.Conv2d(c_out, c_out, 1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class ShuffleUnit(nn.Module):
    """ShuffleNetV2's unit: stride 1 splits the channels and transforms one half; stride 2
    transforms the whole input on two branches (one depthwise-downsampled); both end in a shuffle."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = c_out // 2
        self.left: nn.Module = nn.Identity()
        if stride > 1:
            self.left = nn.Sequential(
                nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False),
                nn.BatchNorm2d(c_in),
                nn.Conv2d(c_in, half, 1, bias=False),
                nn.BatchNorm2d(half),
                nn.ReLU(inplace=True),
            )
        self.right = _branch(c_in if stride > 1 else half, half, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            a, b = x.chunk(2, dim=1)
            out = torch.cat((a, self.right(b)), dim=1)
        else:
            out = torch.cat((self.left(x), self.right(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """Stem (Conv 3x3 s2, MaxPool), three stages of ShuffleUnits (`repeats`, `widths`), a 1x1 Conv to
    `last` channels, global average pool and a Linear head. Defaults: the 0.5x layout (24, 48, 96,
    192, 1024 channels; 4, 8, 4 units)."""

    def __init__(
        self,
        num_classes: int = 1000,
        repeats: tuple[int, ...] = (4, 8, 4),
        widths: tuple[int, ...] = (24, 48, 96, 192),
        last: int = 1024,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, 2, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        units: list[nn.Module] = []
        c = widths[0]
        for count, width in zip(repeats, widths[1:], strict=True):
            units.append(ShuffleUnit(c, width, 2))
            units.extend(ShuffleUnit(width, width, 1) for _ in range(count - 1))
            c = width
        self.stages = nn.Sequential(*units)
        self.last = nn.Sequential(
            nn.Conv2d(c, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU(inplace=True)
        )
        self.head = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.last(self.stages(self.stem(x)))
        return self.head(x.mean((2, 3)))
