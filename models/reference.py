"""ResNet-18, ResNet-50, DenseNet-121 and MobileNetV2 in torchvision's layout, from torch.nn alone
(torchvision's compiled ops do not load against the CPU torch build here, and nothing may be
downloaded).

The module names, parameter shapes and initialization are torchvision's (`torchvision.models.resnet18`,
`torchvision.models.mobilenet_v2`), so a state_dict saved from torchvision loads into these strictly:
ResNet-18 has conv1, bn1, layer1 .. layer4 (BasicBlocks with conv1/bn1/conv2/bn2 and a `downsample`
of 1x1 conv + BN where the shape changes), avgpool and fc (11,689,512 parameters at 1000 classes);
ResNet-50 the same with Bottlenecks (conv1/bn1 1x1, conv2/bn2 3x3 carrying the stride, conv3/bn3 1x1
to 4x the width) (25,557,032 parameters); DenseNet-121 has features (conv0, norm0, relu0, pool0,
denseblock1 .. 4 of 6, 12, 24, 16 pre-activation layers `denselayerN` with norm1/conv1 1x1 to 128
channels and norm2/conv2 3x3 to 32, transition1 .. 3 of norm/conv/pool halving the channels, norm5)
and classifier (7,978,856 parameters);
MobileNetV2 has features.0 .. features.18 (a conv-BN-ReLU6 stem, 17 inverted residual blocks whose
`conv` holds expand / depthwise / project layers, a 1x1 conv-BN-ReLU6) and classifier (Dropout,
Linear) (3,504,872 parameters at 1000 classes, width 1.0).

    optkit train --model optkit.models.reference:resnet18 --model-arg num_classes=3 ...
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "DenseNet",
    "InvertedResidual",
    "MobileNetV2",
    "ResNet",
    "densenet121",
    "mobilenet_v2",
    "resnet18",
    "resnet50",
]


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block (expansion 1)."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's ResNet bottleneck (expansion 4; the stride on the 3x3 conv, as in V1.5)."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's ResNet: `layers` blocks of `block` per stage (ResNet-18: 2, 2, 2, 2 BasicBlocks;
    ResNet-50: 3, 4, 6, 3 Bottlenecks)."""

    def __init__(
        self,
        layers: tuple[int, int, int, int] = (2, 2, 2, 2),
        num_classes: int = 1000,
        in_channels: int = 3,
        block: type[BasicBlock] | type[Bottleneck] = BasicBlock,
    ) -> None:
        super().__init__()
        self.block = block
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        width = planes * self.block.expansion
        if stride != 1 or self.inplanes != width:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, width, 1, stride=stride, bias=False),
                nn.BatchNorm2d(width),
            )
        layers: list[nn.Module] = [self.block(self.inplanes, planes, stride, downsample)]
        self.inplanes = width
        layers += [self.block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-18 in torchvision's layout (random initialization as torchvision's)."""
    return ResNet((2, 2, 2, 2), num_classes, in_channels)


def resnet50(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-50 in torchvision's layout (random initialization as torchvision's)."""
    return ResNet((3, 4, 6, 3), num_classes, in_channels, block=Bottleneck)


class _DenseLayer(nn.Module):
    """DenseNet's pre-activation layer: BN-ReLU-Conv 1x1 to `bn_size * growth` channels, then
    BN-ReLU-Conv 3x3 to `growth` channels, computed from the concatenation of all earlier outputs."""

    def __init__(self, c_in: int, growth: int, bn_size: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(c_in)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(c_in, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        out = self.conv1(self.relu1(self.norm1(torch.cat(features, 1))))
        return self.conv2(self.relu2(self.norm2(out)))


class _DenseBlock(nn.ModuleDict):
    """`layers` dense layers (keys denselayer1 ..); the output concatenates input and all layers."""

    def __init__(self, layers: int, c_in: int, growth: int, bn_size: int) -> None:
        super().__init__()
        for i in range(layers):
            self.add_module(f"denselayer{i + 1}", _DenseLayer(c_in + i * growth, growth, bn_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


def _transition(c_in: int, c_out: int) -> nn.Sequential:
    """DenseNet's transition: BN-ReLU-Conv 1x1 to `c_out`, 2x2 average pool (keys norm, conv)."""
    return nn.Sequential(
        OrderedDict(
            norm=nn.BatchNorm2d(c_in),
            relu=nn.ReLU(inplace=True),
            conv=nn.Conv2d(c_in, c_out, 1, bias=False),
            pool=nn.AvgPool2d(2, 2),
        )
    )


class DenseNet(nn.Module):
    """torchvision's DenseNet-BC: `blocks` dense layers per block (DenseNet-121: 6, 12, 24, 16),
    `growth` channels per layer, transitions halving the channels."""

    def __init__(
        self,
        blocks: tuple[int, int, int, int] = (6, 12, 24, 16),
        num_classes: int = 1000,
        in_channels: int = 3,
        growth: int = 32,
        init_features: int = 64,
        bn_size: int = 4,
    ) -> None:
        super().__init__()
        stem = OrderedDict(
            conv0=nn.Conv2d(in_channels, init_features, 7, stride=2, padding=3, bias=False),
            norm0=nn.BatchNorm2d(init_features),
            relu0=nn.ReLU(inplace=True),
            pool0=nn.MaxPool2d(3, stride=2, padding=1),
        )
        self.features = nn.Sequential(stem)
        channels = init_features
        for i, layers in enumerate(blocks):
            self.features.add_module(
                f"denseblock{i + 1}", _DenseBlock(layers, channels, growth, bn_size)
            )
            channels += layers * growth
            if i != len(blocks) - 1:
                self.features.add_module(f"transition{i + 1}", _transition(channels, channels // 2))
                channels //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(channels))
        self.classifier = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.relu(self.features(x))
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        return self.classifier(torch.flatten(x, 1))


def densenet121(num_classes: int = 1000, in_channels: int = 3) -> DenseNet:
    """DenseNet-121 in torchvision's layout (random initialization as torchvision's)."""
    return DenseNet((6, 12, 24, 16), num_classes, in_channels)


def _make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's channel rounding: the nearest multiple of `divisor`, never below 90 %."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def _conv_bn_relu6(c_in: int, c_out: int, kernel: int = 3, stride: int = 1,
                   groups: int = 1) -> nn.Sequential:  # fmt: skip
    """torchvision's Conv2dNormActivation with BatchNorm and ReLU6: keys .0 (conv), .1 (BN)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand (unless t = 1), 3x3 depthwise, 1x1 linear projection; a
    residual connection when the shape is kept."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        self.stride = stride
        hidden = round(inp * expand_ratio)
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_relu6(inp, hidden, kernel=1))
        layers += [
            _conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision's MobileNetV2 (`width_mult` scales the channels, rounded to multiples of 8)."""

    SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
               (6, 160, 3, 2), (6, 320, 1, 1))  # fmt: skip  # t, c, n, s

    def __init__(
        self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2,
        in_channels: int = 3,
    ) -> None:  # fmt: skip
        super().__init__()
        channels = _make_divisible(32 * width_mult)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [_conv_bn_relu6(in_channels, channels, stride=2)]
        for t, c, n, s in self.SETTING:
            out = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(channels, out, s if i == 0 else 1, t))
                channels = out
        features.append(_conv_bn_relu6(channels, self.last_channel, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes)
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v2(
    num_classes: int = 1000, width_mult: float = 1.0, in_channels: int = 3
) -> MobileNetV2:
    """MobileNetV2 in torchvision's layout (random initialization as torchvision's)."""
    return MobileNetV2(num_classes, width_mult, in_channels=in_channels)
