"""The pipeline: runs passes in order, optionally to a fixed point, times them, counts hits per rule,
and can verify after each pass, rolling back a pass whose result fails verification.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx_ir as ir
import onnx_ir.passes.common as ir_passes

from optkit.core.contract import Decline, Exactness, PassOptions, PassReport, RewritePass
from optkit.errors import InternalError, OptkitError, first_line

logger = logging.getLogger(__name__)

# verifier(before, after, exactness): None when the rewrite stands, else why it is rolled back
Verifier = Callable[[ir.Model, ir.Model, Exactness], Decline | None]

_ORDER = [Exactness.BITWISE, Exactness.REASSOCIATE, Exactness.APPROXIMATE, Exactness.LOSSY]


def weakest(levels: Sequence[Exactness]) -> Exactness:
    """The loosest exactness among `levels` (bitwise when empty)."""
    return max(levels, key=_ORDER.index, default=Exactness.BITWISE)


@dataclass
class PipelineReport:
    passes: list[PassReport] = field(default_factory=list)
    iterations: int = 0
    seconds: float = 0.0

    def hits(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for report in self.passes:
            total.update(report.hits())
        return total

    def exactness(self) -> Exactness:
        """The loosest exactness of the passes that changed the model."""
        return weakest([r.exactness for r in self.passes if r.modified])

    def to_dict(self) -> dict[str, Any]:
        return {
            "iterations": self.iterations,
            "seconds": round(self.seconds, 6),
            "hits": dict(self.hits()),
            "passes": [r.to_dict() for r in self.passes],
        }


class Pipeline:
    """Runs `passes` in order over a model.

    With `fixed_point`, the whole sequence repeats until an iteration applies nothing (at most
    `max_iterations` times). With a `verifier`, the model is snapshotted before each pass and checked
    after it; a pass that fails is rolled back and reported, and the run goes on.
    """

    def __init__(
        self,
        passes: Sequence[RewritePass],
        *,
        options: PassOptions | None = None,
        fixed_point: bool = False,
        max_iterations: int = 4,
        verifier: Verifier | None = None,
    ) -> None:
        self.passes = tuple(passes)
        self.options = options or PassOptions()
        self.fixed_point = fixed_point
        self.max_iterations = max(1, max_iterations)
        self.verifier = verifier

    def run(self, model: ir.Model) -> tuple[ir.Model, PipelineReport]:
        """Rewrite `model` in place; returns the resulting model (another object after a rollback)."""
        reports = {
            p.spec.name: PassReport(p.spec.name, p.spec.exactness, iterations=0)
            for p in self.passes
        }
        report = PipelineReport(passes=list(reports.values()))
        start = time.perf_counter()
        legacy_inputs = model.ir_version < 4
        if legacy_inputs:  # IR 3 lists every initializer as an input; they are constants there
            ir_passes.RemoveInitializersFromInputsPass()(model)
        version = 0  # bumped by every pass that changes the model
        seen: dict[str, int] = {}  # the version each pass last ran on (or left behind)
        for _ in range(self.max_iterations if self.fixed_point else 1):
            report.iterations += 1
            changed = False
            for rewrite in self.passes:
                name = rewrite.spec.name
                if seen.get(name) == version:
                    continue  # nothing changed since it last ran: by idempotence it would do nothing
                model, pass_changed = self._run_one(rewrite, model, reports[name])
                version += pass_changed
                seen[name] = version
                changed |= pass_changed
            if not changed:
                break
        if legacy_inputs:
            ir_passes.AddInitializersToInputsPass()(model)
        report.seconds = time.perf_counter() - start
        return model, report

    def _run_one(
        self, rewrite: RewritePass, model: ir.Model, report: PassReport
    ) -> tuple[ir.Model, bool]:
        snapshot = model.clone() if self.verifier is not None else None
        began = time.perf_counter()
        try:
            sites = rewrite.run(model, self.options)
        except OptkitError:
            raise
        except Exception as exc:  # a pass must decline what it cannot handle; this is a bug
            raise InternalError(
                f"pass '{rewrite.spec.name}' failed: {type(exc).__name__}: {first_line(exc)} "
                "(an optkit bug: please report it with the model; --skip "
                f"{rewrite.spec.name} works around it)"
            ) from exc
        seconds = time.perf_counter() - began
        report.seconds += seconds
        report.iterations += 1
        logger.info(
            "%-10s %4d applied, %4d declined  %8.1f ms",
            rewrite.spec.name,
            sum(s.applied for s in sites),
            sum(not s.applied for s in sites),
            seconds * 1000,
        )
        changed = any(site.applied for site in sites)
        if (
            report.iterations > 1
        ):  # keep only the last iteration's declines; accumulate applied sites
            report.sites = [s for s in report.sites if s.applied]
        kept = list(report.sites)
        report.sites.extend(sites)
        if changed and snapshot is not None and self.verifier is not None:
            failed = self.verifier(snapshot, model, rewrite.spec.exactness)
            if failed is not None:
                logger.warning("pass %s rolled back: %s", rewrite.spec.name, failed)
                report.rolled_back = True
                report.rollback_reason = str(failed)
                report.sites = kept + [s for s in sites if not s.applied]
                return snapshot, False
        return model, changed
