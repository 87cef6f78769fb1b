"""Shape-only rewrites that make the graph smaller and are `bitwise` (placeholder: being written)."""

from __future__ import annotations

import onnx_ir as ir

from optkit.contract import Exactness, PassOptions, PassSpec, RewritePass, Site


class Simplify(RewritePass):
    spec = PassSpec(
        "simplify",
        Exactness.BITWISE,
        "inline If on a constant condition, drop no-op reshapes/transposes/casts/expands, merge pairs",
    )

    def run(self, model: ir.Model, options: PassOptions) -> list[Site]:
        return []
