"""Constant folding: nodes whose every input is a constant become initializers.

    Constant(value=T)                  -> initializer T
    op(c1, c2, ...) with constant ci   -> initializer op(c1, c2, ...), evaluated by onnx.reference
    Shape(x) with x of static shape    -> int64 initializer
    Size(x)  with x of static shape    -> int64 initializer
    CastLike(c, x) with constant c     -> initializer c cast to x's element type

Exactness `reassociate`: the numpy reference may round float ops differently from a runtime; integer and
shape arithmetic is exact. Declined: outputs larger than the size cap, ops that are random or carry
subgraphs, nodes from other domains (left untouched), and graph outputs (kept as nodes so the graph's
signature does not change).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_ir as ir
from onnx.reference import ReferenceEvaluator

from optkit.core.contract import Exactness, PassOptions, PassSpec, RewritePass, Site
from optkit.core.graph import (
    ConstantPolicy,
    Namer,
    add_initializer,
    input_at,
    is_default_domain,
    iter_graphs,
    node_label,
    reroute,
)

logger = logging.getLogger(__name__)

NEVER_FOLD = frozenset(
    {
        "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
        "Multinomial", "Bernoulli", "Dropout", "If", "Loop", "Scan", "SequenceConstruct",
        "SequenceEmpty", "SequenceInsert", "Optional", "OptionalGetElement",
    }
)  # fmt: skip


class FoldConstants(RewritePass):
    spec = PassSpec(
        "constants", Exactness.REASSOCIATE, "fold constant subexpressions into initializers"
    )

    def run(self, model: ir.Model, options: PassOptions) -> list[Site]:
        policy = ConstantPolicy(model, freeze_initializer_inputs=options.freeze_initializer_inputs)
        namer = Namer(model)
        opsets = dict(model.opset_imports)
        sites: list[Site] = []
        for graph in list(iter_graphs(model.graph)):
            for node in list(graph):
                site = self._fold(graph, node, policy, namer, opsets, options)
                if site is not None:
                    sites.append(site)
        return sites

    def _fold(
        self,
        graph: ir.Graph,
        node: ir.Node,
        policy: ConstantPolicy,
        namer: Namer,
        opsets: dict[str, int],
        options: PassOptions,
    ) -> Site | None:
        if not is_default_domain(node.domain) or node.op_type in NEVER_FOLD:
            return None
        if any(out.is_graph_output() for out in node.outputs) or not node.outputs:
            return None
        if any(attr.is_ref() or attr.type in _GRAPH_ATTRS for attr in node.attributes.values()):
            return None
        label = node_label(node)
        planned = _planned_size(node, policy)
        if planned > options.constant_fold_max_elements:
            return Site(
                "constants",
                label,
                False,
                f"result has {planned} elements, above the cap of {options.constant_fold_max_elements}",
            )
        results = self._evaluate(node, policy, opsets)
        if results is None:
            return None
        size = max(r.size for r in results)
        if size > options.constant_fold_max_elements:
            return Site(
                "constants",
                label,
                False,
                f"result has {size} elements, above the cap of {options.constant_fold_max_elements}",
            )
        for out, array in zip(node.outputs, results, strict=True):
            if out.type is not None and isinstance(out.type, ir.TensorType):
                if out.type.dtype.numpy() != array.dtype:
                    return Site(
                        "constants",
                        label,
                        False,
                        f"reference evaluator gave {array.dtype}, graph declares {out.type.dtype.name}",
                    )
        old_names = [out.name for out in node.outputs]
        new_values = [
            add_initializer(
                graph,
                namer,
                f"{out.name or 'const'}_folded",
                array,
                ir.DataType.from_numpy(array.dtype),
                copy=False,  # already of its own type: stored as computed, never rounded
            )
            for out, array in zip(node.outputs, results, strict=True)
        ]
        reroute(node, new_values, take_names=True)
        return Site(
            "constants", label, True, removed=(label,), added=tuple(n for n in old_names if n)
        )

    @staticmethod
    def _evaluate(
        node: ir.Node, policy: ConstantPolicy, opsets: dict[str, int]
    ) -> list[np.ndarray] | None:
        if node.op_type == "Constant":
            array = policy.contents(node.outputs[0])
            return None if array is None or array.dtype == object else [array]
        if node.op_type == "ConstantOfShape" and node.inputs and node.inputs[0] is not None:
            dims = policy.contents(node.inputs[0])
            if dims is None or dims.ndim != 1 or dims.dtype.kind not in "iu" or np.any(dims < 0):
                return None  # not a shape: left for the runtime to refuse
            attr = node.attributes.get("value")
            fill = attr.value.numpy().reshape(-1) if attr is not None else np.zeros(1, np.float32)
            return [np.full(tuple(int(d) for d in dims), fill[0], dtype=fill.dtype)]
        if node.op_type in ("Shape", "Size") and node.inputs and node.inputs[0] is not None:
            shape = node.inputs[0].shape
            if shape is not None and shape.is_static():
                dims = np.array(shape.numpy(), dtype=np.int64)
                if node.op_type == "Size":
                    return [np.array(int(np.prod(dims)), dtype=np.int64)]
                start = node.attributes.get("start")
                end = node.attributes.get("end")
                lo = start.as_int() if start is not None else 0
                hi = end.as_int() if end is not None else len(dims)
                return [dims[lo:hi]]
        if not node.inputs or any(v is None for v in node.inputs[:1]):
            return None
        feeds: dict[str, np.ndarray] = {}
        for index, value in enumerate(node.inputs):
            if value is None:
                continue
            if node.op_type == "CastLike" and index == 1:  # only the type of `target_type` matters
                if (
                    not isinstance(value.type, ir.TensorType)
                    or value.type.dtype == ir.DataType.STRING
                ):
                    return None
                feeds[value.name or ""] = np.zeros((0,), dtype=value.type.dtype.numpy())
                continue
            array = policy.contents(value)
            if array is None or array.dtype == object:
                return None
            feeds[value.name or ""] = array
        if node.op_type == "Slice" and (step_input := input_at(node, 4)) is not None:
            steps = feeds[step_input.name or ""]
            if np.any(steps < 0):  # onnx's reference slices as numpy does, which clamps a start
                return None  # before the first element unlike ONNX (that element is kept)
        if node.op_type == "BatchNormalization" and opsets.get("", 1) < 14:
            return _batchnorm_before_14(node, list(feeds.values()), opsets.get("", 1))
        return _run_reference(node, feeds, opsets)


def _batchnorm_before_14(
    node: ir.Node, inputs: list[np.ndarray], opset: int
) -> list[np.ndarray] | None:
    """BatchNormalization-9: y = scale (x - mean) / sqrt(var + epsilon) + B, in float64. onnx's
    reference (1.23) fills in the default `momentum` and then normalizes with the batch's own
    statistics, which this op never does. Earlier versions (is_test, spatial) are not folded."""
    if opset < 9 or len(inputs) != 5 or len(node.outputs) != 1:
        return None
    x, scale, bias, mean, var = (a.astype(np.float64) for a in inputs)
    if x.ndim < 2 or any(a.shape != (x.shape[1],) for a in (scale, bias, mean, var)):
        return None
    epsilon = node.attributes.get("epsilon")
    eps = epsilon.as_float() if epsilon is not None else 1e-5
    along = (-1,) + (1,) * (x.ndim - 2)
    y = scale.reshape(along) * (x - mean.reshape(along)) / np.sqrt(var.reshape(along) + eps)
    return [(y + bias.reshape(along)).astype(inputs[0].dtype)]


def _planned_size(node: ir.Node, policy: ConstantPolicy) -> int:
    """Elements a ConstantOfShape would create, known before creating them (0 for other ops)."""
    if node.op_type != "ConstantOfShape" or not node.inputs or node.inputs[0] is None:
        return 0
    dims = policy.contents(node.inputs[0])
    return int(np.prod(dims)) if dims is not None and np.all(dims >= 0) else 0


_GRAPH_ATTRS = (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)


def _run_reference(
    node: ir.Node, feeds: dict[str, np.ndarray], opsets: dict[str, int]
) -> list[np.ndarray] | None:
    """Evaluate one node on constant inputs with onnx's reference implementation."""
    node_proto = ir.serde.serialize_node(node)
    inputs = [
        onnx.helper.make_tensor_value_info(
            name, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), a.shape
        )
        for name, a in feeds.items()
    ]
    outputs = [onnx.helper.make_empty_tensor_value_info(o) for o in node_proto.output if o]
    graph = onnx.helper.make_graph([node_proto], "fold", inputs, outputs)
    proto = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in opsets.items()]
    )
    proto.ir_version = onnx.IR_VERSION
    try:
        results = ReferenceEvaluator(proto).run(None, feeds)
    except Exception as exc:  # the reference lacks some ops and dtypes: then do not fold
        logger.debug("cannot fold %s: %s", node_label(node), exc)
        return None
    if len(results) != len([o for o in node.outputs]):
        return None
    arrays = [np.asarray(r) for r in results]
    if any(a.dtype == object for a in arrays):
        return None
    return arrays
