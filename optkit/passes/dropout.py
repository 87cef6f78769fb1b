"""The `dropout` pass (bitwise): y = Dropout(x) at inference -> the uses of y read x; declined when
the mask is read or training mode is not a constant false.
"""

from __future__ import annotations

import onnx_ir as ir

from optkit.core.contract import Exactness, PassOptions, PassSpec, RewritePass, Site
from optkit.core.graph import ConstantPolicy, all_nodes, attr_int, bypass, node_label, opset_version


class RemoveDropout(RewritePass):
    spec = PassSpec("dropout", Exactness.BITWISE, "remove Dropout at inference")

    def run(self, model: ir.Model, options: PassOptions) -> list[Site]:
        policy = ConstantPolicy(model, freeze_initializer_inputs=options.freeze_initializer_inputs)
        opset = opset_version(model)
        sites = []
        for node in list(all_nodes(model)):
            if node.op_type != "Dropout" or node.domain != "" or not node.inputs:
                continue
            source = node.inputs[0]
            if source is None:
                continue
            label = node_label(node)
            reason = self._check(node, opset, policy) or bypass(node, source, node.outputs[0])
            sites.append(
                Site("dropout", label, not reason, reason, removed=() if reason else (label,))
            )
        return sites

    @staticmethod
    def _check(node: ir.Node, opset: int, policy: ConstantPolicy) -> str:
        if (
            len(node.outputs) > 1
            and node.outputs[1].name
            and (node.outputs[1].uses() or node.outputs[1].is_graph_output())
        ):
            return "its mask output is used"
        if opset < 7 and attr_int(node, "is_test", 0) == 0:
            return "is_test=0: Dropout-6 in training mode"
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            mode, why = policy.array(node.inputs[2])
            if mode is None:
                return f"training_mode is not a constant ({why})"
            if bool(mode.reshape(-1)[0]):
                return "training_mode is true"
        return ""
