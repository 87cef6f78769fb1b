"""The `toposort` pass (bitwise): nodes in topological order (onnx_ir's TopologicalSortPass)."""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as ir_passes

from optkit.core.contract import Exactness, PassOptions, PassSpec, RewritePass, Site
from optkit.core.graph import all_nodes


class TopologicalSort(RewritePass):
    spec = PassSpec("toposort", Exactness.BITWISE, "sort nodes topologically")

    def run(self, model: ir.Model, options: PassOptions) -> list[Site]:
        before = [id(n) for n in all_nodes(model)]
        ir_passes.TopologicalSortPass()(model)
        moved = before != [id(n) for n in all_nodes(model)]
        return [Site("toposort", model.graph.name or "graph", True)] if moved else []
