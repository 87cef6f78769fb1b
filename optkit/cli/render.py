"""Rendering what the library returns, as text for people or JSON for machines."""

from __future__ import annotations

import json
from pathlib import Path

import click

from optkit.fusion import FuseResult
from optkit.verify import Verdict


def print_report(result: FuseResult, as_json: bool, verbose: bool) -> None:
    if as_json:
        click.echo(json.dumps(result.report.to_dict(), indent=2, default=str))
    else:
        click.echo(result.report.format_text(verbose=verbose))


def format_verdict(reference: Path, candidate: Path, verdict: Verdict) -> str:
    state = "equivalent" if verdict.ok else "NOT equivalent"
    lines = [
        f"{candidate} vs {reference}: {state} ({verdict.exactness.value}, "
        f"{verdict.samples} sample{'s' if verdict.samples != 1 else ''})",
        f"  {'output':<20} {'dtype':<8} {'max abs':>10} {'max rel':>10} {'mean abs':>10} "
        f"{'cosine':>9} {'top-1':>6} {'top-5':>6}  {'rtol, atol':<16} ok",
    ]

    def pct(value: float | None) -> str:
        return "" if value is None else f"{value:.0%}"

    for o in verdict.outputs:
        lines.append(
            f"  {o.name[:20]:<20} {o.dtype:<8} {o.max_abs_error:10.3g} {o.max_rel_error:10.3g} "
            f"{o.mean_abs_error:10.3g} {o.cosine:9.6f} {pct(o.top1_agreement):>6} "
            f"{pct(o.top5_agreement):>6}  {f'{o.tolerance.rtol:g}, {o.tolerance.atol:g}':<16} "
            f"{'yes' if o.ok else 'NO: ' + o.problem}"
        )
    if verdict.accuracy is not None:
        a = verdict.accuracy
        lines.append(
            f"  accuracy on {a.count} labels ({a.output}): reference {a.reference:.2%}, "
            f"candidate {a.candidate:.2%}, agreement {a.agreement:.2%}"
        )
    return "\n".join(lines)
