"""Inference-time cleanups. All are `bitwise`: they rewire or delete, never compute.

- identity:     y = Identity(x)                      -> uses of y read x
- dropout:      y = Dropout(x) at inference          -> uses of y read x (declined when the mask is read
                                                        or training mode is not a constant false)
- unused:       nodes and initializers nothing reads -> removed (graph signature kept)
- dedupe:       initializers with equal contents     -> one initializer (overridable ones kept)
- cse:          two nodes with the same op, attributes -> the first; readers of the second read its
                and inputs (the same values)               outputs (default-domain ops that draw no
                                                         random numbers; no subgraph attributes)
- toposort:     nodes in topological order
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as ir_passes

from optkit.core.contract import Exactness, PassOptions, PassSpec, RewritePass, Site
from optkit.core.graph import (
    RANDOM_OPS,
    ConstantPolicy,
    all_nodes,
    attr_int,
    iter_graphs,
    node_label,
    opset_version,
)

logger = logging.getLogger(__name__)


def _bypass(node: ir.Node, source: ir.Value, output: ir.Value) -> str:
    """Make every reader of `output` read `source` and delete `node`; '' on success, else why not.

    When `output` is a graph output, `source` takes its name, which is only sound when `source` is
    produced inside the same graph and is not itself a graph input, initializer or output.
    """
    graph = node.graph
    assert graph is not None
    takes_name = output.is_graph_output()
    if takes_name:
        if source.is_graph_input() or source.is_initializer():
            return "connects a graph input or initializer straight to a graph output"
        if source.is_graph_output():
            return "both its input and its output are graph outputs"
        if source.graph is not graph:
            return "its input comes from an enclosing graph"
    if source.type is None:
        source.type = output.type
    if source.shape is None:
        source.shape = output.shape
    ir.convenience.replace_all_uses_with(output, source, replace_graph_outputs=True)
    graph.remove(node, safe=True)
    if takes_name:  # only the output's name is the signature (a source that is a graph output
        source.name = output.name  # read by a dead Identity keeps its own)
    return ""


class RemoveIdentity(RewritePass):
    spec = PassSpec("identity", Exactness.BITWISE, "remove Identity nodes")

    def run(self, model: ir.Model, options: PassOptions) -> list[Site]:
        sites = []
        for node in list(all_nodes(model)):
            if node.op_type != "Identity" or node.domain != "" or len(node.outputs) != 1:
                continue
            source = node.inputs[0] if node.inputs else None
            if source is None:
                continue
            label = node_label(node)
            reason = _bypass(node, source, node.outputs[0])
            sites.append(
                Site("identity", label, not reason, reason, removed=() if reason else (label,))
            )
        return sites


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
            reason = self._check(node, opset, policy) or _bypass(node, source, node.outputs[0])
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


class _WrappedIrPass(RewritePass):
    """An onnx_ir pass, with each node or initializer it removed reported as a site."""

    rule = ""

    def _ir_pass(self) -> ir.passes.PassBase:
        raise NotImplementedError

    def run(self, model: ir.Model, options: PassOptions) -> list[Site]:
        before_nodes = {id(n): node_label(n) for n in all_nodes(model)}
        before_inits = _initializer_names(model)
        self._ir_pass()(model)
        after_nodes = {id(n) for n in all_nodes(model)}
        after_inits = _initializer_names(model)
        removed = [label for key, label in before_nodes.items() if key not in after_nodes]
        removed += [f"initializer {name}" for name in sorted(before_inits - after_inits)]
        return [Site(self.rule, item, True, removed=(item,)) for item in removed]


def _initializer_names(model: ir.Model) -> set[str]:
    return {name for g in iter_graphs(model.graph) for name in g.initializers}


class RemoveUnused(_WrappedIrPass):
    spec = PassSpec("unused", Exactness.BITWISE, "remove nodes and initializers nothing reads")
    rule = "unused"

    def _ir_pass(self) -> ir.passes.PassBase:
        return ir_passes.RemoveUnusedNodesPass()


class DeduplicateInitializers(_WrappedIrPass):
    spec = PassSpec("dedupe", Exactness.BITWISE, "merge initializers with identical contents")
    rule = "dedupe"

    def _ir_pass(self) -> ir.passes.PassBase:
        return ir_passes.DeduplicateInitializersPass(size_limit=1 << 20)


class EliminateCommonSubexpressions(RewritePass):
    spec = PassSpec("cse", Exactness.BITWISE, "merge nodes that compute the same thing")

    def run(self, model: ir.Model, options: PassOptions) -> list[Site]:
        sites = []
        for graph in iter_graphs(model.graph):
            first: dict[tuple, ir.Node] = {}
            for node in list(graph):
                key = _computation(node)
                if key is None:
                    continue
                kept = first.setdefault(key, node)
                if kept is node or any(out.is_graph_output() for out in node.outputs):
                    continue  # a graph output's name is the signature: it stays a node
                for old, new in zip(node.outputs, kept.outputs, strict=True):
                    ir.convenience.replace_all_uses_with(old, new)
                graph.remove(node, safe=True)
                label = node_label(node)
                sites.append(Site("cse", label, True, f"same as {node_label(kept)}", (label,)))
        return sites


# Attribute kinds compared by value; a node with any other kind (a subgraph, a type) is not merged.
_CSE_ATTRIBUTES = frozenset(
    {ir.AttributeType.INT, ir.AttributeType.FLOAT, ir.AttributeType.STRING, ir.AttributeType.INTS,
     ir.AttributeType.FLOATS, ir.AttributeType.STRINGS, ir.AttributeType.TENSOR}
)  # fmt: skip
_CSE_TENSOR_LIMIT = 1024  # elements of a tensor attribute compared; nodes with larger ones stay


def _computation(node: ir.Node) -> tuple | None:
    """What `node` computes, as a hashable key: op, the input values (by identity) and the
    attribute values; None for nodes never merged (other domains, random ops, subgraphs)."""
    if (
        node.domain not in ("", "ai.onnx")
        or node.op_type in RANDOM_OPS
        or node.op_type == "Dropout"
    ):
        return None  # Dropout draws its mask at random in training mode
    attributes = []
    for name, attr in sorted(node.attributes.items()):
        if attr.is_ref() or attr.type not in _CSE_ATTRIBUTES:
            return None  # subgraphs, type protos, sparse tensors: not compared
        value = attr.value
        if attr.type is ir.AttributeType.TENSOR:
            if value.size > _CSE_TENSOR_LIMIT:
                return None
            array = value.numpy()
            value = (array.shape, str(array.dtype), array.tobytes())
        elif attr.type in (ir.AttributeType.FLOAT, ir.AttributeType.FLOATS):
            value = np.asarray(value, np.float32).tobytes()  # by bits: 0.0 is not -0.0
        elif isinstance(value, list | tuple):
            value = tuple(value)
        attributes.append((name, attr.type, value))
    inputs = tuple(id(v) if v is not None else None for v in node.inputs)
    present = tuple(bool(out.name) for out in node.outputs)  # an absent output reads nothing
    return (node.op_type, node.overload, present, inputs, tuple(attributes))


class TopologicalSort(RewritePass):
    spec = PassSpec("toposort", Exactness.BITWISE, "sort nodes topologically")

    def run(self, model: ir.Model, options: PassOptions) -> list[Site]:
        before = [id(n) for n in all_nodes(model)]
        ir_passes.TopologicalSortPass()(model)
        moved = before != [id(n) for n in all_nodes(model)]
        return [Site("toposort", model.graph.name or "graph", True)] if moved else []
