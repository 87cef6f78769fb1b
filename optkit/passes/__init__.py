"""optkit's rewrite passes, one module per pass, named as the pass (`fold/` and `forms/` hold the
rule libraries they share; `canonicalize` is the sweep `activations` and `norms` share).

`DEFAULT_PASSES` is the `fuse` pipeline, in order; `ALL_PASSES` lists every pass by name. There is no
import-time registry: a pass exists for the pipeline when it is in one of these tuples.
"""

from __future__ import annotations

from optkit.core.contract import RewritePass
from optkit.passes.activations import CanonicalizeActivations
from optkit.passes.affine import FoldAffine
from optkit.passes.batchnorm import FoldBatchNorm
from optkit.passes.constants import FoldConstants
from optkit.passes.cse import EliminateCommonSubexpressions
from optkit.passes.dedupe import DeduplicateInitializers
from optkit.passes.dropout import RemoveDropout
from optkit.passes.identity import RemoveIdentity
from optkit.passes.norms import CanonicalizeNormalization
from optkit.passes.permute import FoldPermutation
from optkit.passes.shapes import FoldShapes
from optkit.passes.simplify import Simplify
from optkit.passes.toposort import TopologicalSort
from optkit.passes.unused import RemoveUnused

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
