"""Loading and saving models.

`load` accepts a path, an `onnx.ModelProto`, an `onnx_ir.Model`, serialized ModelProto bytes or a
`torch.onnx.ONNXProgram`, and returns an `onnx_ir.Model` (external data stays memory-mapped, never
copied up front). `save` writes atomically: to a temporary
file in the target folder, then renamed, so a crash never leaves a half-written model; it refuses to
write external data over a file that tensors of the model still read from.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import google.protobuf.message
import onnx
import onnx_ir as ir

from optkit.core.graph import iter_graphs
from optkit.errors import InputError, first_line
from optkit.io.external_data import (
    check_external_data,
    external_data_paths,
    shard_pattern,
    stored_tensors,
)
from optkit.io.outputs import check_output

ModelLike = str | os.PathLike | onnx.ModelProto | ir.Model
SOURCE_KEY = "optkit.source"  # in `ir.Model.meta` (not serialized): the file `load` read


class ProgramLike(Protocol):
    """What optkit reads of a `torch.onnx.ONNXProgram` (torch is never imported for it): its
    `.model`, an `onnx_ir.Model`, or else its `.model_proto`."""

    @property
    def model_proto(self) -> onnx.ModelProto: ...


ModelSource = ModelLike | bytes | ProgramLike
"""What `load` (and so `fuse` and `verify`) accepts: a path, an `onnx.ModelProto`, an
`onnx_ir.Model`, a serialized ModelProto (`bytes`), or a `torch.onnx.ONNXProgram`."""
_PROTOBUF_LIMIT = 2**31 - 1


def describe(source: Any) -> str:
    """How messages name a model: its path, or what kind of object it came as."""
    if isinstance(source, str | os.PathLike):
        return str(source)
    if isinstance(source, bytes | bytearray | memoryview):
        return "<bytes>"
    if _program_model(source) is not None:
        return f"<{type(source).__name__}>"
    return "<model>"


def _program_model(source: Any) -> ir.Model | onnx.ModelProto | None:
    """The model inside a `torch.onnx.ONNXProgram` (duck-typed: its `.model` or `.model_proto`)."""
    if isinstance(source, ir.Model | onnx.ModelProto | str | os.PathLike | bytes):
        return None
    try:
        model = getattr(source, "model", None)
        if isinstance(model, ir.Model):
            return model
        proto = getattr(source, "model_proto", None)
    except Exception:  # a property that fails: not a program optkit can read
        return None
    return proto if isinstance(proto, onnx.ModelProto) else None


def load(source: ModelSource, *, copy: bool = True) -> ir.Model:
    """An `onnx_ir.Model` from a path, a ModelProto, an IR model (cloned unless `copy=False`),
    serialized ModelProto bytes, or a `torch.onnx.ONNXProgram` (its `.model`, cloned unless
    `copy=False`). Raises `InputError` for anything else, and for bytes that are not a model."""
    if isinstance(source, ir.Model):
        return source.clone() if copy else source
    if isinstance(source, onnx.ModelProto):
        _check_header(source, "<model>")
        return _deserialize(source, "<model>")
    if isinstance(source, bytes | bytearray | memoryview):
        return _load_bytes(bytes(source))
    inner = _program_model(source)
    if inner is not None:
        return load(inner, copy=copy)
    if not isinstance(source, str | os.PathLike):
        raise InputError(
            f"cannot load a model from {type(source).__name__}: expected a path, an "
            "onnx.ModelProto, an onnx_ir.Model, bytes or a torch.onnx.ONNXProgram"
        )
    path = Path(source)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    try:
        # read as binary protobuf whatever the suffix (onnx picks a text parser for .json / .txt)
        proto = onnx.load_model_from_string(path.read_bytes())
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except Exception as exc:  # protobuf raises DecodeError, ParseError, ValueError, ...
        raise InputError(f"{path}: not a readable ONNX model ({first_line(exc)})") from None
    _check_header(proto, str(path))
    check_external_data(proto, path)
    model = _deserialize(proto, str(path))
    for graph in iter_graphs(model.graph):
        ir.external_data.set_base_dir(graph, str(path.parent.resolve()))
    model.meta[SOURCE_KEY] = str(path.resolve())
    return model


def _load_bytes(data: bytes) -> ir.Model:
    """A serialized ModelProto. Its external data, if it names any, has no folder to be read from."""
    what = "<bytes>"
    if not data:
        raise InputError(f"{what}: not a readable ONNX model (no bytes)")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (google.protobuf.message.DecodeError, ValueError, RuntimeError) as exc:
        raise InputError(f"{what}: not a readable ONNX model ({first_line(exc)})") from None
    if not proto.HasField("graph") or proto.ir_version == 0:  # any bytes parse as some proto
        raise InputError(f"{what}: not a readable ONNX model (no graph or no IR version)")
    _check_header(proto, what)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in stored_tensors(proto.graph)):
        raise InputError(
            f"{what}: the model keeps tensors in external data, which bytes cannot carry; "
            "load it from its path"
        )
    return _deserialize(proto, what)


def _check_header(proto: onnx.ModelProto, what: str) -> None:
    if not proto.HasField("graph") or proto.ir_version == 0:
        raise InputError(f"{what}: not an ONNX model (no graph or no IR version)")
    if proto.ir_version > onnx.IR_VERSION:
        raise InputError(
            f"{what}: IR version {proto.ir_version} is newer than this onnx reads ({onnx.IR_VERSION})"
        )


def _deserialize(proto: onnx.ModelProto, what: str) -> ir.Model:
    try:
        return ir.serde.deserialize_model(proto)
    except Exception as exc:  # the deserializer raises many types on malformed graphs
        raise InputError(f"{what}: malformed ONNX model ({first_line(exc)})") from None


def to_proto(model: ir.Model) -> onnx.ModelProto:
    """The model as an `onnx.ModelProto` (materializes external data in memory)."""
    return ir.to_proto(model)


def initializer_bytes(model: ir.Model) -> int:
    total = 0
    for graph in iter_graphs(model.graph):
        for value in graph.initializers.values():
            if value.const_value is not None:
                total += value.const_value.nbytes
    return total


def save(
    model: ir.Model,
    path: str | os.PathLike,
    *,
    external_data: str | None = None,
    shard_size: int | None = None,
    source: str | os.PathLike | None = None,
    overwrite: bool = False,
    inputs_read: Iterable[str | os.PathLike] = (),
) -> Path:
    """Write `model` to `path` atomically, never over a file it still reads.

    Refused before anything is written (`optkit.io.outputs.check_output`): a directory, a missing or
    unwritable folder, a path (or a data file beside it, `external_data` included) that is one of
    the external data files the model reads or one of `inputs_read` (what the model it was made from
    reads), and the file the model was loaded from (`source`, by default the path `load` read it
    from) unless `overwrite=True`.

    `external_data` names a data file (relative to `path`'s folder) for large tensors; it is chosen
    automatically (``<file>.data``) when the model read external data, would exceed protobuf's 2 GB,
    or `shard_size` asks for the data in files of at most that many bytes (``<file>-00001-of-0000N
    .data``; a tensor larger than that gets a file of its own). Tensors are streamed to the data
    file, never gathered into one protobuf. The data file is written to a temporary name and renamed,
    then the model file likewise: the model's rename is the commit point.
    """
    if shard_size is not None and shard_size <= 0:
        raise InputError(f"shard size must be positive, not {shard_size}")
    target = Path(path)
    source = source if source is not None else model.meta.get(SOURCE_KEY)
    read = external_data_paths(model)

    def reads() -> list[Path]:
        return [*read, *(Path(p) for p in inputs_read)]

    check_output(target, source=source, reads=reads, what="", model=True, overwrite=overwrite)
    folder = target.parent if str(target.parent) else Path(".")
    if external_data is not None:
        check_output(folder / external_data, source=source, reads=reads,
                     what=f"{target}: external data", overwrite=overwrite)  # fmt: skip
    elif shard_size is not None or read or initializer_bytes(model) > _PROTOBUF_LIMIT // 2:
        external_data = target.name + ".data"
    if external_data is not None:
        shards = shard_pattern(external_data)
        if shard_size is not None and any(
            p.parent == folder.resolve() and shards.fullmatch(p.name) for p in read
        ):  # shards of a data name other than the default, which `check_output` lists
            raise InputError(
                f"{target}: external data file {external_data} is still read by the model; "
                "choose another output name"
            )
        _save_with_data(model, target, external_data, shard_size)
        return target
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes it private; outputs are ordinary files
    try:
        data = ir.to_proto(model).SerializeToString()
        with open(tmp_name, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    return target


def _save_with_data(
    model: ir.Model, target: Path, external_data: str, shard_size: int | None
) -> None:
    """Write the model and its data files into a hidden folder beside `target`, then move the data
    files into place and the model file last (the commit point); data files of an earlier output of
    the same name that the new model does not name (shards of a run with more of them) are removed
    after the commit (for the default data name, which the output contract checks)."""
    folder = target.parent if str(target.parent) else Path(".")
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.", suffix=".tmp", dir=folder) as tmp:
        staged = Path(tmp) / target.name
        ir.save(model, staged, external_data=external_data, max_shard_size_bytes=shard_size)
        written = sorted(p for p in Path(tmp).iterdir() if p != staged)
        for data_file in written:
            os.chmod(data_file, 0o666 & ~_umask())
            os.replace(data_file, folder / data_file.name)
        os.chmod(staged, 0o666 & ~_umask())
        os.replace(staged, target)
    if external_data != target.name + ".data":
        return  # only the default data name is checked against the inputs (`written_files`)
    names = {p.name for p in written}
    stale = shard_pattern(external_data)
    for old in folder.iterdir():
        if old.name not in names and stale.fullmatch(old.name) and old.is_file():
            old.unlink()


def _umask() -> int:
    """The process umask, read without changing it (os.umask would race with other threads)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022
