"""`optkit bench`: latency and throughput on ONNX Runtime, alone or against a baseline."""

from __future__ import annotations

import json
from pathlib import Path

import click

from optkit.cli.common import (
    COUNT,
    NON_NEGATIVE,
    NonEmptyPath,
    load_model,
    optimization_choice,
    provider_choice,
    shape_map,
)
from optkit.errors import InputError, OptkitError, first_line


@click.command("bench")
@click.argument("model", type=NonEmptyPath(dir_okay=False, path_type=Path))
@click.option(
    "--baseline",
    type=NonEmptyPath(dir_okay=False, path_type=Path),
    help="Another model, run alternately with MODEL on the same inputs; prints the ratio.",
)
@click.option(
    "--batch",
    type=COUNT,
    default=None,
    help="Batch size: sets the dynamic leading dim of the inputs (default: the model's static "
    "batch, else 1). A static batch dim that differs is an error.",
)
@click.option(
    "--threads",
    type=NON_NEGATIVE,
    default=0,
    show_default=True,
    help="Intra-op threads (0: ORT's).",
)
@click.option("--provider", type=provider_choice, default="cpu", show_default=True)
@click.option(
    "--optimization",
    type=optimization_choice,
    default="all",
    show_default=True,
    help="ORT graph optimization level (ORT's default is all).",
)
@click.option(
    "--warmup", type=NON_NEGATIVE, default=5, show_default=True, help="Untimed runs first."
)
@click.option("--runs", type=COUNT, default=50, show_default=True, help="Timed runs per model.")
@click.option(
    "--shape",
    "shapes",
    multiple=True,
    metavar="NAME=DxD...",
    help="Shape of an input, e.g. x=8x3x224x224 (wins over --batch, must agree on dim 0). Dynamic "
    "dims left unset take a default (1 batch, 16 other) and the report says so.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def bench_command(
    model: Path,
    baseline: Path | None,
    batch: int | None,
    threads: int,
    provider: str,
    optimization: str,
    warmup: int,
    runs: int,
    shapes: tuple[str, ...],
    as_json: bool,
) -> None:
    """Time MODEL on ONNX Runtime: session creation, latency (median, p90), throughput.

    The report lists the shape of every input fed and which dynamic dims took a default.

    \b
    Examples:
      optkit bench model.optkit.onnx --baseline model.onnx
      optkit bench model.onnx --batch 8 --threads 1 --optimization disable --json
    """
    from optkit.check.bench import bench

    parsed = shape_map(shapes)
    load_model(model)
    if baseline is not None:
        load_model(baseline)
    try:
        report = bench(
            str(model),
            str(baseline) if baseline else None,
            batch=batch,
            threads=threads,
            provider=provider,
            optimization=optimization,
            warmup=warmup,
            runs=runs,
            shapes=parsed,
        )
    except OptkitError:
        raise
    except Exception as exc:
        raise InputError(f"ONNX Runtime cannot run the model: {first_line(exc)}") from None
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.format_text())
