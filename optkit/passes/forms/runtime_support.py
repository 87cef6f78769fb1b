"""What ONNX Runtime runs, and runs well, of the ops the canonicalizing passes and `swap` emit: the
opset each op needs, the element types its CPU kernels take, the opsets it stops at, and the ops
it runs slower than the chains they replace.
"""

from __future__ import annotations

import onnx_ir as ir

from optkit.passes.forms import activations, normalizations

MIN_OPSET: dict[str, int] = activations.MIN_OPSET | normalizations.MIN_OPSET

# Element types at which ONNX Runtime (1.32, CPU provider) runs each op these passes emit; checked
# against ONNX Runtime by tests/passes/test_canonicalize.py. Other types are left decomposed.
_FLOATS = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16})
EMITTED = ("Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Softplus", "HardSigmoid", "HardSwish", "Mish",
           "Gelu", "Swish", "LayerNormalization", "GroupNormalization")  # fmt: skip
RUNTIME_TYPES: dict[str, frozenset[ir.DataType]] = {op: _FLOATS for op in EMITTED} | {
    "Celu": frozenset({ir.DataType.FLOAT}),
}

# Ops ONNX Runtime (1.32, CPU) runs only up to some opset of the model (Swish's kernel is for 24 only).
RUNTIME_MAX_OPSET: dict[str, int] = {"Swish": 24}

# Ops ONNX Runtime's CPU provider runs slower than the primitives they replace (tools/
# bench_activations.py: Swish 1.2-1.8x Sigmoid+Mul, which ORT fuses itself; Softplus 4x
# Log(Exp(x)+1); GroupNormalization-21 1.9x the Reshape/InstanceNormalization chain). They are fused
# only with `all_canonical`, for runtimes that want the canonical op, or where the form already
# contains the op (torch's Where(x > 20, x, Softplus(x)) loses two nodes and nothing else).
SLOWER_ON_RUNTIME = frozenset({"Swish", "Softplus", "GroupNormalization"})
