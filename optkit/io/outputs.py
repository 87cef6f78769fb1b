"""The output contract every writer follows: an output is resolved and checked before any work.

An output is refused (`InputError`, one line) when it is a directory, when its folder does not exist
or cannot be written, or when it, or a file written beside it (a model's ``<name>.data`` or its
shards), is a file the inputs read: the input model, its external data files and shards, a source
checkpoint, a data file, a spec. "Is" means the same file on disk (`os.path.samefile`), so a
symbolic or hard link to an input is refused too.

The check is cheap whatever the model size: a file an input reads exists, so only outputs that
already exist are compared, and a model's external data files are listed from its protobuf without
reading a byte of the data (`model_reads`).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from optkit.errors import InputError

PathLike = str | os.PathLike


def model_reads(path: PathLike) -> list[Path]:
    """The model file and every external data file its tensors name (resolved, existing ones).

    Reads only the protobuf (`load_external_data=False`); a file that is not a readable model reads
    nothing else (loading it later gives the proper error).
    """
    import onnx

    from optkit.io.external_data import external_locations

    model = Path(path)
    reads = [model]
    if not model.is_file() or not _may_name_a_location(model):
        return reads
    try:
        proto = onnx.load(os.fspath(model), load_external_data=False)
    except Exception:  # not a model: the loader reports it when the command reads it
        return reads
    folder = model.parent
    reads += [folder / location for location in external_locations(proto)]
    return [p for p in reads if p.exists()]


def _may_name_a_location(model: Path) -> bool:
    """False when the file's bytes do not hold b"location": then no tensor in it names an external
    data file, since the key of that entry is stored verbatim (a protobuf string), and parsing the
    whole protobuf to find none is skipped (a scan of the mapped file is several times cheaper)."""
    import mmap

    try:
        with open(model, "rb") as handle:
            if os.fstat(handle.fileno()).st_size == 0:
                return False
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return data.find(b"location") >= 0
    except OSError:  # unreadable: let the loader decide, as before
        return True


def written_files(output: Path, *, model: bool) -> list[Path]:
    """The files a writer creates for `output`: the file itself and, for a model, the external
    data file (``<name>.data``) and any shard of it already present in the folder."""
    files = [output]
    if model:
        files.append(output.with_name(output.name + ".data"))
        if output.parent.is_dir():
            from optkit.io.external_data import shard_pattern

            shards = shard_pattern(output.name + ".data")
            files += [p for p in output.parent.iterdir() if shards.fullmatch(p.name)]
    return files


def check_output(
    output: PathLike,
    *,
    source: PathLike | None = None,
    reads: Iterable[PathLike] | Callable[[], Iterable[PathLike]] = (),
    what: str = "output",
    model: bool = False,
    overwrite: bool = False,
    read_folders: Iterable[PathLike] = (),
) -> Path:
    """`output` resolved, or InputError when writing it could destroy an input or cannot work.

    `source` is the input itself (the model or checkpoint being read; replaced only with
    `overwrite`, and only when nothing still reads it); `reads` are the other files the inputs read
    (external data, shards, data files, specs), never replaced (or a function listing them, called
    only when some file the writer would create already exists). `model` says the output is an ONNX
    model, which may bring a ``.data`` file or shards beside it. `read_folders` are folders an input
    reads as a whole (an image-folder data set): nothing is written anywhere inside them.
    """
    target = Path(output)
    label = f"{what} {target}" if what else str(target)
    if str(output) == "" or target.name in ("", ".", "..") or str(output).endswith(("/", os.sep)):
        raise InputError(f"{label}: not a file name")
    if target.is_dir():
        raise InputError(f"{label}: is a directory; give a file name")
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"{label}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{label}: folder {folder} is not writable")
    for data_folder in read_folders:
        if target.resolve().is_relative_to(Path(data_folder).resolve()):
            raise InputError(
                f"{label}: is inside {data_folder}, a folder the input reads; choose another output"
            )
    existing = [p for p in written_files(target, model=model) if p.exists()]
    if not existing:
        return target.resolve()
    for written in existing:
        if not written.is_file():
            kind = "a directory" if written.is_dir() else "not a regular file (a device or a pipe)"
            where = "" if written == target else f"its data file {written.name} "
            raise InputError(f"{label}: {where}is {kind}; refusing to replace it")
        _check_replaceable(written, label)

    def refuse(written: Path, kind: str) -> None:
        if written == target:
            raise InputError(f"{label}: refusing to overwrite {kind}; choose another output")
        raise InputError(
            f"{label}: its data file {written.name} would overwrite {kind}; choose another output"
        )

    if source is not None and not overwrite:  # the cheap check first: no model is parsed for it
        for written in existing:
            if _same(written, Path(source)):
                refuse(written, "the input")
    listed = reads() if callable(reads) else reads
    for path in listed:
        for written in existing:
            if _same(written, Path(path)):
                refuse(written, f"{path}, which the input reads")
    return target.resolve()


def _check_replaceable(path: Path, label: str) -> None:
    """In a sticky folder (/tmp), a file of another user cannot be replaced by a rename: refuse it
    now rather than fail after the work (root may, and is let through)."""
    euid = os.geteuid() if hasattr(os, "geteuid") else 0
    if euid == 0:
        return
    folder = path.parent
    try:
        folder_stat, file_stat = folder.stat(), path.stat()
    except OSError:
        return
    if folder_stat.st_mode & stat.S_ISVTX and euid not in (folder_stat.st_uid, file_stat.st_uid):
        raise InputError(
            f"{label}: {path.name} belongs to another user in a sticky folder ({folder}); it "
            "cannot be replaced: choose another output"
        )


def check_distinct(outputs: Iterable[tuple[str, PathLike]]) -> None:
    """Two outputs of one command must not be the same file."""
    seen: list[tuple[str, Path]] = []
    for what, path in outputs:
        for other_what, other in seen:
            if Path(path).resolve() == other.resolve():
                raise InputError(f"{what} {path}: is also the {other_what}; choose another")
        seen.append((what, Path(path)))


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def write_text(path: PathLike, text: str) -> None:
    """Write `text` to `path` atomically (a temporary file in the same folder, then a rename)."""
    import tempfile

    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
