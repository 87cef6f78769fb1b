"""Initialization schemes (measured std against the formula) and the lecture's activation-statistics
experiment, through optkit's API: 7 layers of width 4096, batch 16."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from optkit.torch.init import SCHEMES, fans, gain, initialize
from optkit.torch.stats import (
    activation_stats,
    format_table,
    gradient_stats,
    lecture_network,
    plot,
)

LINEAR = (nn.Linear, 512, 1024)  # fan_in 512, fan_out 1024
CONV = (nn.Conv2d, 32, 64)  # with 3x3 kernels: fan_in 288, fan_out 576


def layer(kind):
    cls, c_in, c_out = kind
    return cls(c_in, c_out) if cls is nn.Linear else cls(c_in, c_out, 3)


@pytest.mark.parametrize("kind", [LINEAR, CONV], ids=["linear", "conv"])
@pytest.mark.parametrize(
    "scheme, expected_std",
    [
        ("small", lambda fi, fo: 0.01),
        ("xavier", lambda fi, fo: 1 / math.sqrt(fi)),
        ("glorot_uniform", lambda fi, fo: math.sqrt(6 / (fi + fo)) / math.sqrt(3)),
        ("kaiming", lambda fi, fo: math.sqrt(2) / math.sqrt(fi)),
    ],
)
def test_measured_std_matches_the_formula(kind, scheme, expected_std):
    module = layer(kind)
    fan_in, fan_out = fans(module.weight)
    if kind is CONV:
        assert fan_in == 32 * 9 and fan_out == 64 * 9  # kernel_size^2 * in_channels
    initialize(module, scheme, std=0.01, generator=torch.Generator().manual_seed(0))
    measured = float(module.weight.detach().std())
    assert measured == pytest.approx(expected_std(fan_in, fan_out), rel=0.03)
    assert float(module.bias.detach().abs().max()) == 0.0
    if scheme == "glorot_uniform":
        assert float(module.weight.detach().abs().max()) <= math.sqrt(6 / (fan_in + fan_out))


def test_constant_and_leaky_relu_gain():
    module = nn.Linear(100, 50)
    initialize(module, "constant", value=0.25)
    assert torch.all(module.weight == 0.25)
    assert gain("leaky_relu", 0.2) == pytest.approx(math.sqrt(2 / 1.04))
    initialize(module, "kaiming", nonlinearity="leaky_relu", negative_slope=0.2)
    expected = math.sqrt(2 / 1.04) / math.sqrt(100)
    assert float(module.weight.detach().std()) == pytest.approx(expected, rel=0.05)


def test_lsuv_gives_unit_variance_outputs_layer_by_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.Tanh())
    batch = torch.randn(256, 64) * 5
    initialize(model, "lsuv", batch=batch, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hidden = model[0](batch)
        assert float(hidden.std()) == pytest.approx(1.0, abs=0.02)
        assert float(model[2](model[1](hidden)).std()) == pytest.approx(1.0, abs=0.02)


def test_bad_schemes_are_clear_errors():
    with pytest.raises(ValueError, match="unknown init scheme 'he'"):
        initialize(nn.Linear(2, 2), "he")
    with pytest.raises(ValueError, match="needs a batch"):
        initialize(nn.Linear(2, 2), "lsuv")
    assert set(SCHEMES) >= {"constant", "small", "xavier", "glorot_uniform", "kaiming", "lsuv"}


def run_experiment(activation: str, scheme: str, std: float = 0.01):
    net = lecture_network(activation, layers=7, width=4096)
    initialize(
        net, scheme, std=std, nonlinearity=activation, generator=torch.Generator().manual_seed(1)
    )
    batch = torch.randn(16, 4096, generator=torch.Generator().manual_seed(0))
    return activation_stats(net, batch)


@pytest.mark.slow
def test_the_lectures_initialization_experiment(tmp_path):
    """tanh: std 0.01 collapses the last layers toward 0, std 0.05 saturates them at +-1, Xavier
    keeps them spread; ReLU: Xavier shrinks them layer by layer, Kaiming keeps them stable."""
    small = [s.std for s in run_experiment("tanh", "small", 0.01)]
    assert all(b < a for a, b in itertools.pairwise(small))
    assert small[-1] < 0.05 and small[-1] / small[0] < 0.1

    big = run_experiment("tanh", "small", 0.05)
    assert all(s.saturated > 0.25 and s.std > 0.8 for s in big)

    xavier = run_experiment("tanh", "xavier")
    assert all(0.2 < s.std < 0.7 and s.saturated < 0.01 for s in xavier)

    relu_xavier = [s.std for s in run_experiment("relu", "xavier")]
    assert all(b < a for a, b in itertools.pairwise(relu_xavier))
    assert relu_xavier[-1] / relu_xavier[0] < 0.2

    kaiming = run_experiment("relu", "kaiming")
    stds = [s.std for s in kaiming]
    assert all(0.6 < s < 1.2 for s in stds) and 0.8 < stds[-1] / stds[0] < 1.25

    png = plot(kaiming, tmp_path / "kaiming.png", "ReLU, Kaiming")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "ReLU" in format_table(kaiming)


def test_gradient_statistics_after_one_backward_pass():
    torch.manual_seed(0)
    net = lecture_network("tanh", layers=4, width=256)
    initialize(net, "small", std=0.01)
    stats = gradient_stats(net, torch.randn(16, 256), labels=torch.randint(0, 256, (16,)))
    assert all(s.weight_grad_std is not None and s.weight_grad_std > 0 for s in stats)
    upstream = [s.activation_grad_std for s in stats]
    # small init: each layer back scales the gradient by about 0.01 * sqrt(256), so it vanishes
    assert all(a < b / 3 for a, b in itertools.pairwise(upstream))
    assert all(p.grad is None or float(p.grad.abs().max()) == 0 for p in net.parameters())
    assert "dW std" in format_table(stats)
