"""optkit's rewrite passes, one family per module.

`DEFAULT_PASSES` is the `fuse` pipeline, in order; `ALL_PASSES` lists every pass by name. There is no
import-time registry: a pass exists for the pipeline when it is in one of these tuples.
"""

from __future__ import annotations

from optkit.core.contract import RewritePass
from optkit.passes.affine import FoldAffine
from optkit.passes.batchnorm import FoldBatchNorm
from optkit.passes.canonicalize import CanonicalizeActivations, CanonicalizeNormalization
from optkit.passes.cleanup import (
    DeduplicateInitializers,
    EliminateCommonSubexpressions,
    RemoveDropout,
    RemoveIdentity,
    RemoveUnused,
    TopologicalSort,
)
from optkit.passes.constants import FoldConstants
from optkit.passes.permute import FoldPermutation
from optkit.passes.shapes import FoldShapes
from optkit.passes.simplify import Simplify

DEFAULT_PASSES: tuple[RewritePass, ...] = (
    RemoveIdentity(),
    RemoveDropout(),
    FoldConstants(),
    FoldShapes(),
    Simplify(),
    CanonicalizeActivations(),
    CanonicalizeNormalization(),
    FoldBatchNorm(),
    FoldAffine(),
    FoldPermutation(),
    RemoveUnused(),
    DeduplicateInitializers(),
    EliminateCommonSubexpressions(),
    TopologicalSort(),
)

ALL_PASSES: dict[str, RewritePass] = {p.spec.name: p for p in DEFAULT_PASSES}

__all__ = [
    "ALL_PASSES",
    "DEFAULT_PASSES",
    "CanonicalizeActivations",
    "CanonicalizeNormalization",
    "FoldAffine",
    "FoldBatchNorm",
    "FoldConstants",
    "FoldPermutation",
    "FoldShapes",
    "Simplify",
]
