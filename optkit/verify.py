"""Accuracy equivalence: run two models on the same inputs on ONNX Runtime and compare every output.

Graph optimizations are off in both sessions by default, so that ORT's own fusions cannot hide a wrong
rewrite. Each output is judged by the tolerance its element type gets at the given exactness level
(`optkit.contract.tolerance_for`), unless the caller sets one for it: bitwise rewrites must agree
exactly, integer outputs always exactly. With several samples, each output is compared over all of
them at once (concatenated along the first axis).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from optkit import runtime
from optkit.contract import Exactness, Tolerance, tolerance_for
from optkit.errors import InputError, OptkitError, first_line
from optkit.inputs import UnsynthesizableInput, synthetic_inputs

NAN = float("nan")
Feeds = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class OutputComparison:
    """How one output of the rewritten model compares with the original's.

    Error statistics are NaN where the comparison stopped early (`problem` says why). For outputs
    shaped (rows, classes), `top1_agreement` is the share of rows whose arg-max agrees and
    `top5_agreement` the share whose reference arg-max is among the candidate's five largest.
    """

    name: str
    dtype: str
    tolerance: Tolerance
    ok: bool
    problem: str = ""
    max_abs_error: float = NAN
    max_rel_error: float = NAN
    mean_abs_error: float = NAN
    cosine: float = NAN
    reference_max_abs: float = NAN
    top1_agreement: float | None = None
    top5_agreement: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "ok": self.ok,
            "max_abs_error": self.max_abs_error,
            "max_rel_error": self.max_rel_error,
            "mean_abs_error": self.mean_abs_error,
            "cosine": self.cosine,
            "reference_max_abs": self.reference_max_abs,
            "top1_agreement": self.top1_agreement,
            "top5_agreement": self.top5_agreement,
            "rtol": self.tolerance.rtol,
            "atol": self.tolerance.atol,
            "problem": self.problem,
        }


@dataclass(frozen=True)
class Accuracy:
    """Classifier accuracy of both models against labels, and how often they agree."""

    output: str
    reference: float
    candidate: float
    agreement: float
    count: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Verdict:
    """The outcome of comparing two models on the same inputs."""

    ok: bool
    exactness: Exactness
    outputs: list[OutputComparison] = field(default_factory=list)
    samples: int = 1
    accuracy: Accuracy | None = None

    @property
    def max_abs_error(self) -> float:
        return max((o.max_abs_error for o in self.outputs), default=0.0)

    def summary(self) -> str:
        state = "equivalent" if self.ok else "NOT equivalent"
        parts = [f"{o.name}: max abs err {o.max_abs_error:.3g}" for o in self.outputs]
        bad = [f"{o.name}: {o.problem or 'beyond tolerance'}" for o in self.outputs if not o.ok]
        return f"{state} ({self.exactness.value}) " + "; ".join(bad or parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "exactness": self.exactness.value,
            "samples": self.samples,
            "outputs": [o.to_dict() for o in self.outputs],
            "accuracy": self.accuracy.to_dict() if self.accuracy else None,
        }


def compare_arrays(
    name: str,
    reference: Any,
    candidate: Any,
    exactness: Exactness,
    tolerance: Tolerance | None = None,
) -> OutputComparison:
    """Compare one output; NaN and inf must appear at the same places in both.

    Float outputs pass when ``max|a - b| <= atol + rtol * max|a|`` with `tolerance` (default:
    `tolerance_for(exactness, dtype)`); bitwise rewrites and integer, bool and string outputs must
    match exactly.
    """
    ref, got = np.asarray(reference), np.asarray(candidate)
    tolerance = tolerance or tolerance_for(exactness, ref.dtype.name)
    outcome = functools.partial(OutputComparison, name, ref.dtype.name, tolerance)
    if ref.shape != got.shape:
        return outcome(False, f"shape {got.shape} != {ref.shape}")
    if ref.dtype != got.dtype:
        return outcome(False, f"dtype {got.dtype} != {ref.dtype}")
    if ref.dtype.kind not in "fiub":
        same = bool(np.array_equal(ref, got))
        return outcome(same, "" if same else "values differ")
    a, b = ref.astype(np.float64), got.astype(np.float64)
    if not (
        np.array_equal(np.isnan(a), np.isnan(b)) and np.array_equal(a[np.isinf(a)], b[np.isinf(a)])
    ):
        return outcome(False, "NaN/inf positions differ")
    finite = np.isfinite(a)
    a, b = a[finite], b[finite]
    if not np.all(np.isfinite(b)):
        return outcome(False, "non-finite values where the original is finite")
    if a.size == 0:
        return outcome(True, max_abs_error=0.0)
    diff = np.abs(a - b)
    ref_max, max_abs = float(np.max(np.abs(a))), float(diff.max())
    exact = exactness is Exactness.BITWISE or ref.dtype.kind in "iub"
    ok = max_abs == 0.0 if exact else tolerance.allows(max_abs, ref_max)
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    with np.errstate(over="ignore", divide="ignore"):  # inf where the reference is 0: honest
        max_rel = float(np.max(diff / np.maximum(np.abs(a), np.finfo(np.float64).tiny)))
    top1, top5 = _agreement(ref, got) if np.all(finite) else (None, None)
    return outcome(
        ok,
        "" if ok else "beyond tolerance",
        max_abs_error=max_abs,
        max_rel_error=max_rel,
        mean_abs_error=float(diff.mean()),
        cosine=float(np.dot(a, b) / norm) if norm > 0 else float(max_abs == 0),
        reference_max_abs=ref_max,
        top1_agreement=top1,
        top5_agreement=top5,
    )


def _agreement(ref: np.ndarray, got: np.ndarray) -> tuple[float | None, float | None]:
    """Top-1 and top-5 agreement for (rows, classes) float outputs; None for other shapes."""
    if ref.ndim != 2 or ref.shape[1] < 2 or ref.dtype.kind != "f":
        return None, None
    expected = np.argmax(ref, axis=1)
    top1 = float(np.mean(expected == np.argmax(got, axis=1)))
    if ref.shape[1] < 5:
        return top1, None
    best5 = np.argsort(-got, axis=1, kind="stable")[:, :5]
    return top1, float(np.mean(np.any(best5 == expected[:, None], axis=1)))


def compare_outputs(
    reference: Mapping[str, Any],
    candidate: Mapping[str, Any],
    exactness: Exactness,
    tolerances: Mapping[str, Tolerance] | None = None,
) -> Verdict:
    """Match outputs by name, then by position for the names that differ."""
    tolerances = tolerances or {}
    unknown = sorted(set(tolerances) - set(reference))
    if unknown:
        raise InputError(
            f"tolerance given for unknown output(s) {', '.join(unknown)}; outputs are "
            f"{', '.join(reference)}"
        )
    ref_names, cand_names = list(reference), list(candidate)
    if len(ref_names) != len(cand_names):
        raise InputError(f"models have {len(ref_names)} and {len(cand_names)} outputs")
    comparisons: list[OutputComparison] = []
    for i, name in enumerate(ref_names):
        other = name if name in candidate else cand_names[i]
        comparisons.extend(
            _compare_nested(
                name, reference[name], candidate[other], exactness, tolerances.get(name)
            )
        )
    return Verdict(all(c.ok for c in comparisons), exactness, comparisons)


def _compare_nested(
    name: str, ref: Any, got: Any, exactness: Exactness, tolerance: Tolerance | None
) -> list[OutputComparison]:
    """Sequence outputs come back as lists, optional ones as None: compare them element by element."""
    mismatch = functools.partial(
        OutputComparison, name, "none", tolerance_for(exactness, "none"), False
    )
    if isinstance(ref, list) or isinstance(got, list):
        if not (isinstance(ref, list) and isinstance(got, list)) or len(ref) != len(got):
            return [mismatch("sequence lengths or kinds differ")]
        return [
            c
            for i, (r, g) in enumerate(zip(ref, got, strict=True))
            for c in _compare_nested(f"{name}[{i}]", r, g, exactness, tolerance)
        ]
    if ref is None and got is None:
        return []
    if ref is None or got is None:
        return [mismatch("optional presence differs")]
    return [compare_arrays(name, ref, got, exactness, tolerance)]


def pool_samples(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Outputs of several runs as one: arrays concatenated along their first axis (scalars stacked);
    sequence and optional outputs kept per run as a list."""
    pooled: dict[str, Any] = {}
    for name in runs[0]:
        values = [run[name] for run in runs]
        if all(isinstance(v, np.ndarray) for v in values):
            pooled[name] = np.concatenate(values) if values[0].ndim else np.stack(values)
        else:
            pooled[name] = values
    return pooled


def accuracy(
    reference: Mapping[str, Any], candidate: Mapping[str, Any], labels: np.ndarray
) -> Accuracy:
    """Top-1 accuracy of both models on `labels` (one class per row of the first classifier-shaped
    output), and their agreement."""
    by_position = list(candidate.values())
    for index, (name, ref) in enumerate(reference.items()):
        if isinstance(ref, np.ndarray) and ref.ndim == 2 and ref.shape[1] > 1:
            got = candidate[name] if name in candidate else by_position[index]
            flat = np.asarray(labels).reshape(-1)
            if flat.shape[0] != ref.shape[0]:
                raise InputError(
                    f"labels: {flat.shape[0]} labels for {ref.shape[0]} rows of output '{name}'"
                )
            want, mine = np.argmax(ref, axis=1), np.argmax(got, axis=1)
            return Accuracy(
                name,
                float(np.mean(want == flat)),
                float(np.mean(mine == flat)),
                float(np.mean(want == mine)),
                int(flat.shape[0]),
            )
    raise InputError("labels given, but no output is shaped (rows, classes)")


def verify(
    before: ir.Model | str,
    after: ir.Model | str,
    inputs: Feeds | Sequence[Feeds] | None = None,
    *,
    exactness: Exactness = Exactness.REASSOCIATE,
    tolerances: Mapping[str, Tolerance] | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
    samples: int = 1,
    int_range: tuple[int, int] = (0, 10),
    labels: np.ndarray | None = None,
    provider: str = "cpu",
    reference_provider: str | None = None,
    optimization: str = "disable",
) -> Verdict:
    """Run `before` and `after` on ORT and compare all outputs over every sample.

    `inputs` is one feed dict or a list of them; by default `samples` seeded synthetic ones.
    `reference_provider` runs `before` on another execution provider (CUDA against CPU, say).
    """
    from optkit.fusion import load_checked

    before_model = load_checked(before, copy=False)
    if not isinstance(after, ir.Model):
        load_checked(after, copy=False)
    feeds = _samples(before_model, inputs, shapes, seed, samples, int_range)
    reference = _run_all(before, feeds, reference_provider or provider, optimization)
    candidate = _run_all(after, feeds, provider, optimization)
    verdict = compare_outputs(reference, candidate, exactness, tolerances)
    score = accuracy(reference, candidate, labels) if labels is not None else None
    return Verdict(verdict.ok, exactness, verdict.outputs, len(feeds), score)


def _samples(
    model: ir.Model,
    inputs: Feeds | Sequence[Feeds] | None,
    shapes: Mapping[str, Sequence[int]] | None,
    seed: int,
    count: int,
    int_range: tuple[int, int],
) -> list[Feeds]:
    if inputs is None:
        return [
            synthetic_inputs(model, shapes, seed=seed + i, int_range=int_range)
            for i in range(max(1, count))
        ]
    if isinstance(inputs, Mapping):
        return [inputs]
    return list(inputs)


def _run_all(
    model: ir.Model | str, feeds: Sequence[Feeds], provider: str, optimization: str
) -> dict[str, Any]:
    try:
        session = runtime.make_session(model, provider=provider, optimization=optimization)
        return pool_samples([runtime.run(session, sample) for sample in feeds])
    except OptkitError:
        raise
    except Exception as exc:  # ORT rejects the model or an input
        name = model if isinstance(model, str) else "the model"
        raise InputError(f"ONNX Runtime cannot run {name}: {first_line(exc)}") from None


def verify_rewrite(
    before: ir.Model,
    after: ir.Model,
    exactness: Exactness,
    *,
    shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
    int_range: tuple[int, int] = (0, 10),
) -> Verdict | str:
    """Like `verify`, for a model and its rewrite: a string says why the original itself cannot run
    on ONNX Runtime (so nothing can be concluded); a rewrite that fails to run is a failed verdict.
    """
    try:
        feeds = synthetic_inputs(before, shapes, seed=seed, int_range=int_range)
    except UnsynthesizableInput as exc:
        return f"no inputs to run it on: {exc}"
    try:
        reference = runtime.run(runtime.make_session(before), feeds)
    except InputError:
        raise
    except Exception as exc:  # ORT rejects the original: nothing to compare against
        return f"ONNX Runtime cannot run the original model: {first_line(exc)}"
    try:
        candidate = runtime.run(runtime.make_session(after), feeds)
    except Exception as exc:
        problem = f"rewritten model fails on ONNX Runtime: {first_line(exc)}"
        failure = OutputComparison(
            "<model>", "none", tolerance_for(exactness, "none"), False, problem
        )
        return Verdict(False, exactness, [failure])
    return compare_outputs(reference, candidate, exactness)
