"""The activations optkit knows, as single ONNX ops and as the chains of primitives exporters emit.

`recognize(node, reader)` reads the activation whose output `node` computes. It returns a `Match`
(its kind, the ONNX op and attributes that compute it, its input `x` and the nodes that compute it
now), a `Decline` saying why a pattern that matched in structure cannot be used (a constant
that is not the function's), or None. Forms, with f(x) written as exporters write it:

    Gelu        0.5 * x * (1 + Erf(x / sqrt(2)))                          (any order of the products)
    Gelu:tanh   0.5 * x * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))    (x^3 as Pow or x*x*x)
    Swish       x * Sigmoid(x), x * Sigmoid(alpha * x)                     (Swish op: opset 24)
    HardSwish   x * HardSigmoid(x; 1/6, 1/2), x * Clip(x + 3, 0, 6) / 6
    HardSigmoid Clip(x + 3, 0, 6) / 6, Clip(alpha * x + beta, 0, 1)
    Mish        x * Tanh(Softplus(x))
    Softplus    Log(Exp(x) + 1); Where(x > 20, x, Softplus(x)) (torch's threshold)
    Elu         Where(x > 0, x, alpha * (Exp(x) - 1)), alpha = 1 without the product
    Selu        gamma * Elu(x; alpha)
    Celu        Max(x, 0) + Min(0, alpha * (Exp(x / alpha) - 1))
    LeakyRelu   Max(x, alpha * x) (0 < alpha < 1); Where(x > 0, x, alpha * x); PRelu with one slope
    Relu        Max(x, 0); Clip(x, 0, inf); Where(x < 0, 0, x) (Clip(x, 0) and Where(x > 0, x, 0)
                differ from Relu at +inf and NaN: declined)

`x > 0` may also be written x >= 0, or x < 0 / x <= 0 with the branches swapped.
"""

from __future__ import annotations

import math
from itertools import permutations

import numpy as np
import onnx_ir as ir

from optkit.core.contract import Decline
from optkit.core.graph import attr_float, attr_str, is_default_domain
from optkit.passes.forms.pattern import (
    Match,
    Product,
    Reader,
    close,
    match,
    producer,
)

SQRT_HALF = math.sqrt(0.5)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
GELU_CUBIC = 0.044715
SOFTPLUS_THRESHOLD = 20.0  # torch.nn.Softplus's default: x above it returns x

# The first opset of the default domain with each op (the versions optkit emits).
MIN_OPSET: dict[str, int] = {
    "Relu": 6,
    "LeakyRelu": 6,
    "PRelu": 6,
    "Elu": 6,
    "Selu": 6,
    "Celu": 12,
    "Sigmoid": 6,
    "Tanh": 6,
    "Softplus": 1,
    "Softsign": 1,
    "HardSigmoid": 6,
    "HardSwish": 14,
    "Mish": 18,
    "Gelu": 20,
    "Swish": 24,
    "ThresholdedRelu": 10,
    "Clip": 6,
}
ACTIVATION_OPS = frozenset(MIN_OPSET)


def native(node: ir.Node, reader: Reader) -> Match | None:
    """A single activation node, read as what it computes."""
    if not is_default_domain(node.domain) or node.op_type not in ACTIVATION_OPS:
        return None
    if node.op_type == "Clip" or not node.inputs or node.inputs[0] is None:
        return None
    attributes = {name: attr.value for name, attr in node.attributes.items()}
    kind = node.op_type
    if kind == "Gelu" and attr_str(node, "approximate", "none") == "tanh":
        kind = "Gelu:tanh"
    return match(kind, node.op_type, attributes, node.inputs[0], [node])


def find_activations(model: ir.Model) -> list[tuple[ir.Graph, Match]]:
    """Every activation of `model`, each graph in node order: a decomposed form whose inner values
    nothing else reads, else the single activation op (the nodes of a form are not listed again)."""
    from optkit.core.graph import ConstantPolicy
    from optkit.passes.forms.pattern import forms_from_the_end, private

    def activation(node: ir.Node, reader: Reader) -> Match | None:
        found = recognize(node, reader)
        if isinstance(found, Match) and private(found.nodes, found.output, reader.graph) is None:
            return found
        return native(node, reader)

    by_graph: dict[int, tuple[ir.Graph, list[Match]]] = {}
    for graph, _, found in forms_from_the_end(model, ConstantPolicy(model), activation):
        assert isinstance(found, Match)
        by_graph.setdefault(id(graph), (graph, []))[1].append(found)
    return [(graph, m) for graph, matches in by_graph.values() for m in reversed(matches)]


def recognize(node: ir.Node, reader: Reader) -> Match | Decline | None:
    """The decomposed activation whose output `node` computes (see the module docstring)."""
    if not is_default_domain(node.domain):
        return None
    for form in _FORMS.get(node.op_type, ()):
        found = form(node, reader)
        if found is not None:
            return found
    return None


# --- the forms, by the op type of their last node --------------------------------------------


def _gelu(node: ir.Node, reader: Reader) -> Match | Decline | None:
    p = reader.product(node)
    if p is None or len(p.terms) != 2 or p.divisors:
        return None
    for x, other in permutations(p.terms):
        add = producer(other, "Add")
        split = reader.split(add) if add is not None else None
        if split is None or not close(split[0], 1.0):
            continue
        inner = producer(split[1], "Erf", "Tanh")
        if inner is None:
            continue
        argument = reader.product_of(inner.inputs[0])
        if argument is None:
            continue
        nodes = [*p.nodes, add, inner, *argument.nodes]
        if inner.op_type == "Erf" and argument.only(x):
            return _checked(
                match("Gelu", "Gelu", {}, x, nodes),
                [(p, 0.5, "0.5"), (argument, SQRT_HALF, "1/sqrt(2)")],
                reader.interior(node),
            )
        if inner.op_type == "Tanh":
            found = _gelu_tanh_argument(x, argument, reader)
            if found is not None:
                cubic, cubic_nodes = found
                return _checked(
                    match("Gelu:tanh", "Gelu", {"approximate": "tanh"}, x, [*nodes, *cubic_nodes]),
                    [
                        (p, 0.5, "0.5"),
                        (argument, SQRT_2_OVER_PI, "sqrt(2/pi)"),
                        (cubic, GELU_CUBIC, "0.044715"),
                    ],
                    reader.interior(node),
                )
    return None


def _gelu_tanh_argument(
    x: ir.Value, argument: Product, reader: Reader
) -> tuple[Product, list[ir.Node]] | None:
    """sqrt(2/pi) * (x + 0.044715 x^3): `argument` is the outer product; returns the cubic term."""
    if len(argument.terms) != 1 or argument.divisors:
        return None
    add = producer(argument.terms[0], "Add")
    if add is None or len(add.inputs) != 2:
        return None
    for first, second in permutations(add.inputs):
        if first is not x:
            continue
        cubic = reader.product_of(second)
        if cubic is not None and cubic.only(x, x, x):
            return cubic, [add, *cubic.nodes]
    return None


def _checked(
    found: Match | None, constants: list[tuple[Product, float, str]], interior: bool
) -> Match | Decline | None:
    """`found`, or why not: a constant that is not the function's (None, not a reason, when the
    product goes on into a larger one: the match is then being tried from the wrong end)."""
    if found is None:
        return None
    for product, expected, name in constants:
        if not close(product.coefficient, expected, product.dtype):
            if interior:
                return None
            return Decline(
                f"{found.kind} pattern, but its constant {product.coefficient:.7g} is not "
                f"{name} = {expected:.7g}"
            )
    return found


def _product_forms(node: ir.Node, reader: Reader) -> Match | Decline | None:
    """Swish, HardSwish, HardSigmoid as Clip/6, Mish and Selu: all end in a product."""
    found = _gelu(node, reader)
    if found is not None:
        return found
    p = reader.product(node)
    if p is None or p.divisors:
        return None
    if len(p.terms) == 1:
        return _scaled(p, reader)
    if len(p.terms) != 2:
        return None
    for x, other in permutations(p.terms):
        gate = producer(other, "Sigmoid", "HardSigmoid", "Clip", "Tanh")
        if gate is None or not gate.inputs:
            continue
        nodes = [*p.nodes, gate]
        if gate.op_type == "Sigmoid" and close(p.coefficient, 1.0):
            if gate.inputs[0] is x:
                return match("Swish", "Swish", {"alpha": 1.0}, x, nodes)
            scaled = reader.product_of(gate.inputs[0])
            if scaled is not None and scaled.only(x):
                alpha = scaled.coefficient
                return match("Swish", "Swish", {"alpha": alpha}, x, nodes + scaled.nodes)
        if gate.op_type == "HardSigmoid" and gate.inputs[0] is x and close(p.coefficient, 1.0):
            if close(attr_float(gate, "alpha", 0.2), 1 / 6) and close(
                attr_float(gate, "beta", 0.5), 0.5
            ):
                return match("HardSwish", "HardSwish", {}, x, nodes)
        if gate.op_type == "Clip" and close(p.coefficient, 1 / 6):
            shifted = _relu6_of_shift(gate, reader)
            if shifted is not None and shifted[0] is x:
                return match("HardSwish", "HardSwish", {}, x, nodes + shifted[1])
        if gate.op_type == "Tanh" and close(p.coefficient, 1.0):
            softplus = producer(gate.inputs[0], "Softplus")
            if softplus is not None and softplus.inputs[0] is x:
                return match("Mish", "Mish", {}, x, [*nodes, softplus])
    return None


def _scaled(p: Product, reader: Reader) -> Match | None:
    """c * Clip(x + 3, 0, 6) with c = 1/6 (HardSigmoid), gamma * Elu(x) (Selu)."""
    (term,) = p.terms
    clip = producer(term, "Clip")
    if clip is not None and close(p.coefficient, 1 / 6):
        shifted = _relu6_of_shift(clip, reader)
        if shifted is not None:
            attributes = {"alpha": 1 / 6, "beta": 0.5}
            return match(
                "HardSigmoid", "HardSigmoid", attributes, shifted[0], [*p.nodes, clip, *shifted[1]]
            )
    elu = producer(term, "Elu")
    if elu is not None and p.coefficient > 0:
        attributes = {"alpha": attr_float(elu, "alpha", 1.0), "gamma": p.coefficient}
        return match("Selu", "Selu", attributes, elu.inputs[0], [*p.nodes, elu])
    return None


def _relu6_of_shift(clip: ir.Node, reader: Reader) -> tuple[ir.Value, list[ir.Node]] | None:
    """Clip(x + 3, 0, 6): returns x and the Add."""
    if _clip_bounds(clip, reader) != (0.0, 6.0):
        return None
    add = producer(clip.inputs[0], "Add")
    split = reader.split(add) if add is not None else None
    if add is None or split is None or not close(split[0], 3.0):
        return None
    return split[1], [add]


# An omitted Clip bound: the dtype's largest finite value (never equal to an explicit inf).
_LARGEST = float(np.finfo(np.float64).max)


def _clip_bounds(clip: ir.Node, reader: Reader) -> tuple[float, float] | None:
    """(min, max) of a Clip whose bounds are constants (attributes before opset 11). An omitted
    bound is the dtype's lowest / largest finite value (so Clip(x, 0) maps +inf to the largest
    float), given here as +-`_LARGEST`: it never equals an explicit inf."""
    if "min" in clip.attributes or "max" in clip.attributes or len(clip.inputs) == 1:
        return (attr_float(clip, "min", -_LARGEST), attr_float(clip, "max", _LARGEST))
    bounds = []
    for index, default in ((1, -_LARGEST), (2, _LARGEST)):
        value = clip.inputs[index] if len(clip.inputs) > index else None
        if value is None:
            bounds.append(default)
            continue
        constant = reader.scalar(value)
        if constant is None:
            return None
        bounds.append(constant)
    return bounds[0], bounds[1]


def _clip(node: ir.Node, reader: Reader) -> Match | Decline | None:
    """Clip(x, 0, inf) is Relu; Clip(alpha * x + beta, 0, 1) is HardSigmoid."""
    bounds = _clip_bounds(node, reader)
    if bounds == (0.0, np.inf):
        return match("Relu", "Relu", {}, node.inputs[0], [node])
    if bounds == (0.0, _LARGEST):
        return Decline(
            "Clip(x, 0) without a max is not Relu: it maps +inf to the largest finite value, Relu "
            "keeps inf (an explicit max of inf would be)"
        )
    if bounds != (0.0, 1.0):
        return None
    add = producer(node.inputs[0], "Add")
    split = reader.split(add) if add is not None else None
    if split is None:
        return None
    beta, scaled_value = split
    scaled = reader.product_of(scaled_value)
    if scaled is None or len(scaled.terms) != 1 or scaled.divisors:
        return None
    attributes = {"alpha": scaled.coefficient, "beta": beta}
    return match(
        "HardSigmoid", "HardSigmoid", attributes, scaled.terms[0], [node, add, *scaled.nodes]
    )


def _max(node: ir.Node, reader: Reader) -> Match | None:
    """Max(x, 0) is Relu; Max(x, alpha * x) with 0 < alpha < 1 is LeakyRelu."""
    if len(node.inputs) != 2:
        return None
    for x, other in permutations(node.inputs):
        if x is None or reader.scalar(x) is not None:
            continue
        if reader.scalar(other) == 0.0:
            return match("Relu", "Relu", {}, x, [node])
        scaled = reader.product_of(other)
        if scaled is not None and scaled.only(x) and 0.0 < scaled.coefficient < 1.0:
            return match(
                "LeakyRelu", "LeakyRelu", {"alpha": scaled.coefficient}, x, [node, *scaled.nodes]
            )
    return None


def _where(node: ir.Node, reader: Reader) -> Match | Decline | None:
    """Where(x > 0, x, negative branch): Relu, LeakyRelu, Elu; and torch's Softplus threshold."""
    if len(node.inputs) != 3:
        return None
    condition, when_true, when_false = node.inputs
    test = producer(condition, "Greater", "GreaterOrEqual", "Less", "LessOrEqual")
    if test is None or len(test.inputs) != 2:
        return None
    if producer(when_false, "Softplus") is not None:
        return _softplus_threshold(node, test, reader)
    if reader.scalar(test.inputs[1]) != 0.0:
        return None
    x = test.inputs[0]
    positive, negative = (
        (when_true, when_false) if test.op_type.startswith("Greater") else (when_false, when_true)
    )
    if x is None or negative is None or positive is not x:
        return None
    nodes = [node, test]
    if reader.scalar(negative) == 0.0:
        if test.op_type.startswith("Greater"):  # NaN > 0 is false: the constant branch
            return Decline(
                f"Where(x {'>' if test.op_type == 'Greater' else '>='} 0, x, 0) is not Relu: it "
                "gives 0 for NaN, Relu gives NaN (Where(x < 0, 0, x) would be)"
            )
        return match("Relu", "Relu", {}, x, nodes)
    expm1 = _expm1(negative, reader)  # Exp(x) - 1 with no factor: alpha = 1
    if expm1 is not None and expm1[0] is x:
        return match("Elu", "Elu", {"alpha": 1.0}, x, nodes + expm1[1])
    scaled = reader.product_of(negative)
    if scaled is None or scaled.divisors or len(scaled.terms) != 1:
        return None
    if scaled.terms[0] is x:
        alpha = scaled.coefficient
        return match("LeakyRelu", "LeakyRelu", {"alpha": alpha}, x, nodes + scaled.nodes)
    expm1 = _expm1(scaled.terms[0], reader)
    if expm1 is not None and expm1[0] is x:
        alpha = scaled.coefficient
        return match("Elu", "Elu", {"alpha": alpha}, x, nodes + scaled.nodes + expm1[1])
    return None


def _expm1(value: ir.Value, reader: Reader) -> tuple[ir.Value, list[ir.Node]] | None:
    """Exp(y) - 1: returns y and the two nodes."""
    sub = producer(value, "Sub")
    if sub is None or len(sub.inputs) != 2 or reader.scalar(sub.inputs[1]) != 1.0:
        return None
    exp = producer(sub.inputs[0], "Exp")
    if exp is None or exp.inputs[0] is None:
        return None
    return exp.inputs[0], [sub, exp]


def _softplus_threshold(where: ir.Node, test: ir.Node, reader: Reader) -> Match | None:
    """torch's Softplus (beta 1): Where(x > 20, x, Softplus(x)); the threshold moves the output by
    under 2.1e-9 (log1p(exp(-20))), below float32 resolution there."""
    softplus = producer(where.inputs[2], "Softplus")
    assert softplus is not None
    x = softplus.inputs[0]
    if (
        test.op_type != "Greater"
        or test.inputs[0] is not x
        or where.inputs[1] is not x
        or reader.scalar(test.inputs[1]) != SOFTPLUS_THRESHOLD
    ):
        return None
    return match("Softplus", "Softplus", {}, x, [where, test, softplus])


def _log(node: ir.Node, reader: Reader) -> Match | None:
    """Log(Exp(x) + 1) is Softplus."""
    add = producer(node.inputs[0], "Add")
    split = reader.split(add) if add is not None else None
    if split is None or split[0] != 1.0:
        return None
    exp = producer(split[1], "Exp")
    if exp is None:
        return None
    return match("Softplus", "Softplus", {}, exp.inputs[0], [node, add, exp])


def _add(node: ir.Node, reader: Reader) -> Match | None:
    """Max(x, 0) + Min(0, alpha * (Exp(x / alpha) - 1)) is Celu (Relu(x) for the first term too)."""
    if len(node.inputs) != 2:
        return None
    for positive, negative in permutations(node.inputs):
        relu = producer(positive, "Max", "Relu")
        minimum = producer(negative, "Min")
        if relu is None or minimum is None or len(minimum.inputs) != 2:
            continue
        if relu.op_type == "Max":
            found = _max(relu, reader)
            if found is None or found.kind != "Relu":
                continue
            x: ir.Value | None = found.x
        else:
            x = relu.inputs[0]
        for zero, branch in permutations(minimum.inputs):
            scaled = reader.product_of(branch) if reader.scalar(zero) == 0.0 else None
            if scaled is None or len(scaled.terms) != 1 or scaled.divisors:
                continue
            expm1 = _expm1(scaled.terms[0], reader)
            inner = reader.product_of(expm1[0]) if expm1 is not None else None
            if x is None or expm1 is None or inner is None or not inner.only(x):
                continue
            alpha = scaled.coefficient
            if alpha <= 0 or not close(inner.coefficient * alpha, 1.0, inner.dtype):
                continue
            nodes = [node, relu, minimum, *scaled.nodes, *expm1[1], *inner.nodes]
            return match("Celu", "Celu", {"alpha": alpha}, x, nodes)
    return None


def _prelu(node: ir.Node, reader: Reader) -> Match | None:
    """PRelu with a single constant slope is LeakyRelu (bitwise: both compute slope * x for x < 0)."""
    if len(node.inputs) != 2:
        return None
    slope = reader.scalar(node.inputs[1], max_rank=8)  # PRelu's output has x's shape
    if slope is None:
        return None
    return match("LeakyRelu", "LeakyRelu", {"alpha": slope}, node.inputs[0], [node])


_FORMS = {
    "Mul": (_product_forms,),
    "Div": (_product_forms,),
    "Clip": (_clip,),
    "Max": (_max,),
    "Where": (_where,),
    "Log": (_log,),
    "Add": (_add,),
    "PRelu": (_prelu,),
}
