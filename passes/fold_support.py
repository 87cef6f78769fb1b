"""What the BatchNorm folds share: reading float weights, building replacement nodes, results."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from optkit.graph import FLOAT_TYPES, ConstantPolicy, Namer, add_initializer


@dataclass(frozen=True)
class Applied:
    """A rewrite that happened: which rule, which nodes went, which came."""

    rule: str
    removed: tuple[str, ...]
    added: tuple[str, ...]


@dataclass
class FoldContext:
    graph: ir.Graph
    policy: ConstantPolicy
    namer: Namer

    def weight(
        self, value: ir.Value | None, what: str
    ) -> tuple[np.ndarray | None, ir.DataType, str]:
        """A constant float tensor as float64 with its stored dtype, or None and why not."""
        if value is None:
            return None, ir.DataType.UNDEFINED, f"{what} is missing"
        array, why = self.policy.array(value)
        if array is None:
            return None, ir.DataType.UNDEFINED, f"{what} is not a constant: {why}"
        dtype = ir.DataType.from_numpy(array.dtype)
        if dtype not in FLOAT_TYPES:
            return None, dtype, f"{what} has element type {dtype.name}, not a float type"
        return array.astype(np.float64), dtype, ""

    def constant(self, base: str, array: np.ndarray, dtype: ir.DataType) -> ir.Value:
        """A new initializer holding `array` rounded once to `dtype`."""
        return add_initializer(self.graph, self.namer, base, array, dtype)


def copy_attributes(node: ir.Node, **overrides: ir.Attr | None) -> list[ir.Attr]:
    """The node's attributes, with `overrides` replacing (or, when None, dropping) some."""
    attrs = {name: ir.Attr(a.name, a.type, a.value) for name, a in node.attributes.items()}
    for name, attr in overrides.items():
        if attr is None:
            attrs.pop(name, None)
        else:
            attrs[name] = attr
    return list(attrs.values())


def new_node(
    op_type: str, inputs: Sequence[ir.Value | None], attributes: Sequence[ir.Attr], name: str | None
) -> ir.Node:
    return ir.Node("", op_type, list(inputs), attributes=list(attributes), name=name, num_outputs=1)


def base_name(value: ir.Value | None, fallback: str) -> str:
    return (value.name if value is not None and value.name else fallback) + "_bnfold"
