"""ONNX Runtime sessions for optkit's checks and benchmarks.

Sessions are built from a file path when the model is large (so a >2 GB model is never serialized to
one protobuf) and from bytes otherwise. Providers: 'cpu', 'cuda', or 'auto' (CUDA when onnxruntime-gpu
and a GPU are present, else CPU). Asking for 'cuda' where it is not available is an error, not a
silent fallback.
"""

from __future__ import annotations

import enum
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


class Provider(str, enum.Enum):
    """Where a session runs, as optkit's options name it: AUTO is CUDA where onnxruntime-gpu and a
    GPU are present, else CPU."""

    CPU = "cpu"
    CUDA = "cuda"
    AUTO = "auto"

    def __str__(self) -> str:  # the option's spelling in messages, not 'Provider.CPU'
        return self.value


class ExecutionProvider(str, enum.Enum):
    """ONNX Runtime's names of the execution providers optkit runs on."""

    CPU = "CPUExecutionProvider"
    CUDA = "CUDAExecutionProvider"

    def __str__(self) -> str:
        return self.value


def resolve_provider(provider: Provider | str) -> list[str]:
    """ORT provider list for 'cpu', 'cuda' or 'auto' (CUDA runs with CPU as ORT's fallback for the
    ops CUDA lacks)."""
    try:
        asked = Provider(provider)
    except ValueError:
        known = [p.value for p in Provider]
        raise InputError(
            f"unknown provider '{provider}' (choose {', '.join(known[:-1])} or {known[-1]})"
        ) from None
    import onnxruntime as ort

    available = ort.get_available_providers()
    cpu, cuda = ExecutionProvider.CPU.value, ExecutionProvider.CUDA.value
    if asked is Provider.AUTO:
        if cuda in available:
            return [cuda, cpu]
        logger.info("CUDA execution provider not available; running on CPU")
        return [cpu]
    wanted = ExecutionProvider[asked.name].value
    if wanted not in available:
        raise InputError(
            f"provider '{asked.value}' is not available in this onnxruntime "
            f"(available: {', '.join(available)}); install onnxruntime-gpu on a machine with a GPU"
        )
    return [cpu] if asked is Provider.CPU else [wanted, cpu]


class OptimizationLevel(str, enum.Enum):
    """optkit's names for ORT's graph optimization levels (`ort_name`: the member of
    ort.GraphOptimizationLevel each one sets)."""

    DISABLE = "disable"
    BASIC = "basic"
    EXTENDED = "extended"
    ALL = "all"

    def __str__(self) -> str:
        return self.value

    @property
    def ort_name(self) -> str:
        """ORT_DISABLE_ALL for DISABLE, ORT_ENABLE_<NAME> for the others."""
        return "ORT_DISABLE_ALL" if self is OptimizationLevel.DISABLE else f"ORT_ENABLE_{self.name}"


# Each level's name -> its ort.GraphOptimizationLevel member's name, in the order of the levels.
OPTIMIZATION_LEVELS = {level.value: level.ort_name for level in OptimizationLevel}


def session_options(
    optimization: OptimizationLevel | str = OptimizationLevel.DISABLE, threads: int = 0
) -> ort.SessionOptions:
    """Session options: ORT graph optimization level by name, intra-op threads (0: ORT's default)."""
    try:
        level = OptimizationLevel(optimization)
    except ValueError:
        raise InputError(
            f"unknown optimization level '{optimization}' (choose {', '.join(OPTIMIZATION_LEVELS)})"
        ) from None
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level.ort_name)
    options.intra_op_num_threads = threads
    # ORT raises what fails; its own error log (severity 3) would be a second line on stderr
    options.log_severity_level = 4
    return options


def make_session(
    model: ir.Model | onnx.ModelProto | str | os.PathLike,
    *,
    provider: Provider | str = Provider.CPU,
    optimization: OptimizationLevel | str = OptimizationLevel.DISABLE,
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
