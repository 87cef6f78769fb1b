"""Training and fine-tuning runs from the command line's options (`optkit train`, `finetune`).

- `run_training` trains optkit's own architecture or the user's model (`UserModel`) on a data
  source, fresh or resuming a checkpoint (`resumed_options` and `check_resumed_model` decide what a
  resumed run may be given), and writes the checkpoint; `train_seeds` does one run per seed.
- `finetune` adapts a checkpoint or the user's model to the data's classes with a transfer
  strategy (`optkit.torch.transfer`); `compare_with_scratch` trains the same network from scratch.
- `split_data` / `prepared` load, split and preprocess the data; `user_model`, `fit_head` and
  `forward_check` make and check the user's model.

Progress lines (what the data is, which head was replaced, each epoch) go to `log` as the run goes;
user mistakes are InputError. The command renders what these functions return.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from optkit.errors import InputError, first_line
from optkit.io.modelspec import format_args, source_file
from optkit.io.outputs import check_output
from optkit.io.run_inputs import UserModel, data_reads, is_image_folder, labels_text, seed_path
from optkit.preprocessing import PreprocessSpec
from optkit.torch.data import Dataset, label_ids, preprocess, subset
from optkit.torch.train import Architecture, Checkpoint, TrainConfig

Log = Callable[[str], None]


def _silent(_line: str) -> None:
    """The default `log`: progress lines go nowhere."""


IMAGENET_MEAN = [0.485, 0.456, 0.406]  # torchvision's ImageNet statistics, of pixels in 0..1
IMAGENET_STD = [0.229, 0.224, 0.225]


# --- data -----------------------------------------------------------------------------------------


def split_data(
    data_source: str, test_fraction: float, seed: int, size: tuple[int, int] | None = None,
    channels: int | None = None, log: Log = _silent,
) -> tuple[Dataset, Dataset, Dataset]:  # fmt: skip
    """(all, train, test) with both splits non-empty. An image folder's images are made `channels`
    channels and, with `size`, resized and center-cropped to it; what was done goes to `log`."""
    from optkit.torch.data import load_data, split

    data = load_data(data_source, size, channels)
    if data.note:
        log(f"{data_source}: {data.note}")
    train_raw, test_raw = split(data, test_fraction, seed)
    for part, name in ((train_raw, "training"), (test_raw, "test")):
        if len(part) == 0:
            raise InputError(
                f"--test-fraction {test_fraction}: leaves no {name} examples of {data_source} "
                f"({len(data)} examples)"
            )
    return data, train_raw, test_raw


def prepared(
    data_source: str, test_fraction: float, seed: int, size: tuple[int, int] | None = None,
    channels: int | None = None, preprocessing: str | Path = "fit",
    recorded: PreprocessSpec | None = None, log: Log = _silent,
) -> tuple[Dataset, Dataset, Dataset, PreprocessSpec, Dataset, Dataset]:  # fmt: skip
    """(all, train, test, spec, preprocessed train, preprocessed test): the data, split, with its
    preprocessing: `recorded` (a resumed run's), else fitted on the training split, ImageNet's or a
    spec file (`preprocessing`)."""
    data, train_raw, test_raw = split_data(data_source, test_fraction, seed, size, channels, log)
    if len(label_ids(data)) < 2:
        raise InputError(f"--data {data_source}: one class only; a classifier needs two or more")
    spec = recorded if recorded is not None else preprocessing_for(preprocessing, train_raw)
    return data, train_raw, test_raw, spec, preprocess(spec, train_raw), preprocess(spec, test_raw)


def preprocessing_for(choice_or_file: str | Path, train_raw: Dataset) -> PreprocessSpec:
    """`fit` (per-channel mean and std of the training split), `imagenet` (pixels / 255, then
    ImageNet's mean and std: what torchvision's pretrained weights expect) or a spec file."""
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


def check_present(wanted: list[int], data: Dataset, data_source: str, option: str) -> None:
    """InputError naming the classes of `wanted` that `data` has no example of."""
    present = label_ids(data)
    missing = [c for c in wanted if c not in present]
    if missing:
        raise InputError(
            f"{option} {','.join(map(str, wanted))}: {data_source} has no example of class "
            f"{','.join(map(str, missing))} (its labels are {labels_text(present)})"
        )


def image_shape(arch: Architecture, data_source: str) -> tuple[tuple[int, int] | None, int | None]:
    """(size, channels) an image folder is loaded at for a model recorded as `arch`."""
    if not is_image_folder(data_source):
        return None, None
    c, h, w = arch.input_shape
    return (h, w), c


# --- the model ------------------------------------------------------------------------------------


def forward_check(model: nn.Module, x: Any, what: str) -> torch.Tensor:
    """The model's output on two examples (eval mode, its mode given back); InputError naming
    `what` when it fails or is not (N, outputs)."""
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


def user_model(options: UserModel, seed: int, log: Log = _silent) -> tuple[nn.Module, str | None]:
    """The factory's model (seeded), the --weights loaded, and its head's name (None: no Linear)."""
    from optkit.torch.usermodel import find_head, load_weights, make_model

    assert options.spec is not None and options.text is not None
    torch.manual_seed(seed)
    model = make_model(options.spec, options.args, f"--model {options.text}")
    log(f"model: {options.describe()}")
    if options.weights is not None:
        notes = load_weights(model, options.weights)
        count = len(model.state_dict())
        log(f"--weights {options.weights}: {count} tensors loaded strictly"
            + (f" ({'; '.join(notes)})" if notes else ""))  # fmt: skip
    try:
        _, head = find_head(model, options.head)
    except InputError:
        if options.head is not None:
            raise
        return model, None
    return model, head


def fit_head(
    model: nn.Module, head: str | None, x: Any, classes: int, what: str, log: Log = _silent
) -> None:
    """Replace the head when the model's outputs are not the data's classes (and say so)."""
    from optkit.torch.usermodel import replace_head

    outputs = int(forward_check(model, x, what).shape[1])
    if outputs == classes:
        return
    if head is None:
        raise InputError(f"{what}: gives {outputs} outputs, the data has {classes} classes, and "
                         "it has no Linear head to replace (name one with --head)")  # fmt: skip
    replace_head(model, head, classes)
    log(f"head {head}: {outputs} outputs -> {classes} (a new Linear for the data's classes)")
    forward_check(model, x, what)


def rebuilt(arch: Architecture, path: Path, log: Log = _silent) -> None:
    """Say which code a checkpoint's model is rebuilt with."""
    if arch.factory is not None:
        log(f"{path}: rebuilding its model with {arch.factory}"
            f"({format_args(arch.factory_args)}) (the checkpoint names this code)")  # fmt: skip


def factory_reads(arch: Architecture) -> tuple[Path, ...]:
    """The file of the factory a checkpoint records (an output must not replace the user's code)."""
    if arch.factory is None:
        return ()
    found = source_file(arch.factory)
    return (found,) if found is not None and found.is_file() else ()


# --- train ----------------------------------------------------------------------------------------


def check_resumed_model(
    saved: Checkpoint, path: Path, user: UserModel, given: Collection[str]
) -> None:
    """A resumed run rebuilds the recorded model: --model, --model-arg, --head, --input-size given
    must be the recorded ones; --weights and --preprocessing have no place (the weights and the
    preprocessing come from the checkpoint). `given`: the options given on the command line."""
    arch = saved.architecture
    if user.weights is not None:
        raise InputError(f"--weights {user.weights}: --resume continues the weights in {path} "
                         "(leave --weights out)")  # fmt: skip
    if "preprocessing" in given:
        raise InputError(f"--preprocessing: --resume keeps the preprocessing recorded in {path} "
                         "(leave it out)")  # fmt: skip
    if user.spec is not None and arch.factory is None:
        raise InputError(f"--model {user.text}: {path} was trained with --arch {arch.name} "
                         "(leave --model out)")  # fmt: skip
    if user.spec is not None and user.spec.text != arch.factory:
        raise InputError(f"--model {user.text}: {path} was trained with --model {arch.factory} "
                         "(leave --model out)")  # fmt: skip
    if "model_args" in given and user.args != arch.factory_args:
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
RESUMED = {
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


def resumed_options(
    saved: Checkpoint, path: Path, options: dict[str, Any], given: Collection[str],
    log: Log = _silent,
) -> dict[str, Any]:  # fmt: skip
    """The options of a resumed run: the recorded ones, refusing a given one that differs.
    `options` are the run's options by name, `given` the names given on the command line."""
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
    resumed = dict(options)
    for name, flag in RESUMED.items():
        if name not in recorded:
            continue
        if name in given and options[name] != recorded[name]:
            raise InputError(
                f"{flag} {options[name]}: {path} was trained with {flag} {recorded[name]}; "
                f"--resume keeps the recorded value (leave {flag} out)"
            )
        resumed[name] = recorded[name]
    if saved.data is not None:  # the split the run was trained on (--seeds: not the run's seed)
        resumed["split_seed"] = saved.data.seed
    done, planned = saved.epochs_done, saved.planned_schedule().total
    epochs = resumed["epochs"] = options["epochs"] if "epochs" in given else max(planned, done)
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
    if "init_scheme" in given:
        log(f"--init {options['init_scheme']} ignored: the weights come from {path}")
    if not saved.architecture.own:
        for name, flag in (("arch", "--arch"), ("activation", "--activation"), ("norm", "--norm")):
            if name in given:
                raise InputError(f"{flag} {options[name]}: {path} holds a --model network "
                                 f"({saved.architecture.factory}); leave {flag} out")  # fmt: skip
    return resumed


def run_training(
    saved: Checkpoint | None, checkpoint: Path, resume: bool, user: UserModel, *,
    data_source: str, arch: str, activation: str, norm: str, init_scheme: str, epochs: int,
    batch_size: int, lr: float, optimizer: str, schedule: str, seed: int, test_fraction: float,
    split_seed: int | None = None, log: Log = _silent,
) -> float | None:  # fmt: skip
    """Train, write `checkpoint`; the final test accuracy (None: nothing left to train).
    `split_seed` (default `seed`) seeds the split, `seed` the initialization and the shuffles.
    Each step, each epoch and the outcome go to `log`."""
    from optkit.torch.init import initialize
    from optkit.torch.train import DataRecord, build_model, check_resumable, train

    config = TrainConfig(epochs, batch_size, lr, optimizer, schedule=schedule, seed=seed)
    if saved is not None:
        resumed_schedule = check_resumable(saved, checkpoint, config)
        if saved.epochs_done >= epochs:
            last = saved.history[-1].test_accuracy if saved.history else float("nan")
            log(f"{checkpoint}: all {saved.epochs_done} epochs of its schedule are done; "
                f"nothing to train (a larger --epochs extends it)")  # fmt: skip
            log(f"test accuracy {last:.2%} -> {checkpoint} (unchanged)")
            return None
    split_seed = seed if split_seed is None else split_seed
    if (saved is not None and not saved.architecture.own) or user.spec is not None:
        return _run_model_training(saved, checkpoint, resume, user, config, data_source,
                                   test_fraction, split_seed, log)  # fmt: skip
    size, channels = user.size, None
    if saved is not None:
        size, channels = image_shape(saved.architecture, data_source)
    _, _, _, spec, train_set, test_set = prepared(
        data_source, test_fraction, split_seed, size, channels, user.preprocessing,
        saved.preprocessing if saved is not None else None, log,
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
        log(f"{data_source}: {len(train_set)} train / {len(test_set)} test, {arch}, "
            f"{activation}, {norm}, init {init_scheme}")  # fmt: skip
    else:
        log(f"resuming {checkpoint} after epoch {saved.epochs_done}: {data_source}, "
            f"{arch}, {activation}, {norm}, schedule {resumed_schedule.describe()}")  # fmt: skip
    history = train(model, architecture, train_set, test_set, config, checkpoint=checkpoint,
                    resume=resume, preprocessing=spec, log=log,
                    data=DataRecord(data_source, test_fraction, split_seed),
                    classes=list(range(train_set.classes)))  # fmt: skip
    log(f"test accuracy {history[-1].test_accuracy:.2%} -> {checkpoint}")
    return history[-1].test_accuracy


def _run_model_training(
    saved: Checkpoint | None, checkpoint: Path, resume: bool, user: UserModel,
    config: TrainConfig, data_source: str, test_fraction: float, split_seed: int, log: Log,
) -> float:  # fmt: skip
    """`train --model`: the factory's model (or, resumed, the recorded one) on the data."""
    from optkit.torch.train import FACTORY, DataRecord, build_model, train
    from optkit.torch.usermodel import input_channels

    seed = config.seed
    if saved is not None:
        size, channels = image_shape(saved.architecture, data_source)
        rebuilt(saved.architecture, checkpoint, log)
        torch.manual_seed(seed)
        model = build_model(saved.architecture)
        head: str | None = saved.architecture.head
    else:
        model, head = user_model(user, seed, log)
        size, channels = user.size, input_channels(model)
    _, _, _, spec, train_set, test_set = prepared(
        data_source, test_fraction, split_seed, size, channels, user.preprocessing,
        saved.preprocessing if saved is not None else None, log,
    )  # fmt: skip
    what = f"--model {user.text}" if saved is None else f"the model of {checkpoint}"
    if saved is None:
        fit_head(model, head, train_set.x, train_set.classes, what, log)
    else:
        forward_check(model, train_set.x, what)
    shape = tuple(int(d) for d in train_set.x.shape[1:])
    if saved is not None:
        architecture = saved.architecture
        if tuple(architecture.input_shape) != shape or architecture.classes != train_set.classes:
            raise InputError(f"--data {data_source}: gives {train_set.classes} classes of "
                             f"{shape}, {checkpoint} holds {architecture.describe()}")  # fmt: skip
        log(f"resuming {checkpoint} after epoch {saved.epochs_done}: {data_source}, "
            f"{architecture.describe()}")  # fmt: skip
    else:
        assert user.spec is not None
        architecture = Architecture(FACTORY, shape, train_set.classes, "", "",  # type: ignore[arg-type]
                                    factory=user.spec.text, factory_args=user.args, head=head)  # fmt: skip
        log(f"{data_source}: {len(train_set)} train / {len(test_set)} test, "
            f"{architecture.describe()}")  # fmt: skip
    history = train(model, architecture, train_set, test_set, config, checkpoint=checkpoint,
                    resume=resume, preprocessing=spec, log=log,
                    data=DataRecord(data_source, test_fraction, split_seed),
                    classes=list(range(train_set.classes)))  # fmt: skip
    log(f"test accuracy {history[-1].test_accuracy:.2%} -> {checkpoint}")
    return history[-1].test_accuracy


@dataclass(frozen=True)
class SeedRuns:
    """`train --seeds`: each run's seed, checkpoint and test accuracy, and their mean."""

    seeds: list[int]
    paths: list[Path]
    accuracies: list[float]
    mean_accuracy: float


def train_seeds(
    seeds: list[int], checkpoint: Path, user: UserModel, options: dict[str, Any], log: Log = _silent
) -> SeedRuns:
    """`train --seeds`: every output checked as a single run's is, before any training; then one
    run per seed (split and preprocessing of --seed, initialization and shuffles of the run's)."""
    from optkit.torch.train import is_checkpoint

    paths = [seed_path(checkpoint, k) for k in seeds]
    for path in paths:
        check_output(path, **data_reads(options["data_source"], also=user.reads),
                     what="--checkpoint")  # fmt: skip
        if path.exists() and not is_checkpoint(path):
            raise InputError(f"--checkpoint {path}: exists and is not an optkit checkpoint; "
                             "refusing to overwrite it (choose another name)")  # fmt: skip
    accuracies: list[float] = []
    for k, path in zip(seeds, paths, strict=True):
        log(f"seed {k} -> {path}")
        run = {**options, "seed": k, "split_seed": options["seed"]}
        accuracy = run_training(None, path, False, user, log=log, **run)
        assert accuracy is not None  # a fresh run always trains
        accuracies.append(accuracy)
    return SeedRuns(seeds, paths, accuracies, float(np.mean(accuracies)))


# --- finetune -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finetuned:
    """A fine-tuning run: its test accuracy on the classes `wanted` (written to `output`), and what
    `compare_with_scratch` needs to train the same network from scratch."""

    accuracy: float
    wanted: list[int]
    output: Path
    architecture: Architecture
    train_set: Dataset
    test_set: Dataset
    config: TrainConfig


def finetune(
    checkpoint: Path | None, user: UserModel, *, output: Path, reads: tuple[Path, ...],
    data_source: str, asked: list[int] | None, per_class: int | None, strategy: str, k: int,
    similar: bool, config: TrainConfig, test_fraction: float, log: Log = _silent,
) -> Finetuned:  # fmt: skip
    """Transfer learning from `checkpoint` (or the user's model) to the classes `asked` (default:
    all) of the data, with `strategy` ('auto': the lecture's table, the choice and why to `log`);
    `reads` are the files the command reads besides the data (the output must not replace them)."""
    from optkit.torch.train import FACTORY, DataRecord, load_checkpoint, restore, train
    from optkit.torch.transfer import choose_strategy, prepare_transfer, transfer_report
    from optkit.torch.usermodel import input_channels

    seed, lr = config.seed, config.lr
    head_name: str | None
    spec: PreprocessSpec | None
    if checkpoint is not None:
        saved = load_checkpoint(checkpoint)
        if saved.architecture.stage is not None:
            raise InputError(f"{checkpoint}: a stage classifier (finetune --strategy stages); "
                             "fine-tune the checkpoint it was made from instead")  # fmt: skip
        source_arch = saved.architecture
        also = (*reads, *factory_reads(source_arch))
        check_output(output, **data_reads(data_source, also=also), what="output")
        rebuilt(source_arch, checkpoint, log)
        net = restore(saved, str(checkpoint))
        head_name = source_arch.head
        size, channels = image_shape(source_arch, data_source)
        if user.size is not None and size is not None and user.size != size:
            raise InputError(f"--input-size {user.size_text}: {checkpoint} takes "
                             f"{size[0]}x{size[1]} images (leave --input-size out)")  # fmt: skip
        spec = saved.preprocessing
        what = f"the model of {checkpoint}"
    else:
        net, head_name = user_model(user, seed, log)
        if head_name is None:
            raise InputError(f"--model {user.text}: has no Linear layer to serve as its head "
                             "(name one with --head)")  # fmt: skip
        size, channels, spec = user.size, input_channels(net), None
        what = f"--model {user.text}"
        if user.weights is None:
            log("no --weights: the backbone is as the factory made it (pretrained only if the "
                "factory loads weights itself)")  # fmt: skip
    data, train_raw, test_raw = split_data(data_source, test_fraction, seed, size, channels, log)
    if checkpoint is None:
        spec = preprocessing_for(user.preprocessing, train_raw)
    wanted = asked if asked is not None else label_ids(data)
    if len(wanted) < 2:
        raise InputError(f"--data {data_source}: one class only; a classifier needs two or more")
    check_present(wanted, data, data_source, "--classes")
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
        outputs = int(forward_check(net, train_set.x, what).shape[1])
        source_arch = Architecture(FACTORY, shape, outputs, "", "",  # type: ignore[arg-type]
                                   factory=user.spec.text, factory_args=user.args,
                                   head=head_name)  # fmt: skip
    if strategy == "auto":
        strategy, k, why = choose_strategy(len(train_set) // len(wanted), similar)
        log(f"strategy {strategy}" + (f" (k={k})" if strategy == "last-k" else "") + f": {why}")
    new_arch = replace(source_arch, classes=len(wanted))
    record = DataRecord(data_source, test_fraction, seed)
    if strategy == "stages":
        accuracy = _fit_stages(net, source_arch, train_set, test_set, spec, wanted, record,
                               output, head_name, log)  # fmt: skip
    else:
        groups = prepare_transfer(net, len(wanted), strategy, k, lr, seed, head_name, log=log)
        log(transfer_report(net))
        history = train(net, new_arch, train_set, test_set, config, checkpoint=output,
                        preprocessing=spec, param_groups=groups, log=log, classes=wanted,
                        data=record, origin="finetune")  # fmt: skip
        accuracy = history[-1].test_accuracy
    return Finetuned(accuracy, wanted, output, new_arch, train_set, test_set, config)


def _fit_stages(
    net: nn.Module, source_arch: Architecture, train_set: Dataset, test_set: Dataset,
    spec: PreprocessSpec | None, wanted: list[int], record: Any, output: Path,
    head_name: str | None, log: Log,
) -> float:  # fmt: skip
    """`--strategy stages`: the best stage classifier, written to `output`; its test accuracy."""
    from optkit.torch.train import Checkpoint, evaluate, save_checkpoint
    from optkit.torch.transfer import fit_stage_classifier

    probe = fit_stage_classifier(net, train_set, seed=record.seed, log=log, head_name=head_name)
    arch = replace(source_arch, stage=probe.stage,
                   stage_features=probe.linear.in_features, stage_classes=len(wanted))  # fmt: skip
    save_checkpoint(output, Checkpoint(arch, probe.state_dict(), [], spec, classes=wanted,
                                       data=record, origin="finetune"))  # fmt: skip
    return evaluate(probe, test_set)


@dataclass(frozen=True)
class ScratchComparison:
    """Transfer against the same network trained from scratch: both test accuracies, the gain in
    points and what one test example is worth in points."""

    transferred: float
    from_scratch: float
    gain: float
    example_points: float

    @property
    def helped(self) -> bool:
        return self.gain > 0


def compare_with_scratch(run: Finetuned, log: Log = _silent) -> ScratchComparison:
    """Train the run's network from scratch (torch's default initialization, the same options and
    examples); the epochs go to `log`."""
    from optkit.torch.train import build_model, train

    torch.manual_seed(run.config.seed)
    scratch = build_model(run.architecture)
    log(f"from scratch on the same {len(run.train_set)} examples:")
    last = train(scratch, run.architecture, run.train_set, run.test_set, run.config, log=log)[-1]
    gain = 100 * (run.accuracy - last.test_accuracy)
    return ScratchComparison(run.accuracy, last.test_accuracy, gain, 100 / len(run.test_set))
