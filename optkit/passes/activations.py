"""The `activations` pass (reassociate): decomposed activations (GELU, Swish, HardSwish, Mish,
ELU, ...) become their one ONNX op.

The sweep, its checks and the rewrite are `canonicalize.Canonicalize`'s; the forms are
`forms.activations`'s.
"""

from __future__ import annotations

from optkit.core.contract import Exactness, PassSpec
from optkit.passes.canonicalize import Canonicalize
from optkit.passes.forms import activations as activation_forms


class CanonicalizeActivations(Canonicalize):
    spec = PassSpec(
        "activations",
        Exactness.REASSOCIATE,
        "fuse decomposed activations (GELU, Swish, HardSwish, Mish, ELU, ...) into their ONNX op",
    )
    recognize = staticmethod(activation_forms.recognize)
