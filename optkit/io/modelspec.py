"""What names a user's model on the command line, parsed without importing torch (so that a bad
option is refused at once): `--model package.module:factory` or `--model path/to/file.py:factory`,
`--model-arg key=value`, `--input-size 224` / `224x160`, `--preprocessing fit|imagenet|spec.json`.

Importing the module and calling the factory is `optkit.torch.usermodel`'s job (it needs torch).
"""

from __future__ import annotations

import ast
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optkit.errors import InputError

PREPROCESSING_CHOICES = ("fit", "imagenet")
# The values a --model-arg may hold: what literal_eval gives and a checkpoint stores as plain data
# (torch.load(weights_only=True) reads them back).
_PLAIN = (type(None), bool, int, float, str)


@dataclass(frozen=True)
class ModelSpec:
    """A factory: `module` (dotted) or `file` (absolute path of a .py), and `factory` (a dotted
    attribute path in it). `text` is how a checkpoint records it (a file as its absolute path)."""

    factory: str
    module: str | None = None
    file: Path | None = None

    @property
    def text(self) -> str:
        where = str(self.file) if self.file is not None else self.module
        return f"{where}:{self.factory}"


def parse_model_spec(text: str, option: str = "--model") -> ModelSpec:
    """`package.module:factory` or `path/to/file.py:factory` (InputError otherwise; a file that does
    not exist is refused here, a module is found only when imported)."""
    label = f"{option} {text}"
    usage = "give package.module:factory or path/to/file.py:factory"
    if ":" not in text:
        raise InputError(f"{label}: no ':factory' ({usage})")
    where, factory = text.rsplit(":", 1)
    where = where.strip()
    if not where or not factory:
        raise InputError(
            f"{label}: {'the module' if not where else 'the factory'} is empty ({usage})"
        )
    if not all(part.isidentifier() for part in factory.split(".")):
        raise InputError(f"{label}: {factory!r} is not a Python name ({usage})")
    if where.endswith(".py") or "/" in where or os.sep in where:
        path = Path(where).expanduser()
        if not path.is_file():
            kind = "is a directory" if path.is_dir() else "no such file"
            raise InputError(f"{label}: {where}: {kind}")
        if path.suffix != ".py":
            raise InputError(f"{label}: {where} is not a .py file ({usage})")
        return ModelSpec(factory, file=path.resolve())
    if not all(part.isidentifier() for part in where.split(".")):
        raise InputError(f"{label}: {where!r} is not a module name ({usage})")
    return ModelSpec(factory, module=where)


def source_file(spec: ModelSpec | str) -> Path | None:
    """The file of the code `spec` names, found without running any of it: the .py, or the
    module's source as `import` would find it (the current folder first); None when not found."""
    import importlib.machinery

    if isinstance(spec, str):
        where = spec.rsplit(":", 1)[0]
        if where.endswith(".py"):
            return Path(where)
        module: str | None = where
    else:
        if spec.file is not None:
            return spec.file
        module = spec.module
    if not module:
        return None
    search: list[str] | None = [os.getcwd(), *(p for p in sys.path if p)]
    found = None
    for part in module.split("."):
        if search is None:
            return None
        try:
            found = importlib.machinery.PathFinder.find_spec(part, search)
        except (ImportError, ValueError, OSError):
            return None
        if found is None:
            return None
        locations = found.submodule_search_locations
        search = list(locations) if locations is not None else None
    if found is None or not found.has_location or not found.origin:
        return None
    return Path(found.origin)


def parse_model_args(
    items: tuple[str, ...] | list[str], option: str = "--model-arg"
) -> dict[str, Any]:
    """`key=value` pairs as keyword arguments: each value a Python literal (3, 0.5, True, None,
    (1, 2), 'text'), anything else the string itself (`name=resnet` is 'resnet')."""
    args: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise InputError(f"{option} {item}: give key=value with a Python name as the key")
        if key in args:
            raise InputError(f"{option} {item}: {key} is given twice")
        try:
            parsed = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            parsed = value
        if not _plain(parsed):
            raise InputError(
                f"{option} {item}: a {type(parsed).__name__}; values are numbers, strings, True/"
                "False/None, or lists, tuples and dicts of them"
            )
        args[key] = parsed
    return args


def _plain(value: Any) -> bool:
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def format_args(args: dict[str, Any]) -> str:
    """`k=v, ...` as the factory is called with them."""
    return ", ".join(f"{key}={value!r}" for key, value in args.items())


def parse_input_size(text: str, option: str = "--input-size") -> tuple[int, int]:
    """`224` (square) or `HxW` (e.g. `224x160`) -> (H, W), each 1 .. 16384."""
    parts = text.lower().replace(" ", "").split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise InputError(f"{option} {text}: give a side (224) or HxW (224x160)") from None
    if len(sizes) not in (1, 2) or not all(1 <= s <= 16384 for s in sizes):
        raise InputError(f"{option} {text}: give a side (224) or HxW (224x160), each 1..16384")
    return (sizes[0], sizes[-1])


def parse_preprocessing(text: str, option: str = "--preprocessing") -> str | Path:
    """'fit', 'imagenet' or the path of a preprocessing spec (JSON, `optkit preprocess`)."""
    if text.lower() in PREPROCESSING_CHOICES:
        return text.lower()
    path = Path(text)
    if not path.is_file():
        raise InputError(
            f"{option} {text}: give fit, imagenet or an existing preprocessing spec file (JSON)"
        )
    return path
