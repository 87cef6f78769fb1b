"""The `optkit` command line. Library code never prints; this module does.

Exit codes: 0 success, 1 verification found a difference, 2 bad input or usage, 3 internal error.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import click

from optkit import io
from optkit.contract import PassOptions
from optkit.errors import InputError, OptkitError
from optkit.fusion import FuseResult, fuse
from optkit.inputs import parse_shape
from optkit.passes import DEFAULT_PASSES

INTERNAL_ERROR = 3


def _split(values: tuple[str, ...]) -> list[str]:
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def default_output(path: Path) -> Path:
    """`model.onnx` -> `model.optkit.onnx`, next to the input."""
    stem = path.name[: -len(".onnx")] if path.name.endswith(".onnx") else path.name
    return path.with_name(f"{stem}.optkit.onnx")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="optkit")
@click.option("-v", "--verbose", is_flag=True, help="Log what passes do (to stderr).")
def cli(verbose: bool) -> None:
    """optkit: verified ONNX graph rewrites.

    \b
    Start here:
      optkit demo                  build a small CNN, fuse it, verify it, print the report
      optkit fuse model.onnx       fold BatchNorm and clean up -> model.optkit.onnx
      optkit passes                what each pass does and how exact it is

    Every rewrite is checked on ONNX Runtime (graph optimizations off) against the original.
    Exit codes: 0 ok, 1 outputs differ, 2 bad input or usage, 3 internal error.
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="optkit: %(levelname)s: %(message)s",
    )


@cli.command("fuse")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
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
@click.option(
    "--shape",
    "shapes",
    multiple=True,
    metavar="NAME=DxD...",
    help="Shape for a dynamic input during verification, e.g. image=1x3x224x224.",
)
@click.option("--seed", default=0, show_default=True, help="Seed for the verification inputs.")
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
    default=PassOptions().constant_fold_max_elements,
    show_default=True,
    metavar="ELEMENTS",
    help="Largest tensor constant folding may create.",
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
    freeze_initializer_inputs: bool,
    bn_to_affine: bool,
    fold_limit: int,
    as_json: bool,
    verbose_report: bool,
) -> None:
    """Fold test-time BatchNorm into adjacent layers and clean the graph, then verify.

    \b
    Folds BatchNorm, and Mul / Add / Sub / Div by per-channel constants, into the Conv /
    ConvTranspose / Gemm / MatMul before or after it (computed in float64, rounded once), removes
    Identity, inference Dropout, unused nodes and duplicate initializers, folds constants, sorts the
    graph, then runs the onnx checker and compares the outputs with the original's on seeded inputs
    (exactly, when only bitwise passes changed the model). Each BatchNorm left in place is listed with the
    reason. The input file is never modified; the output is written atomically, and not at all when
    verification fails (unless --force).

    \b
    Examples:
      optkit fuse resnet.onnx
      optkit fuse resnet.onnx -o resnet.fused.onnx --shape input=1x3x224x224 --json
      optkit fuse model.onnx --skip constants --verify-each
    """
    out = output or default_output(model)
    if out.resolve() == model.resolve():
        raise InputError(f"{out}: refusing to overwrite the input model; choose another -o")
    options = PassOptions(
        freeze_initializer_inputs=freeze_initializer_inputs,
        bn_to_affine=bn_to_affine,
        constant_fold_max_elements=fold_limit,
    )
    shape_map = dict(parse_shape(s) for s in shapes)
    result = fuse(
        model,
        passes=_split(passes) or None,
        skip=_split(skip),
        options=options,
        verify_result=not no_verify,
        verify_each=verify_each,
        shapes=shape_map,
        seed=seed,
    )
    failed = not result.report.ok
    if not failed or force:
        result.save(str(out))
    _print_report(result, as_json, verbose_report)
    if failed:
        click.echo(
            "optkit: outputs differ beyond tolerance; "
            + ("wrote anyway (--force)" if force else "nothing written"),
            err=True,
        )
        sys.exit(1)


def _print_report(result: FuseResult, as_json: bool, verbose: bool) -> None:
    if as_json:
        click.echo(json.dumps(result.report.to_dict(), indent=2, default=str))
    else:
        click.echo(result.report.format_text(verbose=verbose))


@cli.command("demo")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for demo.onnx and demo.optkit.onnx [default: a temporary folder].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def demo_command(out_dir: Path | None, as_json: bool) -> None:
    """Build the bundled demo CNN (Conv/BN/Relu, depthwise, Gemm+BN), fuse it, verify it."""
    import onnx

    from optkit.demo import demo_model

    with tempfile.TemporaryDirectory(prefix="optkit-demo-") as tmp:
        folder = out_dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        source = folder / "demo.onnx"
        onnx.save(demo_model(), os.fspath(source))
        result = fuse(source)
        result.save(str(default_output(source)))
        _print_report(result, as_json, verbose=False)
        if not as_json and out_dir is None:
            click.echo("  (written to a temporary folder; use --out DIR to keep the files)")
    if not result.report.ok:
        sys.exit(1)


@cli.command("passes")
def passes_command() -> None:
    """List the passes of the default `fuse` pipeline, in order, with their exactness."""
    for rewrite in DEFAULT_PASSES:
        spec = rewrite.spec
        click.echo(f"{spec.name:<10} {spec.exactness.value:<12} {spec.summary}")


def main() -> None:
    """Entry point: one clear line and a non-zero exit code for every failure, never a traceback."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("optkit: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except OptkitError as exc:
        click.echo(f"optkit: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:
        if os.environ.get("OPTKIT_DEBUG"):
            raise
        click.echo(
            f"optkit: internal error: {type(exc).__name__}: {exc} (set OPTKIT_DEBUG=1 for a "
            "traceback, and please report it)",
            err=True,
        )
        sys.exit(INTERNAL_ERROR)
    sys.exit(0)


__all__ = ["cli", "io", "main"]
