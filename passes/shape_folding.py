"""Shape computations over partly static shapes, folded (placeholder: being written)."""

from __future__ import annotations

import onnx_ir as ir

from optkit.contract import Exactness, PassOptions, PassSpec, RewritePass, Site


class FoldShapes(RewritePass):
    spec = PassSpec(
        "shapes", Exactness.BITWISE, "fold shape computations whose dims are static"
    )

    def run(self, model: ir.Model, options: PassOptions) -> list[Site]:
        return []
