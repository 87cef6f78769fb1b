"""`optkit.ensemble`: several models with one input signature as one model whose outputs combine
theirs (mean, softmax-mean or a vote, weighted; see `optkit.combine`).

    E(x) = combine(M_1(x), ..., M_K(x))

Each member's nodes, values, initializers and local functions are prefixed (``m1/``, ``m2/``, ...)
so names never clash; the inputs are shared. Members at different opsets are brought to the highest
(at least 11) by onnx's version converter, each conversion verified against the member as given.
Initializers with identical contents are shared (`dedupe`) and identical nodes over the shared
input merged (`cse`): embedded preprocessing that is the same in every member is computed once,
other embedded preprocessing stays in its member. Members whose inputs or outputs do not fit
(names, element types, shapes, output count) are refused with a one-line error naming the member
and the mismatch. The result is verified on ONNX Runtime against the members run separately,
`E(x)` vs `combine(M_1(x), ..., M_K(x))` computed in numpy.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from optkit import combine as combining
from optkit import io
from optkit.check.compare import Verdict
from optkit.check.inputs import format_dims, runtime_inputs
from optkit.check.verify import verify_rewrite
from optkit.core.contract import Decline, Exactness
from optkit.core.graph import Namer, is_default_domain, iter_graphs, node_count, opset_version
from optkit.core.pipeline import Pipeline
from optkit.errors import InputError, VerificationError
from optkit.io.outputs import model_reads
from optkit.io.validation import check_built, load_checked, upgraded
from optkit.preprocessing import METADATA_KEY, PreprocessSpec

ENSEMBLE_KEY = "optkit.ensemble"  # metadata: the members, the combination and the weights


def ensemble(
    members: Sequence[io.ModelSource],
    *,
    combine: str = "mean",
    weights: Sequence[float] | None = None,
    opset: int | None = None,
    verify_result: bool = True,
    fuse: bool = False,
    shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
    samples: int = 2,
    int_range: tuple[int, int] = (0, 10),
) -> combining.CombinedResult:
    """One model computing `combine` of the members' outputs (see the module docstring).

    `members` are paths, ModelProtos, IR models, bytes or ONNXPrograms (at least two; never
    modified). `weights` (one per member, >= 0) weight the mean or the votes. `opset` sets the
    default-domain opset of the result (at least every member's). With `fuse`, the result also goes
    through `optkit.fuse` and is verified against the members again. Raises InputError for members
    that do not fit together and VerificationError when onnx's version converter changed a member.
    """
    began = time.perf_counter()
    combining.check_combine(combine)
    if isinstance(members, str | bytes | os.PathLike) or not isinstance(members, Sequence):
        raise InputError(
            f"members: a list of models, got {type(members).__name__} (one model is no ensemble)"
        )
    if len(members) < 2:
        raise InputError(f"an ensemble needs at least two members, got {len(members)}")
    factors = combining.coefficients(weights, len(members), "members")

    labels = [f"member {i + 1} ({io.describe(m)})" for i, m in enumerate(members)]
    originals = [load_checked(m, label) for m, label in zip(members, labels, strict=True)]
    check_members(originals, labels, combine)
    target = _target_opset(originals, labels, opset)
    converted, details = _converted(originals, labels, target)
    imports = _imports(converted, labels, target)
    preprocessing = _preprocessing(originals, labels)
    spec = preprocessing if isinstance(preprocessing, PreprocessSpec) else None
    inputs = [v.name or "" for v in runtime_inputs(originals[0])]
    readers_before = sum(_readers(m, inputs) for m in converted)
    merged = _merge(converted, imports)
    output_values = _combine(merged, originals[0], len(members), combine, factors, target)
    merged.graph.outputs.clear()
    merged.graph.outputs.extend(output_values)
    shared = _share(merged)
    details.append(
        f"shared: {shared['dedupe']} initializer(s) of identical contents, "
        f"{shared['cse']} identical node(s) merged"
    )
    if spec is not None:
        after = _readers(merged, inputs)
        details.append(
            f"embedded preprocessing identical in every member: hoisted once ({readers_before} -> "
            f"{after} nodes reading the input)"
            if after == 1
            else f"embedded preprocessing identical in every member, but not merged ({after} "
            "nodes read the input)"
        )
    elif isinstance(preprocessing, Decline):
        details.append(f"embedded preprocessing kept per member: {preprocessing}")
    merged.metadata_props.clear()
    if spec is not None:
        merged.metadata_props[METADATA_KEY] = spec.to_json()
    merged.metadata_props[ENSEMBLE_KEY] = json.dumps(
        {
            "members": [io.describe(m) for m in members],
            "combine": combine,
            "weights": [float(w) for w in factors],
        }
    )
    merged.producer_name = "optkit ensemble"
    check_built(merged, "the combined model")
    report = combining.CombinedReport(
        "ensemble",
        [io.describe(m) for m in members],
        combine,
        [float(w) for w in factors],
        combining.exactness_of(combine),
        copies=labels,
        details=details,
        nodes=node_count(merged),
        verification_requested=verify_result,
    )
    expected = _expected(originals, labels, combine, factors)

    result = combining.verify_and_fuse(
        report,
        merged,
        expected,
        fuse=fuse,
        verify_result=verify_result,
        shapes=shapes,
        seed=seed,
        samples=samples,
        int_range=int_range,
    )
    reads = [p for m in members if isinstance(m, str | Path) for p in model_reads(m)]
    reads += [
        Path(m.meta[io.SOURCE_KEY])
        for m in members
        if isinstance(m, ir.Model) and m.meta.get(io.SOURCE_KEY)
    ]
    report.seconds = time.perf_counter() - began
    return combining.CombinedResult(result, report, reads)


# --- checks --------------------------------------------------------------------------------------


def _dims(value: ir.Value) -> str:
    return "unknown" if value.shape is None else format_dims(value.shape)


def _dtype(value: ir.Value) -> str:
    return value.type.dtype.name if isinstance(value.type, ir.TensorType) else str(value.type)


def _fits(a: ir.Value, b: ir.Value) -> bool:
    """Same rank, and each dim the same static size in both or dynamic in both (any name)."""
    if a.shape is None or b.shape is None:
        return a.shape is None and b.shape is None
    if len(a.shape) != len(b.shape):
        return False
    for x, y in zip(a.shape, b.shape, strict=True):
        if isinstance(x, int) != isinstance(y, int) or (isinstance(x, int) and x != y):
            return False
    return True


def check_members(models: Sequence[ir.Model], labels: Sequence[str], combine: str) -> None:
    """InputError naming the first member whose inputs or outputs do not fit the first member's
    (names, element types, shapes; output count) or whose outputs `combine` cannot combine."""
    first, name0 = models[0], labels[0]
    inputs0 = runtime_inputs(first)
    outputs0 = list(first.graph.outputs)
    for value in outputs0:
        why = combining.combinable(combine, value)
        if why is not None:
            raise InputError(f"{name0}: {why}")
    for model, label in zip(models[1:], labels[1:], strict=True):
        inputs = runtime_inputs(model)
        names, names0 = [v.name for v in inputs], [v.name for v in inputs0]
        if names != names0:
            raise InputError(
                f"{label}: inputs {', '.join(map(str, names))} do not match {name0}'s "
                f"{', '.join(map(str, names0))}"
            )
        for value, value0 in zip(inputs, inputs0, strict=True):
            _compare(label, name0, "input", value, value0, model, first)
        outputs = list(model.graph.outputs)
        if len(outputs) != len(outputs0):
            raise InputError(
                f"{label}: {len(outputs)} output(s) ({', '.join(str(v.name) for v in outputs)}), "
                f"{name0} has {len(outputs0)} ({', '.join(str(v.name) for v in outputs0)})"
            )
        for position, (value, value0) in enumerate(zip(outputs, outputs0, strict=True)):
            if value.name != value0.name:
                raise InputError(
                    f"{label}: output {position} is '{value.name}', {name0}'s is '{value0.name}'"
                )
            _compare(label, name0, "output", value, value0, model, first)


def _compare(
    label: str,
    name0: str,
    kind: str,
    value: ir.Value,
    value0: ir.Value,
    model: ir.Model,
    first: ir.Model,
) -> None:
    if _dtype(value) != _dtype(value0):
        hint = ""
        if kind == "input":
            embedded = [
                n for n, m in ((label, model), (name0, first)) if METADATA_KEY in m.metadata_props
            ]
            if len(embedded) == 1:
                hint = f" ({embedded[0].split(' (')[0]} has preprocessing embedded: it takes raw input)"
        raise InputError(
            f"{label}: {kind} '{value.name}' is {_dtype(value)}, {name0}'s is {_dtype(value0)}{hint}"
        )
    if not _fits(value, value0):
        raise InputError(
            f"{label}: {kind} '{value.name}' has shape {_dims(value)}, {name0}'s {_dims(value0)}"
        )


def _target_opset(models: Sequence[ir.Model], labels: Sequence[str], opset: int | None) -> int:
    versions = [opset_version(m) for m in models]
    newest = max([*versions, combining.MIN_OPSET])
    if opset is None:
        return newest
    for version, label in zip(versions, labels, strict=True):
        if opset < version:
            raise InputError(f"--opset {opset}: {label} is at opset {version}; opsets only go up")
    if opset < combining.MIN_OPSET:
        raise InputError(f"--opset {opset}: the combination needs opset {combining.MIN_OPSET}")
    return opset


def _converted(
    models: Sequence[ir.Model], labels: Sequence[str], target: int
) -> tuple[list[ir.Model], list[str]]:
    """Each member at `target` (copies; onnx's version converter), each conversion verified."""

    result, notes = [], []
    for model, label in zip(models, labels, strict=True):
        version = opset_version(model)
        if version == target:
            result.append(model.clone())
            continue
        converted = upgraded(model, target, label)
        outcome = verify_rewrite(model, converted, Exactness.REASSOCIATE)
        if isinstance(outcome, Verdict) and not outcome.ok:
            raise VerificationError(
                f"{label}: onnx's version converter changed its outputs from opset {version} to "
                f"{target}: {outcome.summary()}"
            )
        state = "verified" if isinstance(outcome, Verdict) else f"not verified: {outcome}"
        notes.append(f"{label}: opset {version} -> {target} (onnx's version converter, {state})")
        result.append(converted)
    return result, notes


def _imports(models: Sequence[ir.Model], labels: Sequence[str], target: int) -> dict[str, int]:
    imports: dict[str, int] = {"": target}
    owner: dict[str, str] = {}
    for model, label in zip(models, labels, strict=True):
        for domain, version in model.opset_imports.items():
            if is_default_domain(domain):
                continue
            if domain in imports and imports[domain] != version:
                raise InputError(
                    f"{label}: imports opset {version} of domain '{domain}', {owner[domain]} "
                    f"imports {imports[domain]}"
                )
            imports[domain], owner[domain] = version, label
    return imports


def _preprocessing(
    models: Sequence[ir.Model], labels: Sequence[str]
) -> PreprocessSpec | Decline | None:
    """The spec every member embeds; None when none embeds one; else why it is not shared (which
    members embed what)."""
    specs = []
    for model, label in zip(models, labels, strict=True):
        text = model.metadata_props.get(METADATA_KEY)
        what = f"{label}: metadata '{METADATA_KEY}'"
        specs.append(PreprocessSpec.from_json(text, what) if text is not None else None)
    if all(s is None for s in specs):
        return None
    if all(s is not None and s == specs[0] for s in specs):
        return specs[0]
    kinds = [
        f"{label.split(' (')[0]} {'none' if s is None else f'{s.dtype} {s.layout}'}"
        for label, s in zip(labels, specs, strict=True)
    ]
    return Decline(", ".join(kinds))


def _readers(model: ir.Model, names: Sequence[str]) -> int:
    """Nodes reading the model's inputs `names`."""
    values = [v for v in model.graph.inputs if v.name in names]
    return len({id(use.node) for v in values for use in v.uses()})


# --- building ------------------------------------------------------------------------------------


def _prefix(model: ir.Model, prefix: str, keep: set[str]) -> None:
    """Prefix every name in `model` (values, nodes, local functions) but the inputs in `keep`."""
    for graph in iter_graphs(model.graph):
        seen: set[int] = set()
        for value in [*graph.inputs, *list(graph.initializers.values())]:
            if id(value) in seen or (graph is model.graph and value.name in keep):
                continue
            seen.add(id(value))
            if value.name:
                value.name = prefix + value.name
        for node in graph:
            node.name = prefix + (node.name or node.op_type)
            for value in node.outputs:
                if value.name:
                    value.name = prefix + value.name
        for value in graph.initializers.values():
            if isinstance(value.const_value, ir.ExternalTensor):  # the merged model is written anew
                value.const_value = ir.Tensor(value.const_value.numpy(), name=value.name)
    functions = list(model.functions.values())
    if not functions:
        return
    renamed = {f.identifier(): prefix + f.name for f in functions}
    model.functions.clear()
    for function in functions:
        function.name = renamed[(function.domain, function.name, function.overload)]
        model.functions[function.identifier()] = function
    callers = [n for g in iter_graphs(model.graph) for n in g]
    callers += [n for f in functions for g in iter_graphs(f.graph) for n in g]
    for node in callers:
        key = (node.domain, node.op_type, node.overload)
        if key in renamed:
            node.op_type = renamed[key]


def _merge(models: Sequence[ir.Model], imports: dict[str, int]) -> ir.Model:
    """The members side by side in one graph reading the first member's inputs; the graph's outputs
    are every member's outputs, prefixed, member by member."""
    keep = {v.name or "" for v in runtime_inputs(models[0])}
    graph = onnx.GraphProto(name="ensemble")
    functions: list[onnx.FunctionProto] = []
    for index, model in enumerate(models):
        _prefix(model, f"m{index + 1}/", keep)
        proto = ir.to_proto(model)
        if index == 0:
            graph.input.extend(v for v in proto.graph.input if v.name in keep)
        graph.input.extend(v for v in proto.graph.input if v.name not in keep)
        graph.node.extend(proto.graph.node)
        graph.initializer.extend(proto.graph.initializer)
        graph.sparse_initializer.extend(proto.graph.sparse_initializer)
        graph.value_info.extend(proto.graph.value_info)
        graph.output.extend(proto.graph.output)
        functions.extend(proto.functions)
    merged = onnx.helper.make_model(
        graph,
        opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in imports.items()],
        functions=functions,
    )
    merged.ir_version = max(m.ir_version for m in models)
    return ir.serde.deserialize_model(merged)


def _combine(
    merged: ir.Model,
    first: ir.Model,
    count: int,
    combine: str,
    factors: np.ndarray,
    opset: int,
) -> list[ir.Value]:
    """The combined outputs, named as the members' outputs are."""
    per_member = len(first.graph.outputs)
    members = list(merged.graph.outputs)
    builder = combining.Builder(merged.graph, Namer(merged), opset, "ensemble")
    combined = []
    for position, like in enumerate(first.graph.outputs):
        values = [members[i * per_member + position] for i in range(count)]
        value = combining.build(builder, values, combine, factors, like)
        combined.append((value, like.name or f"output_{position}"))
    for value, name in combined:
        value.name = name
    return [value for value, _ in combined]


def _share(model: ir.Model) -> dict[str, int]:
    """Share identical initializers and merge identical nodes (bitwise passes); hits per pass."""
    from optkit.passes.cse import EliminateCommonSubexpressions
    from optkit.passes.dedupe import DeduplicateInitializers
    from optkit.passes.toposort import TopologicalSort
    from optkit.passes.unused import RemoveUnused

    passes = (
        DeduplicateInitializers(),
        EliminateCommonSubexpressions(),
        RemoveUnused(),
        TopologicalSort(),
    )
    _, report = Pipeline(passes, fixed_point=True).run(model)
    return {p.name: sum(p.hits().values()) for p in report.passes}


def _expected(
    members: Sequence[ir.Model], labels: Sequence[str], combine: str, factors: np.ndarray
) -> combining.Reference:
    """The numpy reference: each member run on its own, `combine` of their outputs."""
    runners: list[combining.Reference] = []  # made on first use: sessions only when verifying
    names = [v.name or "" for v in members[0].graph.outputs]

    def expected(feeds: combining.Feeds) -> dict[str, np.ndarray]:
        if not runners:
            runners.extend(
                combining.session_runner(model, label)
                for model, label in zip(members, labels, strict=True)
            )
        outputs = [run(feeds) for run in runners]
        return {
            name: combining.reference([out[name] for out in outputs], combine, factors)
            for name in names
        }

    return expected
