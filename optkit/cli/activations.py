"""`optkit activations` (which activations a model uses, where) and `optkit swap` (replace them)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from optkit.cli.common import (
    COUNT,
    NON_NEGATIVE_NUMBER,
    NonEmptyPath,
    guard_output,
    load_model,
    shape_map,
    shape_option,
)
from optkit.errors import InputError, OptkitError, first_line
from optkit.io.run_inputs import load_labels

if TYPE_CHECKING:
    from optkit.check.compare import Verdict


@click.command("activations")
@click.argument("model", type=NonEmptyPath(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the list as one JSON array.")
def activations_command(model: Path, as_json: bool) -> None:
    """List the activations MODEL uses: kind, count, where, and which are decomposed chains
    (e.g. GELU as Div/Erf/Add/Mul/Mul) that `optkit fuse` can turn into one op."""
    from optkit.inspection import activation_usage, format_activation_usage

    usage = activation_usage(load_model(model))
    if as_json:
        click.echo(json.dumps(usage, indent=2))
        return
    click.echo(f"{model}: {len(usage)} activations" + (":" if usage else ""))
    click.echo("\n".join(format_activation_usage(usage)))


def _catalogue_lines() -> list[str]:
    from optkit.swap import CATALOGUE, error_bound, parse_rule

    lines = [f"{'swap':<31} {'exactness':<12} {'|error| per activation':<23} use"]
    for (source, target), note in CATALOGUE.items():
        rule = parse_rule(f"{source}={target}")
        bound = error_bound(source, {}, rule.target, rule.target_attributes)
        level = "lossy" if math.isinf(bound) else "approximate"
        text = "unbounded" if math.isinf(bound) else f"<= {bound:.3g}"
        lines.append(f"{rule.describe():<31} {level:<12} {text:<23} {note}")
    return lines


@click.command("swap")
@click.argument("model", type=NonEmptyPath(dir_okay=False, path_type=Path), required=False)
@click.option(
    "--map",
    "maps",
    multiple=True,
    metavar="SOURCE=TARGET[:P,..]",
    help="A swap from the catalogue, e.g. Gelu=Gelu:tanh, Relu=LeakyRelu:0.01 (repeatable).",
)
@click.option(
    "-o",
    "--output",
    type=NonEmptyPath(dir_okay=False, path_type=Path),
    help="Where to write the result [default: MODEL with .swapped.onnx].",
)
@click.option("--allow-lossy", is_flag=True, help="Apply swaps whose error has no bound.")
@click.option(
    "--data",
    type=NonEmptyPath(dir_okay=False, exists=True, path_type=Path),
    help=".npz/.npy samples to measure the change on [default: seeded synthetic inputs].",
)
@click.option(
    "--labels",
    type=NonEmptyPath(dir_okay=False, exists=True, path_type=Path),
    help=".npy class labels for --data: prints the accuracy before and after.",
)
@click.option(
    "--samples", type=COUNT, default=8, show_default=True, help="Synthetic samples without --data."
)
@shape_option("synthetic samples")
@click.option(
    "--max-error", type=NON_NEGATIVE_NUMBER, help="Fail (exit 1, nothing written) above this error."
)
@click.option(
    "--max-accuracy-drop",
    type=NON_NEGATIVE_NUMBER,
    help="Fail (exit 1, nothing written) when accuracy drops more (in points, needs --labels).",
)
@click.option("--force", is_flag=True, help="Write the result even when a --max-* check fails.")
@click.option("--catalogue", is_flag=True, help="List the swaps on offer with their bounds.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def swap_command(
    model: Path | None,
    maps: tuple[str, ...],
    output: Path | None,
    allow_lossy: bool,
    data: Path | None,
    labels: Path | None,
    samples: int,
    shapes: tuple[str, ...],
    max_error: float | None,
    max_accuracy_drop: float | None,
    force: bool,
    catalogue: bool,
    as_json: bool,
) -> None:
    """Replace activations by cheaper or better-supported ones, and measure what it costs.

    \b
    Each swap comes from a catalogue (--catalogue) stating its worst-case error per activation
    over the whole real line, computed from the two functions. A swap whose error has no bound
    (Relu -> LeakyRelu) is lossy and needs --allow-lossy. Decomposed activations are found too
    (x * Sigmoid(x) is Swish). The swapped model's outputs are compared with the original's on
    --data (or synthetic inputs); with --labels the accuracy change is printed.

    \b
    Examples:
      optkit swap --catalogue
      optkit swap bert.onnx --map Gelu=Gelu:tanh
      optkit swap mobilenet.onnx --map Swish=HardSwish --map Sigmoid=HardSigmoid:0.1667,0.5
      optkit swap cnn.onnx --map Relu=LeakyRelu:0.01 --allow-lossy --data val.npz --labels y.npy
    """
    from optkit import io
    from optkit.check.inputs import load_samples, parse_int_range
    from optkit.check.verify import verify
    from optkit.swap import parse_rule, swap

    if catalogue:
        click.echo("\n".join(_catalogue_lines()))
        return
    if model is None or not maps:
        raise InputError("swap needs MODEL and at least one --map (see optkit swap --help)")
    if labels is not None and data is None:
        raise InputError("--labels needs --data")
    if max_accuracy_drop is not None and labels is None:
        raise InputError("--max-accuracy-drop needs --labels")
    out = guard_output(
        output or model.with_name(model.name.removesuffix(".onnx") + ".swapped.onnx"),
        model,
        *(path for path in (data, labels) if path is not None),
    )
    rules = [parse_rule(text) for text in maps]
    shape_values = shape_map(shapes)
    original = load_model(model)
    working = io.load(original)
    done = swap(working, rules, allow_lossy=allow_lossy)
    feeds = load_samples(data, original) if data is not None else None
    label_array = load_labels(labels) if labels is not None else None
    try:
        verdict = verify(
            original,
            working,
            feeds,
            samples=samples,
            shapes=shape_values,
            labels=label_array,
            int_range=parse_int_range("0:10"),
        )
    except OptkitError:
        raise
    except Exception as exc:
        raise InputError(f"ONNX Runtime cannot run the models: {first_line(exc)}") from None
    failures = _failures(verdict, max_error, max_accuracy_drop)
    if not failures or force:
        io.save(working, out)
    report = {
        "source": str(model),
        "output": str(out) if not failures or force else None,
        "swapped": [s.__dict__ | {"exactness": s.exactness.value} for s in done],
        "verification": verdict.to_dict(),
        "failures": failures,
    }
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    else:
        click.echo(_format(model, report, verdict))
    if failures:
        click.echo(
            "optkit: "
            + "; ".join(failures)
            + ("; wrote anyway (--force)" if force else "; nothing written"),
            err=True,
        )
        sys.exit(1)


def _failures(verdict: Verdict, max_error: float | None, max_drop: float | None) -> list[str]:
    failures = []
    if max_error is not None and verdict.max_abs_error > max_error:
        failures.append(f"max abs error {verdict.max_abs_error:.3g} > --max-error {max_error:g}")
    if max_drop is not None and verdict.accuracy is not None:
        drop = 100 * (verdict.accuracy.reference - verdict.accuracy.candidate)
        if drop > max_drop:
            failures.append(f"accuracy drops {drop:.2f} points > --max-accuracy-drop {max_drop:g}")
    return failures


def _format(model: Path, report: dict[str, Any], verdict: Verdict) -> str:
    swapped = report["swapped"]
    lines = [f"{model}: swapped {len(swapped)} activation(s)"]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for site in swapped:
        groups.setdefault((site["source"], site["target"]), []).append(site)
    for (source, target), sites in groups.items():
        bound = sites[0]["bound"]
        text = "error unbounded" if math.isinf(bound) else f"|error| <= {bound:.3g} each"
        lines.append(f"  {source} -> {target} x{len(sites)}  {sites[0]['exactness']}, {text}")
    for output in verdict.outputs:
        line = f"  output '{output.name}': max abs err {output.max_abs_error:.3g}"
        if output.top1_agreement is not None:
            line += f", top-1 agreement {100 * output.top1_agreement:.1f}%"
        lines.append(line + f" ({verdict.samples} sample batch(es))")
    if verdict.accuracy is not None:
        acc = verdict.accuracy
        lines.append(
            f"  accuracy on {acc.count} labelled samples: {100 * acc.reference:.2f}% -> "
            f"{100 * acc.candidate:.2f}% ({100 * (acc.candidate - acc.reference):+.2f} points)"
        )
    if report["output"]:
        lines.append(f"  -> {report['output']}")
    return "\n".join(lines)
