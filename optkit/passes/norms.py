"""The `norms` pass (reassociate): decomposed LayerNorm and GroupNorm become
LayerNormalization / GroupNormalization.

The sweep, its checks and the rewrite are `canonicalize.Canonicalize`'s; the forms are
`forms.normalizations`'s.
"""

from __future__ import annotations

from optkit.core.contract import Exactness, PassSpec
from optkit.passes.canonicalize import Canonicalize
from optkit.passes.forms import normalizations as normalization_forms


class CanonicalizeNormalization(Canonicalize):
    spec = PassSpec(
        "norms",
        Exactness.REASSOCIATE,
        "fuse decomposed LayerNorm and GroupNorm into LayerNormalization / GroupNormalization",
    )
    recognize = staticmethod(normalization_forms.recognize)
