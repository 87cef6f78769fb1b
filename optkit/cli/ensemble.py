"""`optkit ensemble` and `optkit tta`: several models, or augmented copies of one, combined in one
verified graph."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from optkit.cli.common import (
    COUNT,
    NonEmptyPath,
    choice,
    guard_output,
    input_options,
    shape_map,
)
from optkit.errors import InputError

# Only click and optkit's light modules at the top (tests/test_startup.py): onnx, onnx_ir, numpy
# and onnxruntime load inside the commands.

COMBINE_CHOICES = ("mean", "softmax-mean", "vote")


def _combine_options(command: Callable[..., Any]) -> Callable[..., Any]:
    options: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
        click.option(
            "--combine",
            type=choice(COMBINE_CHOICES),
            default="mean",
            show_default=True,
            help="mean of the outputs; softmax-mean: mean of softmax(output) over the last axis "
            "(for logits); vote: the class most outputs pick, ties broken by the mean (an int64 "
            "class id per row).",
        ),
        click.option(
            "--weights", metavar="W1,W2,...", help="One weight per combined output (>= 0)."
        ),
        click.option(
            "--fuse",
            "fuse_it",
            is_flag=True,
            help="Also run `optkit fuse` on the result (BatchNorm folded, shared weights "
            "deduplicated) and verify it again.",
        ),
        click.option("--no-verify", is_flag=True, help="Do not compare on ONNX Runtime."),
        click.option("--force", is_flag=True, help="Write the result even when it differs."),
        click.option(
            "--samples",
            type=COUNT,
            default=2,
            show_default=True,
            help="Seeded input samples verification runs.",
        ),
        input_options("verification inputs"),
        click.option(
            "--json", "as_json", is_flag=True, help="Print the report as one JSON object."
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _weights(text: str | None) -> list[float] | None:
    from optkit.combine import parse_weights

    return parse_weights(text) if text is not None else None


def _size(text: str | None, option: str) -> tuple[int, int] | None:
    """'HxW' as two positive ints."""
    if text is None:
        return None
    parts = text.lower().split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise InputError(f"{option} '{text}': expected HxW, e.g. 10x10") from None
    if h < 1 or w < 1:
        raise InputError(f"{option} '{text}': dims must be >= 1")
    return h, w


def _scales(text: str | None) -> tuple[float, ...]:
    if text is None:
        return ()
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise InputError(f"--scales '{text}': expected numbers separated by commas") from None


def _finish(result: Any, output: Path, as_json: bool, force: bool, what: str) -> None:
    """Write and report as `fuse` does: nothing written when verification could not run (exit 2)
    or found a difference (exit 1, unless --force)."""
    report = result.report
    if report.state == "unverified":
        click.echo(
            json.dumps(report.to_dict(), indent=2, default=str) if as_json else report.format_text()
        )
        raise InputError(
            f"{what}: verification could not run: {report.unverified_reason}; nothing written "
            "(use --no-verify to write it unverified)"
        )
    failed = report.state == "differs"
    if not failed or force:
        result.save(output, force=force)
    click.echo(
        json.dumps(report.to_dict(), indent=2, default=str) if as_json else report.format_text()
    )
    if failed:
        click.echo(
            "optkit: the combined model differs from its reference beyond tolerance; "
            + ("wrote anyway (--force)" if force else "nothing written"),
            err=True,
        )
        sys.exit(1)


@click.command("ensemble")
@click.argument(
    "members", nargs=-1, required=True, type=NonEmptyPath(dir_okay=False, path_type=Path)
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=NonEmptyPath(dir_okay=False, path_type=Path),
    help="Where to write the ensemble. Never one of the members.",
)
@click.option(
    "--opset", type=COUNT, metavar="N", help="Opset of the result [default: the highest]."
)
@_combine_options
def ensemble_command(
    members: tuple[Path, ...],
    output: Path,
    opset: int | None,
    combine: str,
    weights: str | None,
    fuse_it: bool,
    no_verify: bool,
    force: bool,
    samples: int,
    shapes: tuple[str, ...],
    seed: int,
    int_range: str,
    as_json: bool,
) -> None:
    """Combine MEMBERS (two or more models with one input signature) into one model.

    \b
    Each member's names are prefixed (m1/, m2/, ...), identical weights are shared, members at
    different opsets are converted to the highest (verified), embedded preprocessing is computed
    once when every member has the same, else kept per member. The result is verified on ONNX
    Runtime against the members run separately and combined in numpy.

    \b
    Examples:
      optkit ensemble a.onnx b.onnx c.onnx -o abc.onnx --combine softmax-mean
      optkit ensemble a.onnx b.onnx -o ab.onnx --combine vote --weights 2,1 --fuse
    """
    from optkit.check.inputs import parse_int_range
    from optkit.ensembles import ensemble
    from optkit.io.outputs import model_reads

    reads = [p for member in members for p in model_reads(member)]
    guard_output(output, None, *reads)
    result = ensemble(
        list(members),
        combine=combine,
        weights=_weights(weights),
        opset=opset,
        verify_result=not no_verify,
        fuse=fuse_it,
        shapes=shape_map(shapes),
        seed=seed,
        samples=samples,
        int_range=parse_int_range(int_range),
    )
    _finish(result, output, as_json, force, "the ensemble")


@click.command("tta")
@click.argument("model", type=NonEmptyPath(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=NonEmptyPath(dir_okay=False, path_type=Path),
    help="Where to write the result [default: MODEL with .tta.onnx]. Never the input.",
)
@click.option("--hflip", is_flag=True, help="Add horizontally flipped copies.")
@click.option("--vflip", is_flag=True, help="Add vertically flipped copies.")
@click.option(
    "--shift",
    type=click.IntRange(min=0),
    default=0,
    metavar="PIXELS",
    help="Add copies translated by PIXELS (see --directions, --pad).",
)
@click.option(
    "--directions",
    type=click.Choice(["4", "8"]),
    default="4",
    show_default=True,
    help="Shifts: right, left, down, up (4), and the diagonals (8).",
)
@click.option(
    "--pad",
    type=choice(["zero", "edge"]),
    default="zero",
    show_default=True,
    help="What comes in at the border of a shift or a smaller scale.",
)
@click.option(
    "--crops",
    type=click.Choice(["1", "4", "5"]),
    help="Crops of the model's input size from a larger input: the centre (1), the "
    "corners (4), both (5). Needs --input-size.",
)
@click.option("--input-size", metavar="HxW", help="The larger input the crops are taken from.")
@click.option("--crop-size", metavar="HxW", help="The crops' size, for a model with dynamic H, W.")
@click.option(
    "--scales", metavar="S1,S2", help="Add copies zoomed by each factor (Resize, linear)."
)
@_combine_options
def tta_command(
    model: Path,
    output: Path | None,
    hflip: bool,
    vflip: bool,
    shift: int,
    directions: str,
    pad: str,
    crops: str | None,
    input_size: str | None,
    crop_size: str | None,
    scales: str | None,
    combine: str,
    weights: str | None,
    fuse_it: bool,
    no_verify: bool,
    force: bool,
    samples: int,
    shapes: tuple[str, ...],
    seed: int,
    int_range: str,
    as_json: bool,
) -> None:
    """Test-time augmentation in the graph: copies of the input, one pass of MODEL, combined.

    \b
    The copies (every combination of the options chosen, the identity included) are stacked
    along the batch axis and run as ONE batch, then split and combined. The result is verified
    on ONNX Runtime against a numpy reference that makes each copy and runs MODEL once per copy.

    \b
    Examples:
      optkit tta digits.onnx --shift 1                      # 5 copies: identity and 4 shifts
      optkit tta net.onnx --hflip --combine softmax-mean --fuse
      optkit tta net.onnx --crops 5 --input-size 40x40 -o net.crops.onnx
    """
    from optkit.augment import tta
    from optkit.check.inputs import parse_int_range

    stem = model.name[: -len(".onnx")] if model.name.endswith(".onnx") else model.name
    out = guard_output(output or model.with_name(f"{stem}.tta.onnx"), model)
    result = tta(
        model,
        hflip=hflip,
        vflip=vflip,
        shift=shift,
        directions=int(directions),
        pad=pad,
        crops=int(crops) if crops else 0,
        input_size=_size(input_size, "--input-size"),
        crop_size=_size(crop_size, "--crop-size"),
        scales=_scales(scales),
        combine=combine,
        weights=_weights(weights),
        verify_result=not no_verify,
        fuse=fuse_it,
        shapes=shape_map(shapes),
        seed=seed,
        samples=samples,
        int_range=parse_int_range(int_range),
    )
    _finish(result, out, as_json, force, str(model))
