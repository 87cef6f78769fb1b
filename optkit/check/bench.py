"""`optkit bench`: ONNX Runtime session creation time, latency and throughput of a model, optionally
against a baseline model run alternately with it, so that machine noise hits both alike.

The report says what was run: the shape and dtype of every input fed, which dynamic dims took a
default (1 for a leading batch dim, 16 for any other) rather than a value from `--batch`/`--shape`,
the execution providers ORT used, and a throughput counted in the rows actually fed.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from optkit import io
from optkit.check import runtime
from optkit.check.inputs import (
    DEFAULT_BATCH,
    DEFAULT_DIM,
    check_nonempty_shapes,
    check_shapes,
    format_dims,
    runtime_inputs,
    synthetic_inputs,
)
from optkit.errors import InputError

SESSION_ROUNDS = 3  # session creations per model; the median is reported


@dataclass(frozen=True)
class Timing:
    """One model's numbers: session creation (median of 3), per-run latency, samples per second."""

    model: str
    session_seconds: float
    median_ms: float
    p90_ms: float
    throughput: float  # samples (batch rows actually fed) per second at the median latency
    runs: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class FedInput:
    """One input as it was fed: its shape and ONNX dtype name."""

    shape: tuple[int, ...]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class DefaultDim:
    """A dynamic dim that no option set: optkit fed `value` (1 for a batch dim, 16 for others)."""

    input: str
    axis: int
    dim: str  # the dim's symbolic name, or "dim AXIS" when it has none
    value: int
    option: str  # the option that sets it: "--batch" (a leading dim) or "--shape"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class BenchReport:
    model: Timing
    baseline: Timing | None
    batch: int  # rows fed: the leading dim of the inputs
    threads: int
    provider: str
    optimization: str
    inputs: Mapping[str, FedInput] = field(default_factory=dict)
    defaults: tuple[DefaultDim, ...] = ()
    execution_providers: tuple[str, ...] = ()  # what ORT's session reports it runs on

    @property
    def ratio(self) -> float | None:
        """Median latency of the model over the baseline's (below 1: the model is faster)."""
        return None if self.baseline is None else self.model.median_ms / self.baseline.median_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.to_dict(),
            "baseline": self.baseline.to_dict() if self.baseline else None,
            "ratio": self.ratio,
            "batch": self.batch,
            "inputs": {name: fed.to_dict() for name, fed in self.inputs.items()},
            "defaults": [d.to_dict() for d in self.defaults],
            "threads": self.threads,
            "provider": self.provider,
            "execution_providers": list(self.execution_providers),
            "optimization": self.optimization,
        }

    def format_text(self) -> str:
        used = f" ({', '.join(self.execution_providers)})" if self.execution_providers else ""
        lines = [
            f"batch {self.batch}, threads {self.threads or 'default'}, provider "
            f"{self.provider}{used}, ORT optimization {self.optimization}"
        ]
        for name, fed in self.inputs.items():
            lines.append(f"  input '{name}': {_dims(fed.shape)} {fed.dtype}")
        lines.extend(f"  note: {note}" for note in self._default_notes())
        for timing in filter(None, (self.model, self.baseline)):
            lines.append(
                f"  {timing.model}: session {timing.session_seconds * 1000:.1f} ms, latency median "
                f"{timing.median_ms:.3f} ms, p90 {timing.p90_ms:.3f} ms, "
                f"{timing.throughput:.1f} samples/s ({timing.runs} runs)"
            )
        if self.ratio is not None:
            lines.append(f"  ratio (model / baseline median latency): {self.ratio:.3f}")
        return "\n".join(lines)

    def _default_notes(self) -> list[str]:
        """One line per input and option: "input 'x': H=16, W=16 (defaults; set them with ...)"."""
        groups: dict[tuple[str, str], list[DefaultDim]] = {}
        for default in self.defaults:
            groups.setdefault((default.input, default.option), []).append(default)
        notes = []
        for (name, option), dims in groups.items():
            values = ", ".join(f"{d.dim}={d.value}" for d in dims)
            how = option
            if option == "--shape" and name in self.inputs:
                how = f"--shape {name}={_dims(self.inputs[name].shape)}"
            what = "default; set it" if len(dims) == 1 else "defaults; set them"
            notes.append(f"input '{name}': {values} ({what} with {how})")
        return notes


def _dims(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape) if shape else "scalar"


def check_options(*, batch: int | None, threads: int, warmup: int, runs: int) -> None:
    """The counts `bench` takes, named as the CLI options that set them; InputError if out of range."""
    for option, value, minimum in (
        ("--batch", batch, 1),
        ("--threads", threads, 0),
        ("--warmup", warmup, 0),
        ("--runs", runs, 1),
    ):
        if value is not None and value < minimum:
            raise InputError(f"{option} {value}: must be at least {minimum}")


def plan_shapes(
    model: ir.Model, batch: int | None, shapes: Mapping[str, Sequence[int]]
) -> tuple[dict[str, tuple[int, ...]], tuple[DefaultDim, ...]]:
    """The shape to feed each runtime input with a declared shape, and the dynamic dims defaulted.

    `shapes` (``--shape``) win for their inputs; `batch` (``--batch``, None when not given) sets every
    dynamic leading dim, and must agree with dim 0 of every `shapes` entry. A `batch` the model
    cannot take (its batch dim is static and different, or it has none) is an InputError. A dynamic
    dim's symbolic name carries its value to the same name in other inputs (``N`` fixed by one
    ``--shape`` is ``N`` everywhere); the remaining dynamic dims take a default and are reported.
    """
    given = {name: tuple(dims) for name, dims in shapes.items()}
    check_shapes(model, given)  # names of runtime inputs, their declared rank (and static dims)
    inputs = runtime_inputs(model)
    if batch is not None:
        _check_batch(batch, inputs, given)
    known: dict[str, int] = {}  # symbolic dim name -> the value an option gave it
    for value in inputs:
        if value.shape is not None and value.name in given:
            for dim, size in zip(value.shape, given[value.name], strict=False):
                if isinstance(dim, ir.SymbolicDim) and dim.value:
                    known.setdefault(dim.value, size)
    if batch is not None:
        for value in inputs:
            if value.name not in given and value.shape is not None and len(value.shape) > 0:
                leading = value.shape[0]
                if isinstance(leading, ir.SymbolicDim) and leading.value:
                    known.setdefault(leading.value, batch)
    defaulted: dict[str, int] = {}  # symbolic dim name -> the default it took (the same everywhere)
    result = dict(given)
    defaults: list[DefaultDim] = []
    for value in inputs:
        name = value.name or ""
        if name in result or value.shape is None:
            continue  # an undeclared shape without --shape: synthetic_inputs says so
        dims: list[int] = []
        for axis, dim in enumerate(value.shape):
            if isinstance(dim, int):
                dims.append(dim)
                continue
            symbol = dim.value if isinstance(dim, ir.SymbolicDim) else None
            if axis == 0 and batch is not None:
                dims.append(batch)
            elif symbol and symbol in known:
                dims.append(known[symbol])
            else:
                size = defaulted.get(symbol or "", DEFAULT_BATCH if axis == 0 else DEFAULT_DIM)
                if symbol:
                    defaulted[symbol] = size
                dims.append(size)
                option = "--batch" if axis == 0 else "--shape"
                defaults.append(DefaultDim(name, axis, symbol or f"dim {axis}", size, option))
        result[name] = tuple(dims)
    return result, tuple(defaults)


def _check_batch(
    batch: int, inputs: Sequence[ir.Value], given: Mapping[str, tuple[int, ...]]
) -> None:
    """`--batch` must agree with `--shape` on dim 0 and have a batch dim to set."""
    for name, dims in given.items():
        if dims and dims[0] != batch:
            raise InputError(
                f"--batch {batch} and --shape {name}={_dims(dims)} disagree on dim 0 of input "
                f"'{name}'; drop one or make them match"
            )
    if any(given.get(v.name or "") for v in inputs):
        return  # a --shape with the batch as its dim 0
    ranked = [v for v in inputs if v.name not in given and v.shape is not None and len(v.shape)]
    if any(not isinstance(v.shape[0], int) for v in ranked if v.shape is not None):
        return  # a dynamic leading dim for --batch to set
    for value in ranked:
        assert value.shape is not None
        if value.shape[0] != batch:
            raise InputError(
                f"--batch {batch}: input '{value.name}' has a static batch dimension of "
                f"{value.shape[0]}; drop --batch (the model runs batch {value.shape[0]}) or export it "
                "with a dynamic batch dimension"
            )
    if not ranked and all(v.shape is not None for v in inputs):
        raise InputError(f"--batch {batch}: the model has no input with a batch dimension")


def bench(
    model: io.ModelLike,
    baseline: io.ModelLike | None = None,
    *,
    batch: int | None = None,
    threads: int = 0,
    provider: str = "cpu",
    optimization: str = "all",
    warmup: int = 5,
    runs: int = 50,
    shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
) -> BenchReport:
    """Time `model` (and `baseline`, alternating run by run, on the same inputs).

    `batch` sets the model's dynamic leading (batch) dim; None leaves it to the model (a static batch
    dim) or the default of 1. See `plan_shapes` for how `batch` and `shapes` combine.
    """
    check_options(batch=batch, threads=threads, warmup=warmup, runs=runs)
    runtime.session_options(optimization, threads)  # an unknown level: InputError before loading
    runtime.resolve_provider(provider)  # an unknown or absent provider: likewise
    candidates = [model] if baseline is None else [model, baseline]
    loaded = [io.load(m, copy=False) for m in candidates]
    planned, defaults = plan_shapes(loaded[0], batch, shapes or {})
    check_nonempty_shapes(planned)  # a batch of nothing times nothing
    feeds = synthetic_inputs(loaded[0], planned, seed=seed)
    if baseline is not None:
        check_same_inputs(loaded[1], feeds, _name(baseline))

    def create(item: io.ModelLike) -> Any:
        return runtime.make_session(
            item, provider=provider, optimization=optimization, threads=threads
        )

    create(candidates[-1])  # ORT's one-time start-up is nobody's creation time
    creation: list[list[float]] = [[] for _ in candidates]
    for round_ in range(SESSION_ROUNDS):  # alternating, each session dropped before the next
        order = range(len(candidates)) if round_ % 2 == 0 else reversed(range(len(candidates)))
        for index in order:
            gc.collect()
            began = time.perf_counter()
            session = create(candidates[index])
            creation[index].append(time.perf_counter() - began)
            del session
    created = [statistics.median(times) for times in creation]
    sessions = [create(item) for item in candidates]
    for _ in range(warmup):
        for session in sessions:
            runtime.run(session, feeds)
    latencies: list[list[float]] = [[] for _ in sessions]
    for i in range(runs):
        order = range(len(sessions)) if i % 2 == 0 else reversed(range(len(sessions)))
        for index in order:  # alternate who goes first, so neither always runs on a warm cache
            began = time.perf_counter()
            runtime.run(sessions[index], feeds)
            latencies[index].append(time.perf_counter() - began)
    rows = batch if batch is not None else _rows(feeds)
    timings = [
        _timing(_name(item), created[i], latencies[i], rows) for i, item in enumerate(candidates)
    ]
    dtypes = {v.name or "": v.type for v in runtime_inputs(loaded[0])}
    return BenchReport(
        timings[0],
        timings[1] if baseline is not None else None,
        rows,
        threads,
        provider,
        optimization,
        inputs={
            name: FedInput(tuple(int(d) for d in array.shape), _dtype_name(dtypes.get(name), array))
            for name, array in feeds.items()
        },
        defaults=defaults,
        execution_providers=tuple(sessions[0].get_providers()),
    )


def check_same_inputs(model: ir.Model, feeds: Mapping[str, np.ndarray], name: str) -> None:
    """The baseline runs on the model's inputs: the same input names, dtypes and static dims, or an
    InputError naming the first input that does not fit (before any session is made)."""
    inputs = {v.name or "": v for v in runtime_inputs(model)}
    if set(inputs) != set(feeds):
        raise InputError(
            f"--baseline {name}: takes inputs {sorted(inputs)}, the model takes {sorted(feeds)}; "
            "the two models are run on the same inputs"
        )
    for input_name, array in feeds.items():
        value = inputs[input_name]
        if isinstance(value.type, ir.TensorType):
            dtype = value.type.dtype
            if dtype.numpy() != array.dtype:
                raise InputError(
                    f"--baseline {name}: input '{input_name}' is {dtype.name}, the model's is "
                    f"{ir.DataType.from_numpy(array.dtype).name}; the two models are run on the "
                    "same inputs"
                )
        if value.shape is None:
            continue
        fits = len(value.shape) == array.ndim and all(
            not isinstance(dim, int) or dim == size
            for dim, size in zip(value.shape, array.shape, strict=False)
        )
        if not fits:
            raise InputError(
                f"--baseline {name}: input '{input_name}' is declared {format_dims(value.shape)}, "
                f"the model is fed {_dims(array.shape)}; the two models are run on the same inputs"
            )


def _dtype_name(type_: ir.TypeProtocol | None, array: np.ndarray) -> str:
    if isinstance(type_, ir.TensorType):
        return type_.dtype.name
    return array.dtype.name


def _rows(feeds: Mapping[str, np.ndarray]) -> int:
    """Rows fed: the leading dim of the first input that has one (1 for scalars only)."""
    first = next((array for array in feeds.values() if array.ndim), None)
    return int(first.shape[0]) if first is not None else 1


def _timing(name: str, created: float, latencies: list[float], rows: int) -> Timing:
    median = statistics.median(latencies)
    p90 = float(np.percentile(latencies, 90))
    return Timing(name, created, median * 1000, p90 * 1000, rows / median, len(latencies))


def _name(model: io.ModelLike) -> str:
    if isinstance(model, ir.Model | onnx.ModelProto):  # in memory: its graph's name
        return model.graph.name or "<model>"
    return str(model)
