"""`optkit bench`: latency and throughput on ONNX Runtime, alone or against a baseline."""

from __future__ import annotations

import json
from pathlib import Path

import click

from optkit.cli.common import load_model, optimization_choice, provider_choice, shape_map
from optkit.errors import InputError, OptkitError, first_line


@click.command("bench")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--baseline",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Another model, run alternately with MODEL on the same inputs; prints the ratio.",
)
@click.option("--batch", default=1, show_default=True, help="Batch size (the dynamic first dim).")
@click.option("--threads", default=0, show_default=True, help="Intra-op threads (0: ORT's choice).")
@click.option("--provider", type=provider_choice, default="cpu", show_default=True)
@click.option(
    "--optimization",
    type=optimization_choice,
    default="all",
    show_default=True,
    help="ORT graph optimization level (ORT's default is all).",
)
@click.option("--warmup", default=5, show_default=True, help="Untimed runs first.")
@click.option("--runs", default=50, show_default=True, help="Timed runs per model.")
@click.option(
    "--shape", "shapes", multiple=True, metavar="NAME=DxD...", help="Shape for a dynamic input."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def bench_command(
    model: Path,
    baseline: Path | None,
    batch: int,
    threads: int,
    provider: str,
    optimization: str,
    warmup: int,
    runs: int,
    shapes: tuple[str, ...],
    as_json: bool,
) -> None:
    """Time MODEL on ONNX Runtime: session creation, latency (median, p90), throughput.

    \b
    Examples:
      optkit bench model.optkit.onnx --baseline model.onnx
      optkit bench model.onnx --batch 8 --threads 1 --optimization disable --json
    """
    from optkit.bench import bench

    load_model(model)
    if baseline is not None:
        load_model(baseline)
    if runs < 1 or batch < 1:
        raise InputError("--runs and --batch must be at least 1")
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
            shapes=shape_map(shapes),
        )
    except OptkitError:
        raise
    except Exception as exc:
        raise InputError(f"ONNX Runtime cannot run the model: {first_line(exc)}") from None
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.format_text())
