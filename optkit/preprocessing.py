"""The preprocessing a model was trained with, as data: a spec, its numpy reference, and fitting.

The lecture's three variants are all specs: subtract the mean image (AlexNet), subtract the
per-channel mean (VGG), subtract the per-channel mean and divide by the per-channel std (ResNet); plus
the plumbing deployed inputs need (uint8 -> float, scale such as 1/255, NHWC -> NCHW, channel order
such as BGR -> RGB), and for flat inputs PCA or whitening. Applied in this order, in float32:

    x = float32(raw)                 dtype: the raw input's element type
    x = transpose(x, NHWC -> NCHW)   layout: NHWC inputs only
    x = x[:, channel_order]          model channel c reads raw channel channel_order[c]
    x = x * scale
    x = x - mean                     scalar, per channel (C,), or a whole mean image (C, H, W)
    x = x / std                      scalar or per channel
    x = x @ projection               flat (N, D) inputs: PCA (D, K) or whitening, after the mean

`apply` is that reference in numpy; `optkit.embedding` builds the same computation into the model with
standard ONNX ops; the affine folds then absorb it into the first layer where that is exact.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from optkit.errors import InputError

DTYPES = ("uint8", "float16", "float32")
LAYOUTS = ("NCHW", "NHWC", "flat")
MODES = ("mean-image", "per-channel-mean", "per-channel-mean-std", "pca", "whiten")
METADATA_KEY = "optkit.preprocessing"


@dataclass(frozen=True)
class PreprocessSpec:
    """What the raw input is and how it becomes the model's input (see the module docstring)."""

    dtype: str = "float32"
    layout: str = "NCHW"
    channel_order: list[int] | None = None
    scale: float = 1.0
    mean: float | list[float] | list[list[list[float]]] | None = None
    std: float | list[float] | None = None
    projection: list[list[float]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. what the spec was fitted from

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise InputError(f"preprocessing spec: dtype '{self.dtype}' is not one of {DTYPES}")
        if self.layout not in LAYOUTS:
            raise InputError(f"preprocessing spec: layout '{self.layout}' is not one of {LAYOUTS}")
        if not np.isfinite(self.scale) or self.scale == 0:
            raise InputError(
                f"preprocessing spec: scale must be finite and non-zero, not {self.scale}"
            )
        if self.std is not None:
            std = np.asarray(self.std, np.float64)
            if std.ndim > 1 or not np.all(np.isfinite(std)) or np.any(std <= 0):
                raise InputError(
                    f"preprocessing spec: std must be positive and finite, scalar or per channel, "
                    f"not {self.std}"
                )
            if not np.all(np.isfinite(np.float32(1) / std.astype(np.float32))):
                raise InputError(
                    f"preprocessing spec: std {self.std} is too small: 1 / std is not a finite "
                    "float32"
                )
        for name in ("mean", "projection"):
            value = getattr(self, name)
            if value is not None:
                try:
                    array = np.asarray(value, np.float64)
                except (TypeError, ValueError):
                    raise InputError(
                        f"preprocessing spec: {name} is not an array of numbers"
                    ) from None
                if not np.all(np.isfinite(array)):
                    raise InputError(f"preprocessing spec: {name} holds NaN or inf")
        if self.channel_order is not None:
            order = list(self.channel_order)
            if sorted(order) != list(range(len(order))):
                raise InputError(
                    f"preprocessing spec: channel_order {order} is not a permutation of 0..{len(order) - 1}"
                )
        if self.projection is not None and self.layout != "flat":
            raise InputError("preprocessing spec: a PCA / whitening projection needs layout 'flat'")

    # --- arrays ---------------------------------------------------------------------------------

    def mean_array(self) -> np.ndarray | None:
        return None if self.mean is None else np.asarray(self.mean, np.float32)

    def std_array(self) -> np.ndarray | None:
        return None if self.std is None else np.asarray(self.std, np.float32)

    def projection_array(self) -> np.ndarray | None:
        return None if self.projection is None else np.asarray(self.projection, np.float32)

    # --- validation against a model input ------------------------------------------------------

    def check(self, model_shape: tuple[int | str | None, ...], what: str) -> None:
        """Raise InputError when this spec cannot feed an input of `model_shape` (NCHW or (N, D))."""
        rank = len(model_shape)
        if self.layout == "flat":
            if rank != 2:
                raise InputError(
                    f"{what}: layout 'flat' needs a (N, D) model input, not rank {rank}"
                )
        elif rank < 3:
            raise InputError(
                f"{what}: layout {self.layout} needs an (N, C, ...) input, not rank {rank}"
            )
        channels = model_shape[1] if rank > 1 and isinstance(model_shape[1], int) else None
        if self.projection is not None:
            matrix = self.projection_array()
            assert matrix is not None
            if channels is not None and matrix.shape[1] != channels:
                raise InputError(
                    f"{what}: projection gives {matrix.shape[1]} features, the model takes {channels}"
                )
            channels = matrix.shape[0]  # the raw feature count
        if channels is None:
            return
        if self.channel_order is not None and len(self.channel_order) != channels:
            raise InputError(
                f"{what}: channel_order has {len(self.channel_order)} entries, the model input has "
                f"{channels} channels"
            )
        for name, array in (("mean", self.mean_array()), ("std", self.std_array())):
            if array is None or array.ndim == 0:
                continue
            if array.ndim == 1 and array.shape[0] != channels:
                raise InputError(
                    f"{what}: {name} has {array.shape[0]} values, the input has {channels} channels"
                )
            if array.ndim > 1:  # a mean image: (C, H, W), the static dims of the model input
                expected = model_shape[1:]
                if array.ndim != len(expected) or any(
                    isinstance(d, int) and d != a
                    for d, a in zip(expected, array.shape, strict=True)
                ):
                    raise InputError(
                        f"{what}: {name} image has shape {array.shape}, the input is {expected}"
                    )

    def raw_shape(self, model_shape: tuple) -> tuple:
        """The raw input's shape for a model input shape."""
        if self.layout == "NHWC":
            return (model_shape[0], *model_shape[2:], model_shape[1])
        if self.projection is not None:
            return (model_shape[0], self.projection_array().shape[0])  # type: ignore[union-attr]
        return tuple(model_shape)

    # --- JSON -----------------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str, what: str = "spec") -> PreprocessSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{what}: not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise InputError(f"{what}: expected a JSON object")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise InputError(f"{what}: unknown field(s) {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> PreprocessSpec:
        file = Path(path)
        if not file.is_file():
            raise InputError(f"{file}: no such file")
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{file}: not a preprocessing spec (not UTF-8 JSON text)") from None
        return cls.from_json(text, str(file))


def _checked_chunks(
    chunks: Iterable[np.ndarray], base: PreprocessSpec, mode: str, components: int | None
) -> Iterator[np.ndarray]:
    """The chunks, after checking the first against what `base` and `components` ask: a channel
    order of the data's channel count, and no more PCA components than the data has features."""
    for index, chunk in enumerate(chunks):
        if index == 0:
            channels = _channel_count(chunk, base.layout)
            order = base.channel_order
            if order is not None and channels is not None and len(order) != channels:
                raise InputError(
                    f"--channel-order {','.join(map(str, order))}: the data has {channels} channels"
                )
            features = int(np.prod(chunk.shape[1:])) if chunk.ndim > 1 else 1
            if mode in ("pca", "whiten") and components is not None and components > features:
                raise InputError(f"--components {components}: the data has {features} features")
        yield chunk


def _channel_count(chunk: np.ndarray, layout: str) -> int | None:
    if chunk.ndim < 2 or layout == "flat":
        return None
    return int(chunk.shape[-1] if layout == "NHWC" else chunk.shape[1])


def apply(spec: PreprocessSpec, raw: np.ndarray) -> np.ndarray:
    """The numpy reference: what the embedded model computes from `raw`, in float32."""
    x = np.asarray(raw).astype(np.float32)
    if spec.layout == "NHWC":
        x = np.moveaxis(x, -1, 1)
    if spec.channel_order is not None:
        x = x[:, spec.channel_order]
    x = x * np.float32(spec.scale)
    mean, std, projection = spec.mean_array(), spec.std_array(), spec.projection_array()
    if mean is not None:
        x = x - _along_channels(mean, x.ndim)
    if std is not None:
        x = x / _along_channels(std, x.ndim)
    if projection is not None:
        x = x @ projection
    return np.ascontiguousarray(x, dtype=np.float32)


def _along_channels(array: np.ndarray, rank: int) -> np.ndarray:
    """A scalar as is, a (C,) vector as (C, 1, ..), an image (C, H, W) as is: broadcast from axis 1."""
    if array.ndim == 1:
        return array.reshape((array.shape[0],) + (1,) * (rank - 2))
    return array


# --- fitting ------------------------------------------------------------------------------------


def batches(path: str | os.PathLike, batch: int = 256) -> Iterator[np.ndarray]:
    """Training data in chunks: a .npy file is memory-mapped, so it may be larger than memory; a
    .npz file's single array (or its array named 'x') is read whole."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"{file}: no such file")
    try:
        if file.suffix == ".npy":
            data = np.load(file, mmap_mode="r", allow_pickle=False)
        elif file.suffix == ".npz":
            with np.load(file, allow_pickle=False) as archive:
                names = archive.files
                key = "x" if "x" in names else (names[0] if len(names) == 1 else None)
                if key is None:
                    raise InputError(
                        f"{file}: several arrays ({', '.join(names)}); name the data 'x'"
                    )
                data = archive[key]
        else:
            raise InputError(f"{file}: expected .npy or .npz training data")
    except (OSError, ValueError) as exc:
        raise InputError(f"{file}: not a readable numpy file ({exc})") from None
    if data.ndim < 2 or data.shape[0] == 0:
        raise InputError(f"{file}: expected samples along the first axis, got shape {data.shape}")
    for start in range(0, data.shape[0], batch):
        yield np.asarray(data[start : start + batch])


def fit(
    chunks: Iterable[np.ndarray],
    mode: str,
    base: PreprocessSpec | None = None,
    *,
    components: int | None = None,
    epsilon: float = 1e-5,
) -> PreprocessSpec:
    """A spec fitted to training data, streamed chunk by chunk (sums in float64).

    The data is first taken through `base` (dtype, layout, channel order, scale) exactly as the
    model will see it; then `mode` adds what it fits: the mean image, the per-channel mean (and std),
    or a PCA projection onto the top `components` directions (whitened: divided by sqrt(variance + eps)).
    """
    if mode not in MODES:
        raise InputError(f"unknown --mode '{mode}' (choose {', '.join(MODES)})")
    base = base or PreprocessSpec()
    chunks = _checked_chunks(chunks, base, mode, components)
    plumbing = PreprocessSpec(base.dtype, base.layout, base.channel_order, base.scale)
    count, total, squares, outer = 0, None, None, None
    for chunk in chunks:
        x = apply(plumbing, chunk).astype(np.float64)
        if mode in ("pca", "whiten") and x.ndim != 2:
            raise InputError(f"--mode {mode} fits flat (N, D) data, not shape {chunk.shape}")
        axes = (0,) if mode in ("mean-image", "pca", "whiten") else (0, *range(2, x.ndim))
        n = int(np.prod([x.shape[a] for a in axes]))
        count += n
        total = x.sum(axis=axes) if total is None else total + x.sum(axis=axes)
        squares = (x**2).sum(axis=axes) if squares is None else squares + (x**2).sum(axis=axes)
        if mode in ("pca", "whiten"):
            outer = x.T @ x if outer is None else outer + x.T @ x
    if count == 0 or total is None or squares is None:
        raise InputError("no training data")
    mean = total / count
    fitted: dict[str, Any] = {"mean": mean.tolist(), "std": None, "projection": None}
    if mode == "per-channel-mean-std":
        fitted["std"] = np.sqrt(np.maximum(squares / count - mean**2, 0.0)).tolist()
        if np.any(np.asarray(fitted["std"]) == 0):
            raise InputError("a channel of the training data is constant: its std is 0")
    if mode in ("pca", "whiten"):
        assert outer is not None
        covariance = outer / count - np.outer(mean, mean)
        variances, vectors = np.linalg.eigh(covariance)
        order = np.argsort(variances)[::-1][: components or len(variances)]
        projection = vectors[:, order]
        if mode == "whiten":
            projection = projection / np.sqrt(variances[order] + epsilon)
        fitted["projection"] = projection.tolist()
        plumbing = PreprocessSpec(base.dtype, "flat", base.channel_order, base.scale)
    spec_fields = {**asdict(plumbing), **fitted, "extra": {"fitted": mode, "samples": count}}
    return PreprocessSpec(**spec_fields)
