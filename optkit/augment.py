"""`optkit.tta`: test-time augmentation as one graph.

The model's image input x (N, C, H, W; or the raw layout of its embedded preprocessing) is turned
into K augmented copies, stacked along the batch axis and run through the model ONCE, as a batch of
K N; each output is split back into K parts and combined like an ensemble (`optkit.combine`):

    T(x) = combine(M(t_1(x)), ..., M(t_K(x)))

A copy applies, in this order: a crop, a scale, a vertical flip, a horizontal flip, a shift; the
copies are every combination of the chosen options (the identity of each included):

    crops N     crops of the model's input size from a larger input (`input_size`): 1 the centre,
                4 the corners, 5 the corners and the centre
    scales s    Resize (linear, half-pixel) to round(s H) x round(s W), then the centre H x W:
                cropped when larger, padded when smaller (scale 1 is always included)
    vflip       reverse H;  hflip: reverse W
    shift p     translated by p pixels: right, left, down, up (directions 4), plus the diagonals
                (directions 8); what comes in at the border is 0 (pad "zero") or the edge pixel
                (pad "edge")

`apply` is the numpy reference of each copy; verification runs the original model once per copy on
`apply(copy, x)` and combines in numpy, against the one-pass graph on ONNX Runtime.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir

from optkit import combine as combining
from optkit import io
from optkit.check.compare import Verdict
from optkit.check.inputs import format_dims, runtime_inputs
from optkit.check.verify import verify_rewrite
from optkit.core.contract import Decline, Exactness
from optkit.core.graph import Namer, iter_graphs, node_count, opset_version
from optkit.errors import InputError, VerificationError
from optkit.io.outputs import model_reads
from optkit.io.validation import check_built, load_checked, upgraded
from optkit.preprocessing import METADATA_KEY, PreprocessSpec

TTA_KEY = "optkit.tta"
PADS = ("zero", "edge")
CROPS = (0, 1, 4, 5)
MAX_SCALE = 16.0  # a larger zoom makes (in the graph and in numpy) copies of 256x the pixels

Step = tuple  # ("crop", top, left), ("scale", s), ("vflip",), ("hflip",), ("shift", dy, dx)


@dataclass(frozen=True)
class Copy:
    """One augmented copy: its steps, in the order they apply."""

    steps: tuple[Step, ...]

    @property
    def label(self) -> str:
        parts = []
        for step in self.steps:
            if step[0] == "crop":
                parts.append(f"crop at ({step[1]}, {step[2]})")
            elif step[0] == "scale":
                parts.append(f"scale {step[1]:g}")
            elif step[0] == "shift":
                parts.append(f"shift ({step[1]:+d}, {step[2]:+d})")
            else:
                parts.append(step[0])
        return ", ".join(parts) or "identity"


@dataclass(frozen=True)
class Augmentations:
    """Which copies test-time augmentation makes (see the module docstring)."""

    hflip: bool = False
    vflip: bool = False
    shift: int = 0
    directions: int = 4
    pad: str = "zero"
    crops: int = 0
    input_size: tuple[int, int] | None = None  # the larger input the crops are taken from
    scales: tuple[float, ...] = ()

    def check(self) -> None:
        if self.pad not in PADS:
            raise InputError(f"--pad {self.pad}: choose {', '.join(PADS)}")
        if self.directions not in (4, 8):
            raise InputError(f"--directions {self.directions}: choose 4 or 8")
        if self.shift < 0:
            raise InputError(f"--shift {self.shift}: must be >= 0")
        if self.crops not in CROPS:
            raise InputError(f"--crops {self.crops}: choose 1 (centre), 4 (corners) or 5")
        if self.crops and self.input_size is None:
            raise InputError(
                f"--crops {self.crops} needs --input-size HxW: the larger input to crop from"
            )
        if self.input_size is not None and not self.crops:
            raise InputError("--input-size is the size crops are taken from; give --crops too")
        if self.input_size is not None and min(self.input_size) < 1:
            raise InputError(f"--input-size {format_dims(self.input_size)}: dims must be >= 1")
        for scale in self.scales:
            if not (np.isfinite(scale) and scale > 0):
                raise InputError(f"--scales: {scale} is not a positive number")
            if scale > MAX_SCALE:
                raise InputError(
                    f"--scales: {scale:g} is above {MAX_SCALE:g} (the zoomed copy is only cropped "
                    "back after it is made, at that size)"
                )
        if not (self.hflip or self.vflip or self.shift or self.crops or self.scales):
            raise InputError(
                "no augmentation chosen: give --hflip, --vflip, --shift, --crops or --scales"
            )

    def copies(self, size: tuple[int, int] | None) -> list[Copy]:
        """Every copy, for a model input of spatial `size` (H, W; None where dynamic)."""
        crops: list[Step | None] = [None]
        if self.crops:
            assert self.input_size is not None and size is not None
            (big_h, big_w), (h, w) = self.input_size, size
            corners = [
                ("crop", 0, 0),
                ("crop", 0, big_w - w),
                ("crop", big_h - h, 0),
                ("crop", big_h - h, big_w - w),
            ]
            centre = ("crop", (big_h - h) // 2, (big_w - w) // 2)
            crops = list({1: [centre], 4: corners, 5: [*corners, centre]}[self.crops])
        scales: list[Step | None] = [None]
        scales += [("scale", float(s)) for s in dict.fromkeys(self.scales) if s != 1.0]
        vflips: list[Step | None] = [None, ("vflip",)] if self.vflip else [None]
        hflips: list[Step | None] = [None, ("hflip",)] if self.hflip else [None]
        shifts: list[Step | None] = [None]
        if self.shift:
            p = self.shift
            moves = [(0, p), (0, -p), (p, 0), (-p, 0)]
            if self.directions == 8:
                moves += [(p, p), (p, -p), (-p, p), (-p, -p)]
            shifts += [("shift", dy, dx) for dy, dx in moves]
        return [
            Copy(tuple(step for step in combo if step is not None))
            for combo in itertools.product(crops, scales, vflips, hflips, shifts)
        ]


# --- numpy reference -----------------------------------------------------------------------------


def apply(
    copy: Copy, x: np.ndarray, axes: tuple[int, int], pad: str, size: tuple[int, int]
) -> np.ndarray:
    """The copy of `x` in numpy; `axes` are its (H, W) axes and `size` the model's (H, W)."""
    ay, ax = axes
    mode = "constant" if pad == "zero" else "edge"
    for step in copy.steps:
        if step[0] == "crop":
            index = [slice(None)] * x.ndim
            index[ay] = slice(step[1], step[1] + size[0])
            index[ax] = slice(step[2], step[2] + size[1])
            x = x[tuple(index)]
        elif step[0] == "scale":
            x = _fit(
                _resize(x, axes, scaled(x.shape[ay], x.shape[ax], step[1])),
                axes,
                mode,
                (x.shape[ay], x.shape[ax]),
            )
        elif step[0] == "vflip":
            x = np.flip(x, axis=ay)
        elif step[0] == "hflip":
            x = np.flip(x, axis=ax)
        else:
            x = _shift(x, axes, step[1], step[2], mode)
    return np.ascontiguousarray(x)


def scaled(h: int, w: int, scale: float) -> tuple[int, int]:
    return max(1, round(h * scale)), max(1, round(w * scale))


def _resize(x: np.ndarray, axes: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Linear interpolation with half-pixel centres (ONNX Resize, mode linear, half_pixel), axis by
    axis, computed in float64 and rounded once to x's dtype."""
    y = x.astype(np.float64)
    for axis, out in zip(axes, size, strict=True):
        n = y.shape[axis]
        position = np.clip((np.arange(out) + 0.5) * (n / out) - 0.5, 0, n - 1)
        low = np.floor(position).astype(np.int64)
        high = np.minimum(low + 1, n - 1)
        frac = position - low
        shape = [1] * y.ndim
        shape[axis] = out
        frac = frac.reshape(shape)
        y = np.take(y, low, axis=axis) * (1 - frac) + np.take(y, high, axis=axis) * frac
    return y.astype(x.dtype) if x.dtype.kind == "f" else np.round(y).astype(x.dtype)


def _fit(x: np.ndarray, axes: tuple[int, int], mode: str, size: tuple[int, int]) -> np.ndarray:
    """The centre `size` of x: cropped where x is larger, padded where it is smaller."""
    for axis, want in zip(axes, size, strict=True):
        have = x.shape[axis]
        if have > want:
            start = (have - want) // 2
            x = np.take(x, np.arange(start, start + want), axis=axis)
        elif have < want:
            widths = [(0, 0)] * x.ndim
            before = (want - have) // 2
            widths[axis] = (before, want - have - before)
            x = np.pad(x, widths, mode=mode)  # type: ignore[call-overload]
    return x


def _shift(x: np.ndarray, axes: tuple[int, int], dy: int, dx: int, mode: str) -> np.ndarray:
    """x moved by (dy, dx): out[y, x] = in[y - dy, x - dx], the border filled by `mode`."""
    p = max(abs(dy), abs(dx))
    widths = [(0, 0)] * x.ndim
    for axis in axes:
        widths[axis] = (p, p)
    padded = np.pad(x, widths, mode=mode)  # type: ignore[call-overload]
    index = [slice(None)] * x.ndim
    for axis, d in zip(axes, (dy, dx), strict=True):
        index[axis] = slice(p - d, p - d + x.shape[axis])
    return padded[tuple(index)]


# --- graph ---------------------------------------------------------------------------------------


def _build_copy(
    builder: combining.Builder,
    x: ir.Value,
    copy: Copy,
    axes: tuple[int, int],
    rank: int,
    pad: str,
    size: tuple[int | None, int | None],
    cache: dict[tuple[Step, ...], ir.Value],
) -> ir.Value:
    """The copy in the graph; each prefix of steps is built once and shared between copies."""
    mode = "constant" if pad == "zero" else "edge"
    value = x
    ay, ax = axes
    for depth, step in enumerate(copy.steps):
        key = copy.steps[: depth + 1]
        if key in cache:
            value = cache[key]
            continue
        if step[0] == "crop":
            h, w = size
            assert h is not None and w is not None
            value = builder.slice(value, [step[1], step[2]], [step[1] + h, step[2] + w], [ay, ax])
        elif step[0] == "scale":
            h, w = size
            assert h is not None and w is not None
            target = scaled(h, w, step[1])
            value = _build_resize(builder, value, axes, rank, target, _dtype_of(x))
            value = _build_fit(builder, value, axes, rank, mode, target, (h, w))
        elif step[0] in ("vflip", "hflip"):
            axis = ay if step[0] == "vflip" else ax
            big = np.iinfo(np.int64).max
            value = builder.slice(value, [-1], [-big], [axis], [-1])
        else:
            dy, dx = step[1], step[2]
            p = max(abs(dy), abs(dx))
            value = builder.pad(value, rank, {ay: p, ax: p}, {ay: p, ax: p}, mode)
            big = np.iinfo(np.int64).max
            ends = [-(p + d) if p + d > 0 else big for d in (dy, dx)]
            value = builder.slice(value, [p - dy, p - dx], ends, [ay, ax])
        cache[key] = value
    return value


def _build_resize(
    builder: combining.Builder,
    x: ir.Value,
    axes: tuple[int, int],
    rank: int,
    target: tuple[int, int],
    dtype: ir.DataType | None,
) -> ir.Value:
    """Resize (linear, half-pixel) to `target`; an integer image (raw pixels) is interpolated in
    float and rounded half to even, as `_resize` does (ONNX Runtime's integer Resize truncates)."""
    integer = dtype is not None and dtype not in combining.FLOAT_DTYPES
    source = builder.one("Cast", [x], to=ir.DataType.FLOAT) if integer else x
    shape = builder.one("Shape", [x])
    parts = []
    for axis in range(rank):
        if axis in axes:
            parts.append(builder.ints("size", [target[axes.index(axis)]]))
        else:
            parts.append(builder.slice(shape, [axis], [axis + 1], [0]))
    sizes = builder.one("Concat", parts, axis=0)
    empty = None
    if builder.opset < 13:  # roi and scales are required inputs before opset 13
        empty = builder.const("empty", np.zeros(0, np.float32), ir.DataType.FLOAT)
    resized = builder.one(
        "Resize",
        [source, empty, empty, sizes],
        mode="linear",
        coordinate_transformation_mode="half_pixel",
    )
    if not integer:
        return resized
    assert dtype is not None
    return builder.one("Cast", [builder.one("Round", [resized])], to=dtype)


def _dtype_of(value: ir.Value) -> ir.DataType | None:
    return value.type.dtype if isinstance(value.type, ir.TensorType) else None


def _build_fit(
    builder: combining.Builder,
    x: ir.Value,
    axes: tuple[int, int],
    rank: int,
    mode: str,
    have: tuple[int, int],
    want: tuple[int, int],
) -> ir.Value:
    for axis, h, w in zip(axes, have, want, strict=True):
        if h > w:
            start = (h - w) // 2
            x = builder.slice(x, [start], [start + w], [axis])
        elif h < w:
            before = (w - h) // 2
            x = builder.pad(x, rank, {axis: before}, {axis: w - h - before}, mode)
    return x


# --- the rewrite ---------------------------------------------------------------------------------


def tta(
    model: io.ModelSource,
    *,
    hflip: bool = False,
    vflip: bool = False,
    shift: int = 0,
    directions: int = 4,
    pad: str = "zero",
    crops: int = 0,
    input_size: tuple[int, int] | None = None,
    crop_size: tuple[int, int] | None = None,
    scales: Sequence[float] = (),
    combine: str = "mean",
    weights: Sequence[float] | None = None,
    verify_result: bool = True,
    fuse: bool = False,
    shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
    samples: int = 2,
    int_range: tuple[int, int] = (0, 10),
) -> combining.CombinedResult:
    """`model` with test-time augmentation in the graph (see the module docstring).

    `crop_size` is the crop's (H, W) where the model's spatial dims are dynamic (for a model with
    static ones it must be those). `weights` weight the copies, in the order the report lists them.
    With `fuse`, the result also goes through `optkit.fuse` and is verified again. InputError for a
    model TTA cannot apply to (not one image input, a static batch dim, outputs without a batch
    axis, sizes that do not fit) and for bad options.
    """
    began = time.perf_counter()
    combining.check_combine(combine)
    big = (int(input_size[0]), int(input_size[1])) if input_size else None
    if isinstance(shift, bool) or not isinstance(shift, int | np.integer):
        raise InputError(f"shift: a whole number of pixels, got {shift!r}")
    if isinstance(scales, str | bytes) or not isinstance(scales, Sequence):
        raise InputError(f"scales: a list of numbers, got {scales!r}")
    augment = Augmentations(hflip, vflip, int(shift), directions, pad, crops, big, tuple(scales))
    augment.check()

    label = io.describe(model)
    original = load_checked(model, label)
    working = original.clone()
    details = []
    version = opset_version(original)
    if version < combining.MIN_OPSET:
        working = upgraded(original, combining.MIN_OPSET, label)
        outcome = verify_rewrite(original, working, Exactness.REASSOCIATE)
        if isinstance(outcome, Verdict) and not outcome.ok:
            raise VerificationError(
                f"{label}: onnx's version converter changed its outputs from opset {version} to "
                f"{combining.MIN_OPSET}: {outcome.summary()}"
            )
        state = "verified" if isinstance(outcome, Verdict) else f"not verified: {outcome}"
        details.append(
            f"opset {version} -> {combining.MIN_OPSET} (onnx's version converter, {state})"
        )
    x, axes, size = _image_input(working, label)
    rank = len(x.shape)  # type: ignore[arg-type]
    crop = _crop_size(augment, size, crop_size, label, x)
    model_size = crop if crop is not None else size
    _check_sizes(augment, model_size, label, x)
    copies = augment.copies(crop if augment.crops else None)
    factors = combining.coefficients(weights, len(copies), "copies")
    outputs = list(working.graph.outputs)
    for value in outputs:
        why = combining.combinable(combine, value) or _batch_major(value)
        if why is not None:
            raise InputError(f"{label}: {why}")
    input_name = x.name or ""
    _rewrite(working, x, axes, rank, augment, copies, combine, factors, model_size, crop)
    working.metadata_props[TTA_KEY] = json.dumps(
        {
            "copies": [c.label for c in copies],
            "combine": combine,
            "weights": [float(w) for w in factors],
        }
    )
    check_built(working, "the TTA model")
    details.insert(0, f"{len(copies)} copies stacked along the batch axis, one pass of the model")
    report = combining.CombinedReport(
        "tta",
        [label],
        combine,
        [float(w) for w in factors],
        combining.exactness_of(combine),
        copies=[c.label for c in copies],
        details=details,
        nodes=node_count(working),
        verification_requested=verify_result,
    )
    expected = _expected(
        original, input_name, copies, axes, augment.pad, model_size, combine, factors
    )

    result = combining.verify_and_fuse(
        report,
        working,
        expected,
        fuse=fuse,
        verify_result=verify_result,
        shapes=shapes,
        seed=seed,
        samples=samples,
        int_range=int_range,
    )
    reads = model_reads(model) if isinstance(model, str | Path) else []
    if isinstance(model, ir.Model) and model.meta.get(io.SOURCE_KEY):
        reads.append(Path(model.meta[io.SOURCE_KEY]))
    report.seconds = time.perf_counter() - began
    return combining.CombinedResult(result, report, reads)


def _image_input(
    model: ir.Model, label: str
) -> tuple[ir.Value, tuple[int, int], tuple[int | None, int | None]]:
    """The one image input, its (H, W) axes and their static sizes (None where dynamic)."""
    inputs = runtime_inputs(model)
    if len(inputs) != 1:
        names = ", ".join(v.name or "?" for v in inputs)
        raise InputError(f"{label}: TTA needs a model with one image input, this one has {names}")
    x = inputs[0]
    if not isinstance(x.type, ir.TensorType) or x.shape is None or len(x.shape) != 4:
        shape = "no declared shape" if x.shape is None else f"shape {format_dims(x.shape)}"
        raise InputError(f"{label}: input '{x.name}' has {shape}; TTA needs (N, C, H, W) images")
    text = model.metadata_props.get(METADATA_KEY)
    layout = PreprocessSpec.from_json(text, f"{label}: metadata").layout if text else "NCHW"
    if layout == "flat":
        raise InputError(f"{label}: its embedded preprocessing takes flat input; TTA needs images")
    axes = (1, 2) if layout == "NHWC" else (2, 3)
    if isinstance(x.shape[0], int):
        raise InputError(
            f"{label}: the batch dim of input '{x.name}' is static ({x.shape[0]}); TTA stacks the "
            "copies along it: export the model with a dynamic batch"
        )
    size = tuple(d if isinstance(d, int) else None for d in (x.shape[axes[0]], x.shape[axes[1]]))
    return x, axes, size  # type: ignore[return-value]


def _crop_size(
    augment: Augmentations,
    size: tuple[int | None, int | None],
    given: tuple[int, int] | None,
    label: str,
    x: ir.Value,
) -> tuple[int, int] | None:
    if not augment.crops:
        if given is not None:
            raise InputError("--crop-size is the size of the crops; give --crops too")
        return None
    static = None if None in size else (int(size[0]), int(size[1]))  # type: ignore[arg-type]
    if given is not None and static is not None and tuple(given) != static:
        raise InputError(
            f"--crop-size {format_dims(given)}: {label} takes {format_dims(static)} at input "
            f"'{x.name}'"
        )
    crop = tuple(given) if given is not None else static
    if crop is None:
        raise InputError(
            f"{label}: input '{x.name}' has dynamic spatial dims; give the crops' size with "
            "--crop-size HxW"
        )
    assert augment.input_size is not None
    if crop[0] > augment.input_size[0] or crop[1] > augment.input_size[1]:
        raise InputError(
            f"--input-size {format_dims(augment.input_size)} is smaller than the crops "
            f"({format_dims(crop)})"
        )
    return crop  # type: ignore[return-value]


def _check_sizes(
    augment: Augmentations, size: tuple[int | None, int | None], label: str, x: ir.Value
) -> None:
    if augment.scales and None in size:
        raise InputError(
            f"{label}: --scales needs static spatial dims; input '{x.name}' is "
            f"{format_dims(x.shape or [])}"
        )
    for dim in size:
        if augment.shift and dim is not None and augment.shift >= dim:
            raise InputError(f"--shift {augment.shift}: the image is only {dim} pixels across")


def _batch_major(value: ir.Value) -> Decline | None:
    """Why TTA cannot split `value` along its first axis into the copies (None when it can)."""
    if value.shape is None or len(value.shape) == 0:
        return Decline(f"output '{value.name}' has no batch axis (its shape is unknown or scalar)")
    if isinstance(value.shape[0], int):
        return Decline(
            f"output '{value.name}' has a static first dim ({value.shape[0]}); TTA splits the "
            "copies along the batch axis"
        )
    return None


def _rewrite(
    model: ir.Model,
    x: ir.Value,
    axes: tuple[int, int],
    rank: int,
    augment: Augmentations,
    copies: Sequence[Copy],
    combine: str,
    factors: np.ndarray,
    size: tuple[int | None, int | None],
    crop: tuple[int, int] | None,
) -> None:
    graph = model.graph
    namer = Namer(model)
    builder = combining.Builder(graph, namer, opset_version(model), "tta")
    name = x.name or "input"
    dims = list(x.shape)  # type: ignore[arg-type]
    if crop is not None and augment.input_size is not None:
        dims[axes[0]], dims[axes[1]] = augment.input_size
    raw = ir.Value(name=namer.fresh(f"{name}/tta_input"), type=x.type, shape=ir.Shape(dims))
    cache: dict[tuple[Step, ...], ir.Value] = {}
    built = [_build_copy(builder, raw, c, axes, rank, augment.pad, size, cache) for c in copies]
    stacked = builder.one("Concat", built, axis=0)
    ir.convenience.replace_all_uses_with(x, stacked)
    graph.inputs[list(graph.inputs).index(x)] = raw
    x.name, raw.name = namer.fresh(f"{name}/unused"), name
    _forget_dynamic_shapes(model)  # they named the batch, which is now K times the input's
    for position, output in enumerate(list(graph.outputs)):
        out_name = output.name or f"output_{position}"
        output.name = namer.fresh(f"{out_name}/copies")
        parts = builder.split(output, len(copies))
        combined = combining.build(builder, parts, combine, factors, output)
        combined.name = out_name
        graph.outputs[position] = combined
    graph.sort()


def _forget_dynamic_shapes(model: ir.Model) -> None:
    """Drop the declared shape of every intermediate value with a dynamic dim: the model now runs
    on K N rows where its declarations (an embedded preprocessing's output, the exporter's
    value_info) name the input's batch dim, which ONNX Runtime holds to be one size."""
    for graph in iter_graphs(model.graph):
        for node in graph:
            for value in node.outputs:
                if value.shape is not None and not value.is_graph_output():
                    if any(not isinstance(d, int) for d in value.shape):
                        value.shape = None


def _expected(
    original: ir.Model,
    name: str,
    copies: Sequence[Copy],
    axes: tuple[int, int],
    pad: str,
    size: tuple[int | None, int | None],
    combine: str,
    factors: np.ndarray,
) -> combining.Reference:
    """The numpy reference: each copy made in numpy, the original run once per copy, combined."""
    runner: list[combining.Reference] = []
    names = [v.name or "" for v in original.graph.outputs]

    def expected(feeds: combining.Feeds) -> dict[str, np.ndarray]:
        if not runner:
            runner.append(combining.session_runner(original, "the original model"))
        x = feeds[name]
        h, w = (x.shape[axes[0]], x.shape[axes[1]]) if None in size else size
        outputs = [
            runner[0]({**feeds, name: apply(c, x, axes, pad, (int(h), int(w)))})  # type: ignore[arg-type]
            for c in copies
        ]
        return {
            n: combining.reference([out[n] for out in outputs], combine, factors) for n in names
        }

    return expected
