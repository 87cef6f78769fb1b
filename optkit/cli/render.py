"""Rendering what the library returns, as text for people or JSON for machines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from optkit.check.compare import Verdict
    from optkit.fusion import FuseResult


def print_report(result: FuseResult, as_json: bool, verbose: bool) -> None:
    if as_json:
        click.echo(json.dumps(result.report.to_dict(), indent=2, default=str))
    else:
        click.echo(result.report.format_text(verbose=verbose))


def format_verdict(reference: Path | str, candidate: Path | str, verdict: Verdict) -> str:
    """The per-output table (`Verdict.format_table`, shared with `optkit.testing`)."""
    return verdict.format_table(str(reference), str(candidate))
