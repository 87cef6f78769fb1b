"""The `dedupe` pass (bitwise): initializers with equal contents become one (overridable ones are
kept); onnx_ir's DeduplicateInitializersPass, each removal reported as a site.
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as ir_passes

from optkit.core.contract import Exactness, PassSpec
from optkit.core.ir_passes import WrappedIrPass


class DeduplicateInitializers(WrappedIrPass):
    spec = PassSpec("dedupe", Exactness.BITWISE, "merge initializers with identical contents")
    rule = "dedupe"

    def _ir_pass(self) -> ir.passes.PassBase:
        return ir_passes.DeduplicateInitializersPass(size_limit=1 << 20)
