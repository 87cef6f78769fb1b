"""Reading the layers a fold rewrites: their float weights, biases and attributes, the same way for
both directions (a map folded into the layer before it, `into_producer`, or after it,
`into_consumer`) and for `permute`.

Each reader returns the value or a `Decline` whose reason names the operand ("Conv weight is not a
constant: ..."); none of them changes the graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from optkit.core.contract import Decline
from optkit.core.graph import FLOAT_TYPES, ConstantPolicy, attr_float, attr_int, input_at


@dataclass(frozen=True)
class Weight:
    """A constant float tensor as stored (memory-mapped when it is external data) and its element
    type, the type the folded tensor is rounded to."""

    array: np.ndarray
    dtype: ir.DataType

    @property
    def wide(self) -> np.ndarray:
        """The tensor as float64 (a full copy: `support.scaled` folds large weights without one)."""
        return self.array.astype(np.float64)

    @property
    def ndim(self) -> int:
        return int(self.array.ndim)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)


def float_weight(
    policy: ConstantPolicy, value: ir.Value | None, what: str, min_rank: int = 0
) -> Weight | Decline:
    """`value` as a constant float tensor of at least `min_rank` dimensions, or why not."""
    if value is None:
        return Decline(f"{what} is missing")
    array = policy.array(value)
    if isinstance(array, Decline):
        return array.prefixed(f"{what} is not a constant: ")
    dtype = ir.DataType.from_numpy(array.dtype)
    if dtype not in FLOAT_TYPES:
        return Decline(f"{what} has element type {dtype.name}, not a float type")
    if array.ndim < min_rank:
        return Decline(f"{what} has rank {array.ndim}, below {min_rank}")
    return Weight(array, dtype)


def float_operand(policy: ConstantPolicy, value: ir.Value, what: str) -> np.ndarray | Decline:
    """`value` as a constant float tensor in float64, or why not."""
    weight = float_weight(policy, value, what)
    return weight if isinstance(weight, Decline) else weight.wide


def layer_weight(policy: ConstantPolicy, layer: ir.Node, min_rank: int = 0) -> Weight | Decline:
    """Input 1 of a Conv / ConvTranspose / Gemm / MatMul, named in reasons as "Conv weight"."""
    return float_weight(policy, input_at(layer, 1), f"{layer.op_type} weight", min_rank)


def matmul_weight(policy: ConstantPolicy, matmul: ir.Node) -> Weight | Decline:
    """A MatMul's constant right operand, which must be a matrix."""
    weight = layer_weight(policy, matmul)
    if isinstance(weight, Decline):
        return weight
    if weight.ndim != 2:
        return Decline(f"MatMul weight has rank {weight.ndim}, not 2")
    return weight


def gemm_b(policy: ConstantPolicy, gemm: ir.Node) -> Weight | Decline:
    """A Gemm's constant B, which must be a matrix."""
    b_mat = float_weight(policy, input_at(gemm, 1), "Gemm B")
    if isinstance(b_mat, Decline):
        return b_mat
    if b_mat.ndim != 2:
        return Decline(f"Gemm B has rank {b_mat.ndim}")
    return b_mat


@dataclass(frozen=True)
class GemmAttributes:
    """Y = alpha op(A) op(B) + beta C, op transposing where `trans_a` / `trans_b` is set."""

    alpha: float
    beta: float
    trans_a: bool
    trans_b: bool

    @classmethod
    def of(cls, gemm: ir.Node) -> GemmAttributes:
        return cls(
            attr_float(gemm, "alpha", 1.0),
            attr_float(gemm, "beta", 1.0),
            bool(attr_int(gemm, "transA", 0)),
            bool(attr_int(gemm, "transB", 0)),
        )


def gemm_c(policy: ConstantPolicy, gemm: ir.Node) -> np.ndarray | Decline:
    """A Gemm's C in float64; a rank-0 zero when it has none."""
    c_in = input_at(gemm, 2)
    if c_in is None:
        return np.zeros(())
    return float_operand(policy, c_in, "Gemm C")


def optional_bias(
    policy: ConstantPolicy, layer: ir.Node, index: int
) -> np.ndarray | Decline | None:
    """The layer's input `index` (a bias) in float64, None when it has none, or why it is not a
    constant float tensor."""
    value = input_at(layer, index)
    if value is None:
        return None
    return float_operand(policy, value, f"{layer.op_type} bias")


def channel_bias(
    policy: ConstantPolicy, layer: ir.Node, index: int, channels: int
) -> np.ndarray | Decline:
    """The layer's per-channel bias (input `index`) in float64, zeros when it has none, or why not:
    it must have shape (channels,)."""
    bias = optional_bias(policy, layer, index)
    if bias is None:
        return np.zeros(channels)
    if isinstance(bias, Decline):
        return bias
    if bias.shape != (channels,):
        return Decline(f"{layer.op_type} bias has shape {bias.shape}, expected ({channels},)")
    return bias
