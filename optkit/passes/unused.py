"""The `unused` pass (bitwise): nodes and initializers nothing reads are removed (the graph
signature is kept); onnx_ir's RemoveUnusedNodesPass, each removal reported as a site.
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as ir_passes

from optkit.core.contract import Exactness, PassSpec
from optkit.core.ir_passes import WrappedIrPass


class RemoveUnused(WrappedIrPass):
    spec = PassSpec("unused", Exactness.BITWISE, "remove nodes and initializers nothing reads")
    rule = "unused"

    def _ir_pass(self) -> ir.passes.PassBase:
        return ir_passes.RemoveUnusedNodesPass()
