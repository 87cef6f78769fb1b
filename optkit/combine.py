"""Combining several outputs into one, in the graph and in numpy: what ensembles and test-time
augmentation share.

K outputs y_1 .. y_K of one shape are combined with weights w_k (default all 1), normalized once in
float64 and rounded to the output's dtype: c_k = w_k / sum(w).

    mean          y = c_1 y_1 + c_2 y_2 + ... + c_K y_K          (summed in that order)
    softmax-mean  y = c_1 softmax(y_1) + ... + c_K softmax(y_K)  (softmax over the last axis)
    vote          votes = c_1 onehot(argmax y_1) + ... (float32); the class with the most votes,
                  ties broken by the largest mean among the tied classes: an int64 (N,) output

`reference` computes the same in numpy (the same order, the same dtype), `build` writes it into a
graph with standard ONNX ops (opset 11 and later). A mean reassociates what its members computed
(exactness `reassociate`); a vote is exact given the members' outputs (`bitwise`: its output is an
integer class id). `verify_against` runs a model on ONNX Runtime against any such reference.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from optkit import io
from optkit.check import runtime
from optkit.check.compare import Verdict, compare_outputs, pool_samples
from optkit.check.inputs import (
    UnsynthesizableInput,
    format_dims,
    random_array,
    runtime_inputs,
    second_sizes,
    synthetic_inputs,
)
from optkit.check.verify import verdict_lines
from optkit.core.contract import Decline, Exactness
from optkit.core.graph import FLOAT_TYPES, Namer, add_initializer, node_count
from optkit.errors import InputError, first_line

COMBINES = ("mean", "softmax-mean", "vote")
MIN_OPSET = 11  # OneHot, Equal on floats, Pad / Slice / Resize with tensor inputs
FLOAT_DTYPES = {
    ir.DataType.FLOAT: np.dtype(np.float32),
    ir.DataType.DOUBLE: np.dtype(np.float64),
    ir.DataType.FLOAT16: np.dtype(np.float16),
}


def exactness_of(combine: str) -> Exactness:
    """What a combination may change: a mean reassociates, a vote is exact given its inputs."""
    return Exactness.BITWISE if combine == "vote" else Exactness.REASSOCIATE


def check_combine(combine: str) -> str:
    if combine not in COMBINES:
        raise InputError(f"unknown combination '{combine}' (choose {', '.join(COMBINES)})")
    return combine


def coefficients(weights: Sequence[float] | None, count: int, what: str) -> np.ndarray:
    """The weights normalized to sum 1, in float64 (equal when `weights` is None). InputError for a
    count other than `count`, a weight that is negative or not finite, or weights summing to 0."""
    if weights is None:
        return np.full(count, 1.0 / count)
    if isinstance(weights, str | bytes):
        raise InputError(f"weights {weights!r}: expected a sequence of numbers, not a string")
    try:
        values = [float(w) for w in weights]
    except (TypeError, ValueError):
        raise InputError(f"weights {weights!r}: expected a sequence of numbers") from None
    if len(values) != count:
        raise InputError(f"--weights: {len(values)} weight(s) for {count} {what}")
    if not all(math.isfinite(w) and w >= 0 for w in values):
        raise InputError(f"--weights {','.join(map(str, values))}: each must be finite and >= 0")
    top = max(values)
    if top <= 0:
        raise InputError(f"--weights {','.join(map(str, values))}: they sum to 0")
    scaled = [w / top for w in values]  # in (0, 1]: no overflow summing, even near float max
    return np.asarray(scaled, np.float64) / math.fsum(scaled)


def parse_weights(text: str) -> list[float]:
    """'1,2,0.5' as floats; InputError naming the text otherwise."""
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise InputError(f"--weights '{text}': expected numbers separated by commas") from None


def combinable(combine: str, value: ir.Value) -> Decline | None:
    """Why an output cannot be combined this way (None when it can)."""
    dtype = value.type.dtype if isinstance(value.type, ir.TensorType) else None
    if dtype not in FLOAT_DTYPES:
        kind = dtype.name if dtype is not None else "not a tensor"
        return Decline(f"output '{value.name}' is {kind}; --combine {combine} needs float outputs")
    if combine == "vote" and (value.shape is None or len(value.shape) != 2):
        shape = "of unknown rank" if value.shape is None else f"of rank {len(value.shape)}"
        return Decline(
            f"output '{value.name}' is {shape}; --combine vote needs (rows, classes) outputs"
        )
    if combine == "softmax-mean" and value.shape is not None and len(value.shape) == 0:
        return Decline(
            f"output '{value.name}' is a scalar; --combine softmax-mean needs an axis of classes"
        )
    return None


# --- numpy ---------------------------------------------------------------------------------------


def _softmax(y: np.ndarray) -> np.ndarray:
    shifted = y - np.max(y, axis=-1, keepdims=True)
    e = np.exp(shifted)
    return (e / np.sum(e, axis=-1, keepdims=True)).astype(y.dtype)


def _weighted_sum(values: Sequence[np.ndarray], weights: np.ndarray, dtype: np.dtype) -> np.ndarray:
    total = values[0].astype(dtype) * dtype.type(weights[0])
    for value, weight in zip(values[1:], weights[1:], strict=True):
        total = total + value.astype(dtype) * dtype.type(weight)
    return total


def reference(outputs: Sequence[np.ndarray], combine: str, weights: np.ndarray) -> np.ndarray:
    """`combine` of `outputs` in numpy, as `build` computes it in the graph."""
    dtype = np.asarray(outputs[0]).dtype
    if combine == "mean":
        return _weighted_sum(outputs, weights, dtype)
    if combine == "softmax-mean":
        return _weighted_sum([_softmax(np.asarray(y)) for y in outputs], weights, dtype)
    classes = outputs[0].shape[-1]
    eye = np.eye(classes, dtype=np.float32)
    votes = _weighted_sum([eye[np.argmax(y, axis=-1)] for y in outputs], weights, np.dtype("f4"))
    mean = _weighted_sum(outputs, weights, dtype)
    tied = votes == np.max(votes, axis=-1, keepdims=True)
    return np.argmax(np.where(tied, mean, dtype.type(-np.inf)), axis=-1).astype(np.int64)


# --- graph ---------------------------------------------------------------------------------------


class Builder:
    """Appends nodes to `graph` with fresh names, choosing each op's form for the model's opset."""

    def __init__(self, graph: ir.Graph, namer: Namer, opset: int, prefix: str) -> None:
        self.graph, self.namer, self.opset, self.prefix = graph, namer, opset, prefix

    def op(
        self, op_type: str, inputs: Sequence[ir.Value | None], outputs: int = 1, **attributes: Any
    ) -> list[ir.Value]:
        node = ir.node(
            op_type,
            list(inputs),
            attributes=attributes or None,
            num_outputs=outputs,
            name=self.namer.fresh(f"{self.prefix}/{op_type}"),
        )
        for value in node.outputs:
            value.name = self.namer.fresh(f"{self.prefix}/{op_type}_output")
        self.graph.append(node)
        return list(node.outputs)

    def one(self, op_type: str, inputs: Sequence[ir.Value | None], **attributes: Any) -> ir.Value:
        return self.op(op_type, inputs, **attributes)[0]

    def const(self, label: str, array: np.ndarray | float | int, dtype: ir.DataType) -> ir.Value:
        """A new initializer (a scalar stays rank 0); floats are rounded once to `dtype` by
        `add_initializer`, which refuses an overflow."""
        data = np.asarray(array)
        if FLOAT_TYPES.get(dtype) is None:
            data = data.astype(dtype.numpy())
        return add_initializer(self.graph, self.namer, f"{self.prefix}/{label}", data, dtype)

    def ints(self, label: str, values: Sequence[int]) -> ir.Value:
        return self.const(label, np.asarray(values, np.int64), ir.DataType.INT64)

    def reduce_max(self, x: ir.Value, axis: int) -> ir.Value:
        if self.opset >= 18:
            return self.one("ReduceMax", [x, self.ints("axes", [axis])], keepdims=1)
        return self.one("ReduceMax", [x], axes=[axis], keepdims=1)

    def split(self, x: ir.Value, parts: int) -> list[ir.Value]:
        """`parts` equal pieces along axis 0."""
        if parts == 1:
            return [x]
        if self.opset >= 18:
            return self.op("Split", [x], outputs=parts, axis=0, num_outputs=parts)
        return self.op("Split", [x], outputs=parts, axis=0)

    def slice(
        self,
        x: ir.Value,
        starts: Sequence[int],
        ends: Sequence[int],
        axes: Sequence[int],
        steps: Sequence[int] | None = None,
    ) -> ir.Value:
        inputs = [self.ints("starts", starts), self.ints("ends", ends), self.ints("axes", axes)]
        if steps is not None:
            inputs.append(self.ints("steps", steps))
        return self.one("Slice", [x, *inputs])

    def pad(
        self, x: ir.Value, rank: int, before: dict[int, int], after: dict[int, int], mode: str
    ) -> ir.Value:
        pads = [before.get(a, 0) for a in range(rank)] + [after.get(a, 0) for a in range(rank)]
        return self.one("Pad", [x, self.ints("pads", pads)], mode=mode)


def build(
    builder: Builder,
    values: Sequence[ir.Value],
    combine: str,
    weights: np.ndarray,
    like: ir.Value,
) -> ir.Value:
    """`combine` of `values` in the graph (see the module docstring); typed after `like`, the
    output of one member (its dtype and shape; a vote's output is int64 (rows,))."""
    assert isinstance(like.type, ir.TensorType)
    dtype = like.type.dtype
    if combine == "softmax-mean":
        values = [builder.one("Softmax", [v], axis=-1) for v in values]
    mean = _build_weighted_sum(builder, values, weights, dtype)
    if combine != "vote":
        mean.type, mean.shape = ir.TensorType(dtype), like.shape
        return mean
    depth = builder.one("Gather", [builder.one("Shape", [values[0]]), builder.ints("last", [1])])
    on_off = builder.const("one_hot_values", np.array([0.0, 1.0]), ir.DataType.FLOAT)
    hots = [
        builder.one(
            "OneHot", [builder.one("ArgMax", [v], axis=-1, keepdims=0), depth, on_off], axis=-1
        )
        for v in values
    ]
    votes = _build_weighted_sum(builder, hots, weights, ir.DataType.FLOAT)
    tied = builder.one("Equal", [votes, builder.reduce_max(votes, -1)])
    lowest = builder.const("minus_inf", np.array(-np.inf), dtype)
    masked = builder.one("Where", [tied, mean, lowest])
    winner = builder.one("ArgMax", [masked], axis=-1, keepdims=0)
    rows = like.shape[0] if like.shape is not None else None
    winner.type = ir.TensorType(ir.DataType.INT64)
    winner.shape = ir.Shape([rows]) if rows is not None else None
    return winner


def _build_weighted_sum(
    builder: Builder, values: Sequence[ir.Value], weights: np.ndarray, dtype: ir.DataType
) -> ir.Value:
    total: ir.Value | None = None
    for index, (value, weight) in enumerate(zip(values, weights, strict=True)):
        term = builder.one("Mul", [value, builder.const(f"weight_{index}", weight, dtype)])
        total = term if total is None else builder.one("Add", [total, term])
    assert total is not None
    return total


# --- verification --------------------------------------------------------------------------------

Feeds = Mapping[str, np.ndarray]
Reference = Callable[[Feeds], dict[str, np.ndarray]]


def session_runner(model: Any, what: str) -> Callable[[Feeds], dict[str, np.ndarray]]:
    """A function running `model` (a path, proto or IR model) on ONNX Runtime, graph optimizations
    off; InputError naming `what` when ORT cannot load or run it."""
    try:
        session = runtime.make_session(model)
    except Exception as exc:
        raise InputError(f"ONNX Runtime cannot load {what}: {first_line(exc)}") from None

    def run(feeds: Feeds) -> dict[str, np.ndarray]:
        try:
            return runtime.run(session, feeds)
        except Exception as exc:
            raise InputError(f"ONNX Runtime cannot run {what}: {first_line(exc)}") from None

    return run


def synthetic_feeds(
    model: ir.Model, shapes: Mapping[str, Sequence[int]], seed: int, int_range: tuple[int, int]
) -> dict[str, np.ndarray]:
    """Seeded inputs for `model`; uint8 inputs (raw pixels) over the whole 0..255 range."""
    feeds = synthetic_inputs(model, shapes, seed=seed, int_range=int_range)
    rng = np.random.default_rng(seed + 7919)
    for value in runtime_inputs(model):
        if isinstance(value.type, ir.TensorType) and value.type.dtype == ir.DataType.UINT8:
            name = value.name or ""
            feeds[name] = random_array(rng, ir.DataType.UINT8, feeds[name].shape, (0, 256))
    return feeds


def verify_against(
    model: ir.Model,
    expected: Reference,
    exactness: Exactness,
    *,
    shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
    samples: int = 2,
    int_range: tuple[int, int] = (0, 10),
) -> Verdict | Decline:
    """`model` on ONNX Runtime against `expected` (a numpy reference) on `samples` seeded inputs,
    and again at second sizes of the dynamic dims `shapes` leaves to a default. A Decline says why
    nothing could be compared (no inputs can be made, the model or a reference model does not
    run); a Verdict is never ok on nothing."""
    shapes = dict(shapes or {})
    runs: list[tuple[dict[str, tuple[int, ...]], str]] = [
        ({k: tuple(v) for k, v in shapes.items()}, "")
    ]
    second = second_sizes(model, shapes)
    if second is not None:
        runs.append((second, ", ".join(f"{n}={format_dims(d)}" for n, d in second.items())))
    try:
        got_run = session_runner(model, "the combined model")
    except InputError as exc:
        return Decline(str(exc))
    verdict: Verdict | None = None
    for index, (sizes, suffix) in enumerate(runs):
        try:
            feeds = [
                synthetic_feeds(model, sizes, seed + 1000 * index + k, int_range)
                for k in range(max(1, samples))
            ]
        except UnsynthesizableInput as exc:
            return Decline(f"no inputs to run it on: {exc}")
        try:
            want = pool_samples([expected(f) for f in feeds])
        except InputError as exc:
            return Decline(str(exc))
        try:
            got = pool_samples([got_run(f) for f in feeds])
        except InputError as exc:
            return Decline(str(exc))
        again = compare_outputs(want, got, exactness)
        if again.problem:
            return Decline(again.problem)
        outputs = [
            replace(o, name=f"{o.name} at {suffix}" if suffix else o.name) for o in again.outputs
        ]
        if verdict is None:
            verdict = replace(again, outputs=outputs, samples=len(feeds))
        else:
            verdict = replace(
                verdict,
                ok=verdict.ok and again.ok,
                outputs=[*verdict.outputs, *outputs],
                samples=verdict.samples + len(feeds),
                notes=(*verdict.notes, f"dynamic dims checked at two sizes: defaults and {suffix}"),
            )
    assert verdict is not None
    return verdict


# --- results -------------------------------------------------------------------------------------


@dataclass
class CombinedReport:
    """What `optkit.ensemble` or `optkit.tta` built and how it verified.

    `state` is "equivalent" (the model matched its numpy reference), "differs", "unverified" (asked
    for and could not run: `unverified_reason`) or "disabled". With `fuse`, `fused` is the fuse
    report and `fused_verdict` the same reference check run again on the fused model.
    """

    kind: str  # "ensemble" or "tta"
    sources: list[str]
    combine: str
    weights: list[float]
    exactness: Exactness
    copies: list[str] = field(default_factory=list)  # what each combined output is
    details: list[str] = field(default_factory=list)
    nodes: int = 0
    verdict: Verdict | None = None
    unverified_reason: str = ""
    verification_requested: bool = True
    fused: Any = None  # optkit.fusion.FuseReport
    fused_verdict: Verdict | None = None
    seconds: float = 0.0
    output: str = ""

    @property
    def state(self) -> str:
        verdicts = [v for v in (self.verdict, self.fused_verdict) if v is not None]
        if self.fused is not None and not self.fused.ok:
            return "differs" if self.fused.state == "differs" else "unverified"
        if self.verdict is None:
            return "unverified" if self.verification_requested else "disabled"
        if self.fused is not None and self.fused_verdict is None and self.verification_requested:
            return "unverified"
        return "equivalent" if all(v.ok for v in verdicts) else "differs"

    @property
    def ok(self) -> bool:
        return self.state in ("equivalent", "disabled")

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "sources": self.sources,
            "output": self.output,
            "ok": self.ok,
            "verification_state": self.state,
            "unverified_reason": self.unverified_reason,
            "combine": self.combine,
            "weights": self.weights,
            "exactness": self.exactness.value,
            "copies": self.copies,
            "details": self.details,
            "nodes": self.nodes,
            "seconds": round(self.seconds, 6),
            "verification": self.verdict.to_dict() if self.verdict else None,
            "fuse": self.fused.to_dict() if self.fused is not None else None,
            "fused_verification": self.fused_verdict.to_dict() if self.fused_verdict else None,
        }

    def format_text(self) -> str:
        what = "ensemble of" if self.kind == "ensemble" else "test-time augmentation of"
        weights = ", ".join(f"{w:.4g}" for w in self.weights)
        kind = "members" if self.kind == "ensemble" else "copies"
        lines = [
            f"{what} {', '.join(self.sources)}: {len(self.copies)} {kind} combined by "
            f"{self.combine} (weights {weights}; {self.exactness.value}), {self.nodes} nodes"
        ]
        lines += [f"  {line}" for line in self.details]
        if self.kind == "tta":
            shown = "; ".join(self.copies[:8]) + ("; ..." if len(self.copies) > 8 else "")
            lines.append(f"  copies: {shown}")
        reference = (
            "the members run separately"
            if self.kind == "ensemble"
            else (
                "the numpy reference (each copy transformed in numpy, the model run once per copy)"
            )
        )
        lines += verdict_lines(self.verdict, self.unverified_reason, reference)
        if self.fused is not None:
            f = self.fused
            lines.append(
                f"  fused: {f.nodes_before} -> {f.nodes_after} nodes, BatchNorm "
                f"{f.batchnorm_before} -> {f.batchnorm_after}; fuse's check: {f.state}"
            )
            if self.fused_verdict is not None:
                lines.append(f"  fused, against {reference}: {self.fused_verdict.summary()}")
        lines.append(
            f"  time: {self.seconds:.3f} s" + (f"  -> {self.output}" if self.output else "")
        )
        return "\n".join(lines)


@dataclass
class CombinedResult:
    """The model `optkit.ensemble` or `optkit.tta` built, its report, and the files its inputs read
    (which `save` never overwrites)."""

    model: ir.Model
    report: CombinedReport
    reads: list[Path] = field(default_factory=list)

    def to_proto(self) -> Any:
        return io.to_proto(self.model)

    def save(self, path: str | os.PathLike, *, force: bool = False) -> None:
        """Write atomically (`optkit.io.save`: never over a file an input reads, a member or the
        original model included). Like the command line, nothing is written when verification found
        a difference or could not run, unless `force=True`."""
        if not force and self.report.state in ("differs", "unverified"):
            why = (
                f"verification could not run ({self.report.unverified_reason})"
                if self.report.state == "unverified"
                else "verification found a difference"
            )
            raise InputError(f"{path}: not written: {why}; save(..., force=True) writes it anyway")
        io.save(self.model, path, inputs_read=self.reads)
        self.report.output = str(path)


def verify_and_fuse(
    report: CombinedReport,
    model: ir.Model,
    expected: Reference,
    *,
    fuse: bool,
    verify_result: bool,
    shapes: Mapping[str, Sequence[int]] | None,
    seed: int,
    samples: int,
    int_range: tuple[int, int],
) -> ir.Model:
    """The last steps `ensemble` and `tta` share: verify the built model against `expected` (its
    verdict, or the reason it could not run, goes into `report`), then with `fuse` run
    `optkit.fuse` on it and verify the fused model against the same reference again. Returns the
    model to keep."""

    def check(candidate: ir.Model) -> Verdict | Decline:
        return verify_against(
            candidate,
            expected,
            report.exactness,
            shapes=shapes,
            seed=seed,
            samples=samples,
            int_range=int_range,
        )

    if verify_result:
        outcome = check(model)
        if isinstance(outcome, Decline):
            report.unverified_reason = str(outcome)
        else:
            report.verdict = outcome
    if not fuse:
        return model
    from optkit.fusion import fuse as fuse_model

    fused = fuse_model(
        model, shapes=shapes, seed=seed, int_range=int_range, verify_result=verify_result
    )
    report.fused = fused.report
    report.nodes = node_count(fused.model)
    if verify_result:
        again = check(fused.model)
        if isinstance(again, Verdict):
            report.fused_verdict = again
        elif not report.unverified_reason:
            report.unverified_reason = f"after fuse: {again}"
    return fused.model
