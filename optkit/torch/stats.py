"""Activation and gradient statistics per layer, through forward hooks: the lecture's experiment of
watching activations collapse to zero, saturate, or stay spread as the initialization changes.

`activation_stats(model, batch)` records every activation layer's output (the layers of
`ACTIVATION_TYPES`; a model with none is measured at its Linear / Conv outputs): mean, std, a
histogram, and the share of values saturated (|y| > 0.99 for tanh / sigmoid-like ranges, exactly 0
for ReLU-like ones). `gradient_stats(model, batch)` runs one forward and backward pass and reports
the std of each layer's weight gradient and of the gradient reaching each activation.
`format_table` prints them; `plot` draws the per-layer histograms as a PNG (matplotlib, Agg).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from optkit.core.memory import physical_memory
from optkit.io.outputs import check_output
from optkit.models.layers import Maxout

ACTIVATION_TYPES = (
    nn.Sigmoid, nn.Tanh, nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.SiLU, nn.GELU, Maxout,
)  # fmt: skip
BINS = 50


@dataclass
class LayerStats:
    """One layer's activations (and, after `gradient_stats`, gradients)."""

    name: str
    kind: str
    mean: float
    std: float
    saturated: float  # share of outputs at the activation's flat ends (see module docstring)
    counts: list[int] = field(default_factory=list)
    edges: list[float] = field(default_factory=list)
    weight_grad_std: float | None = None
    activation_grad_std: float | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _watched(model: nn.Module) -> list[tuple[str, nn.Module]]:
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, ACTIVATION_TYPES)]
    if found:
        return found
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]


def _saturated(kind: str, values: torch.Tensor) -> float:
    if kind in ("Tanh",):
        return float((values.abs() > 0.99).float().mean())
    if kind in ("Sigmoid",):
        return float(((values < 0.01) | (values > 0.99)).float().mean())
    if kind in ("ReLU",):
        return float((values == 0).float().mean())
    return 0.0


def activation_stats(
    model: nn.Module, batch: torch.Tensor, *, bins: int = BINS
) -> list[LayerStats]:
    """Per-layer statistics of one forward pass on `batch` (the model's mode is kept)."""
    records: list[tuple[str, nn.Module, torch.Tensor]] = []
    handles = [
        module.register_forward_hook(
            lambda m, _i, out, name=name: records.append((name, m, out.detach()))
        )
        for name, module in _watched(model)
    ]
    try:
        with torch.no_grad():
            model(batch)
    finally:
        for handle in handles:
            handle.remove()
    stats = []
    for name, module, out in records:
        values = out.float().flatten()
        finite = values[torch.isfinite(values)]  # an exploding run overflows: mean / std say so
        low, high = (float(finite.min()), float(finite.max())) if finite.numel() else (-1.0, 1.0)
        if high - low < 1e-6 * max(1.0, abs(low)):  # (nearly) one value: a range around it
            pad = 1e-3 * max(1.0, abs(low))
            low, high = low - pad, high + pad
        counts, edges = np.histogram(finite.double().numpy(), bins=bins, range=(low, high))
        kind = type(module).__name__
        stats.append(
            LayerStats(
                name or kind,
                kind,
                float(values.mean()),
                float(values.std()),
                _saturated(kind, values),
                counts.tolist(),
                edges.tolist(),
            )
        )
    return stats


def gradient_stats(
    model: nn.Module, batch: torch.Tensor, labels: torch.Tensor | None = None
) -> list[LayerStats]:
    """`activation_stats` plus gradients after one backward pass: of the cross-entropy with
    `labels` when given, else of 0.5 * mean(output^2). Gradients are cleared afterwards."""
    stats = activation_stats(model, batch)
    outputs: list[torch.Tensor] = []

    def keep(_module: nn.Module, _inputs: object, out: torch.Tensor) -> None:
        out.retain_grad()
        outputs.append(out)

    handles = [module.register_forward_hook(keep) for _, module in _watched(model)]
    try:
        model.zero_grad()
        result = model(batch)
        if labels is not None:
            loss = nn.functional.cross_entropy(result, labels)
        else:
            loss = 0.5 * result.pow(2).mean()
        loss.backward()
    finally:
        for handle in handles:
            handle.remove()
    weights = [
        m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d)
    ]
    for i, entry in enumerate(stats):
        grad = outputs[i].grad if i < len(outputs) else None
        entry.activation_grad_std = float(grad.std()) if grad is not None else None
        weight_grad = weights[i].weight.grad if i < len(weights) else None
        if weight_grad is not None:
            entry.weight_grad_std = float(weight_grad.std())
    model.zero_grad()
    return stats


def format_table(stats: Sequence[LayerStats]) -> str:
    lines = [f"{'layer':<24} {'kind':<10} {'mean':>10} {'std':>10} {'saturated':>10}"]
    with_grads = any(s.weight_grad_std is not None for s in stats)
    if with_grads:
        lines[0] += f" {'dW std':>10} {'dA std':>10}"
    for s in stats:
        line = f"{s.name:<24} {s.kind:<10} {s.mean:>10.4f} {s.std:>10.4f} {s.saturated:>9.1%}"
        if with_grads:
            line += f" {_g(s.weight_grad_std):>10} {_g(s.activation_grad_std):>10}"
        lines.append(line)
    return "\n".join(lines)


def _g(value: float | None) -> str:
    return "-" if value is None else f"{value:.3e}"


def plot(stats: Sequence[LayerStats], path: str | Path, title: str = "") -> Path:
    """Per-layer histograms in one row, the mean and std per layer under them; written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(stats)
    figure, axes = plt.subplots(2, max(count, 1), figsize=(2.2 * max(count, 2), 4.4), squeeze=False)
    for i, entry in enumerate(stats):
        axis = axes[0][i]
        centers = (np.array(entry.edges[:-1]) + np.array(entry.edges[1:])) / 2
        axis.bar(centers, entry.counts, width=np.diff(entry.edges), color="tab:blue")
        axis.set_title(f"{i + 1}: {entry.kind}", fontsize=8)
        axis.tick_params(labelsize=6)
    summary = figure.add_subplot(2, 1, 2)
    for axis in axes[1]:
        axis.remove()
    layers_axis = np.arange(1, count + 1)
    summary.plot(layers_axis, [s.mean for s in stats], "o-", label="mean")
    summary.plot(layers_axis, [s.std for s in stats], "s-", label="std")
    summary.set_xlabel("layer")
    summary.legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    target = check_output(path, what="plot")  # a directory or a missing folder: InputError
    kind = target.suffix.lower().lstrip(".") or "png"  # no suffix: a PNG under exactly that name
    folder = target.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        figure.savefig(tmp, dpi=80, format="jpeg" if kind == "jpg" else kind)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(figure)
    return target


def lecture_network(
    activation: str = "tanh", layers: int = 7, width: int = 4096, seed: int = 0
) -> nn.Sequential:
    """The lecture's experiment network: `layers` fully connected layers of `width` units, each
    followed by the activation (tanh or relu). Initialize it with `optkit.torch.init.initialize`."""
    from optkit.models.layers import make_activation

    torch.manual_seed(seed)
    modules: list[nn.Module] = []
    for _ in range(layers):
        modules += [nn.Linear(width, width), make_activation(activation, width)]
    return nn.Sequential(*modules)


def lecture_stats(
    activation: str, init_scheme: str, *, std: float = 0.01, layers: int = 7, width: int = 4096,
    batch: int = 16, seed: int = 0, gradients: bool = False,
) -> list[LayerStats]:  # fmt: skip
    """The lecture's experiment (`optkit stats`): `lecture_network` initialized with `init_scheme`
    on a batch of standard normal inputs, its per-layer activation (and, with `gradients`,
    gradient) statistics. A network that would not fit in memory, or an init scheme that does not
    apply, is an InputError."""
    from optkit.errors import InputError
    from optkit.torch.init import initialize

    check_memory(layers, width, batch, gradients, activation)
    try:
        net = lecture_network(activation, layers, width, seed)
        x = torch.randn(batch, width, generator=torch.Generator().manual_seed(seed))
        initialize(net, init_scheme, std=std, nonlinearity=activation, batch=x,
                   generator=torch.Generator().manual_seed(seed + 1))  # fmt: skip
    except ValueError as exc:
        raise InputError(str(exc)) from None
    return gradient_stats(net, x) if gradients else activation_stats(net, x)


def check_memory(layers: int, width: int, batch: int, gradients: bool, activation: str) -> None:
    """InputError for a lecture network that would not fit: more than half of this machine's
    memory (weights, and activations with their histograms; doubled with gradients)."""
    from optkit.errors import InputError

    pieces = 3 if activation == "maxout" else 1  # maxout: a second Linear to 2 * width
    weights = 4 * layers * width * (width + 1) * pieces
    values = 4 * layers * batch * width * 4  # activations and their histograms
    need = weights * (2 if gradients else 1) + values * (2 if gradients else 1)
    memory = physical_memory()
    if memory is not None and need > memory / 2:
        raise InputError(
            f"--layers {layers} --width {width} --batch {batch}: the network needs about "
            f"{need / 1e9:.1f} GB, more than half of this machine's {memory / 1e9:.0f} GB"
        )
