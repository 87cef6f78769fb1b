"""`optkit preprocess`: fit a preprocessing spec from data, embed it into a model, fold it away."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from optkit.cli.common import (
    COUNT,
    NON_NEGATIVE,
    NonEmptyPath,
    choice,
    guard_output,
    shape_map,
    shape_option,
)
from optkit.core.contract import Exactness
from optkit.errors import InputError
from optkit.io.outputs import write_text

if TYPE_CHECKING:
    from optkit.preprocessing import fit
else:

    def fit(*args, **kwargs):
        """`optkit.preprocessing.fit`, imported when `fit` runs (numpy), not with `--help`; a name
        of this module, which tests replace."""
        from optkit.preprocessing import fit as fit_spec

        return fit_spec(*args, **kwargs)


# The choices of optkit.preprocessing, spelled out so that this module loads without numpy
# (tests/test_startup.py checks they are the library's).
DTYPES = ("uint8", "float16", "float32")
LAYOUTS = ("NCHW", "NHWC", "flat")
MODES = ("mean-image", "per-channel-mean", "per-channel-mean-std", "pca", "whiten")


class DefaultToEmbed(click.Group):
    """`optkit preprocess MODEL ...` means `optkit preprocess embed MODEL ...`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["embed", *args]
        return super().parse_args(ctx, args)


def _floats(text: str | None) -> float | list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise InputError(f"bad number list '{text}': expected e.g. 0.485,0.456,0.406") from None
    if not all(math.isfinite(v) for v in values):
        raise InputError(f"bad number list '{text}': every mean and std must be finite")
    return values[0] if len(values) == 1 else values


def _order(text: str | None) -> list[int] | None:
    """'bgr' (a model trained on RGB fed BGR images), 'rgb' (nothing to do) or '2,1,0'."""
    if text is None or text.lower() == "rgb":
        return None
    if text.lower() == "bgr":
        return [2, 1, 0]
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise InputError(f"bad --channel-order '{text}': expected bgr, rgb or e.g. 2,1,0") from None


def _plumbing_options(command: Any) -> Any:
    for option in reversed(
        [
            click.option(
                "--dtype",
                type=choice(DTYPES),
                default="float32",
                show_default=True,
                help="Element type of the raw input.",
            ),
            click.option(
                "--layout",
                type=choice(LAYOUTS),
                default="NCHW",
                show_default=True,
                help="Layout of the raw input (flat: (N, D) vectors).",
            ),
            click.option(
                "--channel-order",
                metavar="bgr|rgb|2,1,0",
                help="Model channel c reads raw channel ORDER[c]; bgr swaps three channels.",
            ),
            click.option(
                "--scale",
                type=float,
                default=1.0,
                show_default=True,
                help="Multiply first, e.g. 0.00392156862745098 (1/255).",
            ),
        ]
    ):
        command = option(command)
    return command


@click.group("preprocess", cls=DefaultToEmbed)
def preprocess_group() -> None:
    """Move input preprocessing into the model, and fold it into the first layer.

    \b
    Examples:
      optkit preprocess fit --data train.npy --layout NHWC --dtype uint8 --scale 0.00392156862745098 \\
          --mode per-channel-mean-std -o spec.json
      optkit preprocess model.onnx --spec spec.json -o model.raw.onnx
      optkit preprocess model.onnx --dtype uint8 --layout NHWC --channel-order bgr \\
          --scale 0.00392156862745098 --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225
    """


@preprocess_group.command("fit")
@click.option(
    "--data",
    type=NonEmptyPath(dir_okay=False, path_type=Path),
    required=True,
    help="Training data: .npy (memory-mapped, streamed) or .npz, samples on axis 0.",
)
@click.option(
    "--mode",
    type=choice(MODES),
    required=True,
    help="What to fit: the lecture's three variants, or PCA / whitening of flat data.",
)
@_plumbing_options
@click.option("--components", type=COUNT, help="PCA / whitening: keep this many directions.")
@click.option(
    "-o",
    "--output",
    type=NonEmptyPath(dir_okay=False, path_type=Path),
    help="Write the spec here (JSON); it is printed either way.",
)
def fit_command(
    data: Path,
    mode: str,
    dtype: str,
    layout: str,
    channel_order: str | None,
    scale: float,
    components: int | None,
    output: Path | None,
) -> None:
    """Fit a preprocessing spec to training data (numpy only; streamed in chunks)."""
    from optkit.preprocessing import PreprocessSpec, batches

    if output is not None:
        guard_output(output, data, model=False)
    base = PreprocessSpec(dtype, layout, _order(channel_order), scale)
    spec = fit(batches(data), mode, base, components=components)
    if output is not None:
        write_text(output, spec.to_json())
    click.echo(spec.to_json())


@preprocess_group.command("embed")
@click.argument("model", type=NonEmptyPath(dir_okay=False, path_type=Path))
@click.option(
    "--spec",
    "spec_path",
    type=NonEmptyPath(dir_okay=False, path_type=Path),
    help="A spec from `optkit preprocess fit` (or written by hand).",
)
@_plumbing_options
@click.option("--mean", help="Scalar or per-channel mean (after --scale), e.g. 0.485,0.456,0.406.")
@click.option("--std", help="Scalar or per-channel std, e.g. 0.229,0.224,0.225.")
@click.option("--input", "input_name", help="Which input to preprocess (default: the only one).")
@click.option(
    "-o",
    "--output",
    type=NonEmptyPath(dir_okay=False, path_type=Path),
    help="Where to write [default: MODEL with .raw.onnx]. Never the input.",
)
@click.option("--no-fold", is_flag=True, help="Keep the preprocessing as nodes (no folding).")
@shape_option("new (raw-input) model's verification samples")
@click.option(
    "--seed",
    type=NON_NEGATIVE,
    default=0,
    show_default=True,
    help="Seed of the verification inputs.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def embed_command(
    model: Path,
    spec_path: Path | None,
    dtype: str,
    layout: str,
    channel_order: str | None,
    scale: float,
    mean: str | None,
    std: str | None,
    input_name: str | None,
    output: Path | None,
    no_fold: bool,
    shapes: tuple[str, ...],
    seed: int,
    as_json: bool,
) -> None:
    """Make MODEL take the raw tensor: embed the preprocessing, fold what is exact, verify.

    Verification feeds raw inputs to the new model and numpy-preprocessed ones to MODEL; the
    embedded model must match bit for bit, the folded one within the fp32 tolerance.
    """
    from optkit import io
    from optkit.check.inputs import runtime_inputs
    from optkit.embedding import embed, verify_preprocessing
    from optkit.fusion import fuse
    from optkit.io.validation import check_input
    from optkit.preprocessing import PreprocessSpec

    out = guard_output(
        output or model.with_name(model.name.removesuffix(".onnx") + ".raw.onnx"),
        model,
        *([spec_path] if spec_path is not None else []),
    )
    if spec_path is not None:
        spec = PreprocessSpec.load(spec_path)
    else:
        spec = PreprocessSpec(
            dtype, layout, _order(channel_order), scale, _floats(mean), _floats(std)
        )
    original = io.load(model, copy=False)
    check_input(model, original, str(model))
    embedded = embed(original, spec, input_name)
    result = embedded
    report = None
    if not no_fold:
        fused = fuse(embedded, verify_result=False)
        result, report = fused.model, fused.report
    target = input_name or next(v.name for v in runtime_inputs(original))
    verdict = verify_preprocessing(
        original,
        result,
        spec,
        target or "",
        seed=seed,
        shapes=shape_map(shapes),
        exactness=Exactness.BITWISE if no_fold else Exactness.REASSOCIATE,
    )
    if verdict.ok:
        io.save(result, out)
    ops = [n.op_type for n in result.graph]
    summary = {
        "output": str(out) if verdict.ok else None,
        "spec": json.loads(spec.to_json()),
        "first_ops": ops[:6],
        "folded": None if report is None else dict(report.pipeline.hits()),
        "verification": verdict.to_dict(),
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
    else:
        click.echo(f"{model} -> {out if verdict.ok else '(nothing written)'}")
        click.echo(f"  first ops: {' -> '.join(ops[:6])}")
        if report is not None:
            hits = report.pipeline.hits()
            click.echo(
                "  folded: " + (", ".join(f"{r} x{n}" for r, n in hits.items()) or "nothing")
            )
        click.echo(
            f"  verification (raw -> new model vs numpy preprocessing -> original): "
            f"{verdict.summary()}"
        )
    sys.exit(0 if verdict.ok else 1)
