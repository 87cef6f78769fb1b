"""Models in and out: loading (files, protos, IR models, bytes, torch programs), atomic saving with
external data and shards (`model_files`), the output contract that no write touches an input
(`outputs`), checks of input models (`validation`) and user model specs (`modelspec`).

`optkit.io.load`, `save`, ... are `model_files`'s, imported on first use so that `optkit.io.outputs`
stays cheap to import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optkit.io.model_files import (
        SOURCE_KEY,
        ModelLike,
        ModelSource,
        ProgramLike,
        check_external_data,
        describe,
        external_data_paths,
        external_locations,
        initializer_bytes,
        load,
        save,
        shard_pattern,
        skeleton_proto,
        to_proto,
    )


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'optkit.io' has no attribute {name!r}")
    value = getattr(importlib.import_module("optkit.io.model_files"), name)
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
    "skeleton_proto",
    "to_proto",
]
