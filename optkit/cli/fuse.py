"""`optkit fuse`, `inspect`, `demo`, `passes`: the rewrite engine on the command line."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import click

from optkit.cli.common import (
    COUNT,
    NON_NEGATIVE,
    NonEmptyPath,
    default_output,
    guard_output,
    input_options,
    load_model,
    parse_size,
    shape_map,
    split_names,
)
from optkit.cli.render import print_report
from optkit.core.contract import PassOptions
from optkit.errors import InputError

if TYPE_CHECKING:
    from optkit.fusion import fuse
else:

    def fuse(*args, **kwargs):
        """`optkit.fuse`, imported when a command runs it, not with `--help` (the rewrite engine
        takes most of a second to import); a name of this module, which tests replace."""
        from optkit.fusion import fuse as fuse_model

        return fuse_model(*args, **kwargs)


@click.command("fuse")
@click.argument("model", type=NonEmptyPath(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=NonEmptyPath(dir_okay=False, path_type=Path),
    help="Where to write the result [default: MODEL with .optkit.onnx]. Never the input.",
)
@click.option(
    "--passes",
    "passes",
    multiple=True,
    metavar="NAMES",
    help="Run only these passes (comma-separated, see `optkit passes`).",
)
@click.option("--skip", multiple=True, metavar="NAMES", help="Skip these passes (comma-separated).")
@click.option("--no-verify", is_flag=True, help="Do not compare outputs on ONNX Runtime.")
@click.option(
    "--verify-each",
    is_flag=True,
    help="Verify after every pass and roll back a pass whose result differs.",
)
@click.option("--force", is_flag=True, help="Write the result even when verification fails.")
@input_options("verification inputs")
@click.option(
    "--freeze-initializer-inputs",
    is_flag=True,
    help="Treat initializers that are also graph inputs as constants (fold them).",
)
@click.option(
    "--bn-to-affine", is_flag=True, help="Rewrite BatchNorm that no layer can absorb as Mul + Add."
)
@click.option(
    "--fold-limit",
    type=NON_NEGATIVE,
    default=PassOptions().constant_fold_max_elements,
    show_default=True,
    metavar="ELEMENTS",
    help="Largest tensor constant folding may create.",
)
@click.option(
    "--upgrade-opset",
    type=COUNT,
    metavar="N",
    help="Convert the model to opset N first, so newer fused ops can be used "
    "(Gelu 20, Swish 24, LayerNormalization 17, GroupNormalization 21).",
)
@click.option(
    "--all-canonical",
    is_flag=True,
    help="Also fuse Swish, Softplus and GroupNorm chains, which ONNX Runtime's CPU provider runs "
    "faster decomposed (for runtimes that want the one op).",
)
@click.option(
    "--shard-size",
    metavar="SIZE",
    help="Write the weights as external data in files of at most SIZE (e.g. 1GB, 500MB).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.option(
    "--verbose", "verbose_report", is_flag=True, help="List every pass and every decline."
)
def fuse_command(
    model: Path,
    output: Path | None,
    passes: tuple[str, ...],
    skip: tuple[str, ...],
    no_verify: bool,
    verify_each: bool,
    force: bool,
    shapes: tuple[str, ...],
    seed: int,
    int_range: str,
    freeze_initializer_inputs: bool,
    bn_to_affine: bool,
    fold_limit: int,
    upgrade_opset: int | None,
    all_canonical: bool,
    shard_size: str | None,
    as_json: bool,
    verbose_report: bool,
) -> None:
    """Fold test-time BatchNorm, fuse decomposed activations and norms, clean the graph, verify.

    \b
    Folds BatchNorm, and Mul / Add / Sub / Div by per-channel constants, into the Conv /
    ConvTranspose / Gemm / MatMul before or after it (computed in float64, rounded once), fuses
    activations and normalizations exporters leave as chains of primitives (GELU, Swish,
    HardSwish, Mish, ELU, LayerNorm, GroupNorm, ...) into their ONNX op, removes Identity,
    inference Dropout, unused nodes and duplicate initializers, folds constants, sorts the graph,
    then runs the onnx checker and compares the outputs with the original's on seeded inputs
    (exactly, when only bitwise passes changed the model). Each BatchNorm or form left in place is
    listed with the reason. The input file is never modified; the output is written atomically,
    and not at all when verification fails (unless --force).

    \b
    Examples:
      optkit fuse resnet.onnx
      optkit fuse resnet.onnx -o resnet.fused.onnx --shape input=1x3x224x224 --json
      optkit fuse model.onnx --skip constants --verify-each
      optkit fuse bert.onnx --upgrade-opset 20      # Gelu needs opset 20
    """
    from optkit.check.inputs import parse_int_range

    out = guard_output(output or default_output(model), model)
    shard_bytes = parse_size(shard_size) if shard_size is not None else None
    options = PassOptions(
        freeze_initializer_inputs=freeze_initializer_inputs,
        bn_to_affine=bn_to_affine,
        constant_fold_max_elements=fold_limit,
        all_canonical=all_canonical,
    )
    shape_values = shape_map(shapes)
    result = fuse(
        model,
        passes=split_names(passes) or None,
        skip=split_names(skip, "--skip"),
        options=options,
        verify_result=not no_verify,
        verify_each=verify_each,
        shapes=shape_values,
        seed=seed,
        int_range=parse_int_range(int_range),
        upgrade_opset=upgrade_opset,
    )
    report = result.report
    if no_verify:
        report.unverified_reason = "disabled by --no-verify"
    elif report.verdict is None:  # asked for, could not run: an unverified model is not written
        print_report(result, as_json, verbose_report)
        raise InputError(
            f"{model}: verification could not run: {report.unverified_reason}; nothing written "
            "(use --no-verify to write it unverified)"
        )
    failed = not report.ok
    if not failed or force:
        result.save(str(out), shard_size=shard_bytes, force=force)
    print_report(result, as_json, verbose_report)
    if failed:
        click.echo(
            "optkit: outputs differ beyond tolerance; "
            + ("wrote anyway (--force)" if force else "nothing written"),
            err=True,
        )
        sys.exit(1)


@click.command("inspect")
@click.argument("model", type=NonEmptyPath(dir_okay=False, path_type=Path))
@click.option("--no-dry-run", is_flag=True, help="Do not show what `fuse` would do.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def inspect_command(model: Path, no_dry_run: bool, as_json: bool) -> None:
    """Opsets, inputs and outputs, op histogram, parameters, BatchNorm count, and what `fuse` would
    do (each site it would rewrite, each decline with its reason; nothing is written)."""
    from optkit.inspection import format_inspection, inspect_model

    load_model(model)
    info = inspect_model(model, dry_run=not no_dry_run)
    click.echo(json.dumps(info, indent=2, default=str) if as_json else format_inspection(info))


@click.command("demo")
@click.option(
    "--out",
    "out_dir",
    type=NonEmptyPath(file_okay=False, path_type=Path),
    help="Folder for demo.onnx and demo.optkit.onnx [default: a temporary folder].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def demo_command(out_dir: Path | None, as_json: bool) -> None:
    """Build the bundled demo CNN (Conv/BN/Relu, depthwise, Gemm+BN), fuse it, verify it."""
    from optkit import io
    from optkit.demo import demo_model

    with tempfile.TemporaryDirectory(prefix="optkit-demo-") as tmp:
        folder = out_dir or Path(tmp)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"--out {folder}: cannot create the folder ({exc.strerror})") from None
        source = folder / "demo.onnx"
        io.save(io.load(demo_model()), source)
        result = fuse(source)
        result.save(str(default_output(source)))
        print_report(result, as_json, verbose=False)
        if not as_json and out_dir is None:
            click.echo("  (written to a temporary folder; use --out DIR to keep the files)")
    if not result.report.ok:
        sys.exit(1)


@click.command("passes")
def passes_command() -> None:
    """List the passes of the default `fuse` pipeline, in order, with their exactness."""
    from optkit.passes import DEFAULT_PASSES

    for rewrite in DEFAULT_PASSES:
        spec = rewrite.spec
        click.echo(f"{spec.name:<11} {spec.exactness.value:<12} {spec.summary}")
