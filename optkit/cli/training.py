"""`optkit train`, `finetune`, `export`, `stats`: the PyTorch side on the command line.

torch is imported inside the commands, so the ONNX side's CLI works without the `torch` extra.

Every user mistake is exit 2 with one line: option values are checked by click types (an option
error is reported as one line by `optkit.cli.main`), outputs by `optkit.io.outputs.check_output` before any
work, and the rest (data, checkpoints, classes) before anything is written.

`train` and `finetune` take the user's own network with `--model package.module:factory` (or
`path/to/file.py:factory`), `--model-arg key=value` and `--weights state_dict.pt`: the spec, the
arguments and the files are checked before torch is imported; importing the factory and loading the
weights follow (`optkit.torch.usermodel`). The checkpoint records the factory and its arguments, so
`export`, `finetune` and `train --resume` rebuild the model by calling it again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from optkit.cli.common import COUNT, FRACTION, POSITIVE, SEED, NonEmptyPath, choice
from optkit.cli.seeds import COMBINE_CHOICES, parse_seeds, seed_path
from optkit.errors import InputError
from optkit.io.modelspec import (
    ModelSpec,
    format_args,
    parse_input_size,
    parse_model_args,
    parse_model_spec,
    parse_preprocessing,
    source_file,
)
from optkit.io.outputs import check_output

if TYPE_CHECKING:
    from torch import nn

    from optkit.preprocessing import PreprocessSpec
    from optkit.torch.data import Dataset
    from optkit.torch.train import Architecture, Checkpoint, TrainConfig

# The choices of optkit.models and optkit.torch.init, spelled out so that this module loads without
# torch (tests/test_training_cli.py checks they are the library's).
ARCHITECTURES = ("mlp", "cnn", "resnet")
ACTIVATIONS = (
    "sigmoid", "tanh", "relu", "leaky_relu", "prelu", "elu", "selu", "maxout", "swish", "gelu",
)  # fmt: skip
NORMS = ("batch", "layer", "instance", "group", "none")
INIT_SCHEMES = ("constant", "small", "xavier", "glorot_uniform", "kaiming", "lsuv")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "step", "none")
STRATEGIES = ("auto", "linear", "stages", "last-k", "all")
PLOT_SUFFIXES = ("", ".png", ".pdf", ".svg", ".jpg", ".jpeg")


def _need_torch() -> None:
    """InputError unless torch is installed; found without importing it (seconds), so that the
    output and option checks that follow answer at once."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise InputError("this command needs the torch extra: pip install 'optkit[torch]'")


def _given(name: str) -> bool:
    """Whether option `name` was given (on the command line or in the environment)."""
    source = click.get_current_context().get_parameter_source(name)
    return source not in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)


def _data_guard(source: str, option: str = "--data", also: tuple[Path, ...] = ()) -> dict[str, Any]:
    """`check_output`'s reads for a command reading `--data` (and `also`): a .npz / .npy file, or
    an image folder nothing may be written into; InputError when the data does not exist."""
    if source == "digits":
        return {"reads": list(also), "read_folders": []}
    path = Path(source)
    if not path.exists():
        raise InputError(f"{option} {source}: no such file or folder (or use 'digits')")
    if path.is_dir():
        return {"reads": list(also), "read_folders": [path]}
    return {"reads": [*also, path], "read_folders": []}


def _split(
    data_source: str, test_fraction: float, seed: int, size: tuple[int, int] | None = None,
    channels: int | None = None,
) -> tuple[Dataset, Dataset, Dataset]:  # fmt: skip
    """(all, train, test) with both splits non-empty. An image folder's images are made `channels`
    channels and, with `size`, resized and center-cropped to it; what was done is printed."""
    from optkit.torch.data import load_data, split

    data = load_data(data_source, size, channels)
    if data.note:
        click.echo(f"{data_source}: {data.note}")
    train_raw, test_raw = split(data, test_fraction, seed)
    for part, name in ((train_raw, "training"), (test_raw, "test")):
        if len(part) == 0:
            raise InputError(
                f"--test-fraction {test_fraction}: leaves no {name} examples of {data_source} "
                f"({len(data)} examples)"
            )
    return data, train_raw, test_raw


def _prepared(
    data_source: str, test_fraction: float, seed: int, size: tuple[int, int] | None = None,
    channels: int | None = None, preprocessing: str | Path = "fit",
    recorded: PreprocessSpec | None = None,
):  # fmt: skip
    """The data, split, with its preprocessing: `recorded` (a resumed run's), else fitted on the
    training split, ImageNet's or a spec file (`--preprocessing`)."""
    from optkit.torch.data import label_ids, preprocess

    data, train_raw, test_raw = _split(data_source, test_fraction, seed, size, channels)
    if len(label_ids(data)) < 2:
        raise InputError(f"--data {data_source}: one class only; a classifier needs two or more")
    spec = recorded if recorded is not None else _preprocessing(preprocessing, train_raw)
    return data, train_raw, test_raw, spec, preprocess(spec, train_raw), preprocess(spec, test_raw)


IMAGENET_MEAN = [0.485, 0.456, 0.406]  # torchvision's ImageNet statistics, of pixels in 0..1
IMAGENET_STD = [0.229, 0.224, 0.225]


def _preprocessing(choice_or_file: str | Path, train_raw: Dataset) -> PreprocessSpec:
    """`fit` (per-channel mean and std of the training split), `imagenet` (pixels / 255, then
    ImageNet's mean and std: what torchvision's pretrained weights expect) or a spec file."""
    from optkit.preprocessing import PreprocessSpec
    from optkit.torch.data import fit_preprocessing

    channels = int(train_raw.x.shape[1])
    if choice_or_file == "fit":
        return fit_preprocessing(train_raw)
    if choice_or_file == "imagenet":
        if channels != 3:
            raise InputError(f"--preprocessing imagenet: needs 3-channel images, the data has "
                             f"{channels}")  # fmt: skip
        return PreprocessSpec(scale=1 / 255, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                              extra={"from": "imagenet"})  # fmt: skip
    spec = PreprocessSpec.load(choice_or_file)
    if spec.layout != "NCHW" or spec.projection is not None:
        raise InputError(f"--preprocessing {choice_or_file}: layout {spec.layout}; the training "
                         "data is NCHW images")  # fmt: skip
    spec.check((None, *train_raw.x.shape[1:]), f"--preprocessing {choice_or_file}")
    return spec


class _ModelOptions:
    """--model, --model-arg, --weights, --head, --input-size, --preprocessing, checked without
    torch: the spec's syntax (and its file), the arguments, and that the files exist."""

    def __init__(
        self, model: str | None, model_args: tuple[str, ...], weights: Path | None,
        head: str | None, input_size: str | None, preprocessing: str | None,
    ) -> None:  # fmt: skip
        if head is not None and not head.strip():
            raise InputError(f"--head {head!r}: give the classifier's module name (e.g. fc)")
        self.text = model
        self.spec: ModelSpec | None = parse_model_spec(model) if model is not None else None
        self.args = parse_model_args(model_args)
        self.weights = weights
        self.head = head
        self.size = parse_input_size(input_size) if input_size is not None else None
        self.preprocessing: str | Path = (
            parse_preprocessing(preprocessing) if preprocessing is not None else "fit"
        )
        if self.spec is None:
            for flag, value in (("--model-arg", model_args), ("--weights", weights),
                                ("--head", head)):  # fmt: skip
                if value:
                    raise InputError(f"{flag}: applies to a model given with --model")
        if weights is not None and not weights.is_file():
            raise InputError(f"--weights {weights}: no such file")

    @property
    def reads(self) -> tuple[Path, ...]:
        """The files the options read (an output must not replace them)."""
        files = [self.weights, source_file(self.spec) if self.spec else None]
        if isinstance(self.preprocessing, Path):
            files.append(self.preprocessing)
        return tuple(f for f in files if f is not None)

    def describe(self) -> str:
        assert self.spec is not None
        return f"{self.spec.text}({format_args(self.args)})"


def _model_options(command: Any) -> Any:
    for option in reversed(
        [
            click.option("--model", "model", metavar="MODULE:FACTORY",
                         help="Your own network: package.module:factory or path/to/file.py:factory "
                              "returning a torch.nn.Module (imports and runs that code)."),
            click.option("--model-arg", "model_args", multiple=True, metavar="KEY=VALUE",
                         help="A keyword argument of the factory (repeatable); VALUE a Python "
                              "literal (3, 0.5, True, 'x') or plain text."),
            click.option("--weights", type=NonEmptyPath(dir_okay=False, path_type=Path),
                         help="A state_dict file (torch.save(model.state_dict(), f)) loaded "
                              "strictly into the --model (read with weights_only=True)."),
            click.option("--head", metavar="NAME",
                         help="The classifier's module name (a Linear), e.g. fc or classifier.1. "
                              "[default: the last Linear]"),
            click.option("--input-size", metavar="SIZE",
                         help="Resize and center-crop an image folder's images to SIZE (224) or "
                              "HxW. [default: the images' own size, which must then be one]"),
            click.option("--preprocessing", metavar="fit|imagenet|FILE",
                         help="fit: per-channel mean/std of the training split; imagenet: /255 "
                              "then ImageNet's mean/std (for torchvision weights); or a spec file. "
                              "[default: fit]"),
        ]
    ):  # fmt: skip
        command = option(command)
    return command


def _forward_check(model: nn.Module, x: Any, what: str) -> Any:
    """The model's output on two examples (eval mode, its mode given back); InputError naming
    `what` when it fails or is not (N, outputs)."""
    import torch

    from optkit.errors import first_line

    sample = torch.from_numpy(x[:2])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(sample)
    except Exception as exc:  # the user's forward on the user's data: their mistake to see
        raise InputError(f"{what}: fails on inputs of shape {tuple(sample.shape)}: "
                         f"{type(exc).__name__}: {first_line(exc)}") from None  # fmt: skip
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(f"{what}: gives {shape} on inputs of shape {tuple(sample.shape)}, not "
                         "(N, classes) scores")  # fmt: skip
    return out


def _user_model(options: _ModelOptions, seed: int) -> tuple[nn.Module, str | None]:
    """The factory's model (seeded), the --weights loaded, and its head's name (None: no Linear)."""
    import torch

    from optkit.torch.usermodel import find_head, load_weights, make_model

    assert options.spec is not None and options.text is not None
    torch.manual_seed(seed)
    model = make_model(options.spec, options.args, f"--model {options.text}")
    click.echo(f"model: {options.describe()}")
    if options.weights is not None:
        notes = load_weights(model, options.weights)
        count = len(model.state_dict())
        click.echo(f"--weights {options.weights}: {count} tensors loaded strictly"
                   + (f" ({'; '.join(notes)})" if notes else ""))  # fmt: skip
    try:
        _, head = find_head(model, options.head)
    except InputError:
        if options.head is not None:
            raise
        return model, None
    return model, head


def _fit_head(model: nn.Module, head: str | None, x: Any, classes: int, what: str) -> None:
    """Replace the head when the model's outputs are not the data's classes (and say so)."""
    from optkit.torch.usermodel import replace_head

    outputs = int(_forward_check(model, x, what).shape[1])
    if outputs == classes:
        return
    if head is None:
        raise InputError(f"{what}: gives {outputs} outputs, the data has {classes} classes, and "
                         "it has no Linear head to replace (name one with --head)")  # fmt: skip
    replace_head(model, head, classes)
    click.echo(f"head {head}: {outputs} outputs -> {classes} (a new Linear for the data's classes)")
    _forward_check(model, x, what)


def _rebuilt(arch: Architecture, path: Path) -> None:
    """Say which code a checkpoint's model is rebuilt with."""
    if arch.factory is not None:
        click.echo(f"{path}: rebuilding its model with {arch.factory}"
                   f"({format_args(arch.factory_args)}) (the checkpoint names this code)")  # fmt: skip


def _factory_reads(arch: Architecture) -> tuple[Path, ...]:
    """The file of the factory a checkpoint records (an output must not replace the user's code)."""
    if arch.factory is None:
        return ()
    found = source_file(arch.factory)
    return (found,) if found is not None and found.is_file() else ()


def _image_shape(arch: Architecture, data_source: str) -> tuple[tuple[int, int] | None, int | None]:
    """(size, channels) an image folder is loaded at for a model recorded as `arch`."""
    if data_source == "digits" or not Path(data_source).is_dir():
        return None, None
    c, h, w = arch.input_shape
    return (h, w), c


def _parse_classes(text: str, option: str = "--classes", minimum: int = 2) -> list[int]:
    """'5,6,7' -> [5, 6, 7]: integers >= 0, no duplicates, at least `minimum`."""
    items = [item.strip() for item in text.split(",")]
    classes: list[int] = []
    for item in items:
        try:
            value = int(item)
        except ValueError:
            raise InputError(
                f"{option} {text}: {item!r} is not an integer label (give e.g. 5,6,7,8,9)"
            ) from None
        if value < 0:
            raise InputError(f"{option} {text}: {value} is not a label (labels are >= 0)")
        if value in classes:
            raise InputError(f"{option} {text}: class {value} is given twice")
        classes.append(value)
    if len(classes) < minimum:
        raise InputError(
            f"{option} {text}: {len(classes)} class; a classifier needs at least {minimum}"
        )
    return classes


def _labels_text(labels: list[int]) -> str:
    if labels and labels == list(range(labels[0], labels[0] + len(labels))) and len(labels) > 2:
        return f"{labels[0]}..{labels[-1]}"
    shown = ",".join(str(c) for c in labels[:20])
    return shown + (",..." if len(labels) > 20 else "")


def _check_present(wanted: list[int], data: Dataset, data_source: str, option: str) -> None:
    from optkit.torch.data import label_ids

    present = label_ids(data)
    missing = [c for c in wanted if c not in present]
    if missing:
        raise InputError(
            f"{option} {','.join(map(str, wanted))}: {data_source} has no example of class "
            f"{','.join(map(str, missing))} (its labels are {_labels_text(present)})"
        )


_TRAINING_HELP = {
    "epochs": "Epochs in all (with --resume: default the recorded schedule's, more extends it).",
    "batch_size": "Examples per step.",
    "lr": "Initial learning rate.",
}


def _training_options(command: Any) -> Any:
    for option in reversed(
        [
            click.option("--epochs", type=COUNT, default=10, show_default=True,
                         help=_TRAINING_HELP["epochs"]),
            click.option("--batch-size", type=COUNT, default=64, show_default=True,
                         help=_TRAINING_HELP["batch_size"]),
            click.option("--lr", type=POSITIVE, default=0.05, show_default=True,
                         help=_TRAINING_HELP["lr"]),
            click.option("--optimizer", type=choice(OPTIMIZERS), default="sgd",
                         show_default=True),
            click.option("--schedule", type=choice(SCHEDULES), default="cosine",
                         show_default=True),
            click.option("--seed", type=SEED, default=0, show_default=True,
                         help="Seed of the split, the initialization and the shuffles."),
            click.option("--test-fraction", type=FRACTION, default=0.25, show_default=True,
                         help="Held-out share (stratified)."),
        ]
    ):  # fmt: skip
        command = option(command)
    return command


@click.command("train")
@click.option("--data", "data_source", default="digits", show_default=True,
              help="'digits' (scikit-learn, no download), a .npz (x, y) or an image folder.")  # fmt: skip
@click.option("--arch", type=choice(ARCHITECTURES), default="cnn", show_default=True)
@click.option("--activation", type=choice(ACTIVATIONS), default="relu", show_default=True)
@click.option("--norm", type=choice(NORMS), default="batch", show_default=True)
@click.option("--init", "init_scheme", type=choice(INIT_SCHEMES), default="kaiming",
              show_default=True)  # fmt: skip
@_model_options
@_training_options
@click.option("--checkpoint", type=NonEmptyPath(dir_okay=False, path_type=Path),
              default=Path("optkit-model.pt"), show_default=True)  # fmt: skip
@click.option("--resume", is_flag=True, help="Continue --checkpoint if it exists (see above).")
@click.option("--seeds", metavar="N|S1,S2,...",
              help="Train one model per seed (N: seeds 0..N-1), each to --checkpoint's name with "
                   ".seed{K} before its suffix (runs.pt -> runs.seed0.pt, ...); one split.")  # fmt: skip
def train_command(
    data_source: str, arch: str, activation: str, norm: str, init_scheme: str, model: str | None,
    model_args: tuple[str, ...], weights: Path | None, head: str | None, input_size: str | None,
    preprocessing: str | None, epochs: int, batch_size: int, lr: float, optimizer: str,
    schedule: str, seed: int, test_fraction: float, checkpoint: Path, resume: bool,
    seeds: str | None,
) -> None:  # fmt: skip
    """Train a model of optkit.models, or your own (--model), one log line per epoch, a checkpoint
    after each.

    \b
    --model package.module:factory (or path/to/file.py:factory) imports your code and calls the
    factory with the --model-arg values; --weights loads a state_dict strictly first. If the
    model's outputs are not the data's classes, its head (the last Linear, or --head) is replaced.
    The checkpoint records the factory and its arguments: export, finetune and --resume call it
    again. An image folder's images are resized and center-cropped with --input-size.

    \b
    Preprocessing (per-channel mean and std; see --preprocessing) is fitted on the training split
    and applied to both; it is stored in the checkpoint, and `optkit export --embed-preprocessing`
    puts it in the ONNX.
    An existing --checkpoint is replaced only if it is an optkit checkpoint (and says so).

    \b
    --resume continues the run recorded in --checkpoint (weights, optimizer state, data and
    split, architecture, training options). Options left out take the recorded values; an
    option given with another value is refused (exit 2).

    \b
    With --resume, --epochs is the new total (default: the recorded schedule's length):
      - the recorded length finishes an interrupted run, bit for bit as if it had not stopped;
      - more extends the schedule, the learning rate never going up: the epochs it covered
        keep their rates; with L the rate of the last covered epoch, new epoch k of n trains at
        L * (1 + cos(pi * (k-1) / n)) / 2 under cosine (the first at L, then down towards 0),
        and at L under step and none;
      - fewer than the epochs done, or than the schedule covers, is refused.

    \b
    --seeds 5 (or --seeds 0,3,7) trains one model per seed, to runs.seed0.pt .. runs.seed4.pt for
    --checkpoint runs.pt: every run uses the split and preprocessing of --seed (so they share one
    test set), seed K seeds its initialization and shuffles. Each run's test accuracy and their
    mean are printed; `optkit export runs.seed*.pt --ensemble -o runs.onnx` combines them.

    \b
    Examples:
      optkit train --data digits --arch cnn --epochs 10
      optkit train --arch cnn --epochs 10 --seeds 5 --checkpoint runs.pt
      optkit train --arch mlp --activation tanh --init xavier --checkpoint tanh.pt
      optkit train --checkpoint run.pt --resume --epochs 20
      optkit train --model mynets.py:small_cnn --model-arg width=32 --data photos/ \\
          --input-size 64 --checkpoint mine.pt
    """
    _need_torch()
    user = _ModelOptions(model, model_args, weights, head, input_size, preprocessing)
    if user.spec is not None:
        for flag, name in (("--arch", "arch"), ("--activation", "activation"), ("--norm", "norm"),
                           ("--init", "init_scheme")):  # fmt: skip
            if _given(name):
                raise InputError(f"{flag}: applies to optkit's own architectures; --model builds "
                                 f"the network (leave {flag} out)")  # fmt: skip
    resuming = resume and checkpoint.exists() and not _given("data_source")
    if not resuming:  # resumed, the data is the recorded one: checked once it is known
        _check_input_size(user, input_size, data_source)
    options: dict[str, Any] = {
        "data_source": data_source, "arch": arch, "activation": activation, "norm": norm,
        "init_scheme": init_scheme, "epochs": epochs, "batch_size": batch_size, "lr": lr,
        "optimizer": optimizer, "schedule": schedule, "seed": seed,
        "test_fraction": test_fraction,
    }  # fmt: skip
    if seeds is not None:
        _train_seeds(parse_seeds(seeds), checkpoint, resume, user, options)
        return
    check_output(checkpoint, **_data_guard(data_source, also=user.reads), what="--checkpoint")
    from optkit.torch.train import is_checkpoint, load_checkpoint

    saved = None
    if checkpoint.exists() and resume:
        saved = load_checkpoint(checkpoint)
        options = _resumed_options(saved, checkpoint, options)
        _check_resumed_model(saved, checkpoint, user)
        _check_input_size(user, input_size, options["data_source"])
        check_output(checkpoint, **_data_guard(options["data_source"], also=user.reads),
                     what="--checkpoint")  # fmt: skip
    elif checkpoint.exists():
        if not is_checkpoint(checkpoint):
            raise InputError(
                f"--checkpoint {checkpoint}: exists and is not an optkit checkpoint; refusing to "
                "overwrite it (choose another name)"
            )
        click.echo(f"{checkpoint}: an optkit checkpoint; it is replaced (--resume continues it)")
    elif resume:
        click.echo(f"--resume: no checkpoint at {checkpoint} yet; training from the start")
    _run_training(saved, checkpoint, resume, user, **options)


def _check_input_size(user: _ModelOptions, input_size: str | None, data_source: str) -> None:
    if user.size is not None and (data_source == "digits" or not Path(data_source).is_dir()):
        raise InputError(f"--input-size {input_size}: resizes the images of an image folder, and "
                         f"--data {data_source} is not one")  # fmt: skip


def _train_seeds(
    seeds: list[int], checkpoint: Path, resume: bool, user: _ModelOptions, options: dict[str, Any]
) -> None:
    """`train --seeds`: every output checked as a single run's is, before any training; then one
    run per seed (split and preprocessing of --seed, initialization and shuffles of the run's)."""
    import numpy as np

    from optkit.torch.train import is_checkpoint

    if resume:
        raise InputError("--resume: continues one checkpoint; resume a run of --seeds with "
                         "--checkpoint runs.seedK.pt --resume")  # fmt: skip
    paths = [seed_path(checkpoint, k) for k in seeds]
    for path in paths:
        check_output(path, **_data_guard(options["data_source"], also=user.reads),
                     what="--checkpoint")  # fmt: skip
        if path.exists() and not is_checkpoint(path):
            raise InputError(f"--checkpoint {path}: exists and is not an optkit checkpoint; "
                             "refusing to overwrite it (choose another name)")  # fmt: skip
    accuracies: list[float] = []
    for k, path in zip(seeds, paths, strict=True):
        click.echo(f"seed {k} -> {path}")
        run = {**options, "seed": k, "split_seed": options["seed"]}
        accuracy = _run_training(None, path, False, user, **run)
        assert accuracy is not None  # a fresh run always trains
        accuracies.append(accuracy)
    for k, path, accuracy in zip(seeds, paths, accuracies, strict=True):
        click.echo(f"seed {k}: test accuracy {accuracy:.2%} -> {path}")
    click.echo(f"mean test accuracy of {len(seeds)} runs: {float(np.mean(accuracies)):.2%}")


def _check_resumed_model(saved: Checkpoint, path: Path, user: _ModelOptions) -> None:
    """A resumed run rebuilds the recorded model: --model, --model-arg, --head, --input-size given
    must be the recorded ones; --weights and --preprocessing have no place (the weights and the
    preprocessing come from the checkpoint)."""
    arch = saved.architecture
    if user.weights is not None:
        raise InputError(f"--weights {user.weights}: --resume continues the weights in {path} "
                         "(leave --weights out)")  # fmt: skip
    if _given("preprocessing"):
        raise InputError(f"--preprocessing: --resume keeps the preprocessing recorded in {path} "
                         "(leave it out)")  # fmt: skip
    if user.spec is not None and arch.factory is None:
        raise InputError(f"--model {user.text}: {path} was trained with --arch {arch.name} "
                         "(leave --model out)")  # fmt: skip
    if user.spec is not None and user.spec.text != arch.factory:
        raise InputError(f"--model {user.text}: {path} was trained with --model {arch.factory} "
                         "(leave --model out)")  # fmt: skip
    if _given("model_args") and user.args != arch.factory_args:
        raise InputError(f"--model-arg: {format_args(user.args)} given, {path} was trained with "
                         f"{format_args(arch.factory_args) or 'none'} (leave --model-arg out)")  # fmt: skip
    if user.head is not None and user.head != arch.head:
        raise InputError(f"--head {user.head}: {path} records the head {arch.head} (leave --head "
                         "out)")  # fmt: skip
    if user.size is not None and user.size != tuple(arch.input_shape[1:]):
        _, h, w = arch.input_shape
        raise InputError(f"--input-size {user.size[0]}x{user.size[1]}: {path} was trained on "
                         f"{h}x{w} images (leave --input-size out)")  # fmt: skip


# option name -> its flag: what a resumed run takes from the checkpoint
_RESUMED = {
    "data_source": "--data",
    "test_fraction": "--test-fraction",
    "arch": "--arch",
    "activation": "--activation",
    "norm": "--norm",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "optimizer": "--optimizer",
    "schedule": "--schedule",
    "seed": "--seed",
}


def _resumed_options(saved: Checkpoint, path: Path, given: dict[str, Any]) -> dict[str, Any]:
    """The options of a resumed run: the recorded ones, refusing a given one that differs."""
    if saved.origin != "train":
        raise InputError(
            f"--resume: {path} was written by `optkit {saved.origin}`; only a checkpoint of "
            "`optkit train` can be resumed"
        )
    if "optimizer" not in saved.extra or "epoch" not in saved.extra:
        raise InputError(f"--resume: {path} holds no optimizer state to resume from")
    recorded: dict[str, Any] = {"arch": saved.architecture.name}
    if saved.architecture.own:
        recorded.update(activation=saved.architecture.activation, norm=saved.architecture.norm)
    if saved.config is not None:
        recorded.update({name: getattr(saved.config, name) for name in
                         ("batch_size", "lr", "optimizer", "schedule", "seed")})  # fmt: skip
    if saved.data is not None:
        recorded.update(data_source=saved.data.source, test_fraction=saved.data.test_fraction)
    options = dict(given)
    for name, flag in _RESUMED.items():
        if name not in recorded:
            continue
        if _given(name) and given[name] != recorded[name]:
            raise InputError(
                f"{flag} {given[name]}: {path} was trained with {flag} {recorded[name]}; --resume "
                f"keeps the recorded value (leave {flag} out)"
            )
        options[name] = recorded[name]
    if saved.data is not None:  # the split the run was trained on (--seeds: not the run's seed)
        options["split_seed"] = saved.data.seed
    done, planned = saved.epochs_done, saved.planned_schedule().total
    epochs = options["epochs"] = given["epochs"] if _given("epochs") else max(planned, done)
    if epochs < done:
        raise InputError(
            f"--epochs {epochs}: {path} has already trained {done} epochs; give {done} or more "
            "(more extends its schedule)"
        )
    if epochs < planned:
        raise InputError(
            f"--epochs {epochs}: {path}'s schedule runs {planned} epochs ({done} done); give "
            f"{planned} to finish it, or more to extend it"
        )
    if _given("init_scheme"):
        click.echo(f"--init {given['init_scheme']} ignored: the weights come from {path}")
    if not saved.architecture.own:
        for name, flag in (("arch", "--arch"), ("activation", "--activation"), ("norm", "--norm")):
            if _given(name):
                raise InputError(f"{flag} {given[name]}: {path} holds a --model network "
                                 f"({saved.architecture.factory}); leave {flag} out")  # fmt: skip
    return options


def _run_training(
    saved: Checkpoint | None, checkpoint: Path, resume: bool, user: _ModelOptions, *,
    data_source: str, arch: str, activation: str, norm: str, init_scheme: str, epochs: int,
    batch_size: int, lr: float, optimizer: str, schedule: str, seed: int, test_fraction: float,
    split_seed: int | None = None,
) -> float | None:  # fmt: skip
    """Train, write `checkpoint`; the final test accuracy (None: nothing left to train).
    `split_seed` (default `seed`) seeds the split, `seed` the initialization and the shuffles."""
    import torch

    from optkit.torch.init import initialize
    from optkit.torch.train import (
        Architecture,
        DataRecord,
        TrainConfig,
        build_model,
        check_resumable,
        train,
    )

    config = TrainConfig(epochs, batch_size, lr, optimizer, schedule=schedule, seed=seed)
    if saved is not None:
        resumed_schedule = check_resumable(saved, checkpoint, config)
        if saved.epochs_done >= epochs:
            last = saved.history[-1].test_accuracy if saved.history else float("nan")
            click.echo(f"{checkpoint}: all {saved.epochs_done} epochs of its schedule are done; "
                       f"nothing to train (a larger --epochs extends it)")  # fmt: skip
            click.echo(f"test accuracy {last:.2%} -> {checkpoint} (unchanged)")
            return None
    split_seed = seed if split_seed is None else split_seed
    if (saved is not None and not saved.architecture.own) or user.spec is not None:
        return _run_model_training(saved, checkpoint, resume, user, config, data_source,
                                   test_fraction, split_seed)  # fmt: skip
    size, channels = user.size, None
    if saved is not None:
        size, channels = _image_shape(saved.architecture, data_source)
    _, _, _, spec, train_set, test_set = _prepared(
        data_source, test_fraction, split_seed, size, channels, user.preprocessing,
        saved.preprocessing if saved is not None else None,
    )  # fmt: skip
    shape = tuple(int(d) for d in train_set.x.shape[1:])
    architecture = Architecture(arch, shape, train_set.classes, activation, norm)  # type: ignore[arg-type]
    if saved is not None and saved.architecture != architecture:
        raise InputError(f"--data {data_source}: makes a {architecture}, but {checkpoint} holds a "
                         f"{saved.architecture}")  # fmt: skip
    try:
        model = build_model(architecture)
        torch.manual_seed(seed)
        batch = torch.from_numpy(train_set.x[:256])
        initialize(model, init_scheme, nonlinearity=activation, batch=batch,
                   generator=torch.Generator().manual_seed(seed))  # fmt: skip
    except ValueError as exc:
        raise InputError(f"--arch {arch} --activation {activation} --norm {norm}: {exc}") from None
    if saved is None:
        click.echo(f"{data_source}: {len(train_set)} train / {len(test_set)} test, {arch}, "
                   f"{activation}, {norm}, init {init_scheme}")  # fmt: skip
    else:
        click.echo(f"resuming {checkpoint} after epoch {saved.epochs_done}: {data_source}, "
                   f"{arch}, {activation}, {norm}, schedule "
                   f"{resumed_schedule.describe()}")  # fmt: skip
    history = train(model, architecture, train_set, test_set, config, checkpoint=checkpoint,
                    resume=resume, preprocessing=spec, log=click.echo,
                    data=DataRecord(data_source, test_fraction, split_seed),
                    classes=list(range(train_set.classes)))  # fmt: skip
    click.echo(f"test accuracy {history[-1].test_accuracy:.2%} -> {checkpoint}")
    return history[-1].test_accuracy


def _run_model_training(
    saved: Checkpoint | None, checkpoint: Path, resume: bool, user: _ModelOptions,
    config: TrainConfig, data_source: str, test_fraction: float, split_seed: int,
) -> float:  # fmt: skip
    """`train --model`: the factory's model (or, resumed, the recorded one) on the data."""
    import torch

    from optkit.torch.train import FACTORY, Architecture, DataRecord, build_model, train
    from optkit.torch.usermodel import input_channels

    seed = config.seed
    if saved is not None:
        size, channels = _image_shape(saved.architecture, data_source)
        _rebuilt(saved.architecture, checkpoint)
        torch.manual_seed(seed)
        model = build_model(saved.architecture)
        head: str | None = saved.architecture.head
    else:
        model, head = _user_model(user, seed)
        size, channels = user.size, input_channels(model)
    _, _, _, spec, train_set, test_set = _prepared(
        data_source, test_fraction, split_seed, size, channels, user.preprocessing,
        saved.preprocessing if saved is not None else None,
    )  # fmt: skip
    what = f"--model {user.text}" if saved is None else f"the model of {checkpoint}"
    if saved is None:
        _fit_head(model, head, train_set.x, train_set.classes, what)
    else:
        _forward_check(model, train_set.x, what)
    shape = tuple(int(d) for d in train_set.x.shape[1:])
    if saved is not None:
        architecture = saved.architecture
        if tuple(architecture.input_shape) != shape or architecture.classes != train_set.classes:
            raise InputError(f"--data {data_source}: gives {train_set.classes} classes of "
                             f"{shape}, {checkpoint} holds {architecture.describe()}")  # fmt: skip
        click.echo(f"resuming {checkpoint} after epoch {saved.epochs_done}: {data_source}, "
                   f"{architecture.describe()}")  # fmt: skip
    else:
        assert user.spec is not None
        architecture = Architecture(FACTORY, shape, train_set.classes, "", "",  # type: ignore[arg-type]
                                    factory=user.spec.text, factory_args=user.args, head=head)  # fmt: skip
        click.echo(f"{data_source}: {len(train_set)} train / {len(test_set)} test, "
                   f"{architecture.describe()}")  # fmt: skip
    history = train(model, architecture, train_set, test_set, config, checkpoint=checkpoint,
                    resume=resume, preprocessing=spec, log=click.echo,
                    data=DataRecord(data_source, test_fraction, split_seed),
                    classes=list(range(train_set.classes)))  # fmt: skip
    click.echo(f"test accuracy {history[-1].test_accuracy:.2%} -> {checkpoint}")
    return history[-1].test_accuracy


@click.command("finetune")
@click.argument("checkpoint", type=NonEmptyPath(dir_okay=False, path_type=Path), required=False)
@click.option("--data", "data_source", default="digits", show_default=True)
@click.option("--classes", help="Use only these labels of the data, e.g. 5,6,7,8,9 (the head's "
              "outputs 0.. stand for them, in this order; recorded in the output).")  # fmt: skip
@click.option(
    "--per-class", type=COUNT, help="Training examples per class (every class must have that many)."
)
@click.option("--strategy", type=choice(STRATEGIES), default="auto", show_default=True)
@click.option("--k", "k", type=COUNT, default=2, show_default=True,
              help="Layers (optkit's own networks) or stages (--model) to retrain with last-k.")  # fmt: skip
@click.option("--similar/--different", default=True, show_default=True,
              help="Is the new data like the data the checkpoint was trained on? (for auto)")  # fmt: skip
@_model_options
@_training_options
@click.option("--compare-scratch", is_flag=True,
              help="Also train the same network from scratch on the same examples and say "
                   "whether transfer helped.")  # fmt: skip
@click.option("-o", "--output", type=NonEmptyPath(dir_okay=False, path_type=Path), required=True)
def finetune_command(
    checkpoint: Path | None, data_source: str, classes: str | None, per_class: int | None,
    strategy: str, k: int, similar: bool, model: str | None, model_args: tuple[str, ...],
    weights: Path | None, head: str | None, input_size: str | None, preprocessing: str | None,
    epochs: int, batch_size: int, lr: float, optimizer: str, schedule: str, seed: int,
    test_fraction: float, compare_scratch: bool, output: Path,
) -> None:  # fmt: skip
    """Transfer learning: a new head for the new classes, the backbone frozen or partly retrained.

    \b
    The network is a CHECKPOINT of optkit, or your own: --model package.module:factory (or
    path/to/file.py:factory) with --model-arg values, and --weights state_dict.pt loaded
    strictly (a local file; nothing is downloaded). Its head is the last Linear, or --head.

    \b
    --strategy auto follows the lecture's table and says why:
      little data, similar domain     a linear classifier on the top layer   (linear)
      little data, different domain  linear classifiers on several stages,   (stages)
                                     the best on held-out examples kept
      more data, similar domain       fine-tune a few layers                  (last-k, k=2)
      more data, different domain     fine-tune all, backbone at lr/10        (all)
    Layers and stages are optkit's own networks' layers and activation outputs, and your
    model's own children (a ResNet's layer1..layer4, a MobileNet's features.N). The output
    records the classes, the data and the split, so `optkit export` measures on the same test
    examples.

    \b
    Transfer does not always win: on 8x8 digits a network trained from scratch on 20 examples
    per class beats every strategy from a 0-4 backbone (tools/transfer_digits.py). With
    --compare-scratch the same network is also trained from scratch on the same examples, with
    the same training options, and both test accuracies are printed.
    """
    _need_torch()
    asked = _parse_classes(classes) if classes is not None else None
    user = _ModelOptions(model, model_args, weights, head, input_size, preprocessing)
    if checkpoint is None and user.spec is None:
        raise InputError("finetune: give a CHECKPOINT, or your model with --model (and --weights)")
    if checkpoint is not None and user.spec is not None:
        raise InputError(f"--model {model}: the network comes from {checkpoint}; give one of "
                         "CHECKPOINT and --model")  # fmt: skip
    if checkpoint is not None and _given("preprocessing"):
        raise InputError(f"--preprocessing: {checkpoint} records its preprocessing (leave it out)")
    if user.size is not None and (data_source == "digits" or not Path(data_source).is_dir()):
        raise InputError(f"--input-size {input_size}: resizes the images of an image folder, and "
                         f"--data {data_source} is not one")  # fmt: skip
    inputs = (*user.reads, *((checkpoint,) if checkpoint is not None else ()))
    check_output(output, **_data_guard(data_source, also=inputs), what="output")
    from dataclasses import replace

    from optkit.torch.data import label_ids, preprocess, subset
    from optkit.torch.train import (
        FACTORY,
        Architecture,
        DataRecord,
        TrainConfig,
        choose_strategy,
        load_checkpoint,
        prepare_transfer,
        restore,
        train,
        transfer_report,
    )  # fmt: skip
    from optkit.torch.usermodel import input_channels

    config = TrainConfig(epochs, batch_size, lr, optimizer, schedule=schedule, seed=seed)
    head_name: str | None
    if checkpoint is not None:
        saved = load_checkpoint(checkpoint)
        if saved.architecture.stage is not None:
            raise InputError(f"{checkpoint}: a stage classifier (finetune --strategy stages); "
                             "fine-tune the checkpoint it was made from instead")  # fmt: skip
        source_arch = saved.architecture
        also = (*inputs, *_factory_reads(source_arch))
        check_output(output, **_data_guard(data_source, also=also), what="output")
        _rebuilt(source_arch, checkpoint)
        net = restore(saved, str(checkpoint))
        head_name = source_arch.head
        size, channels = _image_shape(source_arch, data_source)
        if user.size is not None and size is not None and user.size != size:
            raise InputError(f"--input-size {input_size}: {checkpoint} takes {size[0]}x{size[1]} "
                             "images (leave --input-size out)")  # fmt: skip
        spec = saved.preprocessing
        what = f"the model of {checkpoint}"
    else:
        net, head_name = _user_model(user, seed)
        if head_name is None:
            raise InputError(f"--model {user.text}: has no Linear layer to serve as its head (name one "
                             "with --head)")  # fmt: skip
        size, channels, spec = user.size, input_channels(net), None
        what = f"--model {user.text}"
        if user.weights is None:
            click.echo("no --weights: the backbone is as the factory made it (pretrained only if "
                       "the factory loads weights itself)")  # fmt: skip
    data, train_raw, test_raw = _split(data_source, test_fraction, seed, size, channels)
    if checkpoint is None:
        spec = _preprocessing(user.preprocessing, train_raw)
    wanted = asked if asked is not None else label_ids(data)
    if len(wanted) < 2:
        raise InputError(f"--data {data_source}: one class only; a classifier needs two or more")
    _check_present(wanted, data, data_source, "--classes")
    if per_class is not None:
        have, label = min((int((train_raw.y == c).sum()), c) for c in wanted)
        if have < per_class:
            raise InputError(f"--per-class {per_class}: class {label} has {have} training "
                             f"examples in {data_source}")  # fmt: skip
    train_raw = subset(train_raw, wanted, per_class, seed)
    test_raw = subset(test_raw, wanted)
    train_set = preprocess(spec, train_raw) if spec else train_raw
    test_set = preprocess(spec, test_raw) if spec else test_raw
    shape = tuple(int(d) for d in train_set.x.shape[1:])
    if checkpoint is not None and shape != saved.architecture.input_shape:
        raise InputError(f"{data_source}: samples of shape {train_set.x.shape[1:]}, the checkpoint "
                         f"takes {saved.architecture.input_shape}")  # fmt: skip
    if checkpoint is None:
        assert user.spec is not None
        outputs = int(_forward_check(net, train_set.x, what).shape[1])
        source_arch = Architecture(FACTORY, shape, outputs, "", "",  # type: ignore[arg-type]
                                   factory=user.spec.text, factory_args=user.args,
                                   head=head_name)  # fmt: skip
    if strategy == "auto":
        strategy, k, why = choose_strategy(len(train_set) // len(wanted), similar)
        click.echo(
            f"strategy {strategy}" + (f" (k={k})" if strategy == "last-k" else "") + f": {why}"
        )
    new_arch = replace(source_arch, classes=len(wanted))
    record = DataRecord(data_source, test_fraction, seed)
    if strategy == "stages":
        from optkit.torch.train import Checkpoint, evaluate, fit_stage_classifier, save_checkpoint

        probe = fit_stage_classifier(net, train_set, seed=seed, log=click.echo,
                                     head_name=head_name)  # fmt: skip
        arch = replace(source_arch, stage=probe.stage,
                       stage_features=probe.linear.in_features, stage_classes=len(wanted))  # fmt: skip
        save_checkpoint(output, Checkpoint(arch, probe.state_dict(), [], spec, classes=wanted,
                                           data=record, origin="finetune"))  # fmt: skip
        accuracy = evaluate(probe, test_set)
    else:
        groups = prepare_transfer(net, len(wanted), strategy, k, lr, seed, head_name,
                                  log=click.echo)  # fmt: skip
        click.echo(transfer_report(net))
        history = train(net, new_arch, train_set, test_set, config, checkpoint=output,
                        preprocessing=spec, param_groups=groups, log=click.echo, classes=wanted,
                        data=record, origin="finetune")  # fmt: skip
        accuracy = history[-1].test_accuracy
    click.echo(f"test accuracy {accuracy:.2%} on classes {_labels_text(wanted)} -> {output}")
    if compare_scratch:
        _compare_with_scratch(accuracy, new_arch, train_set, test_set, config)


def _compare_with_scratch(
    transferred: float, arch: Architecture, train_set: Dataset, test_set: Dataset,
    config: TrainConfig,
) -> None:  # fmt: skip
    """Train `arch` from scratch (torch's default initialization, `config`) and compare."""
    import torch

    from optkit.torch.train import build_model, train

    torch.manual_seed(config.seed)
    scratch = build_model(arch)
    click.echo(f"from scratch on the same {len(train_set)} examples:")
    from_scratch = train(scratch, arch, train_set, test_set, config, log=click.echo)[-1]
    gain = 100 * (transferred - from_scratch.test_accuracy)
    verdict = "transfer helped" if gain > 0 else "transfer did not help; train from scratch"
    click.echo(f"transfer {transferred:.2%}, from scratch {from_scratch.test_accuracy:.2%} "
               f"({gain:+.1f} points, one test example is {100 / len(test_set):.1f}): "
               f"{verdict}")  # fmt: skip


@click.command("export")
@click.argument("checkpoints", nargs=-1, required=True,
                type=NonEmptyPath(dir_okay=False, path_type=Path))  # fmt: skip
@click.option("-o", "--output", type=NonEmptyPath(dir_okay=False, path_type=Path), required=True)
@click.option("--data", "data_source",
              help="Real samples to check the export on (the test split) and report accuracy. "
                   "[default: the data the checkpoint records, else digits]")  # fmt: skip
@click.option("--classes", help="The label ids of the head's outputs, e.g. 5,6,7,8,9 [default: "
              "the recorded ones]; must agree with the checkpoint.")  # fmt: skip
@click.option("--test-fraction", type=FRACTION,
              help="[default: the recorded split's, else 0.25]")  # fmt: skip
@click.option("--seed", type=SEED, help="Seed of the split. [default: the recorded, else 0]")
@click.option("--no-fuse", is_flag=True, help="Keep BatchNorm (do not run optkit fuse).")
@click.option("--embed-preprocessing", is_flag=True,
              help="Put the checkpoint's preprocessing in the graph (it takes raw input).")  # fmt: skip
@click.option("--ensemble", "as_ensemble", is_flag=True,
              help="Export every CHECKPOINT and write them as one verified ensemble "
                   "(optkit ensemble); preprocessing they carry is embedded.")  # fmt: skip
@click.option("--combine", type=choice(COMBINE_CHOICES), default="mean", show_default=True,
              help="With --ensemble: mean of the logits, softmax-mean, or vote.")  # fmt: skip
def export_command(
    checkpoints: tuple[Path, ...], output: Path, data_source: str | None, classes: str | None,
    test_fraction: float | None, seed: int | None, no_fuse: bool, embed_preprocessing: bool,
    as_ensemble: bool, combine: str,
) -> None:  # fmt: skip
    """Export a checkpoint to ONNX (eval mode, BatchNorm kept for optkit to fold), check it against
    the torch model on real samples, optionally embed the preprocessing and fuse: one deployable file.
    Prints the test accuracy of the torch model and of the ONNX model, on the test examples of the
    classes the checkpoint records (labels mapped to its head's outputs, as finetune did).

    \b
    With --ensemble, two or more checkpoints (e.g. those of `optkit train --seeds 5`) are each
    exported and checked as above (BatchNorm kept, their preprocessing embedded), then combined
    by `optkit ensemble` (--combine), fused and verified against the members on ONNX Runtime;
    one file is written. Checkpoints of other classes, input shapes or preprocessing are exit 2.
      optkit export runs.seed0.pt runs.seed1.pt runs.seed2.pt --ensemble -o runs.onnx
    """
    _need_torch()
    asked = _parse_classes(classes, minimum=1) if classes is not None else None
    if data_source is not None and not data_source.strip():
        raise InputError("--data '': give a .npz, an image folder or 'digits'")
    if not as_ensemble:
        if len(checkpoints) > 1:
            raise InputError(f"export: {len(checkpoints)} checkpoints given; export takes one, "
                             "or several with --ensemble (one ensemble file)")  # fmt: skip
        if _given("combine"):
            raise InputError("--combine: applies to --ensemble")
    elif len(checkpoints) < 2:
        raise InputError(f"--ensemble: an ensemble needs two or more checkpoints, "
                         f"{len(checkpoints)} given")  # fmt: skip
    if as_ensemble:
        _refuse_repeated(checkpoints)
    check_output(output, reads=list(checkpoints), what="output", model=True)
    options = _ExportOptions(output, checkpoints, data_source, asked, classes, test_fraction, seed)
    if as_ensemble:
        _export_ensemble(options, combine, fuse_it=not no_fuse)
        return
    import numpy as np

    from optkit import io

    one = _export_one(checkpoints[0], options, embed_preprocessing, fuse_it=not no_fuse)
    io.save(io.load(one.proto), output)
    logits = _onnx_scores(one.proto, one.feed)
    onnx_accuracy = float(np.mean(np.argmax(logits, 1) == one.test_set.y))
    click.echo(json.dumps({k: v for k, v in one.report.items() if k != "fuse"}))
    click.echo(one.report.get("fuse", "not fused"))
    click.echo(f"classes {_labels_text(one.labels)} -> outputs 0..{len(one.labels) - 1}")
    click.echo(f"test accuracy: torch {one.torch_accuracy:.2%}, ONNX {onnx_accuracy:.2%} -> "
               f"{output}")  # fmt: skip


class _ExportOptions:
    """What `export` was asked: the output, every checkpoint, and the data options."""

    def __init__(
        self, output: Path, checkpoints: tuple[Path, ...], data_source: str | None,
        asked: list[int] | None, classes: str | None, test_fraction: float | None,
        seed: int | None,
    ) -> None:  # fmt: skip
        self.output, self.checkpoints, self.data_source = output, checkpoints, data_source
        self.asked, self.classes = asked, classes
        self.test_fraction, self.seed = test_fraction, seed


class _Exported:
    """One checkpoint exported: the ONNX model, its report, the test split it was checked on."""

    def __init__(self, **fields: Any) -> None:
        self.proto: Any = fields["proto"]
        self.report: dict = fields["report"]
        self.saved: Checkpoint = fields["saved"]
        self.labels: list[int] = fields["labels"]
        self.test_set: Dataset = fields["test_set"]
        self.feed: Any = fields["feed"]  # the model's input: raw if the preprocessing is embedded
        self.torch_accuracy: float = fields["torch_accuracy"]


def _export_one(
    checkpoint: Path, options: _ExportOptions, embed_preprocessing: bool, fuse_it: bool,
    saved: Checkpoint | None = None,
) -> _Exported:  # fmt: skip
    """`checkpoint` exported and checked against torch on its recorded test split (or --data)."""
    from optkit.torch.data import preprocess, subset
    from optkit.torch.export import export_checked
    from optkit.torch.train import evaluate, load_checkpoint, restore

    data_source, test_fraction, seed = options.data_source, options.test_fraction, options.seed
    saved = saved if saved is not None else load_checkpoint(checkpoint)
    recorded = saved.data
    source = data_source or (recorded.source if recorded else "digits")
    option = "--data" if data_source else f"the recorded data of {checkpoint} (give --data)"
    also = (*options.checkpoints, *_factory_reads(saved.architecture))
    check_output(options.output, **_data_guard(source, option, also=also), what="output",
                 model=True)  # fmt: skip
    if recorded is not None and source == recorded.source:
        for flag, given, kept in (("--test-fraction", test_fraction, recorded.test_fraction),
                                  ("--seed", seed, recorded.seed)):  # fmt: skip
            if given is not None and given != kept:
                raise InputError(
                    f"{flag} {given}: {checkpoint} was trained on {source} split with {flag} "
                    f"{kept}; another split would measure on examples it trained on (leave "
                    f"{flag} out)"
                )
    if test_fraction is None:
        test_fraction = recorded.test_fraction if recorded else 0.25
    if seed is None:
        seed = recorded.seed if recorded else 0
    labels = _export_labels(saved, checkpoint, options.asked, options.classes)
    _rebuilt(saved.architecture, checkpoint)
    model = restore(saved, str(checkpoint))
    data, _, test_raw = _split(source, test_fraction, seed,
                               *_image_shape(saved.architecture, source))  # fmt: skip
    _check_present(labels, data, source, "classes")
    test_raw = subset(test_raw, labels)
    if len(test_raw) == 0:
        raise InputError(f"{source}: no test examples of classes {_labels_text(labels)}")
    spec = saved.preprocessing
    test_set = preprocess(spec, test_raw) if spec else test_raw
    if tuple(test_set.x.shape[1:]) != saved.architecture.input_shape:
        raise InputError(f"{source}: samples of shape {test_set.x.shape[1:]}, the checkpoint "
                         f"takes {saved.architecture.input_shape}")  # fmt: skip
    embed = spec if embed_preprocessing and spec else None
    proto, report = export_checked(model, test_set.x, spec=embed, raw_samples=test_raw.x,
                                   fuse_it=fuse_it)  # fmt: skip
    return _Exported(proto=proto, report=report, saved=saved, labels=labels, test_set=test_set,
                     feed=test_raw.x if embed else test_set.x,
                     torch_accuracy=evaluate(model, test_set))  # fmt: skip


def _onnx_scores(proto: Any, feed: Any) -> Any:
    """The model's output on ONNX Runtime for `feed`."""
    from optkit.check.runtime import make_session

    session = make_session(proto)
    (scores,) = session.run(None, {session.get_inputs()[0].name: feed})
    return scores


def _refuse_repeated(checkpoints: tuple[Path, ...]) -> None:
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


def _export_ensemble(options: _ExportOptions, combine: str, fuse_it: bool) -> None:
    """`export --ensemble`: the checkpoints checked to fit together, each exported and checked,
    then one ensemble built, fused, verified, measured and written (`optkit.cli.seeds`)."""
    from optkit.cli.seeds import check_fit, write_ensemble
    from optkit.torch.train import load_checkpoint

    saved = [load_checkpoint(path) for path in options.checkpoints]
    embed = check_fit(list(options.checkpoints), saved)
    members = []
    for path, checkpoint in zip(options.checkpoints, saved, strict=True):
        one = _export_one(path, options, embed, fuse_it=False, saved=checkpoint)
        click.echo(f"{path}: exported, checked against torch (max abs error "
                   f"{one.report['export_max_abs_error']:.3g}), test accuracy torch "
                   f"{one.torch_accuracy:.2%}")  # fmt: skip
        members.append(one)
    write_ensemble(list(options.checkpoints), members, combine, fuse_it, options.output)


def _export_labels(
    saved: Checkpoint, path: Path, asked: list[int] | None, text: str | None
) -> list[int]:
    """The label id of each head output: the recorded ones; --classes must agree with them."""
    if asked is None:
        return saved.labels
    if len(asked) != saved.outputs:
        known = (f"classes {_labels_text(saved.classes)}" if saved.classes is not None
                 else "classes not recorded")  # fmt: skip
        raise InputError(f"--classes {text}: {len(asked)} classes, but {path}'s head has "
                         f"{saved.outputs} outputs ({known})")  # fmt: skip
    if saved.classes is not None and asked != saved.classes:
        raise InputError(f"--classes {text}: {path} records classes "
                         f"{','.join(map(str, saved.classes))} for its outputs")  # fmt: skip
    return asked


@click.command("stats")
@click.option("--activation", type=choice(ACTIVATIONS), default="tanh", show_default=True)
@click.option("--init", "init_scheme", type=choice(INIT_SCHEMES), default="xavier",
              show_default=True)  # fmt: skip
@click.option("--std", type=POSITIVE, default=0.01, show_default=True, help="For --init small.")
@click.option("--layers", type=COUNT, default=7, show_default=True)
@click.option("--width", type=COUNT, default=4096, show_default=True)
@click.option("--batch", type=COUNT, default=16, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--gradients", is_flag=True, help="Also one backward pass: gradient stds per layer.")
@click.option("--png", type=NonEmptyPath(dir_okay=False, path_type=Path), help="Draw histograms.")
@click.option("--json", "as_json", is_flag=True)
def stats_command(
    activation: str, init_scheme: str, std: float, layers: int, width: int, batch: int, seed: int,
    gradients: bool, png: Path | None, as_json: bool,
) -> None:  # fmt: skip
    """The lecture's experiment: activations of a deep fully connected net under an init scheme.

    \b
    Examples (7 layers of 4096, batch 16, as in the lecture):
      optkit stats --activation tanh --init small --std 0.01   # collapses to zero
      optkit stats --activation tanh --init small --std 0.05   # saturates at +-1
      optkit stats --activation tanh --init xavier             # stays spread
      optkit stats --activation relu --init kaiming --png relu.png
    """
    _need_torch()
    if png is not None:
        if png.suffix.lower() not in PLOT_SUFFIXES:
            kinds = ", ".join(suffix for suffix in PLOT_SUFFIXES if suffix)
            raise InputError(f"--png {png}: write one of {kinds}, not {png.suffix}")
        check_output(png, what="--png")
    _check_memory(layers, width, batch, gradients, activation)
    import torch

    from optkit.torch.init import initialize
    from optkit.torch.stats import (
        activation_stats,
        format_table,
        gradient_stats,
        lecture_network,
        plot,
    )

    try:
        net = lecture_network(activation, layers, width, seed)
        x = torch.randn(batch, width, generator=torch.Generator().manual_seed(seed))
        initialize(net, init_scheme, std=std, nonlinearity=activation, batch=x,
                   generator=torch.Generator().manual_seed(seed + 1))  # fmt: skip
    except ValueError as exc:
        raise InputError(str(exc)) from None
    result = gradient_stats(net, x) if gradients else activation_stats(net, x)
    if png is not None:
        plot(
            result,
            png,
            f"{activation}, init {init_scheme}" + (f" std {std}" if init_scheme == "small" else ""),
        )
    if as_json:
        click.echo(json.dumps([s.to_dict() for s in result]))
    else:
        click.echo(format_table(result) + (f"\n-> {png}" if png else ""))


def _check_memory(layers: int, width: int, batch: int, gradients: bool, activation: str) -> None:
    """Refuse a network that would not fit: more than half of this machine's memory."""
    pieces = 3 if activation == "maxout" else 1  # maxout: a second Linear to 2 * width
    weights = 4 * layers * width * (width + 1) * pieces
    values = 4 * layers * batch * width * 4  # activations and their histograms
    need = weights * (2 if gradients else 1) + values * (2 if gradients else 1)
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not on this platform: no limit known
        return
    if need > memory / 2:
        raise InputError(
            f"--layers {layers} --width {width} --batch {batch}: the network needs about "
            f"{need / 1e9:.1f} GB, more than half of this machine's {memory / 1e9:.0f} GB"
        )
