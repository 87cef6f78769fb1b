"""The `identity` pass (bitwise): y = Identity(x) -> the uses of y read x."""

from __future__ import annotations

import onnx_ir as ir

from optkit.core.contract import Exactness, PassOptions, PassSpec, RewritePass, Site
from optkit.core.graph import all_nodes, bypass, is_default_domain, node_label


class RemoveIdentity(RewritePass):
    spec = PassSpec("identity", Exactness.BITWISE, "remove Identity nodes")

    def run(self, model: ir.Model, options: PassOptions) -> list[Site]:
        sites = []
        for node in list(all_nodes(model)):
            if (
                node.op_type != "Identity"
                or not is_default_domain(node.domain)
                or len(node.outputs) != 1
            ):
                continue
            source = node.inputs[0] if node.inputs else None
            if source is None:
                continue
            label = node_label(node)
            declined = bypass(node, source, node.outputs[0])
            if declined is not None:
                sites.append(Site("identity", label, False, declined.reason))
            else:
                sites.append(Site("identity", label, True, removed=(label,)))
        return sites
