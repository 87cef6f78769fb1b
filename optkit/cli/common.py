"""Shared pieces of the command line: options, parsers of option values, the output guard, and
loading a user's file with a one-line error."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from optkit.check.runtime import OptimizationLevel, Provider
from optkit.core.contract import Tolerance
from optkit.errors import InputError
from optkit.io.outputs import check_output, model_reads

if TYPE_CHECKING:
    import onnx_ir as ir

# Only click and optkit's light modules are imported at the top of the command line's modules;
# numpy, onnx, onnx_ir and onnxruntime inside the functions that use them (tests/test_startup.py).


def split_names(values: tuple[str, ...], option: str = "--passes") -> list[str]:
    """'a,b' options as names, lower-cased (pass names take any case); an option given with no
    name in it is an InputError."""
    names = []
    for value in values:
        found = [name.strip().lower() for name in value.split(",") if name.strip()]
        if not found:
            raise InputError(f"{option} {value!r}: names no pass (see optkit passes)")
        names += found
    return names


def shape_option(purpose: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--shape NAME=DxD... (repeatable), passed as `shapes`: the dynamic dims of `purpose`."""
    return click.option(
        "--shape",
        "shapes",
        multiple=True,
        metavar="NAME=DxD...",
        help=f"Shape for a dynamic input of the {purpose}, e.g. image=1x3x224x224.",
    )


def input_options(purpose: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--shape, --seed and --int-range: how the synthetic inputs for `purpose` are made."""
    options = [
        shape_option(purpose),
        click.option(
            "--seed",
            type=NON_NEGATIVE,
            default=0,
            show_default=True,
            help=f"Seed of the {purpose}.",
        ),
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
    if not math.isfinite(value) or value > 2**62:
        raise InputError(f"bad size '{text}': not a finite number of bytes")
    if value < 1:
        raise InputError(f"bad size '{text}': must be at least one byte")
    return int(value)


def default_output(path: Path) -> Path:
    """`model.onnx` -> `model.optkit.onnx`, next to the input."""
    stem = path.name[: -len(".onnx")] if path.name.endswith(".onnx") else path.name
    return path.with_name(f"{stem}.optkit.onnx")


def guard_output(
    output: Path, source: Path | None, *reads: Path, model: bool = True, what: str = "output"
) -> Path:
    """The output contract (`optkit.io.outputs.check_output`) for a command reading `source` (a model
    when `model`, whose external data files count as read too) and `reads`; before any work."""

    def listed() -> list[Path]:
        data = model_reads(source)[1:] if model and source is not None else []
        return [*data, *reads]

    check_output(output, source=source, reads=listed, what=what, model=model)
    return output


def shape_map(values: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """``--shape NAME=DxD...`` options by input name; one input given twice is an InputError."""
    from optkit.check.inputs import parse_shape

    shapes: dict[str, tuple[int, ...]] = {}
    for text in values:
        name, dims = parse_shape(text)
        if name in shapes:
            raise InputError(f"--shape {text}: input '{name}' is given a shape twice")
        shapes[name] = tuple(dims)
    return shapes


def tolerances(values: tuple[str, ...]) -> tuple[Tolerance | None, dict[str, Tolerance]]:
    """``RTOL,ATOL`` for every output, or ``OUTPUT=RTOL,ATOL`` for one."""
    default, per_output = None, {}
    for text in values:
        name, _, numbers = text.rpartition("=")
        try:
            rtol, atol = (float(x) for x in numbers.split(","))
        except ValueError:
            raise InputError(f"bad --tolerance '{text}': expected [OUTPUT=]RTOL,ATOL") from None
        if not (math.isfinite(rtol) and math.isfinite(atol) and rtol >= 0 and atol >= 0):
            raise InputError(f"bad --tolerance '{text}': RTOL and ATOL must be finite and >= 0")
        if name:
            per_output[name] = Tolerance(rtol, atol)
        else:
            default = Tolerance(rtol, atol)
    return default, per_output


def load_model(path: Path) -> ir.Model:
    """A model file, loaded (weights stay on disk) and run through the checker; InputError if not."""
    from optkit.io.validation import load_checked

    return load_checked(path, copy=False)


def choice(values: Iterable[str]) -> click.Choice:
    """A choice in any case (`--layout nhwc`), passed on as the listed spelling."""
    return click.Choice(list(values), case_sensitive=False)


class FiniteRange(click.FloatRange):
    """A FloatRange that also refuses nan and inf (nan passes FloatRange's comparisons)."""

    name = "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


NON_NEGATIVE_NUMBER = FiniteRange(min=0)  # error bounds, accuracy drops
POSITIVE = FiniteRange(min=0, min_open=True)  # learning rates, stds
FRACTION = FiniteRange(min=0, max=1, min_open=True, max_open=True)  # shares of a data set


class NonEmptyPath(click.Path):
    """A click.Path that refuses '' (click would take it as '.', the current folder) and, for a
    file, a name ending in '/' (click would drop the slash and write a file under that name)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail("an empty path; give a name", param, ctx)
        if isinstance(value, str) and not self.dir_okay and value.endswith(("/", os.sep)):
            self.fail(f"{value!r} ends with '/': a folder, not a file name", param, ctx)
        return super().convert(value, param, ctx)


COUNT = click.IntRange(min=1)  # runs, samples, batches: at least one
NON_NEGATIVE = click.IntRange(min=0)  # seeds, limits, warm-up runs
SEED = click.IntRange(0, 2**32 - 1)  # what numpy and torch both take
provider_choice = choice([p.value for p in Provider])
optimization_choice = choice([level.value for level in OptimizationLevel])
