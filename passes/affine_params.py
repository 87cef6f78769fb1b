"""Per-channel affine maps y = s x + t, and reading a test-time BatchNormalization as one.

    BN(x)[:, c] = gamma_c * (x[:, c] - mean_c) / sqrt(var_c + eps) + beta_c
                = s_c * x[:, c] + t_c,   s = gamma / sqrt(var + eps),  t = beta - mean * s

s and t are computed in float64 from the stored parameters; folds multiply weights by them in float64
and round once to the weight dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from optkit.graph import ConstantPolicy, attr_float, attr_int, unused_outputs


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


def read_batchnorm(node: ir.Node, policy: ConstantPolicy, opset: int) -> tuple[Affine | None, str]:
    """The BN's affine map, or None and why this BN cannot be treated as one at test time."""
    if len(node.inputs) != 5 or node.inputs[0] is None:
        return None, "BatchNormalization does not have its 5 inputs"
    if attr_int(node, "training_mode", 0) != 0:
        return None, "training_mode=1: BN uses batch statistics"
    if opset < 7 and attr_int(node, "is_test", 0) == 0:
        return None, "is_test=0: BatchNormalization-6 in training mode"
    if not unused_outputs(node, 1):
        return None, "its running-statistics outputs are used"
    arrays = []
    for value, label in zip(node.inputs[1:], ("scale", "B", "mean", "var"), strict=True):
        array, why = policy.array(value)
        if array is None:
            return None, f"BN {label} is not a constant: {why}"
        arrays.append(array.astype(np.float64))
    gamma, beta, mean, var = arrays
    if any(a.ndim != 1 for a in arrays) or len({a.shape for a in arrays}) != 1:
        spatial = attr_int(node, "spatial", 1)
        where = " (spatial=0: per-activation statistics)" if spatial == 0 else ""
        return None, f"BN parameters are not 1-D vectors of one length{where}"
    denominator = var + attr_float(node, "epsilon", 1e-5)
    bad = np.flatnonzero(~(denominator > 0))
    if bad.size:
        return None, f"variance + epsilon <= 0 in channel(s) {bad[:5].tolist()}"
    scale = gamma / np.sqrt(denominator)
    shift = beta - mean * scale
    if not (np.all(np.isfinite(scale)) and np.all(np.isfinite(shift))):
        return None, "BN parameters give a non-finite scale or shift"
    return Affine(node, node.inputs[0], scale, shift), ""


def along(vector: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    """`vector` shaped to broadcast along `axis` of an `ndim`-dimensional array."""
    shape = [1] * ndim
    shape[axis] = vector.shape[0]
    return vector.reshape(shape)
