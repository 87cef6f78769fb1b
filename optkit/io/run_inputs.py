"""The inputs of training, fine-tuning, export and evaluation runs, checked without torch: the
user's model choice (`UserModel`), the files a run reads (`data_reads`, for the output contract),
the checkpoints of an ensemble (`refuse_repeated`), label lists (`labels_text`, `load_labels`) and
where each run of `train --seeds` goes (`seed_path`).

Light: only the standard library and optkit's light modules at the top (tests/test_startup.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optkit.errors import InputError
from optkit.io.modelspec import ModelSpec, format_args, source_file

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class UserModel:
    """What --model, --model-arg, --weights, --head, --input-size, --preprocessing asked for, parsed:
    `spec` None when no --model was given (optkit's own architectures); `size` (H, W) to resize an
    image folder to; `preprocessing` 'fit', 'imagenet' or a spec file."""

    text: str | None = None
    spec: ModelSpec | None = None
    args: dict[str, Any] = field(default_factory=dict)
    weights: Path | None = None
    head: str | None = None
    size: tuple[int, int] | None = None
    size_text: str | None = None  # --input-size as given
    preprocessing: str | Path = "fit"

    @property
    def reads(self) -> tuple[Path, ...]:
        """The files the options read (an output must not replace them)."""
        files = [self.weights, source_file(self.spec) if self.spec else None]
        if isinstance(self.preprocessing, Path):
            files.append(self.preprocessing)
        return tuple(f for f in files if f is not None)

    def describe(self) -> str:
        """`factory(key=value, ...)`, as the run reports it."""
        assert self.spec is not None
        return f"{self.spec.text}({format_args(self.args)})"


def is_image_folder(source: str) -> bool:
    """Whether a --data value names an image folder (not 'digits', not a .npz / .npy file)."""
    return source != "digits" and Path(source).is_dir()


def data_reads(source: str, option: str = "--data", also: tuple[Path, ...] = ()) -> dict[str, Any]:
    """`check_output`'s reads for a run reading `source` (and `also`): a .npz / .npy file, or an
    image folder nothing may be written into; InputError when the data does not exist."""
    if source == "digits":
        return {"reads": list(also), "read_folders": []}
    path = Path(source)
    if not path.exists():
        raise InputError(f"{option} {source}: no such file or folder (or use 'digits')")
    if path.is_dir():
        return {"reads": list(also), "read_folders": [path]}
    return {"reads": [*also, path], "read_folders": []}


def refuse_repeated(checkpoints: tuple[Path, ...]) -> None:
    """InputError naming a checkpoint given twice (by any name: a link or a second path to the
    same file): an ensemble of a model with itself only weighs it twice."""
    seen: dict[tuple[int, int], Path] = {}
    for path in checkpoints:
        try:
            status = Path(path).stat()
        except OSError:
            continue  # loading it names the problem
        key = (status.st_dev, status.st_ino)
        if key in seen:
            same = "given twice" if Path(path) == seen[key] else f"the same file as {seen[key]}"
            raise InputError(f"{path}: {same}; an ensemble's members are different checkpoints")
        seen[key] = Path(path)


def seed_path(checkpoint: Path, seed: int) -> Path:
    """Where run `seed` of `--checkpoint runs.pt` goes: ``runs.seed{seed}.pt`` (the suffix kept,
    none if the name has none)."""
    return checkpoint.with_name(f"{checkpoint.stem}.seed{seed}{checkpoint.suffix}")


def labels_text(labels: list[int]) -> str:
    """Label ids for a message: `5..9` for a run of three or more, else the first 20 listed."""
    if labels and labels == list(range(labels[0], labels[0] + len(labels))) and len(labels) > 2:
        return f"{labels[0]}..{labels[-1]}"
    shown = ",".join(str(c) for c in labels[:20])
    return shown + (",..." if len(labels) > 20 else "")


def load_labels(path: Path) -> np.ndarray:
    """Integer class ids from a .npy file; InputError when it is not one."""
    import numpy as np

    try:
        labels = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable .npy file ({exc})") from None
    if labels.dtype.kind not in "iu":
        raise InputError(f"{path}: labels must be integer class ids, found {labels.dtype.name}")
    return labels
