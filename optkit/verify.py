"""Accuracy equivalence: run two models on the same inputs on ONNX Runtime and compare every output.

Graph optimizations are off in both sessions, so that ORT's own fusions cannot hide a wrong rewrite.
Each output is judged by the tolerance its element type gets at the given exactness level
(`optkit.contract.tolerance_for`): bitwise rewrites must agree exactly, integer outputs always exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from optkit import runtime
from optkit.contract import Exactness, Tolerance, tolerance_for
from optkit.errors import InputError
from optkit.inputs import synthetic_inputs


@dataclass(frozen=True)
class OutputComparison:
    """How one output of the rewritten model compares with the original's."""

    name: str
    dtype: str
    max_abs_error: float
    max_rel_error: float
    mean_abs_error: float
    cosine: float
    reference_max_abs: float
    tolerance: Tolerance
    ok: bool
    top1_agreement: float | None = None
    problem: str = ""

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
    """Compare one output; NaN and inf must appear at the same places in both."""
    ref = np.asarray(reference)
    got = np.asarray(candidate)
    dtype = ref.dtype.name
    tolerance = tolerance_for(exactness, dtype)

    def failed(problem: str) -> OutputComparison:
        nan = float("nan")
        return OutputComparison(
            name, dtype, nan, nan, nan, nan, nan, tolerance, False, None, problem
        )

    if ref.shape != got.shape:
        return failed(f"shape {got.shape} != {ref.shape}")
    if ref.dtype != got.dtype:
        return failed(f"dtype {got.dtype} != {ref.dtype}")
    if ref.dtype.kind not in "fiub":
        ok = bool(np.array_equal(ref, got))
        return OutputComparison(
            name,
            dtype,
            0.0 if ok else 1.0,
            0.0,
            0.0,
            1.0,
            0.0,
            tolerance,
            ok,
            None,
            "" if ok else "values differ",
        )
    a = ref.astype(np.float64)
    b = got.astype(np.float64)
    finite = np.isfinite(a)
    same_special = np.array_equal(np.isnan(a), np.isnan(b)) and np.array_equal(
        np.where(np.isinf(a), a, 0), np.where(np.isinf(b), b, 0)
    )
    a_f, b_f = a[finite], b[finite]
    if a_f.size == 0:
        return OutputComparison(
            name,
            dtype,
            0.0,
            0.0,
            0.0,
            1.0,
            0.0,
            tolerance,
            same_special,
            None,
            "" if same_special else "NaN/inf positions differ",
        )
    diff = np.abs(a_f - b_f)
    if not np.all(np.isfinite(b_f)):
        return failed("non-finite values where the original is finite")
    ref_max = float(np.max(np.abs(a_f)))
    max_abs = float(diff.max())
    max_rel = float(np.max(diff / np.maximum(np.abs(a_f), np.finfo(np.float64).tiny)))
    norm = float(np.linalg.norm(a_f) * np.linalg.norm(b_f))
    cosine = float(np.dot(a_f.ravel(), b_f.ravel()) / norm) if norm > 0 else float(max_abs == 0)
    ok = same_special and tolerance.allows(max_abs, ref_max)
    if exactness is Exactness.BITWISE or ref.dtype.kind in "iub":
        ok = same_special and max_abs == 0.0
    top1 = None
    if ref.ndim == 2 and ref.shape[1] > 1 and ref.dtype.kind == "f":
        top1 = float(np.mean(np.argmax(a, axis=1) == np.argmax(b, axis=1)))
    return OutputComparison(
        name,
        dtype,
        max_abs,
        max_rel,
        float(diff.mean()),
        cosine,
        ref_max,
        tolerance,
        ok,
        top1,
        "" if same_special else "NaN/inf positions differ",
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
    if isinstance(ref, list) or isinstance(got, list):
        if not (isinstance(ref, list) and isinstance(got, list)) or len(ref) != len(got):
            return [compare_arrays(name, np.zeros(1), np.zeros(2), exactness)]
        return [
            c
            for i, (r, g) in enumerate(zip(ref, got, strict=True))
            for c in _compare_nested(f"{name}[{i}]", r, g, exactness)
        ]
    if ref is None or got is None:
        same = ref is None and got is None
        tol = tolerance_for(exactness, "none")
        return [
            OutputComparison(
                name,
                "none",
                0.0,
                0.0,
                0.0,
                1.0,
                0.0,
                tol,
                same,
                None,
                "" if same else "optional presence differs",
            )
        ]
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
    if len(verdicts) == 1:
        return verdicts[0]
    worst = {}
    for verdict in verdicts:
        for comp in verdict.outputs:
            if (
                comp.name not in worst
                or not comp.ok
                or comp.max_abs_error > worst[comp.name].max_abs_error
            ):
                if comp.name not in worst or worst[comp.name].ok:
                    worst[comp.name] = comp
    return Verdict(all(v.ok for v in verdicts), exactness, list(worst.values()))


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
    feeds = synthetic_inputs(before, shapes, seed=seed)
    try:
        reference = runtime.run(runtime.make_session(before), feeds)
    except InputError:
        raise
    except Exception as exc:  # ORT rejects the original: nothing to compare against
        return f"ONNX Runtime cannot run the original model: {_first_line(exc)}"
    try:
        candidate = runtime.run(runtime.make_session(after), feeds)
    except Exception as exc:
        failure = compare_arrays("<model>", np.zeros(1), np.zeros(2), exactness)
        problem = f"rewritten model fails on ONNX Runtime: {_first_line(exc)}"
        return Verdict(
            False, exactness, [OutputComparison(**{**failure.__dict__, "problem": problem})]
        )
    return compare_outputs(reference, candidate, exactness)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__
