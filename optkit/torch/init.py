"""Weight initialization, as in the lecture: constant, small random, Xavier, Glorot uniform,
Kaiming / MSRA, and the data-dependent LSUV.

For a Linear layer fan_in is its input width; for a convolution it is kernel_size^2 * in_channels
(per group). Biases start at zero. The standard deviations:

    small           std (given; 0.01 in the lecture)
    xavier          1 / sqrt(fan_in)                    (the lecture's np.random.randn(...) / sqrt(fan_in))
    glorot_uniform  U(-a, a), a = sqrt(6 / (fan_in + fan_out))
    kaiming         gain / sqrt(fan_in), gain = sqrt(2) for ReLU, sqrt(2 / (1 + slope^2)) for leaky ReLU
                    (He et al. 2015: the ReLU halves the variance, the factor 2 restores it)
    lsuv            orthogonal, then each layer rescaled in turn until its output on a batch has
                    unit variance (Mishkin & Matas, "All you need is a good init", 2015)
"""

from __future__ import annotations

import math

import torch
from torch import nn

SCHEMES = ("constant", "small", "xavier", "glorot_uniform", "kaiming", "lsuv")
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def fans(weight: torch.Tensor) -> tuple[int, int]:
    """(fan_in, fan_out) of a Linear weight (out, in) or a conv weight (out, in/groups, k...)."""
    if weight.dim() < 2:
        raise ValueError(f"a weight of shape {tuple(weight.shape)} has no fan-in")
    receptive = math.prod(weight.shape[2:])
    return weight.shape[1] * receptive, weight.shape[0] * receptive


def gain(nonlinearity: str, negative_slope: float = 0.01) -> float:
    """The Kaiming gain for the nonlinearity after the layer."""
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        return math.sqrt(2.0 / (1.0 + negative_slope**2))
    return 1.0


Layer = nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d


def layers(model: nn.Module) -> list[Layer]:
    """The Linear and Conv layers of `model`, in order."""
    return [m for m in model.modules() if isinstance(m, _LAYERS)]


def initialize(
    model: nn.Module,
    scheme: str,
    *,
    std: float = 0.01,
    value: float = 0.0,
    nonlinearity: str = "relu",
    negative_slope: float = 0.01,
    generator: torch.Generator | None = None,
    batch: torch.Tensor | None = None,
) -> nn.Module:
    """Initialize every Linear / Conv layer of `model` in place with `scheme` (see SCHEMES).

    `lsuv` needs `batch`, a sample of inputs. Returns the model.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown init scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    if scheme == "lsuv":
        if batch is None:
            raise ValueError("lsuv initialization needs a batch of inputs")
        return lsuv(model, batch, generator=generator)
    with torch.no_grad():
        for layer in layers(model):
            weight = layer.weight
            fan_in, fan_out = fans(weight)
            if scheme == "constant":
                weight.fill_(value)
            elif scheme == "glorot_uniform":
                bound = math.sqrt(6.0 / (fan_in + fan_out))
                weight.uniform_(-bound, bound, generator=generator)
            else:
                sigma = {
                    "small": std,
                    "xavier": 1.0 / math.sqrt(fan_in),
                    "kaiming": gain(nonlinearity, negative_slope) / math.sqrt(fan_in),
                }[scheme]
                weight.normal_(0.0, sigma, generator=generator)
            if layer.bias is not None:
                layer.bias.zero_()
    return model


def lsuv(
    model: nn.Module,
    batch: torch.Tensor,
    *,
    tolerance: float = 0.02,
    max_rounds: int = 10,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Layer-sequential unit-variance init: orthogonal weights, then, layer by layer from the input,
    the weight is divided by the std of the layer's output on `batch` until it is within
    `tolerance` of 1. The model's train/eval mode is kept."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for layer in layers(model):
            flat = layer.weight.view(layer.weight.shape[0], -1)
            nn.init.orthogonal_(flat, generator=generator)
            if layer.bias is not None:
                layer.bias.zero_()
        for layer in layers(model):
            captured: list[torch.Tensor] = []

            def capture(_m: nn.Module, _i: object, out: torch.Tensor, into=captured) -> None:
                into.append(out)

            handle = layer.register_forward_hook(capture)
            try:
                for _ in range(max_rounds):
                    captured.clear()
                    model(batch)
                    std = float(captured[0].std())
                    if not math.isfinite(std) or std == 0.0 or abs(std - 1.0) < tolerance:
                        break
                    layer.weight.div_(std)
            finally:
                handle.remove()
    model.train(was_training)
    return model
