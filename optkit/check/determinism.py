"""Determinism: the nodes that may make two runs of a model on the same inputs differ.

A static scan (no run): random ops, and Dropout in training mode or with a training_mode computed at
run time. Verification runs the original twice only where this finds something (`optkit.check.verify`).
"""

from __future__ import annotations

import onnx_ir as ir

from optkit.core.graph import (
    RANDOM_OPS,
    ConstantPolicy,
    attr_int,
    is_default_domain,
    node_label,
    nodes_with_functions,
    opset_version,
)


def nondeterministic_nodes(model: ir.Model) -> list[str]:
    """The nodes (subgraphs included) that may make two runs on the same inputs differ: random ops,
    and Dropout in training mode (or with a training_mode computed at run time), as
    ``node 'name' Op ...`` for messages. A static scan: no run, cost linear in the node count."""
    policy = ConstantPolicy(model, freeze_initializer_inputs=True)  # defaults are what runs get
    opset = opset_version(model)
    found = []
    for node, function in nodes_with_functions(model):
        if not is_default_domain(node.domain):
            continue
        where = f" in function {function.domain}::{function.name}" if function else ""
        label = f"node '{node_label(node)}' {node.op_type}{where}"
        if node.op_type in RANDOM_OPS:
            found.append(label)
        elif node.op_type == "Dropout":
            mode = _dropout_mode(node, opset, policy)
            if mode is not None:
                found.append(f"{label} {mode}")
    return found


def _dropout_mode(node: ir.Node, opset: int, policy: ConstantPolicy) -> str | None:
    """How a Dropout may be random (None when it is the identity it is at inference)."""
    if opset < 7:
        return "in training mode (is_test=0)" if attr_int(node, "is_test", 0) == 0 else None
    if opset < 12 or len(node.inputs) < 3 or node.inputs[2] is None:
        return None
    mode = policy.contents(node.inputs[2])
    if mode is None:
        return "with a training_mode fed or computed at run time"
    if mode.size == 0 or not bool(mode.reshape(-1)[0]):
        return None
    ratio = policy.contents(node.inputs[1])
    if ratio is not None and ratio.size and float(ratio.reshape(-1)[0]) == 0.0:
        return None  # training mode, but drops nothing
    return "in training mode"
