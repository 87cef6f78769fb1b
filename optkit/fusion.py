"""`optkit.fuse`: the default pipeline (cleanups, constant folding, BatchNorm folding, ordering), then
checks: the onnx checker, and a numeric comparison with the original on ONNX Runtime.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import onnx.version_converter
import onnx_ir as ir

from optkit import io
from optkit.check.compare import Verdict
from optkit.check.inputs import check_nonempty_shapes, check_shapes
from optkit.check.verify import verdict_lines, verify_rewrite
from optkit.core.contract import Decline, Exactness, PassOptions
from optkit.core.graph import count_ops, node_count, opset_version
from optkit.core.pipeline import Pipeline, PipelineReport, Verifier
from optkit.core.shapes import reinfer_shapes, restore_declared_shapes
from optkit.errors import InputError
from optkit.io.outputs import model_reads
from optkit.io.validation import check_built, check_input, upgraded
from optkit.passes import ALL_PASSES, DEFAULT_PASSES


@dataclass
class FuseReport:
    """What `fuse` did, for people (`format_text`) and machines (`to_dict`).

    Verification is in one of four states (`state`): "equivalent" (it ran and the outputs agree),
    "differs" (it ran and they do not), "unverified" (it was asked for and could not run:
    `unverified_reason` says why, e.g. ONNX Runtime cannot run the original, no inputs can be made,
    nothing to compare, or the original is not deterministic) and "disabled" (`verify_result=False`).
    `ok` is True only for "equivalent" and "disabled": a verification that was asked for and did
    not run never passes. `verified` is True when a verdict exists (it ran).
    """

    source: str
    nodes_before: int
    nodes_after: int
    batchnorm_before: int
    batchnorm_after: int
    pipeline: PipelineReport
    verdict: Verdict | None = None
    unverified_reason: str = ""
    seconds: float = 0.0
    output: str = ""
    opset_upgrade: tuple[int, int] | None = None  # (from, to) when --upgrade-opset converted it
    verification_requested: bool = True
    # The final check's failure that a pass-by-pass rerun recovered from (see `fuse`), or "".
    recovered_from: str = ""

    @property
    def faulty_passes(self) -> list[str]:
        """Passes rolled back because their result did not verify: each one an optkit bug."""
        return [p.name for p in self.pipeline.passes if p.rolled_back]

    @property
    def verified(self) -> bool:
        """True when verification ran (whatever it found: see `ok`)."""
        return self.verdict is not None

    @property
    def state(self) -> str:
        """'equivalent', 'differs', 'unverified' (asked for, could not run) or 'disabled'."""
        if self.verdict is not None:
            return "equivalent" if self.verdict.ok else "differs"
        return "unverified" if self.verification_requested else "disabled"

    @property
    def ok(self) -> bool:
        """True when verification ran and the outputs agree, or when it was disabled; False when
        it found a difference, and False when it was asked for and could not run."""
        return self.state in ("equivalent", "disabled")

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "output": self.output,
            "ok": self.ok,
            "verified": self.verified,
            "verification_state": self.state,
            "unverified_reason": self.unverified_reason,
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "batchnorm_before": self.batchnorm_before,
            "batchnorm_after": self.batchnorm_after,
            "opset_upgrade": list(self.opset_upgrade) if self.opset_upgrade else None,
            "recovered_from": self.recovered_from or None,
            "faulty_passes": self.faulty_passes,
            "seconds": round(self.seconds, 6),
            "pipeline": self.pipeline.to_dict(),
            "verification": self.verdict.to_dict() if self.verdict is not None else None,
        }

    def format_text(self, *, verbose: bool = False) -> str:
        lines = [
            f"{self.source}: {self.nodes_before} -> {self.nodes_after} nodes, "
            f"BatchNorm {self.batchnorm_before} -> {self.batchnorm_after}",
        ]
        if self.opset_upgrade:
            lines.append("  opset {} -> {} (--upgrade-opset)".format(*self.opset_upgrade))
        for report in self.pipeline.passes:
            hits = ", ".join(f"{rule} x{n}" for rule, n in sorted(report.hits().items()))
            declined = len(report.declined)
            if not hits and not declined and not report.rolled_back and not verbose:
                continue
            text = f"  {report.name:<11} {report.seconds * 1000:7.1f} ms  {hits or 'no change'}"
            if declined:
                text += f"  ({declined} declined)"
            if report.rolled_back:
                text += f"  ROLLED BACK: {report.rollback_reason}"
            lines.append(text)
        declines = [s for r in self.pipeline.passes for s in r.declined]
        if declines:
            lines.append("  declined:")
            shown = declines if verbose else declines[:20]
            lines += [f"    {s.node}: {s.reason}" for s in shown]
            if len(shown) < len(declines):
                lines.append(f"    ... {len(declines) - len(shown)} more (use --verbose or --json)")
        if self.recovered_from:
            lines.append(
                f"  the final check failed ({self.recovered_from}); re-verified pass by pass and "
                f"rolled back {', '.join(self.faulty_passes)}: an optkit bug, please report it "
                "with the model"
            )
        lines += verdict_lines(self.verdict, self.unverified_reason)
        lines.append(
            f"  time: {self.seconds:.3f} s" + (f"  -> {self.output}" if self.output else "")
        )
        return "\n".join(lines)


@dataclass
class FuseResult:
    model: ir.Model
    report: FuseReport
    external_data: bool = False  # the input kept its weights in external data; so does `save`
    source_path: Path | None = None  # the file the input was read from, resolved at fuse time

    def to_proto(self) -> onnx.ModelProto:
        return io.to_proto(self.model)

    def save(
        self,
        path: str | os.PathLike,
        *,
        shard_size: int | None = None,
        overwrite: bool = False,
        force: bool = False,
    ) -> None:
        """Write atomically; weights go to `<name>.data` when the input had external data or the
        model is too large for one protobuf, to shards of at most `shard_size` bytes if given.

        Refused (InputError, nothing written) over the file the model was fused from unless
        `overwrite=True`, and always over a file the result still reads (the input's external data).
        Like the command line, it writes no model whose verification found a difference or was asked
        for and could not run (`report.state` "differs" or "unverified") unless `force=True`.
        """
        if not force and self.report.state in ("differs", "unverified"):
            why = (
                f"verification could not run ({self.report.unverified_reason})"
                if self.report.state == "unverified"
                else "verification found a difference"
            )
            raise InputError(f"{path}: not written: {why}; save(..., force=True) writes it anyway")
        name = os.path.basename(os.fspath(path))
        external = f"{name}.data" if self.external_data or shard_size else None
        source = self.source_path
        io.save(
            self.model,
            path,
            external_data=external,
            shard_size=shard_size,
            source=source,
            overwrite=overwrite,
            inputs_read=model_reads(source)[1:] if source is not None else (),
        )
        self.report.output = str(path)


def _source_path(model: object) -> Path | None:
    """The file `model` was read from, resolved now (a later chdir does not move it): a path given
    to `fuse`, or the path `optkit.load` recorded in an IR model's meta."""
    if isinstance(model, str | os.PathLike):
        path = Path(model)
    elif isinstance(model, ir.Model) and model.meta.get(io.SOURCE_KEY):
        path = Path(model.meta[io.SOURCE_KEY])
    else:
        return None
    return path.resolve() if path.is_file() else None


def select_passes(passes: Iterable[str] | None = None, skip: Iterable[str] = ()) -> list:
    """The default pipeline, or the named passes in pipeline order, minus `skip`."""
    names = list(passes) if passes is not None else [p.spec.name for p in DEFAULT_PASSES]
    unknown = [n for n in [*names, *skip] if n not in ALL_PASSES]
    if unknown:
        raise InputError(f"unknown pass(es) {', '.join(unknown)}; known: {', '.join(ALL_PASSES)}")
    return [p for p in DEFAULT_PASSES if p.spec.name in names and p.spec.name not in set(skip)]


def fuse(
    model: io.ModelSource,
    *,
    passes: Sequence[str] | None = None,
    skip: Sequence[str] = (),
    options: PassOptions | None = None,
    verify_result: bool = True,
    verify_each: bool = False,
    shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
    int_range: tuple[int, int] = (0, 10),
    max_iterations: int = 4,
    upgrade_opset: int | None = None,
) -> FuseResult:
    """Fold and clean `model` and verify it. `model` is a path, ModelProto, onnx_ir.Model,
    serialized ModelProto bytes or `torch.onnx.ONNXProgram`; it is never modified.

    `upgrade_opset` converts the model to that default-domain opset first (onnx's version converter),
    so that ops newer than the model's opset (Gelu 20, Swish 24, LayerNormalization 17) can be used.
    Returns the rewritten `onnx_ir.Model` and a `FuseReport`. Raises `InputError` for unusable input.
    When verification finds a difference the report says so (`report.ok` is False); nothing raises.
    When it was asked for and cannot run (see `FuseReport.state`), `report.ok` is False too, and
    `report.unverified_reason` says why. A `shapes` entry that contradicts a static dimension of the
    model, or (with verification) has a zero dimension, raises InputError.
    """
    began = time.perf_counter()
    source = io.describe(model)
    source_path = _source_path(model)
    original = io.load(model)
    check_input(model, original, source)
    check_shapes(original, shapes or {})
    if verify_result or verify_each:
        check_nonempty_shapes(shapes or {})
    nodes_before, bn_before = node_count(original), count_ops(original, "BatchNormalization")
    external_data = bool(io.external_data_paths(original))
    # `original` is a private copy already; a second one is only needed to compare against.
    working = io.load(original) if verify_result else original
    opset_upgrade = None
    if upgrade_opset is not None:
        opset_upgrade = (opset_version(working), upgrade_opset)
        working = upgraded(working, upgrade_opset, source)

    verifier: Verifier | None = None
    if verify_each:

        def verifier(before: ir.Model, after: ir.Model, exactness: Exactness) -> Decline | None:
            """Why the pass's rewrite is rolled back: a failed verdict (nothing concluded: it stands)."""
            verdict = verify_rewrite(
                before, after, exactness, shapes=shapes, seed=seed, int_range=int_range
            )
            if isinstance(verdict, Decline) or verdict.ok:
                return None
            return Decline(verdict.summary())

    pipeline = Pipeline(
        select_passes(passes, skip),
        options=options,
        fixed_point=True,
        max_iterations=max_iterations,
        verifier=verifier,
    )
    declared = reinfer_shapes(working)  # folds read what the graph computes, not claims
    result, pipeline_report = pipeline.run(working)
    restore_declared_shapes(result, declared)
    report = FuseReport(
        source,
        nodes_before,
        node_count(result),
        bn_before,
        count_ops(result, "BatchNormalization"),
        pipeline_report,
        opset_upgrade=opset_upgrade,
        verification_requested=verify_result,
    )
    check_built(result, f"{source} after fuse")
    if verify_result:
        outcome = verify_rewrite(
            original,
            result,
            pipeline_report.exactness(),
            shapes=shapes,
            seed=seed,
            int_range=int_range,
        )
        if isinstance(outcome, Decline):
            report.unverified_reason = str(outcome)
        else:
            report.verdict = outcome
    else:
        report.unverified_reason = "verification disabled"
    report.seconds = time.perf_counter() - began
    if report.verdict is not None and not report.verdict.ok and not verify_each:
        # A pass made a wrong rewrite: find it by verifying pass by pass, and keep the rest.
        retry = fuse(
            model,
            passes=passes,
            skip=skip,
            options=options,
            verify_result=True,
            verify_each=True,
            shapes=shapes,
            seed=seed,
            int_range=int_range,
            max_iterations=max_iterations,
            upgrade_opset=upgrade_opset,
        )
        if retry.report.ok and retry.report.faulty_passes:
            retry.report.recovered_from = report.verdict.summary()
            retry.report.seconds = time.perf_counter() - began
            return retry
    return FuseResult(result, report, external_data=external_data, source_path=source_path)
