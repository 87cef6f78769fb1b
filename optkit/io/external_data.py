"""External data: where a model's tensors say their bytes live, checks that those places are safe and
big enough before anything is read, and the names of shards.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnx_ir as ir

from optkit.core.graph import iter_graphs
from optkit.errors import InputError


def stored_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a graph stores (initializers, sparse ones, Constant values), subgraphs included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from stored_tensors(attr.g)
            for sub in attr.graphs:
                yield from stored_tensors(sub)


def check_external_data(proto: onnx.ModelProto, path: Path) -> None:
    """Refuse, before any of it is read, external data that is not a plain file inside the model's
    folder (absolute locations, `..`, symbolic links anywhere on the way) or that is shorter than the
    tensor it claims to hold."""
    folder = path.parent.resolve()
    for tensor in stored_tensors(proto.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        where = f"{path}: tensor '{tensor.name}'"
        location = info.get("location", "")
        if not location:
            raise InputError(f"{where}: external data without a location")
        relative = Path(location)
        if relative.is_absolute() or ".." in relative.parts or relative.drive:
            raise InputError(
                f"{where}: external data location '{location}' leaves the model's folder"
            )
        current = folder
        for part in relative.parts:
            current = current / part
            if current.is_symlink():
                raise InputError(f"{where}: external data location '{location}' is a symbolic link")
        if not current.is_file():
            raise InputError(f"{where}: external data file '{location}' does not exist")
        try:
            offset = int(info.get("offset", "0"))
            length = int(info["length"]) if "length" in info else None
        except ValueError:
            raise InputError(f"{where}: external data offset or length is not a number") from None
        size = current.stat().st_size
        needed = tensor_bytes(tensor)
        if offset < 0 or (length is not None and length < 0):
            raise InputError(f"{where}: negative external data offset or length")
        if length is not None and needed is not None and length != needed:
            raise InputError(
                f"{where}: external data length {length} bytes, but its shape and type need {needed}"
            )
        claimed = length if length is not None else needed
        if claimed is not None and offset + claimed > size:
            raise InputError(
                f"{where}: claims bytes {offset}..{offset + claimed} of '{location}', "
                f"which has {size}"
            )


def tensor_bytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes the tensor's shape and type need (sub-byte types packed); None for types of no fixed
    width (strings) and unknown ones."""
    if any(d < 0 for d in tensor.dims):
        return None
    try:
        bits = ir.DataType(tensor.data_type).bitwidth
    except (ValueError, TypeError):
        return None
    return (math.prod(tensor.dims) * bits + 7) // 8


def external_locations(proto: onnx.ModelProto) -> list[str]:
    """The external data locations the tensors of `proto` name (relative to its folder), in order."""
    locations: list[str] = []
    for tensor in stored_tensors(proto.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location" and entry.value not in locations:
                    locations.append(entry.value)
    return locations


def external_data_paths(model: ir.Model) -> set[Path]:
    """Resolved paths of every external-data file the model's tensors read from."""
    paths: set[Path] = set()
    for graph in iter_graphs(model.graph):
        for value in graph.initializers.values():
            tensor = value.const_value
            if isinstance(tensor, ir.ExternalTensor):
                paths.add(Path(tensor.path).resolve())
    return paths


def shard_pattern(name: str) -> re.Pattern[str]:
    """The names onnx_ir gives the shards of external data `name` (model-00001-of-00003.data)."""
    example = ir.external_data._get_shard_filename(name, 1, 2)
    prefix, _, ext = example.partition("-00001-of-00002")
    return re.compile(rf"{re.escape(prefix)}-\d+-of-\d+{re.escape(ext)}")
