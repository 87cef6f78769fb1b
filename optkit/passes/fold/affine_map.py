"""Per-channel affine maps y = s x + t, and reading a test-time BatchNormalization as one.

    BN(x)[:, c] = gamma_c * (x[:, c] - mean_c) / sqrt(var_c + eps) + beta_c
                = s_c * x[:, c] + t_c,   s = gamma / sqrt(var + eps),  t = beta - mean * s

s and t are computed in float64 from the stored parameters; folds multiply weights by them in float64
and round once to the weight dtype. `read_arithmetic` reads a Mul / Add / Sub / Div by a per-channel
constant (or a whole constant image) the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from optkit.core.contract import Decline
from optkit.core.graph import (
    ConstantPolicy,
    attr_float,
    attr_int,
    is_default_domain,
    unused_outputs,
)


@dataclass(frozen=True)
class Affine:
    """A node computing y = s * x + t per channel (axis 1 of x): a test-time BatchNorm, or a Mul /
    Add / Sub / Div by a per-channel constant (`kind` names which, for reports: "conv+bn")."""

    node: ir.Node
    input: ir.Value  # x
    scale: np.ndarray  # s, float64, shape (C,)
    shift: np.ndarray  # t, float64, shape (C,)
    kind: str = "bn"
    shift_image: np.ndarray | None = None  # an extra per-position shift (C, *spatial): a mean image

    @property
    def channels(self) -> int:
        return int(self.scale.shape[0])

    @property
    def what(self) -> str:
        """How messages name the node: "BatchNorm", "Mul constant", ..."""
        return "BatchNorm" if self.kind == "bn" else f"{self.node.op_type} constant"

    @property
    def output(self) -> ir.Value:
        return self.node.outputs[0]


def read_batchnorm(node: ir.Node, policy: ConstantPolicy, opset: int) -> Affine | Decline:
    """The BN's affine map, or why this BN cannot be treated as one at test time."""
    if len(node.inputs) != 5 or node.inputs[0] is None:
        return Decline("BatchNormalization does not have its 5 inputs")
    if attr_int(node, "training_mode", 0) != 0:
        return Decline("training_mode=1: BN uses batch statistics")
    if opset < 7 and attr_int(node, "is_test", 0) == 0:
        return Decline("is_test=0: BatchNormalization-6 in training mode")
    if not unused_outputs(node, 1):
        return Decline("its running-statistics outputs are used")
    arrays = []
    for value, label in zip(node.inputs[1:], ("scale", "B", "mean", "var"), strict=True):
        array = policy.array(value)
        if isinstance(array, Decline):
            return array.prefixed(f"BN {label} is not a constant: ")
        arrays.append(array.astype(np.float64))
    gamma, beta, mean, var = arrays
    if any(a.ndim != 1 for a in arrays) or len({a.shape for a in arrays}) != 1:
        spatial = attr_int(node, "spatial", 1)
        where = " (spatial=0: per-activation statistics)" if spatial == 0 else ""
        return Decline(f"BN parameters are not 1-D vectors of one length{where}")
    denominator = var + attr_float(node, "epsilon", 1e-5)
    bad = np.flatnonzero(~(denominator > 0))
    if bad.size:
        return Decline(f"variance + epsilon <= 0 in channel(s) {bad[:5].tolist()}")
    scale = gamma / np.sqrt(denominator)
    shift = beta - mean * scale
    if not (np.all(np.isfinite(scale)) and np.all(np.isfinite(shift))):
        return Decline("BN parameters give a non-finite scale or shift")
    return Affine(node, node.inputs[0], scale, shift)


def along(vector: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    """`vector` shaped to broadcast along `axis` of an `ndim`-dimensional array."""
    shape = [1] * ndim
    shape[axis] = vector.shape[0]
    return vector.reshape(shape)


ARITHMETIC = frozenset({"Mul", "Add", "Sub", "Div"})


def is_arithmetic(node: ir.Node) -> bool:
    return node.op_type in ARITHMETIC and is_default_domain(node.domain) and len(node.inputs) == 2


def channel_vector(constant: np.ndarray, rank: int, channels: int | None) -> np.ndarray | None:
    """`constant` as a (C,) vector when it broadcasts along axis 1 of a rank-`rank` tensor only."""
    if constant.ndim > rank:
        return None
    if constant.size == 1:
        return None if channels is None else np.full(channels, constant.reshape(-1)[0])
    shape = (1,) * (rank - constant.ndim) + constant.shape
    if rank < 2 or any(d != 1 for i, d in enumerate(shape) if i != 1):
        return None
    if channels is not None and shape[1] != channels:
        return None
    return constant.reshape(-1)


def read_arithmetic(node: ir.Node, policy: ConstantPolicy) -> Affine | Decline | None:
    """Mul / Add / Sub / Div of a computed x and a per-channel constant c as y = s x + t, why such
    a node cannot be read as one, or None when it is no candidate (no constant operand, or one
    that is not per channel nor a whole image)."""
    first, second = node.inputs
    if first is None or second is None:
        return None
    a, b = policy.contents(first), policy.contents(second)
    if (a is None) == (b is None):  # both computed, or both constant (constant folding's job)
        return None
    x, c = (first, b) if b is not None else (second, a)
    assert c is not None
    if c.dtype.kind != "f" or not isinstance(x.type, ir.TensorType):
        return None
    if not np.all(np.isfinite(c)):
        return Decline("its constant holds inf or NaN (folded, 0 * inf would make NaN weights)")
    shape = x.shape if x.shape is not None else node.outputs[0].shape
    if shape is None:
        return None
    rank = len(shape)
    channels = shape[1] if rank > 1 and isinstance(shape[1], int) else None
    constant_first = x is second
    vector = channel_vector(c.astype(np.float64), rank, channels)
    if vector is None:
        return _read_image_shift(node, x, c, shape, constant_first)
    ones, zeros = np.ones_like(vector), np.zeros_like(vector)
    if node.op_type == "Mul":
        scale, shift = vector, zeros
    elif node.op_type == "Add":
        scale, shift = ones, vector
    elif node.op_type == "Sub":
        scale, shift = (-ones, vector) if constant_first else (ones, -vector)
    else:  # Div
        if constant_first:
            return None  # c / x is not affine in x
        if np.any(vector == 0):
            return Decline("divides by a constant with zeros")
        scale, shift = 1.0 / vector, zeros
    return Affine(node, x, scale, shift, kind=node.op_type.lower())


def _read_image_shift(
    node: ir.Node, x: ir.Value, c: np.ndarray, shape: ir.Shape, constant_first: bool
) -> Affine | None:
    """x + M, x - M or M - x for a whole constant image M (C, *spatial) of x's static shape: a mean
    image. Folds only into a following Conv (per position) or Flatten -> Gemm (per feature)."""
    dims = list(shape)[1:]
    if (
        node.op_type not in ("Add", "Sub")
        or len(dims) < 2
        or not all(isinstance(d, int) for d in dims)
    ):
        return None
    image = c.astype(np.float64)
    while image.ndim > len(dims) and image.shape[0] == 1:
        image = image[0]
    if image.shape != tuple(dims):
        return None
    channels = image.shape[0]
    sign = -1.0 if node.op_type == "Sub" and not constant_first else 1.0
    scale = np.full(channels, -1.0 if node.op_type == "Sub" and constant_first else 1.0)
    kind = f"{node.op_type.lower()}-image"
    return Affine(node, x, scale, np.zeros(channels), kind, shift_image=sign * image)
