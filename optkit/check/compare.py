"""Output comparison: one model's outputs against another's, by the tolerance each element type gets.

Each output is judged by the tolerance its element type gets at the given exactness level
(`optkit.core.contract.tolerance_for`), unless the caller sets one for it: bitwise rewrites must agree
exactly, integer outputs always exactly; float errors are measured against a per-channel scale
(`tolerance_scale`). Outputs are matched by name, or by position where the names differ
(`match_outputs`); sequence and optional outputs are compared element by element, and several
samples pooled into one comparison (`pool_samples`). A `Verdict` that compared nothing is not ok.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from optkit.check.inputs import format_dims
from optkit.core.contract import Decline, Exactness, Tolerance, tolerance_for
from optkit.errors import InputError

NAN = float("nan")


@dataclass(frozen=True)
class OutputComparison:
    """How one output of the rewritten model compares with the original's.

    Error statistics are NaN where the comparison stopped early (`problem` says why); `size` is the
    reference output's element count (0: empty in both, nothing compared). For outputs
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
    size: int | None = None  # elements of the reference output (None: not an array)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "ok": self.ok,
            "elements": self.size,
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
    """The outcome of comparing two models on the same inputs.

    `ok` is True only when something was compared and every output agreed; `bool(verdict)` is
    `verdict.ok`. `problem` says why a verdict that compared nothing is not ok; `notes` say how the
    inputs were fed (e.g. raw inputs to a model with embedded preprocessing) and how outputs were
    matched when their names differ.
    """

    ok: bool
    exactness: Exactness
    outputs: list[OutputComparison] = field(default_factory=list)
    samples: int = 1
    accuracy: Accuracy | None = None
    problem: str = ""
    notes: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self.ok

    @property
    def max_abs_error(self) -> float:
        return max((o.max_abs_error for o in self.outputs), default=0.0)

    def summary(self) -> str:
        state = "equivalent" if self.ok else "NOT equivalent"
        if self.problem:
            return f"{state} ({self.exactness.value}): {self.problem}"
        parts = [f"{o.name}: max abs err {o.max_abs_error:.3g}" for o in self.outputs]
        bad = [f"{o.name}: {o.problem or 'beyond tolerance'}" for o in self.outputs if not o.ok]
        return f"{state} ({self.exactness.value}) " + "; ".join(bad or parts)

    def format_table(self, reference: str = "reference", candidate: str = "candidate") -> str:
        """The per-output table `optkit verify` prints (and `optkit.testing.assert_equivalent`
        raises): errors, cosine, top-1 / top-5 agreement, tolerance and verdict of each output."""
        state = "equivalent" if self.ok else "NOT equivalent"
        lines = [
            f"{candidate} vs {reference}: {state} ({self.exactness.value}, "
            f"{self.samples} sample{'s' if self.samples != 1 else ''})",
            *(f"  {note}" for note in self.notes),
        ]
        if self.problem:
            lines.append(f"  NO: {self.problem}")
        lines.append(
            f"  {'output':<20} {'dtype':<8} {'max abs':>10} {'max rel':>10} {'mean abs':>10} "
            f"{'cosine':>9} {'top-1':>6} {'top-5':>6}  {'rtol, atol':<16} ok"
        )

        def pct(value: float | None) -> str:
            return "" if value is None else f"{value:.0%}"

        for o in self.outputs:
            if not o.ok:
                verdict = "NO: " + (o.problem or "beyond tolerance")
            else:
                verdict = "yes (empty in both)" if o.size == 0 else "yes"
            lines.append(
                f"  {o.name[:20]:<20} {o.dtype:<8} {o.max_abs_error:10.3g} "
                f"{o.max_rel_error:10.3g} {o.mean_abs_error:10.3g} {o.cosine:9.6f} "
                f"{pct(o.top1_agreement):>6} {pct(o.top5_agreement):>6}  "
                f"{f'{o.tolerance.rtol:g}, {o.tolerance.atol:g}':<16} {verdict}"
            )
        if self.accuracy is not None:
            a = self.accuracy
            lines.append(
                f"  accuracy on {a.count} labels ({a.output}): reference {a.reference:.2%}, "
                f"candidate {a.candidate:.2%}, agreement {a.agreement:.2%}"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "exactness": self.exactness.value,
            "samples": self.samples,
            "problem": self.problem,
            "notes": list(self.notes),
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

    Integer, bool and string outputs, and every output of a bitwise rewrite, must match exactly (in
    their own dtype: int64 values are never rounded through float64). A float output passes when
    every element satisfies ``|a - b| <= atol + rtol * scale``, `tolerance` defaulting to
    `tolerance_for(exactness, dtype)`, where `scale` is the largest reference magnitude in the
    element's channel (its index along axis 1) for outputs of rank 2 and more, and the element's own
    reference magnitude for rank 0 and 1, never below 10% of the output's largest magnitude (see
    `tolerance_scale`). So a wrong small channel next to large ones fails, while a channel whose
    values cross zero is judged by its own size.
    """
    ref, got = np.asarray(reference), np.asarray(candidate)
    tolerance = tolerance or tolerance_for(exactness, ref.dtype.name)
    outcome = functools.partial(OutputComparison, name, ref.dtype.name, tolerance, size=ref.size)
    if ref.shape != got.shape:
        return outcome(False, f"shape {got.shape} != {ref.shape}")
    if ref.dtype != got.dtype:
        return outcome(False, f"dtype {got.dtype} != {ref.dtype}")
    if ref.dtype.kind not in "fiub":
        same = bool(np.array_equal(ref, got))
        return outcome(same, "" if same else "values differ")
    if ref.dtype.kind in "iub":
        return _compare_exactly(ref, got, outcome)
    a, b = ref.astype(np.float64), got.astype(np.float64)
    if not (
        np.array_equal(np.isnan(a), np.isnan(b)) and np.array_equal(a[np.isinf(a)], b[np.isinf(a)])
    ):
        return outcome(False, "NaN/inf positions differ")
    finite = np.isfinite(a)
    if not np.all(np.isfinite(b[finite])):
        return outcome(False, "non-finite values where the original is finite")
    if not finite.any():
        return outcome(True, max_abs_error=0.0)
    a, b = np.where(finite, a, 0.0), np.where(finite, b, 0.0)
    diff = np.abs(a - b)
    ref_max, max_abs = float(np.max(np.abs(a))), float(diff.max())
    if exactness is Exactness.BITWISE:
        same_bits = _same_bits(ref, got)
        ok = max_abs == 0.0 and same_bits
        problem = "" if ok else "values differ (bitwise rewrite)"
        if max_abs == 0.0 and not same_bits:
            problem = "values differ in their bits (the sign of a zero; bitwise rewrite)"
    else:
        beyond = _within(diff, a, tolerance)
        ok, problem = beyond is None, "" if beyond is None else str(beyond)
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    with np.errstate(over="ignore", divide="ignore"):  # inf where the reference is 0: honest
        max_rel = float(np.max(diff / np.maximum(np.abs(a), np.finfo(np.float64).tiny)))
    top1, top5 = _agreement(ref, got) if np.all(finite) else (None, None)
    return outcome(
        ok,
        problem,
        max_abs_error=max_abs,
        max_rel_error=max_rel,
        mean_abs_error=float(diff[finite].mean()),
        cosine=float(np.dot(a.ravel(), b.ravel()) / norm) if norm > 0 else float(max_abs == 0),
        reference_max_abs=ref_max,
        top1_agreement=top1,
        top5_agreement=top5,
    )


SCALE_FLOOR = 0.1
"""The smallest scale an element is judged at, as a share of the output's largest magnitude.

A reassociated sum errs by up to about eps * sum(|terms|), and where its terms cancel that is far
above the value itself (a feature of a batch-1 Gemm at -0.06 from terms of size ~80); the floor
stands in for the terms' size. A wrong channel 10 times smaller than the largest still fails."""


def _same_bits(ref: np.ndarray, got: np.ndarray) -> bool:
    """The same bit patterns wherever the reference is not NaN (NaN payloads may differ):
    -0.0 and +0.0 are different outputs (1 / y tells them apart)."""
    keep = ~np.isnan(ref)
    unsigned = np.dtype(f"u{ref.dtype.itemsize}")
    return bool(np.array_equal(ref[keep].view(unsigned), got[keep].view(unsigned)))


def tolerance_scale(reference: np.ndarray) -> np.ndarray:
    """The magnitude each element's error is measured against (broadcastable to `reference`, which
    holds finite float64 values): the largest ``|reference|`` in the element's channel (index along
    axis 1) for rank >= 2, the element's own ``|reference|`` for rank 0 and 1; never below
    `SCALE_FLOOR` times the output's largest magnitude."""
    magnitude = np.abs(reference)
    floor = SCALE_FLOOR * float(magnitude.max(initial=0.0))
    if reference.ndim < 2:
        return np.maximum(magnitude, floor)
    others = tuple(axis for axis in range(reference.ndim) if axis != 1)
    return np.maximum(np.max(magnitude, axis=others, keepdims=True), floor)


def _within(diff: np.ndarray, reference: np.ndarray, tolerance: Tolerance) -> Decline | None:
    """None when every error is within ``atol + rtol * scale``; else where the worst one is."""
    allowed = tolerance.atol + tolerance.rtol * tolerance_scale(reference)
    excess = diff - allowed
    if not np.any(excess > 0):
        return None
    worst = np.unravel_index(int(np.argmax(diff / np.maximum(allowed, 1e-300))), diff.shape)
    where = f"at index {tuple(int(i) for i in worst)}" if diff.ndim else "at the scalar"
    channel = f" (channel {int(worst[1])})" if diff.ndim >= 2 else ""
    allowed_there = np.broadcast_to(allowed, diff.shape)[worst]
    return Decline(
        f"beyond tolerance {where}{channel}: |a - b| = {float(diff[worst]):.3g} > "
        f"{float(allowed_there):.3g} allowed, reference {float(reference[worst]):.6g}"
    )


def _compare_exactly(
    ref: np.ndarray, got: np.ndarray, outcome: functools.partial[OutputComparison]
) -> OutputComparison:
    """Integers and bools: equal in their own dtype; the error statistics in exact integers."""
    differs = ref != got
    if not differs.any():
        return outcome(True, max_abs_error=0.0, max_rel_error=0.0, mean_abs_error=0.0, cosine=1.0)
    pairs = zip(ref[differs].tolist(), got[differs].tolist(), strict=True)
    max_abs = max(abs(int(x) - int(y)) for x, y in pairs)
    return outcome(
        False,
        f"values differ at {int(differs.sum())} of {ref.size} elements (integers compare exactly)",
        max_abs_error=float(max_abs),
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
    """Match outputs by name, then by position for the names that differ.

    A verdict that compared nothing (every output empty in both models, or no tensor at all) is not
    ok, and its `problem` says so; empty outputs next to non-empty ones are fine.
    """
    tolerances = tolerances or {}
    unknown = sorted(set(tolerances) - set(reference))
    if unknown:
        raise InputError(
            f"tolerance given for unknown output(s) {', '.join(unknown)}; outputs are "
            f"{', '.join(reference)}"
        )
    pairs, notes = match_outputs(reference, candidate)
    comparisons: list[OutputComparison] = []
    for name, other in pairs:
        comparisons.extend(
            _compare_nested(
                name, reference[name], candidate[other], exactness, tolerances.get(name)
            )
        )
    ok = all(c.ok for c in comparisons)
    problem = ""
    if ok and all(c.size == 0 for c in comparisons):
        empty = ", ".join(
            f"'{name}' {format_dims(np.shape(v))}"
            for name, v in reference.items()
            if isinstance(v, np.ndarray)
        )
        problem = (
            f"nothing to compare: every output is empty in both models ({empty})"
            if comparisons
            else "nothing to compare: no output holds a tensor"
        )
    return Verdict(ok and not problem, exactness, comparisons, problem=problem, notes=notes)


def match_outputs(
    reference: Mapping[str, Any], candidate: Mapping[str, Any]
) -> tuple[list[tuple[str, str]], tuple[str, ...]]:
    """Pairs (reference output, candidate output) and a note on how they were matched.

    By name when both models have the same output names; otherwise by position, but only when the
    counts agree, no name of one model sits at another position in the other, and the outputs at
    each position are of the same kind and element type. Anything else is an InputError: a
    comparison that guessed would compare one output twice and another never.
    """
    ref_names, cand_names = list(reference), list(candidate)
    if len(ref_names) != len(cand_names):
        raise InputError(
            f"the models have {len(ref_names)} and {len(cand_names)} outputs "
            f"({', '.join(ref_names)} vs {', '.join(cand_names)}); nothing to match them by"
        )
    if set(ref_names) == set(cand_names):
        return [(name, name) for name in ref_names], ()
    for position, (mine, theirs) in enumerate(zip(ref_names, cand_names, strict=True)):
        if mine != theirs and (mine in candidate or theirs in reference):
            raise InputError(
                f"outputs match neither by name nor by position: output {position} is '{mine}' in "
                f"the reference and '{theirs}' in the candidate, and "
                f"'{mine if mine in candidate else theirs}' is another output of the other model"
            )
        kinds = (_kind(reference[mine]), _kind(candidate[theirs]))
        if kinds[0] != kinds[1]:
            raise InputError(
                f"outputs differ in name and type at position {position}: '{mine}' {kinds[0]} in "
                f"the reference, '{theirs}' {kinds[1]} in the candidate; nothing to match them by"
            )
    renamed = [f"'{a}' ~ '{b}'" for a, b in zip(ref_names, cand_names, strict=True) if a != b]
    return list(zip(ref_names, cand_names, strict=True)), (
        f"outputs matched by position (names differ: {', '.join(renamed)})",
    )


def _kind(value: Any) -> str:
    """An output's kind for matching: the element type of a tensor, 'sequence' or 'optional'."""
    if isinstance(value, np.ndarray):
        return value.dtype.name
    if isinstance(value, PerSample):
        return _kind(value[0]) if value else "tensor"
    return "sequence" if isinstance(value, list) else "optional"


def _compare_nested(
    name: str, ref: Any, got: Any, exactness: Exactness, tolerance: Tolerance | None
) -> list[OutputComparison]:
    """Sequence outputs come back as lists, optional ones as None: compare them element by element."""
    mismatch = functools.partial(
        OutputComparison, name, "none", tolerance_for(exactness, "none"), False
    )
    if isinstance(ref, PerSample) or isinstance(got, PerSample):
        if not (isinstance(ref, PerSample) and isinstance(got, PerSample)):
            varies = "reference" if isinstance(ref, PerSample) else "candidate"
            return [mismatch(f"the shape varies from sample to sample in the {varies} only")]
        return [
            compare_arrays(f"{name} (sample {i})", r, g, exactness, tolerance)
            for i, (r, g) in enumerate(zip(ref, got, strict=True))
        ]
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


class PerSample(list):
    """One output's arrays, a sample each: its shape changed from sample to sample (a data-dependent
    shape, as NonZero's), so the samples are compared one by one rather than pooled."""


def pool_samples(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Outputs of several runs as one: arrays of the same shape in every run concatenated along
    their first axis (scalars stacked); arrays whose shape varies kept per run (`PerSample`);
    sequence and optional outputs kept per run as a list."""
    pooled: dict[str, Any] = {}
    for name in runs[0]:
        values = [run[name] for run in runs]
        if all(isinstance(v, np.ndarray) for v in values):
            if len({v.shape for v in values}) > 1:
                pooled[name] = PerSample(values)
            else:
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
