"""Accuracy equivalence: run two models on the same inputs on ONNX Runtime and compare every output.

Graph optimizations are off in both sessions, so that ORT's own fusions cannot hide a wrong rewrite.
Each output is judged by the tolerance its element type gets at the given exactness level
(`optkit.contract.tolerance_for`): bitwise rewrites must agree exactly, integer outputs always exactly.
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
from optkit.errors import InputError
from optkit.inputs import UnsynthesizableInput, synthetic_inputs

NAN = float("nan")


@dataclass(frozen=True)
class OutputComparison:
    """How one output of the rewritten model compares with the original's.

    Error statistics are NaN where the comparison stopped early (`problem` says why).
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
            "rtol": self.tolerance.rtol,
            "atol": self.tolerance.atol,
            "problem": self.problem,
        }


@dataclass(frozen=True)
class Verdict:
    """The outcome of comparing two models on the same inputs."""

    ok: bool
    exactness: Exactness
    outputs: list[OutputComparison] = field(default_factory=list)

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
            "outputs": [o.to_dict() for o in self.outputs],
        }


def compare_arrays(
    name: str, reference: Any, candidate: Any, exactness: Exactness
) -> OutputComparison:
    """Compare one output; NaN and inf must appear at the same places in both.

    Float outputs pass within `tolerance_for(exactness, dtype)`; bitwise rewrites and integer, bool
    and string outputs must match exactly.
    """
    ref, got = np.asarray(reference), np.asarray(candidate)
    tolerance = tolerance_for(exactness, ref.dtype.name)
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
    top1 = None
    if ref.ndim == 2 and ref.shape[1] > 1 and ref.dtype.kind == "f" and np.all(finite):
        top1 = float(np.mean(np.argmax(ref, axis=1) == np.argmax(got, axis=1)))
    return outcome(
        ok,
        "" if ok else "beyond tolerance",
        max_abs_error=max_abs,
        max_rel_error=float(np.max(diff / np.maximum(np.abs(a), np.finfo(np.float64).tiny))),
        mean_abs_error=float(diff.mean()),
        cosine=float(np.dot(a, b) / norm) if norm > 0 else float(max_abs == 0),
        reference_max_abs=ref_max,
        top1_agreement=top1,
    )


def compare_outputs(
    reference: Mapping[str, Any], candidate: Mapping[str, Any], exactness: Exactness
) -> Verdict:
    """Match outputs by name, then by position for the names that differ."""
    ref_names, cand_names = list(reference), list(candidate)
    if len(ref_names) != len(cand_names):
        raise InputError(f"models have {len(ref_names)} and {len(cand_names)} outputs")
    pairs = []
    for i, name in enumerate(ref_names):
        other = name if name in candidate else cand_names[i]
        pairs.append((name, reference[name], candidate[other]))
    comparisons: list[OutputComparison] = []
    for name, ref, got in pairs:
        comparisons.extend(_compare_nested(name, ref, got, exactness))
    return Verdict(all(c.ok for c in comparisons), exactness, comparisons)


def _compare_nested(name: str, ref: Any, got: Any, exactness: Exactness) -> list[OutputComparison]:
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
            for c in _compare_nested(f"{name}[{i}]", r, g, exactness)
        ]
    if ref is None and got is None:
        return []
    if ref is None or got is None:
        return [mismatch("optional presence differs")]
    return [compare_arrays(name, ref, got, exactness)]


def verify(
    before: ir.Model,
    after: ir.Model,
    inputs: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]] | None = None,
    *,
    exactness: Exactness = Exactness.REASSOCIATE,
    shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
    provider: str = "cpu",
) -> Verdict:
    """Run `before` and `after` on ORT (optimizations off) and compare all outputs.

    `inputs` is one feed dict or a list of them; by default one seeded synthetic sample.
    """
    if inputs is None:
        samples: list[Mapping[str, np.ndarray]] = [synthetic_inputs(before, shapes, seed=seed)]
    elif isinstance(inputs, Mapping):
        samples = [inputs]
    else:
        samples = list(inputs)
    ref_session = runtime.make_session(before, provider=provider)
    new_session = runtime.make_session(after, provider=provider)
    verdicts = []
    for feeds in samples:
        verdicts.append(
            compare_outputs(
                runtime.run(ref_session, feeds), runtime.run(new_session, feeds), exactness
            )
        )
    return worst_of(verdicts)


def worst_of(verdicts: Sequence[Verdict]) -> Verdict:
    """One verdict over several samples: per output, its first failure, else its largest error."""
    worst: dict[str, OutputComparison] = {}
    for comparison in (c for v in verdicts for c in v.outputs):
        held = worst.get(comparison.name)
        if held is None or (
            held.ok and (not comparison.ok or comparison.max_abs_error > held.max_abs_error)
        ):
            worst[comparison.name] = comparison
    return Verdict(all(v.ok for v in verdicts), verdicts[0].exactness, list(worst.values()))


def verify_rewrite(
    before: ir.Model,
    after: ir.Model,
    exactness: Exactness,
    *,
    shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
) -> Verdict | str:
    """Like `verify`, for a model and its rewrite: a string says why the original itself cannot run
    on ONNX Runtime (so nothing can be concluded); a rewrite that fails to run is a failed verdict.
    """
    try:
        feeds = synthetic_inputs(before, shapes, seed=seed)
    except UnsynthesizableInput as exc:
        return f"no inputs to run it on: {exc}"
    try:
        reference = runtime.run(runtime.make_session(before), feeds)
    except InputError:
        raise
    except Exception as exc:  # ORT rejects the original: nothing to compare against
        return f"ONNX Runtime cannot run the original model: {_first_line(exc)}"
    try:
        candidate = runtime.run(runtime.make_session(after), feeds)
    except Exception as exc:
        problem = f"rewritten model fails on ONNX Runtime: {_first_line(exc)}"
        failure = OutputComparison(
            "<model>", "none", tolerance_for(exactness, "none"), False, problem
        )
        return Verdict(False, exactness, [failure])
    return compare_outputs(reference, candidate, exactness)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__
