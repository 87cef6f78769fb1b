"""`optkit bench`: ONNX Runtime session creation time, latency and throughput of a model, optionally
against a baseline model run alternately with it, so that machine noise hits both alike."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from optkit import io, runtime
from optkit.inputs import input_shape, runtime_inputs, synthetic_inputs

SESSION_ROUNDS = 3  # session creations per model; the median is reported


@dataclass(frozen=True)
class Timing:
    """One model's numbers: session creation (median of 3), per-run latency, samples per second."""

    model: str
    session_seconds: float
    median_ms: float
    p90_ms: float
    throughput: float  # samples (batch rows) per second at the median latency
    runs: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class BenchReport:
    model: Timing
    baseline: Timing | None
    batch: int
    threads: int
    provider: str
    optimization: str

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
            "threads": self.threads,
            "provider": self.provider,
            "optimization": self.optimization,
        }

    def format_text(self) -> str:
        lines = [
            f"batch {self.batch}, threads {self.threads or 'default'}, provider {self.provider}, "
            f"ORT optimization {self.optimization}"
        ]
        for timing in filter(None, (self.model, self.baseline)):
            lines.append(
                f"  {timing.model}: session {timing.session_seconds * 1000:.1f} ms, latency median "
                f"{timing.median_ms:.3f} ms, p90 {timing.p90_ms:.3f} ms, "
                f"{timing.throughput:.1f} samples/s ({timing.runs} runs)"
            )
        if self.ratio is not None:
            lines.append(f"  ratio (model / baseline median latency): {self.ratio:.3f}")
        return "\n".join(lines)


def batch_shapes(model: ir.Model, batch: int, shapes: Mapping[str, Sequence[int]]) -> dict:
    """Input shapes with a dynamic leading dimension set to `batch` (explicit `shapes` win)."""
    result = {name: tuple(dims) for name, dims in shapes.items()}
    for value in runtime_inputs(model):
        if value.name in result or value.shape is None or len(value.shape) == 0:
            continue
        dims = list(input_shape(value, None))
        if not isinstance(value.shape[0], int):
            dims[0] = batch
        result[value.name or ""] = tuple(dims)
    return result


def bench(
    model: io.ModelLike,
    baseline: io.ModelLike | None = None,
    *,
    batch: int = 1,
    threads: int = 0,
    provider: str = "cpu",
    optimization: str = "all",
    warmup: int = 5,
    runs: int = 50,
    shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
) -> BenchReport:
    """Time `model` (and `baseline`, alternating run by run, on the same inputs)."""
    candidates = [model] if baseline is None else [model, baseline]
    loaded = [io.load(m, copy=False) for m in candidates]
    feeds = synthetic_inputs(loaded[0], batch_shapes(loaded[0], batch, shapes or {}), seed=seed)

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
    rows = _rows(feeds)
    timings = [
        _timing(_name(item), created[i], latencies[i], rows) for i, item in enumerate(candidates)
    ]
    return BenchReport(
        timings[0],
        timings[1] if baseline is not None else None,
        batch,
        threads,
        provider,
        optimization,
    )


def _rows(feeds: Mapping[str, np.ndarray]) -> int:
    first = next(iter(feeds.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1


def _timing(name: str, created: float, latencies: list[float], rows: int) -> Timing:
    median = statistics.median(latencies)
    p90 = float(np.percentile(latencies, 90))
    return Timing(name, created, median * 1000, p90 * 1000, rows / median, len(latencies))


def _name(model: io.ModelLike) -> str:
    return str(model) if not isinstance(model, ir.Model) else (model.graph.name or "<model>")
