"""Input models checked before any work: the onnx checker, what it lets through but no runtime
accepts (initializers contradicting their declarations, non-UTF-8 strings, unknown opsets), and
opset upgrades. Every entry point starts from `load_checked`.
"""

from __future__ import annotations

import os

import onnx
import onnx.version_converter
import onnx_ir as ir

from optkit.core.graph import iter_graphs, node_label, opset_version
from optkit.core.skeleton import skeleton_proto
from optkit.errors import InputError, InternalError, first_line
from optkit.io import model_files as io


def check_input(source: io.ModelSource, model: ir.Model, what: str) -> None:
    """The checker on the input as given: a file by its path (external data stays on disk), a proto
    as is, an IR model through `check_model`."""
    try:
        if isinstance(source, onnx.ModelProto):
            onnx.checker.check_model(source)
        elif isinstance(source, str | os.PathLike):
            onnx.checker.check_model(os.fspath(source))
        else:
            check_model(model, what)
    except (onnx.checker.ValidationError, ValueError, TypeError) as exc:
        raise InputError(f"{what}: fails the ONNX checker: {first_line(exc)}") from None
    check_declarations(model, what)


def check_declarations(model: ir.Model, what: str) -> None:
    """What the onnx checker lets through but no runtime accepts: a default-domain opset newer than
    any onnx knows, and initializers whose stored type or shape contradicts their declaration."""
    place = _not_text(model)
    if place is not None:
        raise InputError(f"{what}: {place} is not UTF-8 text")
    newest = onnx.defs.onnx_opset_version()
    if opset_version(model) > newest:
        raise InputError(
            f"{what}: imports opset {opset_version(model)} of the default domain; "
            f"the newest this onnx knows is {newest}"
        )
    for graph in iter_graphs(model.graph):
        for value in graph.initializers.values():
            tensor = value.const_value
            if tensor is None:
                continue
            if not isinstance(tensor, ir.ExternalTensor):  # external data: checked by `io.load`
                try:
                    tensor.numpy()
                except Exception as exc:  # the IR raises ValueError / TypeError on bad data
                    raise InputError(
                        f"{what}: initializer '{value.name}': its data does not fit its type and "
                        f"shape ({first_line(exc)})"
                    ) from None
            declared = value.type.dtype if isinstance(value.type, ir.TensorType) else None
            if declared is not None and declared != tensor.dtype:
                raise InputError(
                    f"{what}: initializer '{value.name}' holds {tensor.dtype.name} data but is "
                    f"declared {declared.name}"
                )
            dims = list(value.shape) if value.shape is not None else None
            if dims is not None and all(isinstance(d, int) for d in dims):
                if tuple(dims) != tuple(tensor.shape):
                    raise InputError(
                        f"{what}: initializer '{value.name}' holds shape {list(tensor.shape)} "
                        f"but is declared {dims}"
                    )


def _not_text(model: ir.Model) -> str | None:
    """Where the model holds a string that is not UTF-8 (None if nowhere). The IR keeps such strings
    (names, doc strings, string attributes) as bytes, which it cannot write back."""
    strings: list[tuple[str, object]] = [
        ("the producer name", model.producer_name),
        ("the doc string", model.doc_string),
        *((f"metadata key {k!r}", v) for k, v in model.metadata_props.items()),
    ]
    for graph in iter_graphs(model.graph):
        strings += [("a graph name", graph.name), ("a graph doc string", graph.doc_string)]
        values = [*graph.inputs, *graph.outputs, *graph.initializers.values()]
        for node in graph:
            label = "a node" if isinstance(node.name, bytes) else node_label(node)
            strings += [
                (f"the name of {label}", node.name),
                (f"the domain of {label}", node.domain),
            ]
            strings += [
                (f"the op type of {label}", node.op_type),
                (f"the overload of {label}", node.overload),
                (label, node.doc_string),
            ]
            values += node.outputs
            for attr in node.attributes.values():
                texts = attr.value if attr.type == ir.AttributeType.STRINGS else [attr.value]
                if attr.type in (ir.AttributeType.STRING, ir.AttributeType.STRINGS):
                    strings += [(f"attribute '{attr.name}' of {label}", t) for t in texts]
        strings += [("a value name", v.name) for v in values]
    return next((place for place, text in strings if isinstance(text, bytes)), None)


def load_checked(source: io.ModelSource, what: str | None = None, *, copy: bool = True) -> ir.Model:
    """`io.load`, then `check_input`: the model every entry point starts from."""
    what = what or io.describe(source)
    model = io.load(source, copy=copy)
    check_input(source, model, what)
    return model


def check_model(model: ir.Model, what: str) -> None:
    """Run the onnx checker; raises InputError naming `what` on failure.

    External tensors are checked by their metadata only (their bytes stay on disk), so models with
    external data, and models over 2 GB, are checked without loading them into one protobuf.
    """
    try:
        onnx.checker.check_model(skeleton_proto(model))
    except (onnx.checker.ValidationError, ValueError, TypeError) as exc:
        raise InputError(f"{what}: fails the ONNX checker: {first_line(exc)}") from None


def check_built(model: ir.Model, what: str) -> None:
    """`check_model` on a model optkit built (a fused, combined or augmented one): a failure there
    is an optkit bug, raised as InternalError (exit 3), never blamed on the user's input."""
    try:
        check_model(model, what)
    except InputError as exc:
        raise InternalError(f"{exc} (an optkit bug: please report it)") from None


def upgraded(model: ir.Model, opset: int, source: str) -> ir.Model:
    """`model` converted to default-domain `opset` by onnx's version converter (never downgraded)."""
    current = opset_version(model)
    if opset < current:
        raise InputError(f"{source}: --upgrade-opset {opset} is below the model's opset {current}")
    if opset > onnx.defs.onnx_opset_version():
        raise InputError(
            f"{source}: --upgrade-opset {opset}: this onnx knows opsets up to "
            f"{onnx.defs.onnx_opset_version()}"
        )
    if opset == current:
        return model
    try:
        converted = onnx.version_converter.convert_version(io.to_proto(model), opset)
    except Exception as exc:  # the converter raises RuntimeError / ValueError / its own errors
        raise InputError(
            f"{source}: onnx's version converter cannot take it to opset {opset}: {first_line(exc)}"
        ) from None
    return ir.from_proto(converted)
