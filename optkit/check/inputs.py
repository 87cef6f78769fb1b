"""Seeded synthetic inputs generated from a model's declared input types.

Dynamic dimensions take the value given in `shapes` (``{"x": (1, 3, 224, 224)}``, from
``--shape x=1x3x224x224``), else a default: 1 for the leading (batch) dimension and 16 for any other.
Floats are standard normal, integers uniform in ``int_range``, bools fair coin flips.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx_ir as ir

from optkit.errors import InputError


class UnsynthesizableInput(InputError):
    """The model's own signature does not say enough to make inputs (the user's options are fine)."""


DEFAULT_BATCH = 1
DEFAULT_DIM = 16


def parse_int_range(text: str) -> tuple[int, int]:
    """Parse ``LOW:HIGH`` (HIGH exclusive), e.g. ``0:30522`` for token ids."""
    low, sep, high = text.partition(":")
    try:
        bounds = (int(low), int(high))
        if not sep or bounds[0] >= bounds[1]:
            raise ValueError
    except ValueError:
        raise InputError(f"bad --int-range '{text}': expected LOW:HIGH with LOW < HIGH") from None
    return bounds


def parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """Parse ``name=1x3x224x224`` into ``("name", (1, 3, 224, 224))``."""
    name, sep, dims = text.rpartition("=")
    try:
        if not sep or not name:
            raise ValueError
        shape = tuple(int(d) for d in dims.lower().split("x")) if dims else ()
        if any(d < 0 for d in shape):
            raise ValueError
    except ValueError:
        raise InputError(
            f"bad --shape '{text}': expected NAME=DxDxD, e.g. input=1x3x224x224"
        ) from None
    return name, shape


MAX_SYNTHETIC_ELEMENTS = 1 << 28  # 1 GiB of float32 per input: beyond it, ask for a --shape


def runtime_inputs(model: ir.Model) -> list[ir.Value]:
    """Graph inputs a caller must feed (initializers listed as inputs have defaults)."""
    return [v for v in model.graph.inputs if not v.is_initializer()]


def input_shape(
    value: ir.Value, override: Sequence[int] | None, sizes: Mapping[str, int] | None = None
) -> tuple[int, ...]:
    """The shape to synthesize `value` at: `override` (a `--shape`), else its declared dims, a
    dynamic one taking the size `sizes` gives its name (see `named_sizes`), else the default (1 for
    the leading dim, 16 for the others)."""
    if override is not None:
        return tuple(override)
    if value.shape is None:
        raise UnsynthesizableInput(
            f"input '{value.name}' has no declared shape; give one with --shape {value.name}=..."
        )
    dims = []
    for i, dim in enumerate(value.shape):
        if isinstance(dim, int):
            dims.append(dim)
            continue
        name = dim.value if isinstance(dim, ir.SymbolicDim) else None
        default = DEFAULT_BATCH if i == 0 else DEFAULT_DIM
        dims.append((sizes or {}).get(name or "", default) if name else default)
    return tuple(dims)


def named_sizes(model: ir.Model, shapes: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """The sizes `shapes` (``--shape``) give to named dynamic dims, so that an input sharing a name
    (`seq` of `ids` and of `mask`) gets the same size. InputError when two `--shape`s give one name
    two sizes."""
    sizes: dict[str, int] = {}
    given: dict[str, str] = {}
    for value in runtime_inputs(model):
        name = value.name or ""
        if name not in shapes or value.shape is None:
            continue
        for dim, size in zip(value.shape, shapes[name], strict=False):
            symbol = dim.value if isinstance(dim, ir.SymbolicDim) else None
            if not symbol:
                continue
            if symbol in sizes and sizes[symbol] != size:
                raise InputError(
                    f"--shape {given[symbol]} and --shape {name}={format_dims(shapes[name])} give "
                    f"the dim '{symbol}' two sizes ({sizes[symbol]} and {size})"
                )
            sizes[symbol] = size
            given.setdefault(symbol, f"{name}={format_dims(shapes[name])}")
    return sizes


SECOND_BATCH = 2
SECOND_DIMS = (9, 7, 5, 11, 13)  # distinct, odd, not the default: H and W never alike


def second_sizes(
    model: ir.Model, shapes: Mapping[str, Sequence[int]]
) -> dict[str, tuple[int, ...]] | None:
    """Shapes for a second verification run in which every dynamic dim that `shapes` leaves to a
    default takes another value: the leading dim 2, the others 9, 7, 5, ... (one value per symbolic
    name, so dims that share a name stay equal). None when no dim is left to a default: the first
    run already used the only sizes that were asked for. A rewrite that read a size from a stale
    declaration, or that confused two dims of the default 16 x 16, shows up here."""
    result: dict[str, tuple[int, ...]] = {}
    by_symbol: dict[str, int] = named_sizes(model, shapes)  # sizes a --shape gave stay
    others = itertools.cycle(SECOND_DIMS)  # more dynamic dims than sizes: the sizes repeat
    changed = False
    for value in runtime_inputs(model):
        name = value.name or ""
        if name in shapes:
            result[name] = tuple(shapes[name])
            continue
        if value.shape is None:
            return None  # no shape to vary: synthetic inputs cannot be made anyway
        dims = []
        for axis, dim in enumerate(value.shape):
            if isinstance(dim, int):
                dims.append(dim)
                continue
            symbol = dim.value if isinstance(dim, ir.SymbolicDim) else None
            if symbol and symbol in by_symbol:
                dims.append(by_symbol[symbol])
                continue
            size = SECOND_BATCH if axis == 0 else next(others)
            if symbol:
                by_symbol[symbol] = size
            dims.append(size)
            changed = True
        result[name] = tuple(dims)
    return result if changed else None


def with_special_values(feeds: Mapping[str, np.ndarray], seed: int) -> dict[str, np.ndarray] | None:
    """`feeds` with NaN, +inf, -inf, -0.0 and the dtype's largest value at seeded places of every
    float input (None when no input is float): what a bitwise rewrite must also keep."""
    rng = np.random.default_rng(seed)
    result, changed = dict(feeds), False
    for name, array in feeds.items():
        if array.dtype.kind != "f" or array.size == 0:
            continue
        special = array.copy()
        flat = special.reshape(-1)
        largest = ml_dtypes.finfo(array.dtype).max
        values = (np.nan, np.inf, -np.inf, -0.0, largest, -largest)
        places = rng.permutation(flat.size)[: len(values)]  # distinct: none overwrites another
        for place, value in zip(places, values, strict=False):
            flat[place] = value
        result[name], changed = special, True
    return result if changed else None


def check_shapes(model: ir.Model, shapes: Mapping[str, Sequence[int]]) -> None:
    """`--shape` values must name runtime inputs, match their declared rank, and agree with every
    static dimension the model declares (a `--shape` can fill dynamic dims, never change fixed ones)."""
    inputs = {
        v.name or "": v for v in runtime_inputs(model)
    }  # inputs of a checked model have names
    unknown = sorted(set(shapes) - set(inputs))
    if unknown:
        raise InputError(
            f"--shape names unknown input(s) {', '.join(unknown)}; inputs are {', '.join(sorted(inputs))}"
        )
    for name, dims in shapes.items():
        declared = inputs[name].shape
        if declared is not None and len(dims) != len(declared):
            raise InputError(
                f"--shape for input '{name}' has rank {len(dims)}, the model declares rank {len(declared)}"
            )
        if declared is None:
            continue
        for axis, (given, fixed) in enumerate(zip(dims, declared, strict=True)):
            if isinstance(fixed, int) and given != fixed:
                raise InputError(
                    f"--shape {name}={format_dims(dims)} contradicts the model: input '{name}' "
                    f"declares dim {axis} = {fixed} (static), not {given}; declared shape "
                    f"{format_dims(declared)}"
                )


def format_dims(dims: Iterable[int | str | ir.SymbolicDim | None]) -> str:
    """``1x3x224x224``; a dynamic dim by its name (``Nx3x224x224``) or ``?``."""
    parts = []
    for dim in dims:
        if isinstance(dim, int):
            parts.append(str(dim))
        else:
            name = dim.value if isinstance(dim, ir.SymbolicDim) else dim
            parts.append(str(name) if name else "?")
    return "x".join(parts) if parts else "(scalar)"


def check_nonempty_shapes(shapes: Mapping[str, Sequence[int]]) -> None:
    """A `--shape` with a zero dimension makes an input with no elements: nothing to compare."""
    for name, dims in shapes.items():
        if math.prod(dims) == 0:
            raise InputError(
                f"--shape {name}={format_dims(dims)} makes input '{name}' empty (no elements): "
                "nothing to compare; give every dimension at least 1"
            )


def empty_inputs(feeds: Mapping[str, np.ndarray]) -> list[str]:
    """Names of the inputs in `feeds` that hold no elements, each with its shape."""
    return [
        f"'{name}' {format_dims(np.shape(array))}"
        for name, array in feeds.items()
        if np.size(array) == 0
    ]


def synthetic_inputs(
    model: ir.Model,
    shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    seed: int = 0,
    int_range: tuple[int, int] = (0, 10),
) -> dict[str, np.ndarray]:
    """One seeded sample per runtime input of `model`.

    Raises `UnsynthesizableInput` (an InputError) when an input has no declared shape and none was
    given, or is not a numeric/bool/string tensor.
    """
    shapes = dict(shapes or {})
    check_shapes(model, shapes)
    sizes = named_sizes(model, shapes)
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for value in runtime_inputs(model):
        assert value.name is not None
        if not isinstance(value.type, ir.TensorType):
            raise UnsynthesizableInput(
                f"input '{value.name}' is not a tensor ({value.type}); cannot synthesize it"
            )
        dtype = value.type.dtype
        shape = input_shape(value, shapes.get(value.name), sizes)
        if any(d < 0 for d in shape):
            raise UnsynthesizableInput(f"input '{value.name}' has a negative dimension {shape}")
        if math.prod(shape) > MAX_SYNTHETIC_ELEMENTS:
            dynamic = value.shape is None or not all(isinstance(d, int) for d in value.shape)
            hint = (
                f"give a smaller --shape {value.name}=..."
                if dynamic
                else "its dimensions are all static"
            )
            raise UnsynthesizableInput(
                f"input '{value.name}' of shape {list(shape)} has {math.prod(shape):,} elements, "
                f"over the {MAX_SYNTHETIC_ELEMENTS:,} optkit synthesizes; {hint}"
            )
        feeds[value.name] = random_array(rng, dtype, shape, int_range)
    return feeds


def random_array(
    rng: np.random.Generator, dtype: ir.DataType, shape: tuple[int, ...], int_range: tuple[int, int]
) -> np.ndarray:
    try:
        np_dtype = dtype.numpy()
    except TypeError:  # UNDEFINED and types numpy has no counterpart for
        raise UnsynthesizableInput(f"cannot synthesize inputs of type {dtype.name}") from None
    if dtype == ir.DataType.BOOL:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if dtype == ir.DataType.STRING:
        return rng.integers(0, 100, size=shape).astype(str).astype(object)
    if dtype.is_floating_point():
        return rng.standard_normal(size=shape).astype(np_dtype)
    if dtype.is_integer():
        low, high = int_range
        info: np.iinfo | ml_dtypes.iinfo
        try:
            info = np.iinfo(np_dtype)
        except ValueError:  # 4-bit and other ml_dtypes integers
            try:
                info = ml_dtypes.iinfo(np_dtype)
            except (ValueError, TypeError):
                raise UnsynthesizableInput(
                    f"cannot synthesize inputs of type {dtype.name}"
                ) from None
        return rng.integers(max(low, info.min), min(high, int(info.max) + 1), size=shape).astype(
            np_dtype
        )
    raise UnsynthesizableInput(f"cannot synthesize inputs of type {dtype.name}")


def load_samples(path: str | os.PathLike, model: ir.Model) -> list[dict[str, np.ndarray]]:
    """Real inputs from a file, validated against the model's signature, as one feed dict per sample.

    `.npz`: one array per input, keyed by input name. `.npy`: the one input of a single-input model.
    An array of the input's rank is one sample; one more leading axis stacks several samples.
    Dtypes must match exactly; static dims must match; every runtime input must be present.
    """
    file = Path(path)
    if not file.is_file():
        raise InputError(f"{file}: no such file")
    inputs = {
        v.name or "": v for v in runtime_inputs(model)
    }  # inputs of a checked model have names
    try:
        if file.suffix == ".npz":
            with np.load(file, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
        elif file.suffix == ".npy":
            if len(inputs) != 1:
                raise InputError(
                    f"{file}: a .npy file feeds a one-input model; this one has {len(inputs)} "
                    f"inputs ({', '.join(inputs)}): use .npz with one array per input"
                )
            arrays = {next(iter(inputs)): np.load(file, allow_pickle=False)}
        else:
            raise InputError(f"{file}: expected a .npz or .npy file")
    except (OSError, ValueError) as exc:
        raise InputError(f"{file}: not a readable numpy file ({exc})") from None
    missing = sorted(set(inputs) - set(arrays))
    if missing:
        raise InputError(f"{file}: no array for input(s) {', '.join(missing)}")
    extra = sorted(set(arrays) - set(inputs))
    if extra:
        raise InputError(
            f"{file}: arrays {', '.join(extra)} match no model input ({', '.join(inputs)})"
        )
    stacks = {name: _as_stack(file, inputs[name], array) for name, array in arrays.items()}
    counts = {len(stack) for stack in stacks.values()}
    if len(counts) != 1:
        raise InputError(f"{file}: inputs have different sample counts {sorted(counts)}")
    return [{name: stack[i] for name, stack in stacks.items()} for i in range(counts.pop())]


def _as_stack(file: Path, value: ir.Value, array: np.ndarray) -> np.ndarray:
    """`array` as a stack of samples for `value`, or a clear error."""
    assert isinstance(value.type, ir.TensorType) and value.shape is not None
    want = value.type.dtype.numpy()
    if array.dtype != want:
        raise InputError(
            f"{file}: input '{value.name}' expects {np.dtype(want).name}, the file has {array.dtype.name}"
        )
    rank = len(value.shape)
    if array.ndim == rank:
        array = array[None]
    if array.ndim != rank + 1:
        raise InputError(
            f"{file}: input '{value.name}' has rank {rank}; the array has shape {array.shape}"
        )
    for axis, dim in enumerate(value.shape):
        if isinstance(dim, int) and array.shape[axis + 1] != dim:
            raise InputError(
                f"{file}: input '{value.name}' needs dim {axis} = {dim}; a sample has shape "
                f"{array.shape[1:]}"
            )
    return array
