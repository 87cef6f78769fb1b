"""The `optkit` command line. Library code never prints; this module does.

Exit codes: 0 success, 1 verification found a difference, 2 bad input or usage, 3 internal error.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np
import onnx_ir as ir

from optkit import io
from optkit.contract import Exactness, PassOptions, Tolerance
from optkit.errors import InputError, OptkitError, first_line
from optkit.fusion import FuseResult, fuse
from optkit.inputs import parse_int_range, parse_shape, synthetic_inputs
from optkit.passes import DEFAULT_PASSES
from optkit.runtime import OPTIMIZATION_LEVELS
from optkit.verify import Verdict

INTERNAL_ERROR = 3


def _split(values: tuple[str, ...]) -> list[str]:
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def input_options(purpose: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--shape, --seed and --int-range: how the synthetic inputs for `purpose` are made."""
    options = [
        click.option(
            "--shape",
            "shapes",
            multiple=True,
            metavar="NAME=DxD...",
            help=f"Shape for a dynamic input of the {purpose}, e.g. image=1x3x224x224.",
        ),
        click.option("--seed", default=0, show_default=True, help=f"Seed of the {purpose}."),
        click.option(
            "--int-range",
            default="0:10",
            show_default=True,
            metavar="LOW:HIGH",
            help=f"Range of integer {purpose} (HIGH exclusive), e.g. 0:30522 for token ids.",
        ),
    ]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20,
          "GIB": 2**30}  # fmt: skip


def parse_size(text: str) -> int:
    """'1GB', '500MB', '64MiB' or a byte count."""
    number = text.strip().upper().rstrip("BIKMG ")
    unit = text.strip().upper()[len(number) :].strip()
    try:
        value = float(number) * _UNITS[unit]
    except (KeyError, ValueError):
        raise InputError(f"bad size '{text}': expected e.g. 1GB, 500MB, 64MiB or bytes") from None
    if value < 1:
        raise InputError(f"bad size '{text}': must be at least one byte")
    return int(value)


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
      optkit inspect model.onnx    what is in a model, and what fuse would do to it
      optkit verify a.onnx b.onnx  do two models compute the same thing? (--bisect: where not)
      optkit bench b.onnx --baseline a.onnx   latency and throughput, as a ratio
      optkit activations model.onnx          which activations, where, which decomposed
      optkit swap model.onnx --map Gelu=Gelu:tanh   swap activations, with error bounds
      optkit train / finetune / export / stats       the PyTorch side (needs optkit[torch])

    Every rewrite is checked on ONNX Runtime (graph optimizations off) against the original.
    Exit codes: 0 ok, 1 outputs differ, 2 bad input or usage, 3 internal error.
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="optkit: %(levelname)s: %(message)s",
    )
    # onnx_ir warns about malformed input while optkit is still deciding how to report it (one
    # line, see `main`); its notes about optkit's own rewrites are not the user's concern.
    logging.getLogger("onnx_ir").setLevel(logging.INFO if verbose else logging.ERROR)


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
    default=PassOptions().constant_fold_max_elements,
    show_default=True,
    metavar="ELEMENTS",
    help="Largest tensor constant folding may create.",
)
@click.option(
    "--upgrade-opset",
    type=int,
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
    out = output or default_output(model)
    if out.resolve() == model.resolve():
        raise InputError(f"{out}: refusing to overwrite the input model; choose another -o")
    options = PassOptions(
        freeze_initializer_inputs=freeze_initializer_inputs,
        bn_to_affine=bn_to_affine,
        constant_fold_max_elements=fold_limit,
        all_canonical=all_canonical,
    )
    shape_map = _shapes(shapes)
    result = fuse(
        model,
        passes=_split(passes) or None,
        skip=_split(skip),
        options=options,
        verify_result=not no_verify,
        verify_each=verify_each,
        shapes=shape_map,
        seed=seed,
        int_range=parse_int_range(int_range),
        upgrade_opset=upgrade_opset,
    )
    failed = not result.report.ok
    if not failed or force:
        result.save(str(out), shard_size=parse_size(shard_size) if shard_size else None)
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


def _shapes(values: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    return dict(parse_shape(s) for s in values)


def _tolerances(values: tuple[str, ...]) -> tuple[Tolerance | None, dict[str, Tolerance]]:
    """``RTOL,ATOL`` for every output, or ``OUTPUT=RTOL,ATOL`` for one."""
    default, per_output = None, {}
    for text in values:
        name, _, numbers = text.rpartition("=")
        try:
            rtol, atol = (float(x) for x in numbers.split(","))
        except ValueError:
            raise InputError(f"bad --tolerance '{text}': expected [OUTPUT=]RTOL,ATOL") from None
        if name:
            per_output[name] = Tolerance(rtol, atol)
        else:
            default = Tolerance(rtol, atol)
    return default, per_output


def _load_checked(path: Path) -> ir.Model:
    """A model file, loaded (weights stay on disk) and run through the checker; InputError if not."""
    from optkit.fusion import load_checked

    return load_checked(path, copy=False)


_provider_choice = click.Choice(["cpu", "cuda", "auto"])
_optimization_choice = click.Choice(list(OPTIMIZATION_LEVELS))


@cli.command("verify")
@click.argument("reference", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("candidate", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--data",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Real inputs: .npz (one array per input) or .npy (one-input models); an extra "
    "leading axis stacks samples.",
)
@click.option(
    "--labels",
    type=click.Path(dir_okay=False, path_type=Path),
    help=".npy of class ids, one per row of the classifier output: report accuracy.",
)
@click.option(
    "--samples",
    default=1,
    show_default=True,
    help="Synthetic samples to compare over (without --data).",
)
@input_options("synthetic samples")
@click.option(
    "--exactness",
    type=click.Choice(["bitwise", "reassociate"]),
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
    type=_provider_choice,
    default="cpu",
    show_default=True,
    help="Execution provider for CANDIDATE (and REFERENCE unless --reference-provider).",
)
@click.option(
    "--reference-provider",
    type=_provider_choice,
    help="Run REFERENCE elsewhere, e.g. --provider cuda --reference-provider cpu.",
)
@click.option(
    "--optimization",
    type=_optimization_choice,
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
    is not fp32) unless --tolerance sets them. Exit 0 when equivalent, 1 when not, 2 on bad input.

    \b
    Examples:
      optkit verify model.onnx model.optkit.onnx
      optkit verify model.onnx fused.onnx --bisect --json
      optkit verify model.onnx fused.onnx --data val.npz --labels val_labels.npy
      optkit verify model.onnx model.onnx --provider cuda --reference-provider cpu
    """
    from optkit.bisect import bisect
    from optkit.inputs import load_samples
    from optkit.verify import verify

    model = _load_checked(reference)
    _load_checked(candidate)
    default, per_output = _tolerances(tolerance_texts)
    feeds = load_samples(data, model) if data is not None else None
    label_array = _load_labels(labels) if labels is not None else None
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
            shapes=_shapes(shapes),
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
            inputs = feeds or [
                synthetic_inputs(
                    model, _shapes(shapes), seed=seed + i, int_range=parse_int_range(int_range)
                )
                for i in range(max(1, samples))
            ]
            located = bisect(
                str(reference),
                str(candidate),
                inputs,
                level,
                tolerances=per_output,
                provider=provider,
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
        click.echo(_format_verdict(reference, candidate, verdict))
        if located is not None:
            click.echo(f"  bisect: {located.summary()}")
    sys.exit(0 if verdict.ok else 1)


def _load_labels(path: Path) -> np.ndarray:
    try:
        labels = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable .npy file ({exc})") from None
    if labels.dtype.kind not in "iu":
        raise InputError(f"{path}: labels must be integer class ids, found {labels.dtype.name}")
    return labels


def _format_verdict(reference: Path, candidate: Path, verdict: Verdict) -> str:
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


@cli.command("bench")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--baseline",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Another model, run alternately with MODEL on the same inputs; prints the ratio.",
)
@click.option("--batch", default=1, show_default=True, help="Batch size (the dynamic first dim).")
@click.option("--threads", default=0, show_default=True, help="Intra-op threads (0: ORT's choice).")
@click.option("--provider", type=_provider_choice, default="cpu", show_default=True)
@click.option(
    "--optimization",
    type=_optimization_choice,
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

    _load_checked(model)
    if baseline is not None:
        _load_checked(baseline)
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
            shapes=_shapes(shapes),
        )
    except OptkitError:
        raise
    except Exception as exc:
        raise InputError(f"ONNX Runtime cannot run the model: {first_line(exc)}") from None
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.format_text())


@cli.command("inspect")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--no-dry-run", is_flag=True, help="Do not show what `fuse` would do.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def inspect_command(model: Path, no_dry_run: bool, as_json: bool) -> None:
    """Opsets, inputs and outputs, op histogram, parameters, BatchNorm count, and what `fuse` would
    do (each site it would rewrite, each decline with its reason; nothing is written)."""
    from optkit.inspection import format_inspection, inspect_model

    _load_checked(model)
    info = inspect_model(model, dry_run=not no_dry_run)
    click.echo(json.dumps(info, indent=2, default=str) if as_json else format_inspection(info))


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
        click.echo(f"{spec.name:<11} {spec.exactness.value:<12} {spec.summary}")


def _register_subcommands() -> None:
    from optkit.activations_cli import activations_command, swap_command
    from optkit.preprocess_cli import preprocess_group

    cli.add_command(preprocess_group)
    cli.add_command(swap_command)
    cli.add_command(activations_command)
    from optkit.torch_cli import export_command, finetune_command, stats_command, train_command

    for command in (train_command, finetune_command, export_command, stats_command):
        cli.add_command(command)


_register_subcommands()


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
