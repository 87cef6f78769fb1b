"""The canonicalizing sweep shared by the `activations` and `norms` passes: each decomposed
activation or normalization becomes its one ONNX op.

`activations` fuses the forms in `forms.activations` (GELU, Swish, HardSwish, Mish, ELU, ...),
`norms` those in `forms.normalizations` (LayerNormalization, GroupNormalization). Both are
reassociating: the fused op computes the same function, its kernel rounds differently from the
chain of primitives (for PRelu -> LeakyRelu and the Max / Clip / Where forms of Relu and LeakyRelu
the result is bit-for-bit the same). A form is fused only where:

- the model's opset has the op (Gelu 20, Swish 24, Mish 18, HardSwish 14, Celu 12,
  LayerNormalization 17, GroupNormalization 21); below it the site is declined and names the opset
  to upgrade to (`optkit fuse --upgrade-opset N`);
- no value inside the form is read from outside it;
- ONNX Runtime's CPU provider has a kernel for the op at the input's element type
  (`forms.runtime_support.RUNTIME_TYPES`), so the result still runs where the original ran.

Nothing outside the default domain is emitted. Forms are looked for from the end of each graph to its
start, so the largest form around a node is found before the forms inside it, and the sweep repeats
(Selu, Mish and Celu contain an Elu, Softplus or Relu fused in an earlier sweep).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import onnx_ir as ir

from optkit.core.contract import Decline, PassOptions, RewritePass, Site
from optkit.core.graph import (
    ConstantPolicy,
    Namer,
    add_initializer,
    node_label,
    opset_version,
    replace_nodes,
)
from optkit.core.shapes import ShapesOnDemand
from optkit.passes.forms import activations as activation_forms
from optkit.passes.forms import normalizations as normalization_forms
from optkit.passes.forms.pattern import Match, Reader, forms_from_the_end, private
from optkit.passes.forms.runtime_support import (
    MIN_OPSET,
    RUNTIME_MAX_OPSET,
    RUNTIME_TYPES,
    SLOWER_ON_RUNTIME,
)

MAX_ROUNDS = 4

Recognizer = Callable[[ir.Node, Reader], "Match | Decline | None"]


class Canonicalize(RewritePass):
    """The sweep shared by the canonicalizing passes; subclasses name a spec and a recognizer."""

    recognize: Recognizer

    def run(self, model: ir.Model, options: PassOptions) -> list[Site]:
        opset = opset_version(model)
        policy = ConstantPolicy(model, freeze_initializer_inputs=options.freeze_initializer_inputs)
        namer = Namer(model)
        shapes = ShapesOnDemand(model)
        applied: list[Site] = []
        declined: dict[str, Site] = {}
        for _ in range(MAX_ROUNDS):
            declined = {}
            done = 0
            for graph, node, found in forms_from_the_end(model, policy, self.recognize):
                label = node_label(node)
                if isinstance(found, Decline):
                    declined[label] = Site(self.spec.name, label, False, str(found))
                    continue
                blocked = blocker(found, graph, opset, shapes, options)
                if blocked is not None:
                    declined[label] = Site(found.kind, label, False, str(blocked))
                    continue
                applied.append(rewrite(found, graph, namer))
                done += 1
            if not done:
                break
        return applied + list(declined.values())


def decomposed_forms(model: ir.Model) -> dict[int, str]:
    """Node id -> kind, for every node inside a decomposed activation or norm still in the graph.

    Other passes leave these nodes alone: a chain that stays decomposed (its op is newer than the
    model's opset, say) is still one that runtimes recognize and fuse themselves (ONNX Runtime's
    GELU and LayerNorm fusions match these exact chains), which folding one of its constants away
    would prevent."""

    def decomposed(node: ir.Node, reader: Reader) -> Match | None:
        for recognize in (activation_forms.recognize, normalization_forms.recognize):
            found = recognize(node, reader)
            if isinstance(found, Match) and not found.fused:
                return found
        return None

    forms: dict[int, str] = {}
    for _, _, found in forms_from_the_end(model, ConstantPolicy(model), decomposed):
        assert isinstance(found, Match)
        forms.update((id(n), found.kind) for n in found.nodes)
    return forms


def blocker(
    found: Match, graph: ir.Graph, opset: int, shapes: ShapesOnDemand, options: PassOptions
) -> Decline | None:
    """Why `found` cannot or should not be fused here, or None."""
    needed = MIN_OPSET.get(found.op_type, 1)
    if opset < needed:
        return Decline(
            f"{found.describe()} needs opset {needed}, the model imports {opset} "
            f"(optkit fuse --upgrade-opset {needed} converts the model first)"
        )
    if opset > RUNTIME_MAX_OPSET.get(found.op_type, opset):
        return Decline(
            f"{found.describe()}: ONNX Runtime's CPU provider runs {found.op_type} only up to "
            f"opset {RUNTIME_MAX_OPSET[found.op_type]}, the model imports {opset}"
        )
    if (
        found.op_type in SLOWER_ON_RUNTIME
        and not options.all_canonical
        and not any(n.op_type == found.op_type for n in found.nodes)
    ):
        return Decline(
            f"{found.describe()}: ONNX Runtime's CPU provider runs {found.op_type} slower than "
            "this chain (tools/bench_activations.py); --all-canonical fuses it anyway"
        )
    shared = private(found.nodes, found.output, graph)
    if shared is not None:
        return shared.prefixed(f"{found.describe()} pattern, but ")
    if not isinstance(found.x.type, ir.TensorType):
        shapes()
    dtype = found.x.type.dtype if isinstance(found.x.type, ir.TensorType) else None
    if dtype is None and found.constants:
        return Decline(
            f"{found.describe()} pattern, but the element type of '{found.x.name}' is unknown"
        )
    if dtype is not None and dtype not in RUNTIME_TYPES[found.op_type]:
        return Decline(
            f"{found.describe()} on {dtype.name}: ONNX Runtime's CPU provider has no such "
            "kernel, left decomposed"
        )
    return None


def attribute(name: str, value: Any) -> ir.Attr:
    if isinstance(value, str):
        return ir.Attr(name, ir.AttributeType.STRING, value)
    if isinstance(value, int) and not isinstance(value, bool):
        return ir.Attr(name, ir.AttributeType.INT, value)
    return ir.Attr(name, ir.AttributeType.FLOAT, float(value))


def rewrite(found: Match, graph: ir.Graph, namer: Namer) -> Site:
    """Replace the nodes of `found` by one `found.op_type` node (constants become initializers)."""
    anchor = found.nodes[0]
    name = namer.fresh(anchor.name or found.op_type.lower())
    inputs = [found.x]
    for index, array in enumerate(found.constants):
        assert isinstance(found.x.type, ir.TensorType)
        inputs.append(
            add_initializer(graph, namer, f"{name}_{index + 1}", array, found.x.type.dtype)
        )
    node = ir.Node(
        "",
        found.op_type,
        inputs,
        attributes=[attribute(k, v) for k, v in sorted(found.attributes.items())],
        name=name,
        num_outputs=1,
    )
    removed = tuple(node_label(n) for n in found.nodes)
    replace_nodes(graph, found.nodes, [node], [found.output], [node.outputs[0]])
    return Site(found.kind, node_label(anchor), True, removed=removed, added=(name,))
