"""Convolutional networks with BatchNorm in the places real networks put it."""

from __future__ import annotations

import torch
from torch import nn

from .common import conv_bn_relu
from .layers import make_activation, make_norm


class BasicBlock(nn.Module):
    """ResNet basic block: conv-norm-act, conv-norm, plus a shortcut (1x1 conv-norm when shapes
    change), then the activation. Defaults: BatchNorm and ReLU."""

    def __init__(
        self, c_in: int, c_out: int, stride: int = 1, activation: str = "relu", norm: str = "batch"
    ) -> None:
        super().__init__()
        bias = norm == "none"
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)
        self.bn1 = make_norm(norm, c_out, "image")
        self.act1 = make_activation(activation, c_out, "image")
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=bias)
        self.bn2 = make_norm(norm, c_out, "image")
        self.act2 = make_activation(activation, c_out, "image")
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=bias),
                make_norm(norm, c_out, "image"),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.act2(y + self.shortcut(x))


class ResNetStyle(nn.Module):
    """A small ResNet: stem, `depth` stages of basic blocks doubling width, pooled linear head."""

    def __init__(
        self,
        num_classes: int = 10,
        width: int = 16,
        depth: int = 3,
        in_channels: int = 3,
        activation: str = "relu",
        norm: str = "batch",
    ) -> None:
        super().__init__()
        self.stem = conv_bn_relu(in_channels, width, activation=activation, norm=norm)
        blocks, c = [], width
        for stage in range(depth):
            c_out = width * 2**stage
            stride = 1 if stage == 0 else 2
            blocks.append(BasicBlock(c, c_out, stride, activation, norm))
            c = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.blocks(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


class VGGStyle(nn.Module):
    """VGG with BatchNorm: conv-bn-relu pairs and max pooling, then a BN'd fully connected head."""

    def __init__(
        self,
        num_classes: int = 10,
        widths: tuple[int, ...] = (16, 32, 64),
        in_channels: int = 3,
        image_size: int = 32,
        activation: str = "relu",
        norm: str = "batch",
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for w in widths:
            layers += [
                conv_bn_relu(c, w, activation=activation, norm=norm),
                conv_bn_relu(w, w, activation=activation, norm=norm),
                nn.MaxPool2d(2),
            ]
            c = w
        self.features = nn.Sequential(*layers)
        side = image_size // 2 ** len(widths)
        head_norm = norm if norm in ("batch", "layer", "none") else "layer"  # (N, 64) features
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c * side * side, 64),
            make_norm(head_norm, 64, "features"),
            make_activation(activation, 64, "features"),
            nn.Dropout(0.5),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class DepthwiseNet(nn.Module):
    """MobileNet-style depthwise separable blocks: depthwise 3x3 conv-bn-relu, pointwise conv-bn-relu."""

    def __init__(
        self, num_classes: int = 10, widths: tuple[int, ...] = (16, 32, 64), in_channels: int = 3
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn_relu(in_channels, widths[0], stride=2)]
        c = widths[0]
        for w in widths[1:]:
            layers += [conv_bn_relu(c, c, groups=c, stride=2), conv_bn_relu(c, w, kernel=1)]
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


class InputNormNet(nn.Module):
    """BatchNorm straight before a padded Conv (input normalization, as in pre-activation designs):
    the BN folds into the Conv only with a border correction."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        self.input_bn = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1)
        self.body = nn.Sequential(nn.ReLU(), nn.BatchNorm2d(width), nn.Conv2d(width, width, 1))
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(self.conv(self.input_bn(x)))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


class ConvTransposeDecoder(nn.Module):
    """A decoder of ConvTranspose-bn-relu upsampling stages (the middle one grouped)."""

    def __init__(
        self, latent: int = 16, widths: tuple[int, ...] = (32, 16, 8), out_channels: int = 3
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = latent
        for i, w in enumerate(widths):
            groups = 2 if i == 1 else 1
            layers += [
                nn.ConvTranspose2d(c, w, 4, stride=2, padding=1, groups=groups),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
            ]
            c = w
        layers += [nn.Conv2d(c, out_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
