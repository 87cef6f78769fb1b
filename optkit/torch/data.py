"""Labelled image data for training: scikit-learn's digits (ships with the package, no download), a
`.npz` with `x` and `y`, or a folder with one sub-folder of images per class.

Images are float32 (N, C, H, W) in their raw range (digits: 0..16, folders: 0..255); preprocessing
is fitted on the training split (`fit_preprocessing`, optkit's `PreprocessSpec`) and applied to both.

An image folder holds photographs as they come: any size, RGB, grayscale or with an alpha channel.
`load_image_folder(path, size, channels)` gives them all one shape: each is turned upright (its EXIF
orientation), an alpha channel is composited onto white, colour and grayscale are converted to the
`channels` asked (3: grayscale repeated; 1: luminance; default: 1 if every image is grayscale, else
3), and with `size` (H, W) each image is scaled, keeping its aspect ratio, until it covers H x W and
then center-cropped to it. The dataset's `note` says what was done, for the command to print.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from optkit.core.memory import physical_memory
from optkit.errors import InputError
from optkit.preprocessing import PreprocessSpec, apply, fit

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
GRAYSCALE_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
BACKGROUND = 255  # what a transparent pixel shows: white, as an image viewer draws it


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray  # (N, C, H, W) float32
    y: np.ndarray  # (N,) int64 class indices
    classes: int
    source: str = ""
    note: str = ""  # what loading did to the examples (resized, channels converted), to print
    names: tuple[str, ...] = ()  # the class names (an image folder's sub-folders), when known

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


def load_image_folder(
    path: Path, size: tuple[int, int] | None = None, channels: int | None = None
) -> Dataset:
    """One sub-folder per class (sorted names are the class indices), images of any size and mode,
    made (N, channels, H, W) as the module docstring says. Without `size` the images must all be
    of one size (InputError naming the odd one out otherwise)."""
    from PIL import Image

    if channels not in (None, 1, 3):
        raise InputError(f"{path}: images can be read as 1 or 3 channels, not {channels}")
    # hidden folders (.ipynb_checkpoints, .git) are no classes
    classes = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise InputError(f"{path}: no class sub-folders")
    files: list[tuple[Path, int, str, tuple[int, int]]] = []  # (file, label, mode, (w, h))
    for index, folder in enumerate(classes):
        for file in sorted(folder.iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES or not file.is_file():
                continue
            try:  # opening reads the header only: the mode and the size
                with Image.open(file) as image:
                    files.append((file, index, _mode(image), _upright_size(image)))
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                raise InputError(f"{file}: not a readable image ({exc})") from None
    if not files:
        raise InputError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
    empty = sorted(set(range(len(classes))) - {label for _, label, _, _ in files})
    if empty:
        raise InputError(
            f"{classes[empty[0]]}: a class folder with no images ({', '.join(IMAGE_SUFFIXES)}); "
            "every class needs examples (remove the folder or add images)"
        )
    if channels is None:
        channels = 1 if all(mode in GRAYSCALE_MODES for _, _, mode, _ in files) else 3
    if size is None:
        first = files[0][3]
        for file, _, _, other in files:
            if other != first:
                raise InputError(
                    f"{file}: size {other[1]}x{other[0]}, the others are {first[1]}x{first[0]}; "
                    "give --input-size to resize and center-crop them all"
                )
        size = (first[1], first[0])
    _check_fits(path, len(files), channels, size)
    images: list[np.ndarray] = []
    resized = alpha = converted = 0
    for file, _, mode, _ in files:
        try:
            with Image.open(file) as opened:
                array, did = _read(opened, mode, channels, size)
        except Image.DecompressionBombError:  # the file passed on opening: the size asked is
            raise InputError(  # what is too large
                f"{path}: images of {size[0]}x{size[1]} are beyond what Pillow will make; give a "
                "smaller --input-size"
            ) from None
        except (OSError, ValueError) as exc:
            raise InputError(f"{file}: not a readable image ({exc})") from None
        images.append(array)
        resized += did["resized"]
        alpha += did["alpha"]
        converted += did["converted"]
    x = np.stack(images).astype(np.float32)
    if x.ndim == 3:
        x = x[:, None]
    else:
        x = x.transpose(0, 3, 1, 2)
    labels = np.array([label for _, label, _, _ in files], np.int64)
    n = len(files)
    notes = []
    if resized:
        notes.append(f"{resized} of {n} images resized and center-cropped to {size[0]}x{size[1]}")
    if converted:
        kind = (
            "colour images made grayscale" if channels == 1 else "grayscale images given 3 channels"
        )
        notes.append(f"{converted} {kind}")
    if alpha:
        notes.append(f"{alpha} images with transparency composited onto white")
    names = tuple(folder.name for folder in classes)
    return Dataset(x, labels, len(classes), str(path), "; ".join(notes), names)


def _check_fits(path: Path, n: int, channels: int, size: tuple[int, int]) -> None:
    """InputError when `n` images of `size` (float32, read then stacked: twice) would take more than
    half of this machine's memory."""
    need = 2 * 4 * n * channels * size[0] * size[1]
    memory = physical_memory()
    if memory is not None and need > memory / 2:
        raise InputError(
            f"{path}: {n} images of {channels}x{size[0]}x{size[1]} need about {need / 1e9:.1f} GB, "
            f"more than half of this machine's {memory / 1e9:.0f} GB; give a smaller --input-size"
        )


def _mode(image: Any) -> str:
    if image.mode == "P":  # a palette: its colours, or transparency
        return "PA" if "transparency" in image.info else "RGB"
    if image.mode in ("RGB", "L") and "transparency" in image.info:
        return "RGBA" if image.mode == "RGB" else "LA"
    return str(image.mode)


_SWAPPED = (5, 6, 7, 8)  # EXIF orientations that turn the image a quarter


def _upright_size(image: Any) -> tuple[int, int]:
    """(width, height) once turned by its EXIF orientation."""
    try:
        orientation = image.getexif().get(0x0112)
    except Exception:  # a broken EXIF block: the image as stored
        orientation = None
    w, h = image.size
    return (h, w) if orientation in _SWAPPED else (w, h)


def _read(image: Any, mode: str, channels: int, size: tuple[int, int]) -> tuple[np.ndarray, dict]:
    from PIL import Image, ImageOps

    did = {"resized": 0, "alpha": 0, "converted": 0}
    image = ImageOps.exif_transpose(image) or image
    if mode in ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (BACKGROUND,) * 3 + (255,))
        image = Image.alpha_composite(background, rgba)
        did["alpha"] = 1
    gray = mode in GRAYSCALE_MODES
    if channels == 1:
        if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            image = _eight_bit(image)
        image = image.convert("L")
        did["converted"] = int(not gray)
    else:
        if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            image = _eight_bit(image)
        image = image.convert("RGB")
        did["converted"] = int(gray)
    height, width = size
    if image.size != (width, height):
        scale = max(height / image.height, width / image.width)
        new = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
        image = image.resize(new, Image.Resampling.BILINEAR)
        left, top = (new[0] - width) // 2, (new[1] - height) // 2
        image = image.crop((left, top, left + width, top + height))
        did["resized"] = 1
    return np.asarray(image, dtype=np.float32), did


def _eight_bit(image: Any) -> Any:
    """A 16-bit, 32-bit or float grayscale image as 8 bits: values above 255 are taken as 16-bit
    (divided by 257, so 65535 is 255), then clipped to 0..255."""
    from PIL import Image

    array = np.asarray(image, dtype=np.float64)
    if array.size and float(array.max()) > 255:
        array = array / 257.0
    return Image.fromarray(np.clip(np.round(array), 0, 255).astype(np.uint8))


def load_data(
    source: str, size: tuple[int, int] | None = None, channels: int | None = None
) -> Dataset:
    """'digits', a .npz file, or an image folder (`size` and `channels` apply to a folder)."""
    if source == "digits":
        return digits()
    path = Path(source)
    if not path.exists():
        raise InputError(f"{source}: no such file or folder (or use 'digits')")
    return load_image_folder(path, size, channels) if path.is_dir() else load_npz(path)


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
