"""The `dropout` pass (bitwise): y = Dropout(x) at inference -> the uses of y read x; declined when
the mask is read or training mode is not a constant false.
"""

from __future__ import annotations

import onnx_ir as ir

from optkit.core.contract import Decline, Exactness, PassOptions, PassSpec, RewritePass, Site
from optkit.core.graph import (
    ConstantPolicy,
    all_nodes,
    attr_int,
    bypass,
    input_at,
    is_default_domain,
    node_label,
    opset_version,
)


class RemoveDropout(RewritePass):
    spec = PassSpec("dropout", Exactness.BITWISE, "remove Dropout at inference")

    def run(self, model: ir.Model, options: PassOptions) -> list[Site]:
        policy = ConstantPolicy(model, freeze_initializer_inputs=options.freeze_initializer_inputs)
        opset = opset_version(model)
        sites = []
        for node in list(all_nodes(model)):
            if node.op_type != "Dropout" or not is_default_domain(node.domain) or not node.inputs:
                continue
            source = node.inputs[0]
            if source is None:
                continue
            label = node_label(node)
            declined = self._check(node, opset, policy)
            if declined is None:
                declined = bypass(node, source, node.outputs[0])
            if declined is not None:
                sites.append(Site("dropout", label, False, str(declined)))
            else:
                sites.append(Site("dropout", label, True, removed=(label,)))
        return sites

    @staticmethod
    def _check(node: ir.Node, opset: int, policy: ConstantPolicy) -> Decline | None:
        """Why this Dropout is not the identity at inference (its mask is read, it is in training
        mode or may be), or None."""
        if (
            len(node.outputs) > 1
            and node.outputs[1].name
            and (node.outputs[1].uses() or node.outputs[1].is_graph_output())
        ):
            return Decline("its mask output is used")
        if opset < 7 and attr_int(node, "is_test", 0) == 0:
            return Decline("is_test=0: Dropout-6 in training mode")
        if input_at(node, 2) is not None:
            mode = policy.array(node.inputs[2])
            if isinstance(mode, Decline):
                return Decline(f"training_mode is not a constant ({mode})")
            if bool(mode.reshape(-1)[0]):
                return Decline("training_mode is true")
        return None
