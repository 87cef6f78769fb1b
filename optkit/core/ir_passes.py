"""onnx_ir's own passes under optkit's pass contract: each node or initializer the wrapped pass
removed is reported as a site."""

from __future__ import annotations

import onnx_ir as ir

from optkit.core.contract import PassOptions, RewritePass, Site
from optkit.core.graph import all_nodes, iter_graphs, node_label


class WrappedIrPass(RewritePass):
    """An onnx_ir pass, with each node or initializer it removed reported as a site."""

    rule = ""

    def _ir_pass(self) -> ir.passes.PassBase:
        raise NotImplementedError

    def run(self, model: ir.Model, options: PassOptions) -> list[Site]:
        before_nodes = {id(n): node_label(n) for n in all_nodes(model)}
        before_inits = initializer_names(model)
        self._ir_pass()(model)
        after_nodes = {id(n) for n in all_nodes(model)}
        after_inits = initializer_names(model)
        removed = [label for key, label in before_nodes.items() if key not in after_nodes]
        removed += [f"initializer {name}" for name in sorted(before_inits - after_inits)]
        return [Site(self.rule, item, True, removed=(item,)) for item in removed]


def initializer_names(model: ir.Model) -> set[str]:
    return {name for g in iter_graphs(model.graph) for name in g.initializers}
