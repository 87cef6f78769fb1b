"""`optkit inspect`: what a model is made of, and what `fuse` would do to it (a dry run)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import onnx_ir as ir

from optkit import io
from optkit.check.inputs import runtime_inputs
from optkit.core.graph import all_nodes, count_ops, is_default_domain, iter_graphs, node_label


def _describe(value: ir.Value) -> dict[str, Any]:
    dtype = value.type.dtype.name if isinstance(value.type, ir.TensorType) else str(value.type)
    shape = (
        None if value.shape is None else [d if isinstance(d, int) else str(d) for d in value.shape]
    )
    return {"name": value.name, "dtype": dtype, "shape": shape}


def activation_usage(model: ir.Model) -> list[dict[str, Any]]:
    """Every activation in the model, in graph order: its kind and parameters, the node computing
    its output, and whether one op computes it or a decomposed chain of `nodes` primitives."""
    from optkit.passes.forms.activations import find_activations

    return [
        {
            "kind": match.kind,
            "activation": match.describe(),
            "node": node_label(match.nodes[0]),
            "graph": graph.name or "main",
            "fused": match.fused,
            "nodes": len(match.nodes),
        }
        for graph, match in find_activations(model)
    ]


def format_activation_usage(usage: list[dict[str, Any]]) -> list[str]:
    """One line per kind: how many, how many decomposed, where (the first few nodes)."""
    lines = []
    for kind, count in Counter(a["kind"] for a in usage).most_common():
        entries = [a for a in usage if a["kind"] == kind]
        decomposed = [a for a in entries if not a["fused"]]
        where = ", ".join(a["node"] for a in entries[:4]) + (" ..." if len(entries) > 4 else "")
        form = (
            f" ({len(decomposed)} decomposed, {decomposed[0]['nodes']} nodes)" if decomposed else ""
        )
        lines.append(f"    {kind:<12} x{count}{form}: {where}")
    return lines


def inspect_model(source: io.ModelLike, *, dry_run: bool = True) -> dict[str, Any]:
    """Opsets, signature, op histogram, parameters, BatchNorm count and, with `dry_run`, every site
    `fuse` would rewrite or decline (nothing is written)."""
    from optkit.fusion import fuse
    from optkit.io.validation import load_checked

    model = load_checked(source, copy=False)
    histogram = Counter(
        n.op_type if is_default_domain(n.domain) else f"{n.domain}::{n.op_type}"
        for n in all_nodes(model)
    )
    parameters = 0
    parameter_bytes = 0
    for graph in iter_graphs(model.graph):
        for value in graph.initializers.values():
            if value.const_value is not None:
                parameters += value.const_value.size
                parameter_bytes += value.const_value.nbytes
    info: dict[str, Any] = {
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name or ''} {model.producer_version or ''}".strip(),
        "opsets": dict(model.opset_imports),
        "inputs": [_describe(v) for v in runtime_inputs(model)],
        "outputs": [_describe(v) for v in model.graph.outputs],
        "nodes": sum(histogram.values()),
        "ops": dict(histogram.most_common()),
        "parameters": parameters,
        "parameter_bytes": parameter_bytes,
        "batchnorm": count_ops(model, "BatchNormalization"),
        "activations": activation_usage(model),
    }
    if dry_run:
        report = fuse(model, verify_result=False).report
        info["fuse"] = {
            "nodes_after": report.nodes_after,
            "batchnorm_after": report.batchnorm_after,
            "applied": [s.to_dict() for p in report.pipeline.passes for s in p.applied],
            "declined": [
                s.to_dict() | {"pass": p.name} for p in report.pipeline.passes for s in p.declined
            ],
        }
    return info


def format_inspection(info: dict[str, Any]) -> str:
    def signature(values: list[dict[str, Any]]) -> list[str]:
        return [f"    {v['name']}: {v['dtype']} {v['shape']}" for v in values]

    lines = [
        f"IR version {info['ir_version']}, opsets "
        + ", ".join(f"{d or 'ai.onnx'} {v}" for d, v in info["opsets"].items())
        + (f", producer {info['producer']}" if info["producer"] else ""),
        "  inputs:",
        *signature(info["inputs"]),
        "  outputs:",
        *signature(info["outputs"]),
        f"  {info['nodes']} nodes: " + ", ".join(f"{op} {n}" for op, n in info["ops"].items()),
        f"  {info['parameters']:,} parameters, {info['parameter_bytes']:,} bytes; "
        f"BatchNorm {info['batchnorm']}",
    ]
    if info["activations"]:
        lines.append("  activations:")
        lines += format_activation_usage(info["activations"])
    if "fuse" in info:
        dry = info["fuse"]
        rules = Counter(site["rule"] for site in dry["applied"])
        lines.append(
            f"  fuse would give {dry['nodes_after']} nodes, BatchNorm {dry['batchnorm_after']}: "
            + (", ".join(f"{r} x{n}" for r, n in rules.items()) or "nothing to rewrite")
        )
        # Every scalar Mul / Add a graph has is an `affine` candidate; list those declines only by
        # count (a transformer has dozens), every other decline with its reason.
        affine = [site for site in dry["declined"] if site["pass"] == "affine"]
        for site in dry["declined"]:
            if site["pass"] != "affine":
                lines.append(f"    declined {site['node']}: {site['reason']}")
        if affine:
            lines.append(
                f"    {len(affine)} per-channel Mul/Add/Sub/Div left in place by `affine` "
                "(reasons with --json, or optkit fuse --verbose)"
            )
    return "\n".join(lines)
