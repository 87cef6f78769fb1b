"""Bisection across a rewrite: the first tensor, in topological order, where two models diverge.

Rewrites keep the name of the value they replace (a folded Conv's output carries the old BatchNorm's
output name), so tensors are matched across the two graphs by name; tensors only one model has are
reported as unmatched. Each model is run once with every intermediate value of its main graph
exposed as an output: one extra run per model, not one per tensor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from optkit import io
from optkit.check import runtime
from optkit.check.compare import OutputComparison, compare_arrays
from optkit.core.contract import Exactness, Tolerance
from optkit.core.graph import node_label
from optkit.core.shapes import infer_shapes


@dataclass(frozen=True)
class Divergence:
    """Where the models first disagree: the tensor, its producer in each model, the comparison."""

    name: str
    producer_before: str
    producer_after: str
    comparison: OutputComparison

    def to_dict(self) -> dict[str, Any]:
        return {
            "tensor": self.name,
            "producer_before": self.producer_before,
            "producer_after": self.producer_after,
            **{k: v for k, v in self.comparison.to_dict().items() if k != "name"},
        }


@dataclass
class BisectReport:
    divergence: Divergence | None
    compared: int
    unmatched_before: list[str] = field(default_factory=list)
    unmatched_after: list[str] = field(default_factory=list)

    def summary(self) -> str:
        unmatched = (
            f"{len(self.unmatched_before)} tensors only before, "
            f"{len(self.unmatched_after)} only after (rewritten away or new)"
        )
        if self.divergence is None:
            return f"no divergence in {self.compared} matched tensors; {unmatched}"
        d = self.divergence
        return (
            f"first divergence at '{d.name}' (produced by {d.producer_before} before, "
            f"{d.producer_after} after): {d.comparison.problem}, max abs err "
            f"{d.comparison.max_abs_error:.3g}; {self.compared} tensors compared; {unmatched}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "divergence": self.divergence.to_dict() if self.divergence else None,
            "compared": self.compared,
            "unmatched_before": self.unmatched_before,
            "unmatched_after": self.unmatched_after,
        }


def exposed(model: ir.Model) -> tuple[ir.Model, dict[str, str]]:
    """A copy of `model` whose main-graph tensors are all outputs, and each one's producer label,
    in topological order. Values whose type is unknown even after shape inference stay hidden."""
    copy = model.clone()
    infer_shapes(copy)
    producers: dict[str, str] = {}
    outputs = set(id(v) for v in copy.graph.outputs)
    for node in copy.graph:
        for value in node.outputs:
            if not value.name or not isinstance(value.type, ir.TensorType):
                continue
            producers[value.name] = node_label(node)
            if id(value) not in outputs:
                copy.graph.outputs.append(value)
    return copy, producers


def bisect(
    before: io.ModelSource,
    after: io.ModelSource,
    feeds: Sequence[Mapping[str, np.ndarray]],
    exactness: Exactness,
    *,
    tolerances: Mapping[str, Tolerance] | None = None,
    provider: str = "cpu",
    reference_feeds: Sequence[Mapping[str, np.ndarray]] | None = None,
) -> BisectReport:
    """Run both models once per sample with every intermediate tensor exposed and name the first
    tensor of `before`, in topological order, whose match in `after` is beyond tolerance.

    `reference_feeds` (default: `feeds`) are what `before` is fed, sample by sample, where the two
    take different inputs (`optkit.check.verify.prepare_feeds`: embedded preprocessing)."""
    from optkit.check.compare import pool_samples

    tolerances = tolerances or {}
    values = []
    producers = []
    for model, samples in ((before, reference_feeds or feeds), (after, feeds)):
        open_model, labels = exposed(io.load(model, copy=False))
        session = runtime.make_session(open_model, provider=provider)
        values.append(pool_samples([runtime.run(session, sample) for sample in samples]))
        producers.append(labels)
    (ref, got), (made_before, made_after) = values, producers
    compared = 0
    divergence = None
    for name in made_before:
        if name not in made_after:
            continue
        compared += 1
        comparison = compare_arrays(name, ref[name], got[name], exactness, tolerances.get(name))
        if not comparison.ok:
            divergence = Divergence(name, made_before[name], made_after[name], comparison)
            break
    return BisectReport(
        divergence,
        compared,
        [n for n in made_before if n not in made_after],
        [n for n in made_after if n not in made_before],
    )
