"""Models in and out: loading (files, protos, IR models, bytes, torch programs), atomic saving with
external data and shards (`model_files`), the output contract that no write touches an input
(`outputs`), checks of input models (`validation`) and user model specs (`modelspec`).

`optkit.io.load`, `save`, ... are `model_files`'s and `external_data`'s, imported on first use so
that `optkit.io.outputs` stays cheap to import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optkit.io.external_data import (
        check_external_data,
        external_data_paths,
        external_locations,
        shard_pattern,
    )
    from optkit.io.model_files import (
        SOURCE_KEY,
        ModelLike,
        ModelSource,
        ProgramLike,
        describe,
        initializer_bytes,
        load,
        save,
        to_proto,
    )


_EXTERNAL_DATA = frozenset(
    {"check_external_data", "external_data_paths", "external_locations", "shard_pattern"}
)


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'optkit.io' has no attribute {name!r}")
    home = "external_data" if name in _EXTERNAL_DATA else "model_files"
    value = getattr(importlib.import_module(f"optkit.io.{home}"), name)
    globals()[name] = value
    return value


__all__ = [
    "SOURCE_KEY",
    "ModelLike",
    "ModelSource",
    "ProgramLike",
    "check_external_data",
    "describe",
    "external_data_paths",
    "external_locations",
    "initializer_bytes",
    "load",
    "save",
    "shard_pattern",
    "to_proto",
]
