"""Accuracy equivalence: run two models on the same inputs on ONNX Runtime and compare every output.

Graph optimizations are off in both sessions by default, so that ORT's own fusions cannot hide a wrong
rewrite. The outputs are compared by `optkit.check.compare` (each by the tolerance its element type
gets at the exactness level); with several samples, each output is compared over all of them at once
(concatenated along the first axis).

A verdict never passes what it did not check: inputs with no elements, or outputs that are all empty,
are "nothing to compare" (`Unverifiable`, an InputError), and so is an original that disagrees with
itself on the same inputs (`Nondeterministic`: training-mode Dropout, random ops, found by
`optkit.check.determinism`). A candidate with preprocessing embedded by `optkit preprocess` is fed raw
inputs and the reference `apply(spec, raw)`. `bool(verdict)` is `verdict.ok`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx_ir as ir

from optkit import io
from optkit.check import runtime
from optkit.check.compare import (
    OutputComparison,
    Verdict,
    accuracy,
    compare_outputs,
    pool_samples,
    tolerance_scale,
)
from optkit.check.determinism import nondeterministic_nodes
from optkit.check.inputs import (
    MAX_SYNTHETIC_ELEMENTS,
    UnsynthesizableInput,
    check_nonempty_shapes,
    check_shapes,
    empty_inputs,
    format_dims,
    input_shape,
    named_sizes,
    random_array,
    runtime_inputs,
    second_sizes,
    synthetic_inputs,
    with_special_values,
)
from optkit.core.contract import Decline, Exactness, Tolerance, tolerance_for
from optkit.errors import InputError, OptkitError, first_line
from optkit.preprocessing import METADATA_KEY, PreprocessSpec, apply

Feeds = Mapping[str, np.ndarray]


class Unverifiable(InputError):
    """Verification cannot conclude anything: nothing to compare (inputs with no elements, outputs
    all empty), or an original that is not deterministic. Never a pass, never a difference."""


class Nondeterministic(Unverifiable):
    """The original gives different outputs on two runs on the same inputs."""


def verdict_lines(verdict: Verdict | None, unverified_reason: str, against: str = "") -> list[str]:
    """A report's verification lines: the verdict's summary (`against` what, when said) and its
    notes, or why verification did not run."""
    if verdict is None:
        return [f"  verification: NOT RUN ({unverified_reason})"]
    label = f"verification against {against}" if against else "verification"
    return [f"  {label}: {verdict.summary()}", *(f"    {note}" for note in verdict.notes)]


def _check_deterministic(
    again: Mapping[str, Any],
    first: Mapping[str, Any],
    exactness: Exactness,
    tolerances: Mapping[str, Tolerance] | None,
    suspects: Sequence[str],
    role: str,
) -> None:
    """Raise `Nondeterministic` when a second run of the original on the same sample (`again`)
    disagrees with the first (`first`) beyond the tolerance the verification itself uses."""
    verdict = compare_outputs(first, again, exactness, tolerances)
    if verdict.ok or verdict.problem:
        return
    if suspects:
        named = ", ".join(suspects[:3]) + (
            f" and {len(suspects) - 3} more" if len(suspects) > 3 else ""
        )
        why = f" ({named})"
    else:
        bad = next(o for o in verdict.outputs if not o.ok)
        why = f" (output '{bad.name}': {bad.problem}, max abs err {bad.max_abs_error:.3g})"
    raise Nondeterministic(
        f"the {role} is not deterministic{why}: two runs on the same inputs differ; "
        "nothing can be verified"
    )


@dataclass(frozen=True)
class PreprocessingAdapter:
    """One model has `optkit preprocess`'s preprocessing embedded (its input `input_name` takes the
    raw tensor), the other does not: the raw side is fed raw inputs, the other `apply(spec, raw)`."""

    spec: PreprocessSpec
    input_name: str
    raw_side: str  # "candidate" or "reference"

    @property
    def note(self) -> str:
        other = "reference" if self.raw_side == "candidate" else "candidate"
        return (
            f"{self.raw_side} takes raw input (embedded preprocessing): {other} fed "
            f"apply(spec, raw) for input '{self.input_name}'"
        )

    def preprocessed(self, raw: Feeds) -> dict[str, np.ndarray]:
        return {**raw, self.input_name: apply(self.spec, raw[self.input_name])}

    def feeds(self, raw: Sequence[Feeds]) -> tuple[list[Feeds], list[Feeds]]:
        """(reference feeds, candidate feeds) for raw samples."""
        done: list[Feeds] = [self.preprocessed(sample) for sample in raw]
        return (list(raw), done) if self.raw_side == "reference" else (done, list(raw))


def preprocessing_adapter(reference: ir.Model, candidate: ir.Model) -> PreprocessingAdapter | None:
    """The adapter when exactly one of the models records a preprocessing spec in its metadata
    (`optkit.preprocessing`, written by `optkit preprocess`); None otherwise."""
    specs = [m.metadata_props.get(METADATA_KEY) for m in (reference, candidate)]
    if (specs[0] is None) == (specs[1] is None):
        return None
    side = "candidate" if specs[1] is not None else "reference"
    raw_model, other = (candidate, reference) if side == "candidate" else (reference, candidate)
    text = specs[1] if side == "candidate" else specs[0]
    assert text is not None
    spec = PreprocessSpec.from_json(text, f"the {side}'s metadata '{METADATA_KEY}'")
    theirs = {v.name: v for v in runtime_inputs(other)}
    raw_dtype = np.dtype(spec.dtype)

    def dtype(value: ir.Value) -> np.dtype | None:
        if not isinstance(value.type, ir.TensorType):
            return None
        try:
            return np.dtype(value.type.dtype.numpy())
        except TypeError:
            return None

    fits = [
        v
        for v in runtime_inputs(raw_model)
        if v.name in theirs and dtype(v) == raw_dtype and dtype(theirs[v.name]) == np.float32
    ]
    if len(fits) > 1:  # several could take it: the one whose type or shape the embedding changed
        fits = [
            v
            for v in fits
            if dtype(v) != dtype(theirs[v.name]) or str(v.shape) != str(theirs[v.name].shape)
        ]
    if len(fits) != 1:
        raise InputError(
            f"the {side} records embedded preprocessing ({spec.dtype} {spec.layout} raw input), "
            "but no single input of it matches a float32 input of the other model by name"
        )
    assert fits[0].name is not None
    return PreprocessingAdapter(spec, fits[0].name, side)


def verify(
    before: io.ModelSource,
    after: io.ModelSource,
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

    Models are paths, ModelProtos, onnx_ir Models, serialized bytes or `torch.onnx.ONNXProgram`s.
    `inputs` is one feed dict or a list of them; by default `samples` seeded synthetic ones.
    `reference_provider` runs `before` on another execution provider (CUDA against CPU, say).
    When `after` has preprocessing embedded by `optkit preprocess` and `before` has not (or the
    other way round), the raw side is fed raw inputs (synthesized from, and `inputs` and `shapes`
    checked against, its signature; uint8 over 0..255) and the other the same after
    `apply(spec, raw)`; `Verdict.notes` says so.

    Raises `Unverifiable` (an InputError) when there is nothing to compare (an input or every
    output holds no elements) and `Nondeterministic` when `before` disagrees with itself on the same
    inputs. Cost: a random op or training-mode Dropout found by a static scan of `before` costs one
    extra run of it on the first sample, in the same session; a failed comparison costs one fresh
    session and run of `before`, so that a difference is only reported when the original repeats
    itself; a clean pass costs nothing extra. A verdict is never ok on nothing.
    """
    from optkit.io.validation import load_checked

    reference_name, candidate_name = io.describe(before), io.describe(after)
    before_model = load_checked(before, reference_name, copy=False)
    after_model = (
        after if isinstance(after, ir.Model) else load_checked(after, candidate_name, copy=False)
    )
    reference_feeds, candidate_feeds, adapter = prepare_feeds(
        before_model,
        after_model,
        inputs,
        shapes=shapes,
        seed=seed,
        samples=samples,
        int_range=int_range,
    )
    reference_runnable = _runnable(before, before_model)
    reference_provider = reference_provider or provider
    session, reference_runs = _run_all(
        reference_runnable, reference_name, reference_feeds, reference_provider, optimization
    )
    first = reference_runs[0]
    suspects = nondeterministic_nodes(before_model)

    def check_stable(again: Mapping[str, Any]) -> None:
        try:
            _check_deterministic(again, first, exactness, tolerances, suspects, "reference")
        except Nondeterministic as exc:
            raise Nondeterministic(f"{reference_name}: {exc}") from None

    if suspects:  # the same session: a seeded random op repeats its draws in a fresh one
        check_stable(runtime.run(session, reference_feeds[0]))
    del session  # one model's session in memory at a time
    reference = pool_samples(reference_runs)
    del reference_runs
    try:
        _, candidate_runs = _run_all(
            _runnable(after, after_model), candidate_name, candidate_feeds, provider, optimization
        )
    except CannotRun as exc:  # the candidate does not run where the reference does: it differs
        failure = OutputComparison(
            "<model>", "none", tolerance_for(exactness, "none"), False, str(exc)
        )
        return Verdict(False, exactness, [failure], len(reference_feeds))
    candidate = pool_samples(candidate_runs)
    del candidate_runs
    verdict = compare_outputs(reference, candidate, exactness, tolerances)
    if verdict.problem:
        raise Unverifiable(f"{candidate_name} vs {reference_name}: {verdict.problem}")
    if not verdict.ok and not suspects:  # a difference only counts when the reference repeats
        _, again = _run_all(
            reference_runnable,
            reference_name,
            reference_feeds[:1],
            reference_provider,
            optimization,
        )
        check_stable(again[0])
    score = accuracy(reference, candidate, labels) if labels is not None else None
    notes = (
        ((adapter.note,) if adapter else ())
        + verdict.notes
        + _provider_notes(provider, reference_provider)
    )
    return Verdict(verdict.ok, exactness, verdict.outputs, len(reference_feeds), score, notes=notes)


def prepare_feeds(
    reference: ir.Model,
    candidate: ir.Model,
    inputs: Feeds | Sequence[Feeds] | None = None,
    *,
    shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
    samples: int = 1,
    int_range: tuple[int, int] = (0, 10),
) -> tuple[list[Feeds], list[Feeds], PreprocessingAdapter | None]:
    """The samples `verify` feeds each model: (reference feeds, candidate feeds, adapter).

    Without an adapter both get the same feeds: `inputs`, or `samples` seeded synthetic ones. With
    one (`preprocessing_adapter`), the raw side gets raw samples and the other `apply(spec, raw)`.
    Raises `Unverifiable` when a sample has an input with no elements.
    """
    adapter = preprocessing_adapter(reference, candidate)
    raw_model = candidate if adapter and adapter.raw_side == "candidate" else reference
    raw_uint8 = adapter.input_name if adapter and adapter.spec.dtype == "uint8" else None
    if adapter is None and inputs is None:
        shapes = shapes_for_both(reference, candidate, shapes or {})
    feeds = _samples(raw_model, inputs, shapes, seed, samples, int_range, raw_uint8)
    _refuse_empty(feeds, shapes or {}, given=inputs is not None)
    if adapter is None:
        return feeds, feeds, None
    return (*adapter.feeds(feeds), adapter)


def shapes_for_both(
    reference: ir.Model, candidate: ir.Model, shapes: Mapping[str, Sequence[int]]
) -> dict[str, tuple[int, ...]]:
    """`shapes` checked against the candidate too (a contradiction is an InputError naming it), and
    completed where the reference leaves a dim dynamic that the candidate fixes (a dynamic-batch
    original against its static-batch export): the synthetic inputs must fit both models."""
    try:
        check_shapes(candidate, {k: v for k, v in shapes.items() if k in _input_names(candidate)})
    except InputError as exc:
        raise InputError(f"the candidate: {exc}") from None
    result = {name: tuple(dims) for name, dims in shapes.items()}
    sizes = named_sizes(reference, shapes)
    theirs = {v.name: v for v in runtime_inputs(candidate)}
    for value in runtime_inputs(reference):
        other = theirs.get(value.name)
        if value.name in result or other is None or value.shape is None or other.shape is None:
            continue
        if len(value.shape) != len(other.shape):
            continue
        dims = list(input_shape(value, None, sizes))
        fixed = [(axis, d) for axis, d in enumerate(other.shape) if isinstance(d, int)]
        if any(not isinstance(value.shape[axis], int) for axis, _ in fixed):
            for axis, size in fixed:
                dims[axis] = size
            assert value.name is not None
            result[value.name] = tuple(dims)
    return result


def _input_names(model: ir.Model) -> set[str]:
    return {v.name or "" for v in runtime_inputs(model)}


def _runnable(source: io.ModelSource, model: ir.Model) -> ir.Model | str | os.PathLike:
    """What to hand ORT: a path as a path (external data read from disk), else the loaded model."""
    return source if isinstance(source, str | os.PathLike) else model


def _refuse_empty(
    samples: Sequence[Feeds], shapes: Mapping[str, Sequence[int]], *, given: bool
) -> None:
    """Raise when a sample has an input with no elements: whatever the outputs, nothing was fed."""
    if not samples:
        raise Unverifiable("no input samples given: nothing to compare")
    for sample in samples:
        empty = empty_inputs(sample)
        if not empty:
            continue
        if given:
            raise Unverifiable(
                f"input {empty[0]} of the given inputs holds no elements: nothing to compare"
            )
        try:
            check_nonempty_shapes({k: v for k, v in shapes.items() if k in sample})
        except InputError as exc:  # the user's --shape: say which
            raise Unverifiable(str(exc)) from None
        raise Unverifiable(
            f"input {empty[0]} holds no elements as the model declares it: nothing to compare"
        )


def _samples(
    model: ir.Model,
    inputs: Feeds | Sequence[Feeds] | None,
    shapes: Mapping[str, Sequence[int]] | None,
    seed: int,
    count: int,
    int_range: tuple[int, int],
    raw_uint8: str | None = None,
) -> list[Feeds]:
    if inputs is None:
        made: list[Feeds] = []
        for i in range(max(1, count)):
            sample = synthetic_inputs(model, shapes, seed=seed + i, int_range=int_range)
            per_sample = sum(int(np.size(a)) for a in sample.values())
            if i == 0 and count * per_sample > MAX_SYNTHETIC_ELEMENTS:
                raise InputError(
                    f"--samples {count}: {count:,} samples of {per_sample:,} input elements each "
                    f"are over the {MAX_SYNTHETIC_ELEMENTS:,} elements optkit synthesizes; give at "
                    f"most {max(1, MAX_SYNTHETIC_ELEMENTS // max(per_sample, 1)):,} samples"
                )
            if raw_uint8 is not None:  # raw pixels: the whole uint8 range, as deployed
                rng = np.random.default_rng(seed + i)
                shape = sample[raw_uint8].shape
                sample[raw_uint8] = random_array(rng, ir.DataType.UINT8, shape, (0, 256))
            made.append(sample)
        return made
    if isinstance(inputs, Mapping):
        return [inputs]
    return list(inputs)


def _run_all(
    model: ir.Model | str | os.PathLike,
    name: str,
    feeds: Sequence[Feeds],
    provider: str,
    optimization: str,
) -> tuple[Any, list[dict[str, Any]]]:
    """The session and its outputs on each sample."""
    try:
        session = runtime.make_session(model, provider=provider, optimization=optimization)
        return session, [runtime.run(session, sample) for sample in feeds]
    except OptkitError:
        raise
    except Exception as exc:  # ORT rejects the model or an input
        shown = "the model" if name.startswith("<") else name
        raise CannotRun(f"ONNX Runtime cannot run {shown}: {first_line(exc)}") from None


def _provider_notes(provider: str, reference_provider: str) -> tuple[str, ...]:
    """What `auto` chose, when it is asked for: the run says where it ran."""
    notes = []
    for role, asked in (("candidate", provider), ("reference", reference_provider)):
        if asked == runtime.Provider.AUTO:
            chosen = runtime.resolve_provider(runtime.Provider.AUTO)[0]
            fallback = " (no CUDA execution provider here)" if "CUDA" not in chosen else ""
            notes.append(f"--provider auto ran the {role} on {chosen}{fallback}")
    return tuple(notes)


class CannotRun(InputError):
    """ONNX Runtime rejects a model or its inputs: bad input for the reference (nothing to compare
    against), a failed verification for the candidate."""


def verify_rewrite(
    before: ir.Model,
    after: ir.Model,
    exactness: Exactness,
    *,
    shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
    int_range: tuple[int, int] = (0, 10),
) -> Verdict | Decline:
    """Like `verify`, for a model and its rewrite: a Decline says why nothing can be concluded (the
    original cannot run on ONNX Runtime, no inputs can be made for it, its inputs or outputs hold no
    elements, or it is not deterministic); a rewrite that fails to run is a failed verdict. The
    returned Verdict is never ok on nothing. A zero dimension in `shapes` raises InputError.

    Dynamic dims that `shapes` leaves to a default are verified at two sizes (`second_sizes`: the
    defaults, then batch 2 and 9, 7, ... for the others). Where the original itself does not run
    at the second sizes (a model whose dims are dynamic in name only) the verdict stands on the
    first and its notes say so.
    """
    first = _verify_rewrite_at(before, after, exactness, shapes, seed, int_range)
    second = second_sizes(before, shapes or {})
    if not isinstance(first, Verdict) or not first.ok or second is None:
        return first
    sizes = ", ".join(f"{name}={format_dims(dims)}" for name, dims in second.items())
    again = _verify_rewrite_at(before, after, exactness, second, seed + 1, int_range)
    if isinstance(again, Decline):
        note = f"dynamic dims checked at one size only: at {sizes} {again}"
        return replace(first, notes=(*first.notes, note))
    outputs = [replace(o, name=f"{o.name} at {sizes}") for o in again.outputs]
    return replace(
        first,
        ok=again.ok,
        outputs=[*first.outputs, *outputs],
        samples=first.samples + again.samples,
        notes=(
            *first.notes,
            *again.notes,
            f"dynamic dims checked at two sizes: defaults and {sizes}",
        ),
    )


def _verify_rewrite_at(
    before: ir.Model,
    after: ir.Model,
    exactness: Exactness,
    shapes: Mapping[str, Sequence[int]] | None,
    seed: int,
    int_range: tuple[int, int],
) -> Verdict | Decline:
    """One run of `verify_rewrite` at `shapes`."""
    check_nonempty_shapes(shapes or {})
    try:
        feeds = synthetic_inputs(before, shapes, seed=seed, int_range=int_range)
    except UnsynthesizableInput as exc:
        return Decline(f"no inputs to run it on: {exc}")
    try:
        _refuse_empty([feeds], shapes or {}, given=False)
    except Unverifiable as exc:
        return Decline(str(exc))
    try:
        session = runtime.make_session(before)
        reference = runtime.run(session, feeds)
        suspects = nondeterministic_nodes(before)
        again = runtime.run(session, feeds) if suspects else None
        del session  # one model's session in memory at a time
    except InputError:
        raise
    except Exception as exc:  # ORT rejects the original: nothing to compare against
        return Decline(f"ONNX Runtime cannot run the original model: {first_line(exc)}")
    try:
        if again is not None:
            _check_deterministic(again, reference, exactness, None, suspects, "original")
    except Nondeterministic as exc:
        return Decline(str(exc))
    try:
        candidate = runtime.run(runtime.make_session(after), feeds)
    except Exception as exc:
        problem = f"rewritten model fails on ONNX Runtime: {first_line(exc)}"
        failure = OutputComparison(
            "<model>", "none", tolerance_for(exactness, "none"), False, problem
        )
        return Verdict(False, exactness, [failure])
    verdict = compare_outputs(reference, candidate, exactness)
    if verdict.problem:
        return Decline(verdict.problem)
    if not verdict.ok and not suspects:  # a difference only counts when the original repeats
        try:
            again = runtime.run(runtime.make_session(before), feeds)
            _check_deterministic(again, reference, exactness, None, suspects, "original")
        except Nondeterministic as exc:
            return Decline(str(exc))
    if not verdict.ok and exactness is not Exactness.BITWISE:  # a bitwise claim has no excuse
        return _arbitrate(verdict, before, feeds, reference, candidate, exactness)
    if not verdict.ok:
        return verdict
    if exactness is Exactness.BITWISE:
        return _bitwise_on_special_values(verdict, before, after, feeds, seed)
    return verdict


def _arbitrate(
    verdict: Verdict,
    before: ir.Model,
    feeds: Feeds,
    reference: Mapping[str, Any],
    candidate: Mapping[str, Any],
    exactness: Exactness,
) -> Verdict:
    """The models disagree: which is closer to the original computed in float64? A candidate within
    tolerance of that truth passes (the original lost precision the rewrite did not: cancellation
    of large constants in float32); otherwise the verdict stands, with both distances in its notes."""
    from optkit.check.reference64 import outputs64

    if _non_finite_differs(reference, candidate):
        return replace(
            verdict,
            notes=(*verdict.notes, "the rewrite gives inf or NaN where the original differs"),
        )
    truth_list = outputs64(before, feeds)
    if truth_list is None or len(truth_list) != len(reference):
        return replace(
            verdict, notes=(*verdict.notes, "no float64 reference to say which is closer")
        )
    truth: dict[str, Any] = {}
    for (name, ours), exact in zip(reference.items(), truth_list, strict=True):
        if not isinstance(ours, np.ndarray) or ours.shape != exact.shape:
            return verdict
        truth[name] = exact.astype(ours.dtype) if ours.dtype.kind == "f" else exact
    against_truth = compare_outputs(truth, candidate, exactness)
    original_off = compare_outputs(truth, dict(reference), exactness)
    distances = (
        f"float64 reference: the rewrite is {against_truth.max_abs_error:.3g} off it, the "
        f"original {original_off.max_abs_error:.3g}"
    )
    if against_truth.ok:
        return replace(
            against_truth,
            notes=(*verdict.notes, f"{distances}: the rewrite is the more accurate, and passes"),
        )
    verdict = replace(verdict, notes=(*verdict.notes, distances))
    if exactness is not Exactness.REASSOCIATE:  # an approximation answers to its own bound
        return verdict
    judged = as_accurate_as_original(truth, reference, candidate, ACCURACY_FACTOR, exactness)
    if isinstance(judged, Decline):
        return replace(verdict, notes=(*verdict.notes, judged.reason))
    found = [f"{o.name}: {o.problem or 'beyond tolerance'}" for o in verdict.outputs if not o.ok]
    errors = ", ".join(f"{e.group} {e.rewrite:.3g} (the original {e.original:.3g})" for e in judged)
    note = (
        f"beyond tolerance ({'; '.join(found)}), but as accurate as the original: against the "
        f"float64 reference, the rewrite's largest error in each channel (each element, where "
        f"channels hold under {MIN_GROUP}, against at least {MEDIAN_TO_LARGE:g}x the original's "
        f"median error) is at "
        f"most {ACCURACY_FACTOR:g}x the original's own float32 error there (largest: {errors}); "
        "passes on that ground"
    )
    outputs = [replace(o, ok=True, problem="") for o in verdict.outputs]
    return replace(verdict, ok=True, outputs=outputs, notes=(*verdict.notes, note))


ACCURACY_FACTOR = 2.0
"""How many times the original's own float32 error against the float64 reference a reassociating
rewrite's error may reach, channel by channel (`as_accurate_as_original`)."""

MIN_GROUP = 16
"""Elements a channel must hold to be judged as one group; an output with smaller channels (logits
of one sample: one element per class) is judged element by element."""

MEDIAN_TO_LARGE = 4.0
"""Judged element by element, the original's error at an element counts as at least this many
times its median error over the output: float32 rounding errors scatter, and the largest of a
thousand normal draws is about 5 times their median (absolute) value, so an element where the
original happened to round well is not held to that luck."""


@dataclass(frozen=True)
class GroupError:
    """The largest error against the float64 reference in one group of an output's elements (a
    channel, or one element), of the rewrite and of the original."""

    group: str
    rewrite: float
    original: float


def as_accurate_as_original(
    truth: Mapping[str, Any],
    reference: Mapping[str, Any],
    candidate: Mapping[str, Any],
    factor: float,
    exactness: Exactness = Exactness.REASSOCIATE,
) -> list[GroupError] | Decline:
    """Whether the rewrite is as accurate as the original against the float64 `truth`, group by
    group, with the tolerance of `exactness`:

        rewrite_g <= factor * original_g + atol + rtol * scale_g

    - channels (axis 1) where every channel holds at least `MIN_GROUP` elements: rewrite_g and
      original_g are the largest errors in the channel, scale_g its largest magnitude. Float32
      rounding moves single elements at random, so a test element by element would refuse correct
      rewrites; channels keep a badly conditioned channel (a large mean cancelling a large bias)
      from excusing an error in another.
    - otherwise (logits of one sample) each element: original_g is the original's error there, but
      never below `MEDIAN_TO_LARGE` times its median error over the output (the typical rounding:
      a median is not moved by a few badly conditioned classes), scale_g the comparison's own
      scale (`tolerance_scale`). One badly conditioned class does not excuse another.

    The worst group of each output, or a Decline naming the first group that is off."""
    worst_groups: list[GroupError] = []
    for name, exact in truth.items():
        ours, theirs = reference.get(name), candidate.get(name)
        if not (
            isinstance(exact, np.ndarray)
            and isinstance(ours, np.ndarray)
            and isinstance(theirs, np.ndarray)
            and ours.dtype.kind == theirs.dtype.kind == "f"
            and exact.shape == ours.shape == theirs.shape
        ):
            return Decline(f"output '{name}' is not a float array of one shape in all three runs")
        wide = exact.astype(np.float64)
        if not all(np.isfinite(a).all() for a in (wide, ours, theirs)):
            return Decline(f"output '{name}' is not finite everywhere")
        if wide.size == 0:
            continue
        rewrite_error = np.abs(theirs.astype(np.float64) - wide)
        original_error = np.abs(ours.astype(np.float64) - wide)
        if wide.ndim >= 2 and wide.size // max(wide.shape[1], 1) >= MIN_GROUP:
            others = tuple(axis for axis in range(wide.ndim) if axis != 1)
            rewrite = rewrite_error.max(axis=others)
            original = original_error.max(axis=others)
            scale = np.abs(wide).max(axis=others)
            labels = [f"'{name}' channel {c}" for c in range(wide.shape[1])]
        else:
            rewrite = rewrite_error.ravel()
            typical = MEDIAN_TO_LARGE * float(np.median(original_error))
            original = np.maximum(original_error.ravel(), typical)
            scale = np.broadcast_to(tolerance_scale(wide), wide.shape).ravel()
            labels = [f"'{name}' at index {tuple(int(i) for i in np.unravel_index(g, wide.shape))}"
                      for g in range(wide.size)]  # fmt: skip
        tolerance = tolerance_for(exactness, str(ours.dtype))
        off = np.flatnonzero(rewrite > factor * original + tolerance.atol + tolerance.rtol * scale)
        if off.size:
            g = int(off[0])
            return Decline(
                f"{labels[g]}: the rewrite is {rewrite[g]:.3g} off the float64 reference, the "
                f"original {original[g]:.3g}: more than {factor:g}x the original's own error"
            )
        g = int(np.argmax(rewrite))
        worst_groups.append(GroupError(labels[g], float(rewrite[g]), float(original[g])))
    return worst_groups


def _non_finite_differs(reference: Mapping[str, Any], candidate: Mapping[str, Any]) -> bool:
    """The candidate is inf or NaN somewhere the reference holds something else (another sign of
    inf, say): no float64 reference excuses that (the rewrite's licence is the other way round:
    finite where the original overflowed)."""
    for name, ours in reference.items():
        theirs = candidate.get(name)
        if not isinstance(ours, np.ndarray) or not isinstance(theirs, np.ndarray):
            continue
        if ours.dtype.kind != "f" or ours.shape != theirs.shape:
            continue
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(theirs) & ~((theirs == ours) | (np.isnan(theirs) & np.isnan(ours)))
        if bad.any():
            return True
    return False


def _bitwise_on_special_values(
    verdict: Verdict, before: ir.Model, after: ir.Model, feeds: Feeds, seed: int
) -> Verdict:
    """A bitwise claim holds for every input: run both models once more with NaN, +-inf, -0 and
    values near the float range in every float input. Where the original does not run on them, the
    verdict stands on the ordinary inputs, and its notes say so."""
    special = with_special_values(feeds, seed)
    if special is None:
        return verdict
    try:
        want = runtime.run(runtime.make_session(before), special)
    except Exception:
        return replace(verdict, notes=(*verdict.notes, "special values: the original does not run"))
    try:
        got = runtime.run(runtime.make_session(after), special)
    except Exception as exc:
        problem = f"rewritten model fails on NaN / inf inputs: {first_line(exc)}"
        failure = OutputComparison("<model>", "none", tolerance_for(Exactness.BITWISE, "none"),
                                   False, problem)  # fmt: skip
        return Verdict(False, Exactness.BITWISE, [*verdict.outputs, failure])
    again = compare_outputs(want, got, Exactness.BITWISE)
    outputs = [replace(o, name=f"{o.name} (NaN / inf inputs)") for o in again.outputs]
    return replace(verdict, ok=again.ok, outputs=[*verdict.outputs, *outputs])
