"""ONNX Runtime sessions for optkit's checks and benchmarks.

Sessions are built from a file path when the model is large (so a >2 GB model is never serialized to
one protobuf) and from bytes otherwise. Providers: 'cpu', 'cuda', or 'auto' (CUDA when onnxruntime-gpu
and a GPU are present, else CPU). Asking for 'cuda' where it is not available is an error, not a
silent fallback.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from typing import TYPE_CHECKING

from optkit.errors import InputError

if TYPE_CHECKING:
    import numpy as np
    import onnx
    import onnx_ir as ir
    import onnxruntime as ort

# onnxruntime (and onnx, onnx_ir) are imported by the functions that run a model, not here: the
# command line reads OPTIMIZATION_LEVELS for its --help, and `optkit inspect` or `fuse --no-verify`
# never start a session (see tools/bench_startup.py).

logger = logging.getLogger(__name__)

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def resolve_provider(provider: str) -> list[str]:
    """ORT provider list for 'cpu', 'cuda' or 'auto'."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if provider == "auto":
        if PROVIDERS["cuda"] in available:
            return [PROVIDERS["cuda"], PROVIDERS["cpu"]]
        logger.info("CUDA execution provider not available; running on CPU")
        return [PROVIDERS["cpu"]]
    if provider not in PROVIDERS:
        raise InputError(f"unknown provider '{provider}' (choose cpu, cuda or auto)")
    if PROVIDERS[provider] not in available:
        raise InputError(
            f"provider '{provider}' is not available in this onnxruntime "
            f"(available: {', '.join(available)}); install onnxruntime-gpu on a machine with a GPU"
        )
    return [PROVIDERS[provider]] if provider == "cpu" else [PROVIDERS[provider], PROVIDERS["cpu"]]


# optkit's names for ORT's graph optimization levels: the members of ort.GraphOptimizationLevel
OPTIMIZATION_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


def session_options(optimization: str = "disable", threads: int = 0) -> ort.SessionOptions:
    """Session options: ORT graph optimization level by name, intra-op threads (0: ORT's default)."""
    if optimization not in OPTIMIZATION_LEVELS:
        raise InputError(
            f"unknown optimization level '{optimization}' (choose {', '.join(OPTIMIZATION_LEVELS)})"
        )
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(
        ort.GraphOptimizationLevel, OPTIMIZATION_LEVELS[optimization]
    )
    options.intra_op_num_threads = threads
    # ORT raises what fails; its own error log (severity 3) would be a second line on stderr
    options.log_severity_level = 4
    return options


def make_session(
    model: ir.Model | onnx.ModelProto | str | os.PathLike,
    *,
    provider: str = "cpu",
    optimization: str = "disable",
    threads: int = 0,
) -> ort.InferenceSession:
    """An ORT session for `model` (graph optimizations off unless `optimization` says otherwise).

    A path is handed to ORT as a path, so external data is read from disk, never copied into one
    protobuf; an in-memory model over 2 GB is written to a temporary folder first.
    """
    import onnx
    import onnx_ir as ir
    import onnxruntime as ort

    options = session_options(optimization, threads)
    providers = resolve_provider(provider)
    if isinstance(model, str | os.PathLike):
        return ort.InferenceSession(os.fspath(model), options, providers=providers)
    if isinstance(model, onnx.ModelProto) or not _needs_file(model):
        proto = model if isinstance(model, onnx.ModelProto) else ir.to_proto(model)
        return ort.InferenceSession(proto.SerializeToString(), options, providers=providers)
    # Large or external weights: written next to a model file (streamed, the weights are never
    # copied into one protobuf), and ORT reads them from there.
    with tempfile.TemporaryDirectory(prefix="optkit-session-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        ir.save(model, path, external_data="model.onnx.data")
        return ort.InferenceSession(path, options, providers=providers)


_IN_MEMORY_LIMIT = 1 << 30  # an in-memory model with more weight bytes than this goes to a file


def _needs_file(model: ir.Model) -> bool:
    from optkit import io

    return bool(io.external_data_paths(model)) or io.initializer_bytes(model) > _IN_MEMORY_LIMIT


def run(session: ort.InferenceSession, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run `session`; returns outputs by name."""
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, dict(feeds))
    return dict(zip(names, values, strict=True))
