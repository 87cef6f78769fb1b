"""`optkit verify`: are two models equivalent on ONNX Runtime, and if not, where do they diverge?"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from optkit.cli.common import (
    COUNT,
    NonEmptyPath,
    choice,
    input_options,
    load_model,
    optimization_choice,
    provider_choice,
    shape_map,
    tolerances,
)
from optkit.cli.render import format_verdict
from optkit.core.contract import Exactness
from optkit.errors import InputError, OptkitError, first_line
from optkit.io.run_inputs import load_labels


@click.command("verify")
@click.argument("reference", type=NonEmptyPath(dir_okay=False, path_type=Path))
@click.argument("candidate", type=NonEmptyPath(dir_okay=False, path_type=Path))
@click.option(
    "--data",
    type=NonEmptyPath(dir_okay=False, path_type=Path),
    help="Real inputs: .npz (one array per input) or .npy (one-input models); an extra "
    "leading axis stacks samples.",
)
@click.option(
    "--labels",
    type=NonEmptyPath(dir_okay=False, path_type=Path),
    help=".npy of class ids, one per row of the classifier output: report accuracy.",
)
@click.option(
    "--samples",
    type=COUNT,
    default=1,
    show_default=True,
    help="Synthetic samples to compare over (without --data).",
)
@input_options("synthetic samples")
@click.option(
    "--exactness",
    type=choice(["bitwise", "reassociate"]),
    default="reassociate",
    show_default=True,
    help="bitwise: outputs must be equal; reassociate: dtype tolerance.",
)
@click.option(
    "--tolerance",
    "tolerance_texts",
    multiple=True,
    metavar="[OUTPUT=]RTOL,ATOL",
    help="Override the dtype tolerance: max|a-b| <= ATOL + RTOL * max|a|.",
)
@click.option(
    "--provider",
    type=provider_choice,
    default="cpu",
    show_default=True,
    help="Execution provider for CANDIDATE (and REFERENCE unless --reference-provider).",
)
@click.option(
    "--reference-provider",
    type=provider_choice,
    help="Run REFERENCE elsewhere, e.g. --provider cuda --reference-provider cpu.",
)
@click.option(
    "--optimization",
    type=optimization_choice,
    default="disable",
    show_default=True,
    help="ORT graph optimization level for both (off by default, so ORT's fusions "
    "cannot hide a wrong rewrite).",
)
@click.option(
    "--bisect",
    "do_bisect",
    is_flag=True,
    help="Name the first tensor where the models diverge, with its producer in each.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def verify_command(
    reference: Path,
    candidate: Path,
    data: Path | None,
    labels: Path | None,
    samples: int,
    shapes: tuple[str, ...],
    seed: int,
    int_range: str,
    exactness: str,
    tolerance_texts: tuple[str, ...],
    provider: str,
    reference_provider: str | None,
    optimization: str,
    do_bisect: bool,
    as_json: bool,
) -> None:
    """Check that CANDIDATE computes what REFERENCE computes, on ONNX Runtime.

    \b
    Runs both on the same inputs (seeded synthetic ones, or --data), matches outputs by name, then
    by position, and reports per output max abs / max rel / mean abs error, cosine similarity and,
    for (rows, classes) outputs, top-1 / top-5 agreement. Tolerances follow the output dtype (fp16
    is not fp32) unless --tolerance sets them. Exit 0 when equivalent, 1 when not, 2 on bad input
    and when nothing can be verified (inputs or outputs with no elements, a REFERENCE that is not
    deterministic). When CANDIDATE has preprocessing embedded by `optkit preprocess`, it is fed raw
    inputs (--data and --shape describe those) and REFERENCE the same after the recorded spec.

    \b
    Examples:
      optkit verify model.onnx model.optkit.onnx
      optkit verify model.onnx fused.onnx --bisect --json
      optkit verify model.onnx fused.onnx --data val.npz --labels val_labels.npy
      optkit verify model.onnx model.onnx --provider cuda --reference-provider cpu
    """
    from optkit.check.bisect import bisect
    from optkit.check.inputs import load_samples, parse_int_range
    from optkit.check.verify import prepare_feeds, preprocessing_adapter, verify

    model = load_model(reference)
    other = load_model(candidate)
    adapter = preprocessing_adapter(model, other)
    # Real inputs are what the raw side takes when one model has its preprocessing embedded.
    fed = other if adapter is not None and adapter.raw_side == "candidate" else model
    default, per_output = tolerances(tolerance_texts)
    feeds = load_samples(data, fed) if data is not None else None
    label_array = load_labels(labels) if labels is not None else None
    level = Exactness(exactness)
    if default is not None:
        per_output = {
            o.name or "": per_output.get(o.name or "", default) for o in model.graph.outputs
        } | per_output
    try:
        verdict = verify(
            str(reference),
            str(candidate),
            feeds,
            exactness=level,
            tolerances=per_output,
            shapes=shape_map(shapes),
            seed=seed,
            samples=samples,
            int_range=parse_int_range(int_range),
            labels=label_array,
            provider=provider,
            reference_provider=reference_provider,
            optimization=optimization,
        )
        located = None
        if do_bisect:
            reference_feeds, candidate_feeds, _ = prepare_feeds(
                model,
                other,
                feeds,
                shapes=shape_map(shapes),
                seed=seed,
                samples=samples,
                int_range=parse_int_range(int_range),
            )
            located = bisect(
                str(reference),
                str(candidate),
                candidate_feeds,
                level,
                tolerances=per_output,
                provider=provider,
                reference_feeds=reference_feeds,
            )
    except OptkitError:
        raise
    except Exception as exc:  # ORT refused a model or an input
        raise InputError(f"ONNX Runtime cannot run the models: {first_line(exc)}") from None
    if as_json:
        result = {"reference": str(reference), "candidate": str(candidate), **verdict.to_dict()}
        if located is not None:
            result["bisect"] = located.to_dict()
        click.echo(json.dumps(result, indent=2, default=str))
    else:
        click.echo(format_verdict(reference, candidate, verdict))
        if located is not None:
            click.echo(f"  bisect: {located.summary()}")
    sys.exit(0 if verdict.ok else 1)
