"""Labelled image data for training: scikit-learn's digits (ships with the package, no download), a
`.npz` with `x` and `y`, or a folder with one sub-folder of images per class.

Images are float32 (N, C, H, W) in their raw range (digits: 0..16, folders: 0..255); preprocessing
is fitted on the training split (`fit_preprocessing`, optkit's `PreprocessSpec`) and applied to both.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from optkit.errors import InputError
from optkit.preprocessing import PreprocessSpec, apply, fit

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray  # (N, C, H, W) float32
    y: np.ndarray  # (N,) int64 class indices
    classes: int
    source: str = ""

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def select(self, index: np.ndarray) -> Dataset:
        return replace(self, x=self.x[index], y=self.y[index])


def digits() -> Dataset:
    """The 1,797 8x8 handwritten digits of scikit-learn, as (N, 1, 8, 8), values 0..16."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.float32)[:, None]
    return Dataset(x, bunch.target.astype(np.int64), 10, "digits")


def load_npz(path: Path) -> Dataset:
    """`x` (N, C, H, W) or (N, H, W) and `y` (N,) integer labels from a .npz file."""
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: not a readable .npz file ({exc})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InputError(f"{path}: a single array (.npy), not a .npz with arrays 'x' and 'y'")
    try:
        with archive:
            if "x" not in archive or "y" not in archive:
                raise InputError(
                    f"{path}: needs arrays 'x' and 'y', has {', '.join(archive.files) or 'none'}"
                )
            x, y = archive["x"], archive["y"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: not a readable .npz file ({exc})") from None
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise InputError(f"{path}: x has shape {x.shape}; expected (N, C, H, W) or (N, H, W)")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise InputError(f"{path}: y has shape {y.shape}; expected ({x.shape[0]},) labels")
    if len(y) == 0:
        raise InputError(f"{path}: no examples")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise InputError(f"{path}: y must hold class indices 0..C-1")
    if x.dtype.kind not in "biuf":
        raise InputError(f"{path}: x holds {x.dtype}, not numbers")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise InputError(f"{path}: x has values that are not finite (nan or inf)")
    return Dataset(x, y.astype(np.int64), int(y.max()) + 1, str(path))


def load_image_folder(path: Path) -> Dataset:
    """One sub-folder per class (sorted names are the class indices), images all of one size."""
    from PIL import Image

    classes = sorted(p for p in path.iterdir() if p.is_dir())
    if not classes:
        raise InputError(f"{path}: no class sub-folders")
    images: list[np.ndarray] = []
    labels: list[int] = []
    for index, folder in enumerate(classes):
        for file in sorted(folder.iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(file) as image:
                    array = np.asarray(image.convert("RGB"), dtype=np.float32)
            except OSError as exc:
                raise InputError(f"{file}: not a readable image ({exc})") from None
            if images and array.shape != images[0].shape:
                raise InputError(
                    f"{file}: size {array.shape[:2]}, the others are {images[0].shape[:2]}"
                )
            images.append(array)
            labels.append(index)
    if not images:
        raise InputError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
    x = np.stack(images).transpose(0, 3, 1, 2)
    return Dataset(x, np.array(labels, np.int64), len(classes), str(path))


def load_data(source: str) -> Dataset:
    """'digits', a .npz file, or an image folder."""
    if source == "digits":
        return digits()
    path = Path(source)
    if not path.exists():
        raise InputError(f"{source}: no such file or folder (or use 'digits')")
    return load_image_folder(path) if path.is_dir() else load_npz(path)


def split(data: Dataset, test_fraction: float = 0.25, seed: int = 0) -> tuple[Dataset, Dataset]:
    """A stratified, seeded split into (train, test)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in range(data.classes):
        index = rng.permutation(np.flatnonzero(data.y == label))
        cut = round(len(index) * test_fraction)
        test.append(index[:cut])
        train.append(index[cut:])
    return data.select(np.sort(np.concatenate(train))), data.select(np.sort(np.concatenate(test)))


def subset(
    data: Dataset, classes: list[int], per_class: int | None = None, seed: int = 0
) -> Dataset:
    """The examples of `classes` (at most `per_class` of each, chosen with `seed`), relabelled 0..k-1."""
    rng = np.random.default_rng(seed)
    chosen, labels = [], []
    for new, label in enumerate(classes):
        index = np.flatnonzero(data.y == label)
        if per_class is not None:
            if len(index) < per_class:
                raise InputError(
                    f"class {label} has {len(index)} examples, fewer than the {per_class} per "
                    "class asked"
                )
            index = rng.choice(index, per_class, replace=False)
        chosen.append(index)
        labels.append(np.full(len(index), new))
    order = np.concatenate(chosen)
    return Dataset(
        data.x[order], np.concatenate(labels).astype(np.int64), len(classes), data.source
    )


def label_ids(data: Dataset) -> list[int]:
    """The label ids that occur in `data`, sorted."""
    return [int(v) for v in np.unique(data.y)]


def fit_preprocessing(train: Dataset) -> PreprocessSpec:
    """Per-channel mean and std, fitted on the training split only."""
    return fit([train.x], "per-channel-mean-std")


def preprocess(spec: PreprocessSpec, data: Dataset) -> Dataset:
    return replace(data, x=apply(spec, data.x).astype(np.float32))
