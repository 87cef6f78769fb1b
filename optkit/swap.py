"""Activation swaps: replace every activation of one kind by another, each swap with its error bound.

The catalogue lists the swaps optkit offers. Each entry's bound is sup |f(x) - g(x)| over the real
line for the two functions (with the parameters used), computed by `error_bound` from float64
reference implementations; a swap whose error grows without bound (Relu -> LeakyRelu) is lossy and
needs `allow_lossy`. A bound is per activation: what it does to a model's outputs depends on the
layers after it, so `optkit swap` also measures the outputs (and accuracy, given labelled data).

Sites are found by `activation_forms`: a single op, or a decomposed form (x * Sigmoid(x) is Swish
below opset 24). The replacement is the target's op where the model's opset has it (and ONNX
Runtime runs it no slower than the primitives), else the primitives that compute it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
import onnx_ir as ir

from optkit.core.contract import Decline, Exactness
from optkit.core.graph import (
    Namer,
    add_initializer,
    node_label,
    opset_version,
    replace_nodes,
    rounded,
)
from optkit.core.shapes import infer_shapes
from optkit.errors import InputError
from optkit.passes.canonicalize import attribute
from optkit.passes.forms.activations import find_activations
from optkit.passes.forms.pattern import Match
from optkit.passes.forms.runtime_support import MIN_OPSET, RUNTIME_MAX_OPSET, SLOWER_ON_RUNTIME

# --- float64 reference functions, by kind ------------------------------------------------------

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


Reference = Callable[[np.ndarray, dict[str, Any]], np.ndarray]
REFERENCE: dict[str, Reference] = {
    "Relu": lambda x, a: np.maximum(x, 0.0),
    "LeakyRelu": lambda x, a: np.where(x >= 0, x, a.get("alpha", 0.01) * x),
    "Sigmoid": lambda x, a: _sigmoid(x),
    "Tanh": lambda x, a: np.tanh(x),
    "HardSigmoid": lambda x, a: np.clip(a.get("alpha", 0.2) * x + a.get("beta", 0.5), 0.0, 1.0),
    "HardSwish": lambda x, a: x * np.clip(x / 6.0 + 0.5, 0.0, 1.0),
    "Swish": lambda x, a: x * _sigmoid(a.get("alpha", 1.0) * x),
    "Gelu": lambda x, a: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))),
    "Gelu:tanh": lambda x, a: _gelu_tanh(x),
}

# Parameters a target may take after a colon, in order, with ONNX's defaults.
PARAMETERS: dict[str, tuple[tuple[str, float], ...]] = {
    "LeakyRelu": (("alpha", 0.01),),
    "HardSigmoid": (("alpha", 0.2), ("beta", 0.5)),
    "Swish": (("alpha", 1.0),),
}

# (source, target): what the swap is for. The bound and the exactness are computed, not written.
CATALOGUE: dict[tuple[str, str], str] = {
    ("Gelu", "Gelu:tanh"): "tanh approximation of GELU (BERT, GPT-2); faster where erf is slow",
    ("Gelu:tanh", "Gelu"): "exact (erf) GELU for a model trained with the tanh approximation",
    ("Gelu", "Swish"): "sigmoid GELU, x * sigmoid(1.702 x) (QuickGELU, CLIP)",
    ("Gelu", "Relu"): "ReLU where GELU is unsupported or too slow",
    ("Sigmoid", "HardSigmoid"): "piecewise-linear sigmoid (MobileNetV3 uses alpha 1/6)",
    ("Swish", "HardSwish"): "piecewise-linear Swish (MobileNetV3)",
    ("Swish", "Relu"): "ReLU where Swish is unsupported or too slow",
    ("Relu", "LeakyRelu"): "keeps a gradient for x < 0; changes outputs without bound",
    ("LeakyRelu", "Relu"): "drops the negative slope; changes outputs without bound",
}

GRID_LIMIT = 60.0  # the bound's grid covers [-60, 60]; beyond, every pair here is monotone
GRID_STEP = 2e-4
TAIL_POINTS = np.array([1e2, 1e3, 1e4, 1e6])


@cache
def _error_bound(source: str, source_attrs: tuple, target: str, target_attrs: tuple) -> float:
    f, g = REFERENCE[source], REFERENCE[target]
    fa, ga = dict(source_attrs), dict(target_attrs)
    grid = np.arange(-GRID_LIMIT, GRID_LIMIT + GRID_STEP, GRID_STEP)
    diff = np.abs(f(grid, fa) - g(grid, ga))
    # Between grid points |diff| moves by at most its steepest slope times half a step.
    slack = float(np.max(np.abs(np.diff(diff)))) / 2
    tails = np.concatenate([TAIL_POINTS, -TAIL_POINTS])
    tail_diff = np.abs(f(tails, fa) - g(tails, ga))
    if float(np.max(tail_diff)) > 10 * (float(np.max(diff)) + 1e-12):
        return math.inf  # still growing far out: no bound over the real line
    return max(float(np.max(diff)) + slack, float(np.max(tail_diff)))


def error_bound(
    source: str, source_attrs: dict[str, Any], target: str, target_attrs: dict[str, Any]
) -> float:
    """sup_x |source(x) - target(x)|: the max over a grid of step 2e-4 on [-60, 60] plus the
    largest change between grid points, checked against points out to 1e6; inf when the
    difference keeps growing there."""
    return _error_bound(
        source, tuple(sorted(source_attrs.items())), target, tuple(sorted(target_attrs.items()))
    )


# --- the rules a user asks for -------------------------------------------------------------------


@dataclass(frozen=True)
class SwapRule:
    """Replace activations of kind `source` by `target(**target_attributes)`."""

    source: str
    target: str
    target_attributes: dict[str, float] = field(default_factory=dict)

    def target_text(self) -> str:
        params = ",".join(f"{v:g}" for v in self.target_attributes.values())
        return self.target + (f":{params}" if params else "")

    def describe(self) -> str:
        return f"{self.source} -> {self.target_text()}"


def parse_rule(text: str) -> SwapRule:
    """'SOURCE=TARGET[:p1,p2]', e.g. 'Relu=LeakyRelu:0.01' or 'Gelu=Gelu:tanh'."""
    source, sep, target_text = text.partition("=")
    if not sep or not source or not target_text:
        raise InputError(f"--map {text!r}: expected SOURCE=TARGET, e.g. Gelu=Gelu:tanh")
    target, colon, params_text = target_text.partition(":")
    if colon and not params_text.strip():
        raise InputError(f"--map {text!r}: ':' with no parameter after it")
    spelled = {name.lower(): name for pair in CATALOGUE for name in pair}  # any case
    source, target = spelled.get(source.lower(), source), spelled.get(target.lower(), target)
    if target == "Gelu" and params_text.lower() == "tanh":
        target, params_text = "Gelu:tanh", ""
    if (source, target) not in CATALOGUE:
        offered = ", ".join(f"{s}={t}" for s, t in CATALOGUE)
        raise InputError(f"--map {text!r}: not in the catalogue; offered: {offered}")
    names = PARAMETERS.get(target, ())
    values = [v.strip() for v in params_text.split(",")] if params_text else []
    if any(not v for v in values):
        raise InputError(f"--map {text!r}: an empty parameter")
    if len(values) > len(names):
        raise InputError(f"--map {text!r}: {target} takes {len(names)} parameter(s)")
    attributes = {}
    for (name, default), given in zip(names, values + [None] * len(names), strict=False):
        try:
            attributes[name] = float(given) if given is not None else default
        except ValueError:
            raise InputError(f"--map {text!r}: {name} {given!r} is not a number") from None
        if not math.isfinite(attributes[name]):
            raise InputError(f"--map {text!r}: {name} {given!r} is not a finite number")
        if target == "LeakyRelu" and not 0 <= attributes[name] < 1:
            raise InputError(f"--map {text!r}: LeakyRelu's alpha must be in [0, 1), not {given}")
    if source == "Gelu" and target == "Swish" and not values:
        attributes["alpha"] = 1.702
    return SwapRule(source, target, attributes)


_ALL_SOURCES = [SwapRule(source, target) for source, target in CATALOGUE]

# --- applying them -------------------------------------------------------------------------------


@dataclass
class SwapSite:
    """One activation swapped: where, from what, to what, and the bound for that pair."""

    node: str
    source: str
    target: str
    bound: float

    @property
    def exactness(self) -> Exactness:
        return Exactness.LOSSY if math.isinf(self.bound) else Exactness.APPROXIMATE


def plan(model: ir.Model, rules: Sequence[SwapRule]) -> list[tuple[Match, SwapRule, float]]:
    """Every activation a rule applies to, with the error bound of its swap (nothing changes)."""
    by_source = {rule.source: rule for rule in rules}
    found: list[tuple[Match, SwapRule, float]] = []
    for _, match in find_activations(model):
        rule = by_source.get(match.kind)
        if rule is not None:
            attributes = _reference_attributes(match)
            bound = error_bound(match.kind, attributes, rule.target, rule.target_attributes)
            found.append((match, rule, bound))
    return found


def _reference_attributes(match: Match) -> dict[str, Any]:
    return {k: v for k, v in match.attributes.items() if isinstance(v, float)}


def swap(
    model: ir.Model, rules: Sequence[SwapRule], *, allow_lossy: bool = False
) -> list[SwapSite]:
    """Swap in place; raises InputError, before changing anything, for a lossy swap not allowed
    and for a target parameter the model's element type cannot hold: one that overflows it or
    rounds to zero in it (the activation computes with it in that type, and Swish's alpha becomes a
    constant of that type where Swish does not run natively)."""
    planned = plan(model, rules)
    missing = [r.source for r in rules if not any(rule is r for _, rule, _ in planned)]
    if missing:
        present = sorted({m.kind for m, _, _ in plan(model, _ALL_SOURCES)})
        raise InputError(
            f"no {', '.join(missing)} activation in the model "
            f"(it has {', '.join(present) or 'no activation the catalogue swaps'})"
        )
    lossy = sorted({rule.describe() for _, rule, bound in planned if math.isinf(bound)})
    if lossy and not allow_lossy:
        raise InputError(
            f"{', '.join(lossy)} is lossy (its error has no bound over the real line); "
            "pass --allow-lossy to apply it, with --data/--labels to see the accuracy change"
        )
    opset = opset_version(model)
    namer = Namer(model)
    if any(not isinstance(m.x.type, ir.TensorType) for m, _, _ in planned):
        infer_shapes(model)
    for match, rule, _ in planned:
        label = node_label(match.nodes[0])
        if not isinstance(match.x.type, ir.TensorType):
            raise InputError(f"{label}: the element type of its input is unknown")
        dtype = match.x.type.dtype
        for name, value in rule.target_attributes.items():
            held = rounded(np.array(value, np.float64), dtype)
            if isinstance(held, Decline) or (value != 0 and float(held) == 0):
                raise InputError(
                    f"--map {rule.source}={rule.target_text()}: {name} {value:g} does not fit "
                    f"{dtype.name}, the element type of {label}"
                )
    done = []
    for match, rule, bound in planned:
        graph, label = match.nodes[0].graph, node_label(match.nodes[0])
        assert graph is not None and isinstance(match.x.type, ir.TensorType)
        builder = _Builder(graph, namer, match.x.type.dtype, label)
        output = builder.build(rule.target, rule.target_attributes, match.x, opset)
        replace_nodes(graph, match.nodes, builder.nodes, [match.output], [output])
        done.append(SwapSite(label, match.describe(), rule.target_text(), bound))
    return done


class _Builder:
    """Builds the nodes computing one target activation of x, at the model's opset."""

    def __init__(self, graph: ir.Graph, namer: Namer, dtype: ir.DataType, base: str) -> None:
        self.graph, self.namer, self.dtype, self.base = graph, namer, dtype, base
        self.nodes: list[ir.Node] = []

    def op(self, op_type: str, *inputs: ir.Value, **attributes: Any) -> ir.Value:
        node = ir.Node(
            "",
            op_type,
            list(inputs),
            attributes=[attribute(k, v) for k, v in attributes.items()],
            name=self.namer.fresh(f"{self.base}_{op_type.lower()}"),
            num_outputs=1,
        )
        self.nodes.append(node)
        return node.outputs[0]

    def const(self, value: float) -> ir.Value:
        return add_initializer(
            self.graph, self.namer, f"{self.base}_c", np.array(value, np.float64), self.dtype
        )

    def build(self, target: str, attributes: dict[str, float], x: ir.Value, opset: int) -> ir.Value:
        op_type = target.split(":")[0]
        runs_native = (
            MIN_OPSET.get(op_type, 1) <= opset <= RUNTIME_MAX_OPSET.get(op_type, opset)
            and op_type not in SLOWER_ON_RUNTIME
        )
        if target == "Gelu:tanh":
            if runs_native:
                return self.op("Gelu", x, approximate="tanh")
            cube = self.op("Mul", self.op("Mul", x, x), x)
            inner = self.op("Add", x, self.op("Mul", cube, self.const(0.044715)))
            t = self.op("Tanh", self.op("Mul", inner, self.const(math.sqrt(2 / math.pi))))
            return self._half_x_times_one_plus(x, t)
        if target == "Gelu" and not runs_native:
            e = self.op("Erf", self.op("Mul", x, self.const(math.sqrt(0.5))))
            return self._half_x_times_one_plus(x, e)
        if target == "Swish" and not runs_native:
            alpha = attributes.get("alpha", 1.0)
            gate_input = x if alpha == 1.0 else self.op("Mul", x, self.const(alpha))
            return self.op("Mul", x, self.op("Sigmoid", gate_input))
        if target == "HardSwish" and not runs_native:
            return self.op("Mul", x, self.op("HardSigmoid", x, alpha=1 / 6, beta=0.5))
        return self.op(op_type, x, **attributes)

    def _half_x_times_one_plus(self, x: ir.Value, t: ir.Value) -> ir.Value:
        one_plus = self.op("Add", t, self.const(1.0))
        return self.op("Mul", self.op("Mul", x, one_plus), self.const(0.5))
