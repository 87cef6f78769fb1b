"""Training, evaluation and checkpoints.

- `train` runs SGD or Adam with a learning-rate schedule over a seeded shuffle (epoch e shuffles
  with seed + e, so a resumed run sees the same batches as an uninterrupted one), logs each epoch,
  and writes a checkpoint after each (atomically: temp file, then rename) that `resume` continues.
  The schedule is a `Schedule` recorded in the checkpoint: a resumed run continues it, and more
  epochs extend it without the learning rate ever going up (see `Schedule`).
- A checkpoint (`optkit-checkpoint-2`) knows what it is: the architecture, the label ids its head's
  outputs stand for (`classes`), the preprocessing, the training config and schedule, the data it
  was trained on and the command that wrote it. `optkit-checkpoint-1` files still load (their
  classes are then unknown: `range(head outputs)`).
- `evaluate` always runs the model in eval mode (BatchNorm with its running statistics, Dropout off)
  and puts it back in the mode it was in.
- `build_model` makes a model of `optkit.models` from its name and choices, or the user's own model
  from the factory that made it (`Architecture.factory`, `package.module:factory` or
  `path/to/file.py:factory`, called with `factory_args`; see `optkit.torch.usermodel`); a checkpoint
  records them, so `restore` rebuilds the model without the script that trained it. Rebuilding a
  model from a factory imports and runs that code: a checkpoint that records a factory is code.
- `train` (and its shorthand `fit`) takes any `nn.Module`, and an optkit `Dataset`, a torch
  `Dataset` of (input, label) pairs or a `DataLoader`.
- Transfer learning (new heads, freezing, the strategies, stage classifiers) is
  `optkit.torch.transfer`.
"""

from __future__ import annotations

import itertools
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from optkit.errors import InputError, first_line
from optkit.io.outputs import check_output
from optkit.preprocessing import PreprocessSpec
from optkit.torch.data import Dataset
from optkit.torch.usermodel import find_head, replace_head
from optkit.training_options import OPTIMIZERS, SCHEDULES, LRSchedule, Optimizer

ARCHITECTURES = ("mlp", "cnn", "resnet")
FACTORY = "model"  # Architecture.name of a model made by a factory (the user's own)
MODULE = "module"  # ... of a module given to the Python API as it is (not rebuildable)
CHECKPOINT_FORMAT = "optkit-checkpoint-2"
READABLE_FORMATS = ("optkit-checkpoint-1", CHECKPOINT_FORMAT)
# What a resumed run must share with the run it continues (everything but the number of epochs).
RESUMED_FIELDS = ("optimizer", "schedule", "batch_size", "lr", "momentum", "weight_decay", "seed")


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    optimizer: str = Optimizer.SGD.value  # an Optimizer's value (checkpoints store plain strings)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = LRSchedule.COSINE.value  # an LRSchedule's value
    seed: int = 0

    def check(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"optimizer {self.optimizer!r}: choose {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise InputError(f"schedule {self.schedule!r}: choose {', '.join(SCHEDULES)}")
        if self.epochs < 1:
            raise InputError(f"epochs {self.epochs}: must be at least 1")
        if self.batch_size < 1:
            raise InputError(f"batch size {self.batch_size}: must be at least 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"learning rate {self.lr}: must be a positive number")
        for name in ("momentum", "weight_decay"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise InputError(f"{name.replace('_', ' ')} {value}: must be a number >= 0")
        if self.seed < 0:
            raise InputError(f"seed {self.seed}: must be >= 0")


@dataclass
class Schedule:
    """The learning rate of every epoch: a base schedule over the planned run, then extensions.

    The base schedule is `kind` over `epochs` epochs, as torch's schedulers compute it (bit for
    bit): cosine anneals from the initial lr towards 0 (CosineAnnealingLR, T_max = epochs), step
    multiplies it by 0.1 every max(1, epochs // 3) epochs (StepLR), none keeps it.

    Each entry of `extended_to` is a new total number of epochs, added when a run was resumed with
    more epochs than it had planned. The extension from S to N epochs starts from L, the learning
    rate of epoch S (the last one the schedule covered before): under cosine, epoch S + k
    (k = 1 .. N - S) trains at L * (1 + cos(pi * (k - 1) / (N - S))) / 2, a cosine from L towards 0
    over the new epochs (the first new epoch at L); under step and none it stays at L. The epochs
    the schedule covered keep their learning rates, and the rate never goes up across an extension.
    """

    kind: str = LRSchedule.COSINE.value
    epochs: int = 10
    extended_to: list[int] = field(default_factory=list)

    def check(self) -> None:
        """InputError unless this is a schedule `train` can follow (a known kind, at least one
        epoch, each extension longer than what it extends)."""
        if self.kind not in SCHEDULES:
            raise InputError(f"schedule {self.kind!r}: choose {', '.join(SCHEDULES)}")
        bounds = [self.epochs, *self.extended_to]
        if self.epochs < 1 or any(b <= a for a, b in itertools.pairwise(bounds)):
            raise InputError(f"schedule over {bounds} epochs: each must be more than the last")

    @property
    def total(self) -> int:
        """The epochs it covers."""
        return self.extended_to[-1] if self.extended_to else self.epochs

    def extend(self, epochs: int) -> Schedule:
        """This schedule over `epochs` in all (at least `total`)."""
        if epochs < self.total:
            raise InputError(
                f"the schedule covers {self.total} epochs; cannot shorten it to {epochs}"
            )
        if epochs == self.total:
            return self
        return Schedule(self.kind, self.epochs, [*self.extended_to, epochs])

    def lr(self, initial: float, epoch: int) -> float:
        """The learning rate of 0-based `epoch` for a parameter group that started at `initial`."""
        if not 0 <= epoch < self.total:
            raise ValueError(f"epoch {epoch + 1} is outside the schedule's {self.total} epochs")
        if epoch < self.epochs:
            return self._base(initial, epoch)
        bounds = [self.epochs, *self.extended_to]
        start, end = next((a, b) for a, b in itertools.pairwise(bounds) if epoch < b)
        last = self.lr(initial, start - 1)  # the rate of the last epoch before the extension
        if self.kind != LRSchedule.COSINE:
            return last
        return last * (1 + math.cos(math.pi * (epoch - start) / (end - start))) / 2

    def _base(self, initial: float, epoch: int) -> float:
        # The recurrences of torch's CosineAnnealingLR (eta_min 0) and StepLR (gamma 0.1), so a
        # run gets the same floats as with the schedulers themselves.
        lr = initial
        if self.kind == LRSchedule.COSINE:
            for i in range(1, epoch + 1):
                lr = (1 + math.cos(math.pi * i / self.epochs)) / (
                    1 + math.cos(math.pi * (i - 1) / self.epochs)
                ) * (lr - 0.0) + 0.0
        elif self.kind == LRSchedule.STEP:
            step = max(1, self.epochs // 3)
            for i in range(1, epoch + 1):
                if i % step == 0:
                    lr = lr * 0.1
        return lr

    def describe(self) -> str:
        text = f"{self.kind} over {self.epochs} epochs"
        for start, end in itertools.pairwise([self.epochs, *self.extended_to]):
            text += f", extended {start}->{end}"
        return text


@dataclass
class DataRecord:
    """Which data a checkpoint was trained on and how it was split (so `export` measures on the
    same test split)."""

    source: str
    test_fraction: float = 0.25
    seed: int = 0


@dataclass
class Architecture:
    """What `build_model` needs to rebuild a model; stored in every checkpoint.

    `name` is one of ARCHITECTURES (optkit's own, with `activation` and `norm`), FACTORY (the user's
    model: `factory(**factory_args)`, its head `head` given `classes` outputs) or MODULE (a module
    handed to `train` as it is, which a checkpoint cannot rebuild)."""

    name: str
    input_shape: tuple[int, int, int]  # (C, H, W)
    classes: int
    activation: str = "relu"
    norm: str = "batch"
    stage: str | None = None  # a StageClassifier reading this module's output ...
    stage_features: int = 0  # ... this wide ...
    stage_classes: int = 0  # ... into this many classes
    factory: str | None = None  # 'package.module:factory' or '/abs/path/file.py:factory'
    factory_args: dict[str, Any] = field(default_factory=dict)
    head: str | None = None  # the head's dotted name (None: the last Linear)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def own(self) -> bool:
        """One of optkit's own architectures (not the user's model)."""
        return self.name in ARCHITECTURES and self.factory is None

    def describe(self) -> str:
        """One line: what the model is."""
        from optkit.io.modelspec import format_args

        c, h, w = self.input_shape
        if self.factory is not None:
            what = f"{self.factory}({format_args(self.factory_args)})"
        elif self.own:
            what = f"{self.name}, {self.activation}, {self.norm}"
        else:
            what = "a module given as it is"
        return f"{what}, input {c}x{h}x{w}, {self.classes} outputs"


@dataclass
class EpochLog:
    epoch: int
    loss: float
    train_accuracy: float
    test_accuracy: float
    lr: float
    seconds: float

    def line(self, epochs: int) -> str:
        return (
            f"epoch {self.epoch:>3}/{epochs}  loss {self.loss:.4f}  train {self.train_accuracy:6.2%}"
            f"  test {self.test_accuracy:6.2%}  lr {self.lr:.2e}  {self.seconds:.1f} s"
        )


@dataclass
class Checkpoint:
    architecture: Architecture
    state: dict[str, Any]
    history: list[EpochLog] = field(default_factory=list)
    preprocessing: PreprocessSpec | None = None
    config: TrainConfig | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # optimizer state, epochs done
    classes: list[int] | None = None  # the label id of each head output (None: unknown, format 1)
    schedule: Schedule | None = None
    data: DataRecord | None = None
    origin: str = "train"  # the command that wrote it: "train" or "finetune"
    format: str = CHECKPOINT_FORMAT  # the format it was read from

    @property
    def outputs(self) -> int:
        """How many classes the head scores."""
        arch = self.architecture
        return arch.stage_classes if arch.stage is not None else arch.classes

    @property
    def labels(self) -> list[int]:
        """The label id each head output stands for: the recorded classes, else 0 .. outputs-1."""
        return list(self.classes) if self.classes is not None else list(range(self.outputs))

    @property
    def epochs_done(self) -> int:
        return int(self.extra.get("epoch", len(self.history)))

    def planned_schedule(self) -> Schedule:
        """The recorded schedule; for a format-1 checkpoint, rebuilt from its config (and the
        cosine scheduler's T_max)."""
        if self.schedule is not None:
            return self.schedule
        config = self.config or TrainConfig()
        scheduler = self.extra.get("scheduler") or {}
        planned = config.epochs
        if config.schedule == LRSchedule.COSINE and "T_max" in scheduler:
            planned = int(scheduler["T_max"])
        done = self.epochs_done
        return Schedule(config.schedule, planned, [done] if done > planned else [])


class StageClassifier(nn.Module):
    """A frozen backbone read at one stage (a module's output, flattened), standardized with the
    training features' mean and std, and a linear classifier: exportable like any model."""

    def __init__(self, backbone: nn.Module, stage: str, features: int, classes: int) -> None:
        super().__init__()
        self.backbone, self.stage = backbone, stage
        self.linear = nn.Linear(features, classes)
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("std", torch.ones(features))
        self._captured: list[torch.Tensor] = []
        backbone.get_submodule(stage).register_forward_hook(self._capture)
        for p in backbone.parameters():
            p.requires_grad = False

    def _capture(self, _module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        self._captured.append(output)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        self._captured.clear()
        self.backbone.eval()
        self.backbone(x)
        return self._captured[-1].flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear((self.features(x) - self.mean) / self.std)


def build_model(arch: Architecture) -> nn.Module:
    """A model of `optkit.models` for (C, H, W) inputs and `arch.classes` outputs, or the user's
    model from its factory (imported and called: this runs the code the record names), its head
    replaced when the factory's has another number of outputs."""
    from optkit.models import ImageMLP, ResNetStyle, VGGStyle

    if arch.stage is not None:
        backbone = build_model(replace(arch, stage=None, stage_features=0, stage_classes=0))
        return StageClassifier(backbone, arch.stage, arch.stage_features, arch.stage_classes)
    if arch.factory is not None:
        from optkit.torch.usermodel import make_model

        model = make_model(arch.factory, arch.factory_args, f"the model factory {arch.factory}")
        layer, name = find_head(model, arch.head)
        if layer.out_features != arch.classes:
            replace_head(model, name, arch.classes)
        return model
    if arch.name == MODULE:
        raise InputError(
            "the checkpoint holds the weights of a module given to train() as it is; optkit "
            "cannot rebuild it: load its 'state' into your model (or train with a factory)"
        )
    c, h, w = arch.input_shape
    if arch.name == "mlp":
        return ImageMLP((c, h, w), (128, 64), arch.classes, arch.activation, arch.norm)
    if arch.name == "cnn":
        if h != w or h % 4:
            raise InputError(f"cnn needs square images with a side divisible by 4, not {h}x{w}")
        return VGGStyle(arch.classes, (16, 32), c, h, arch.activation, arch.norm)
    if arch.name == "resnet":
        return ResNetStyle(arch.classes, 16, 2, c, arch.activation, arch.norm)
    raise InputError(f"unknown architecture {arch.name!r}; choose {', '.join(ARCHITECTURES)}")


Data = Dataset | DataLoader  # what the training loop reads (see `as_data`)


def as_data(data: Any, what: str = "data") -> Data:
    """An optkit `Dataset` or a `DataLoader` as it is; a torch map-style `Dataset` of (input, label)
    pairs gathered into a `Dataset` (in memory); InputError for anything else."""
    if isinstance(data, Dataset | DataLoader):
        return data
    if isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__"):
        xs, ys = [], []
        for index in range(len(data)):
            item = data[index]
            if not isinstance(item, tuple | list) or len(item) != 2:
                raise InputError(f"{what}: item {index} is not an (input, label) pair")
            x, y = item
            xs.append(x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x))
            ys.append(int(y))
        if not xs:
            raise InputError(f"{what}: no examples")
        labels = np.array(ys, np.int64)
        return Dataset(np.stack(xs).astype(np.float32), labels, int(labels.max()) + 1)
    raise InputError(
        f"{what}: a {type(data).__name__}; give an optkit Dataset, a torch Dataset of (input, "
        "label) pairs or a DataLoader"
    )


def _loader_batches(loader: DataLoader, what: str) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    for item in loader:
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise InputError(f"{what}: the DataLoader must give (inputs, labels) batches")
        x, y = item
        yield torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y).long()


def evaluate(model: nn.Module, data: Any, batch_size: int = 512) -> float:
    """Top-1 accuracy on `data` (a Dataset, torch Dataset or DataLoader), in eval mode (the model's
    mode is restored)."""
    data = as_data(data, "evaluation data")
    was_training = model.training
    model.eval()
    correct = seen = 0
    with torch.no_grad():
        if isinstance(data, DataLoader):
            for x, y in _loader_batches(data, "evaluation data"):
                correct += int((model(x).argmax(dim=1) == y).sum())
                seen += len(y)
        else:
            for start in range(0, len(data), batch_size):
                x = torch.from_numpy(data.x[start : start + batch_size])
                y = torch.from_numpy(data.y[start : start + batch_size])
                correct += int((model(x).argmax(dim=1) == y).sum())
            seen = len(data)
    model.train(was_training)
    return correct / max(1, seen)


def module_architecture(model: nn.Module, data: Data) -> Architecture:
    """The record of a module given as it is: its input shape (C, H, W) and output count, read from
    one example (in eval mode). A checkpoint of it keeps the weights but cannot rebuild it."""
    if isinstance(data, DataLoader):
        try:  # the first example, without drawing a batch from the loader's shuffle
            first = data.dataset[0]
            sample = torch.as_tensor(first[0], dtype=torch.float32)[None]
        except (TypeError, IndexError, KeyError, NotImplementedError):
            x, _ = next(iter(_loader_batches(data, "training data")))
            sample = x[:1]
    else:
        sample = torch.from_numpy(data.x[:1])
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(sample)
    model.train(was_training)
    shape = tuple(int(d) for d in sample.shape[1:])
    if len(shape) != 3:
        shape = (*shape, 1, 1, 1)[:3]
    return Architecture(MODULE, shape, int(out.shape[-1]), "", "")  # type: ignore[arg-type]


def _optimizer(groups: Iterable[dict[str, Any]], config: TrainConfig) -> torch.optim.Optimizer:
    groups = list(groups)
    if config.optimizer == Optimizer.ADAM:
        return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def train(
    model: nn.Module,
    arch: Architecture | None,
    train_set: Any,
    test_set: Any = None,
    config: TrainConfig | None = None,
    *,
    checkpoint: Path | None = None,
    resume: bool = False,
    preprocessing: PreprocessSpec | None = None,
    param_groups: list[dict[str, Any]] | None = None,
    log: Callable[[str], None] | None = None,
    until: int | None = None,
    classes: list[int] | None = None,
    data: DataRecord | None = None,
    origin: str = "train",
) -> list[EpochLog]:
    """Train `model` in place; returns the per-epoch log (the resumed part included).

    With `resume`, an existing `checkpoint` restores weights, optimizer state, schedule and history,
    and training continues after its last epoch; `until` stops after that epoch (a time-boxed run
    that a later `resume` completes, bit for bit as if uninterrupted). The resumed run must use the
    recorded optimizer, schedule, batch size, learning rate, momentum, weight decay and seed
    (InputError naming the one that differs); `config.epochs` may not cut the recorded schedule
    short, and more epochs extend it (`Schedule.extend`: the learning rate never goes up).

    BatchNorm layers whose parameters are all frozen stay in eval mode (their running statistics are
    part of the frozen backbone). Under `torch.distributed` (torchrun), each process computes the
    loss of its share of every batch (over the whole batch's size) and the gradients are summed
    across processes: the full batch's gradient, as one process computes it up to float
    reassociation (BatchNorm statistics are per process, as in DDP).

    Checkpoints record `classes` (the label id of each output; default 0 .. arch.classes-1), `data`
    and `origin` (the command writing it) besides the weights, config and schedule.

    `train_set` and `test_set` are optkit Datasets, torch Datasets of (input, label) pairs or
    DataLoaders (`test_set` None: no test accuracy, nan). A DataLoader's own batches and order are
    used (its sampler's `set_epoch(epoch)` is called, as DistributedSampler wants; a resume is then
    bit for bit only if the loader's order is); under torch.distributed each process reads its own
    loader and the loss of each is divided by the world size. `arch` None records the module as it
    is (`module_architecture`); `config` None is `TrainConfig()`.
    """
    config = config if config is not None else TrainConfig()
    config.check()
    train_data = as_data(train_set, "training data")
    test_data = as_data(test_set, "test data") if test_set is not None else None
    if arch is None:
        arch = module_architecture(model, train_data)
    torch.manual_seed(config.seed)
    groups = param_groups or [{"params": [p for p in model.parameters() if p.requires_grad]}]
    optimizer = _optimizer(groups, config)
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    schedule = Schedule(config.schedule, config.epochs)
    history: list[EpochLog] = []
    start = 0
    if resume and checkpoint is not None and checkpoint.exists():
        saved = load_checkpoint(checkpoint)
        schedule, start = _resume(saved, checkpoint, model, arch, optimizer, config)
        history = list(saved.history)
        classes = classes if classes is not None else saved.classes
        data = data if data is not None else saved.data
    labels = list(classes) if classes is not None else list(range(arch.classes))
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if distributed else 0
    world = torch.distributed.get_world_size() if distributed else 1
    has_batchnorm = any(isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) for m in model.modules())
    last = config.epochs if until is None else min(config.epochs, until)
    for epoch in range(start, last):
        began = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr(group["initial_lr"], epoch)
        lr = optimizer.param_groups[0]["lr"]
        model.train()
        _freeze_frozen_batchnorms(model)
        total_loss, correct, seen = 0.0, 0, 0
        batches = _batch_count(train_data, config)
        for index, (x, y, full) in enumerate(_batches(train_data, config, epoch, rank, world)):
            if full < 2 and has_batchnorm:
                continue  # BatchNorm cannot train on a batch of one
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y, reduction="sum") / full
            optimizer.zero_grad()
            loss.backward()
            if distributed:
                for p in model.parameters():
                    if p.grad is not None:
                        torch.distributed.all_reduce(p.grad)
            optimizer.step()
            total_loss += float(loss.detach()) * full
            correct += int((logits.argmax(1) == y).sum()) * world
            seen += full
            if log is not None and sys.stderr.isatty() and batches:
                done = (index + 1) / batches
                print(
                    f"\r  epoch {epoch + 1} [{'#' * int(20 * done):<20}] {done:4.0%}",
                    end="",
                    file=sys.stderr,
                )
        entry = EpochLog(
            epoch + 1,
            total_loss / max(1, seen),
            correct / max(1, seen),
            evaluate(model, test_data) if test_data is not None else float("nan"),
            lr,
            time.perf_counter() - began,
        )
        if not math.isfinite(entry.loss):
            raise InputError(
                f"training diverged in epoch {epoch + 1} (loss {entry.loss}) at learning rate "
                f"{lr:.3g}: give a smaller --lr; "
                + (f"{checkpoint} keeps the last finite epoch" if checkpoint and epoch > start
                   else "nothing was written")
            )  # fmt: skip
        history.append(entry)
        if log is not None:
            if sys.stderr.isatty():
                print("\r" + " " * 40 + "\r", end="", file=sys.stderr)
            log(entry.line(config.epochs))
        if checkpoint is not None and rank == 0:
            save_checkpoint(
                checkpoint,
                Checkpoint(
                    arch,
                    model.state_dict(),
                    history,
                    preprocessing,
                    config,
                    {
                        "optimizer": optimizer.state_dict(),
                        "epoch": epoch + 1,
                        "rng": torch.get_rng_state(),  # Dropout's draws continue on resume
                    },
                    classes=labels,
                    schedule=schedule,
                    data=data,
                    origin=origin,
                ),
            )
    return history


def _batch_count(data: Data, config: TrainConfig) -> int | None:
    if isinstance(data, DataLoader):
        try:
            return len(data)
        except TypeError:  # an iterable dataset: no length
            return None
    return math.ceil(len(data) / config.batch_size)


def _batches(
    data: Data, config: TrainConfig, epoch: int, rank: int, world: int
) -> Iterable[tuple[torch.Tensor, torch.Tensor, int]]:
    """(inputs, labels, examples in the whole batch) for each step of `epoch`. An optkit Dataset is
    shuffled with seed + epoch and each process takes its share of every batch; a DataLoader is
    read as it is (one per process under torch.distributed)."""
    if isinstance(data, DataLoader):
        set_epoch = getattr(getattr(data, "sampler", None), "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
        for x, y in _loader_batches(data, "training data"):
            yield x, y, len(y) * world
        return
    x_all, y_all = torch.from_numpy(data.x), torch.from_numpy(data.y)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(config.seed + epoch))
    for index in range(math.ceil(len(data) / config.batch_size)):
        batch = order[index * config.batch_size : (index + 1) * config.batch_size]
        mine = batch[rank::world]  # this process's share of the batch
        yield x_all[mine], y_all[mine], len(batch)


def fit(
    model: nn.Module,
    train_data: Any,
    test_data: Any = None,
    *,
    checkpoint: Path | None = None,
    resume: bool = False,
    log: Callable[[str], None] | None = print,
    param_groups: list[dict[str, Any]] | None = None,
    classes: list[int] | None = None,
    preprocessing: PreprocessSpec | None = None,
    arch: Architecture | None = None,
    **settings: Any,
) -> list[EpochLog]:
    """`train` for a module as it is: `fit(model, loader, test_loader, epochs=3, lr=0.01)`. The
    settings are TrainConfig's fields (epochs, batch_size, lr, optimizer, momentum, weight_decay,
    schedule, seed); a log line per epoch goes to `log` (print by default)."""
    unknown = sorted(set(settings) - set(TrainConfig.__dataclass_fields__))
    if unknown:
        raise TypeError(f"fit() got unknown settings {', '.join(unknown)}")
    return train(model, arch, train_data, test_data, TrainConfig(**settings),
                 checkpoint=checkpoint, resume=resume, log=log, param_groups=param_groups,
                 classes=classes, preprocessing=preprocessing)  # fmt: skip


def check_resumable(saved: Checkpoint, path: Path, config: TrainConfig) -> Schedule:
    """The schedule a run resumed from `saved` with `config` follows; InputError when `config`
    differs from the recorded one in anything but the epochs, or would cut the schedule short."""
    if saved.origin != "train":
        raise InputError(f"{path}: written by `optkit {saved.origin}`; it cannot be resumed")
    if "optimizer" not in saved.extra or "epoch" not in saved.extra:
        raise InputError(f"{path}: holds no optimizer state to resume from")
    recorded = saved.config
    if recorded is not None:
        for name in RESUMED_FIELDS:
            want, given = getattr(recorded, name), getattr(config, name)
            if want != given:
                raise InputError(
                    f"{path}: trained with {name.replace('_', ' ')} {want}, not {given}; a "
                    "resumed run keeps the recorded value"
                )
    done, schedule = saved.epochs_done, saved.planned_schedule()
    if config.epochs < done:
        raise InputError(
            f"{path}: {done} epochs already trained, {config.epochs} asked; give {done} or more "
            "(more extends the schedule)"
        )
    if config.epochs < schedule.total:
        raise InputError(
            f"{path}: its schedule runs {schedule.total} epochs ({done} done); {config.epochs} "
            f"would cut it short (give {schedule.total} or more)"
        )
    return schedule.extend(config.epochs)


def _resume(
    saved: Checkpoint,
    path: Path,
    model: nn.Module,
    arch: Architecture,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
) -> tuple[Schedule, int]:
    if saved.architecture != arch:
        raise InputError(f"{path}: trained for {saved.architecture}, not {arch}")
    schedule = check_resumable(saved, path, config)
    try:
        model.load_state_dict(saved.state)
        optimizer.load_state_dict(saved.extra["optimizer"])
        if "rng" in saved.extra:  # written since the format recorded it
            torch.set_rng_state(saved.extra["rng"])
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"{path}: its weights or optimizer state do not fit this model ({first_line(exc)})"
        ) from None
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    return schedule, saved.epochs_done


def _freeze_frozen_batchnorms(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            parameters = list(module.parameters())
            if parameters and not any(p.requires_grad for p in parameters):
                module.eval()


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Atomically: a temporary file in the same folder, then a rename. Always the current format.
    InputError, before writing, when `path` is a directory, in a folder that does not exist, or the
    data file the checkpoint records it was trained on (`optkit.io.outputs.check_output`)."""
    data_file = checkpoint.data.source if checkpoint.data is not None else ""
    reads = [data_file] if data_file not in ("", "digits") and Path(data_file).is_file() else []
    check_output(path, reads=reads, what="checkpoint")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "origin": checkpoint.origin,
        "architecture": checkpoint.architecture.to_dict(),
        "classes": checkpoint.labels,
        "state": checkpoint.state,
        "history": [asdict(h) for h in checkpoint.history],
        "preprocessing": checkpoint.preprocessing.to_json() if checkpoint.preprocessing else None,
        "config": asdict(checkpoint.config) if checkpoint.config else None,
        "schedule": asdict(checkpoint.schedule) if checkpoint.schedule else None,
        "data": asdict(checkpoint.data) if checkpoint.data else None,
        "extra": checkpoint.extra,
    }
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> Checkpoint:
    """A checkpoint written by `save_checkpoint` (format 2, or 1); InputError for anything else.

    Loaded with `weights_only=True`: a file that is not a checkpoint cannot run code by being
    loaded (`restore` of one that records a factory does run that factory)."""
    if not Path(path).is_file():
        raise InputError(f"{path}: no such checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types on a bad file
        raise InputError(f"{path}: not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") not in READABLE_FORMATS:
        raise InputError(f"{path}: not an optkit checkpoint")
    try:
        checkpoint = _from_payload(payload)
    except InputError as exc:
        raise InputError(f"{path}: a damaged optkit checkpoint ({exc})") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        reason = f"missing {exc}" if isinstance(exc, KeyError) else first_line(exc)
        raise InputError(f"{path}: a damaged optkit checkpoint ({reason})") from None
    return checkpoint


def _from_payload(payload: dict[str, Any]) -> Checkpoint:
    arch = dict(payload["architecture"])
    arch["input_shape"] = tuple(int(d) for d in arch["input_shape"])
    if len(arch["input_shape"]) != 3:
        raise InputError(f"input shape {arch['input_shape']}: expected (C, H, W)")
    architecture = Architecture(**arch)
    if not isinstance(payload["state"], dict):
        raise InputError("no weights")
    spec = payload.get("preprocessing")
    schedule = payload.get("schedule")
    data = payload.get("data")
    extra = payload.get("extra") or {}
    if not isinstance(extra, dict):
        raise InputError("extra is not a dict")
    checkpoint = Checkpoint(
        architecture,
        payload["state"],
        [EpochLog(**h) for h in payload.get("history") or []],
        PreprocessSpec.from_json(spec, "its preprocessing") if spec else None,
        TrainConfig(**payload["config"]) if payload.get("config") else None,
        extra,
        schedule=Schedule(**schedule) if schedule else None,
        data=DataRecord(**data) if data else None,
        origin=str(payload.get("origin") or "train"),
        format=payload["format"],
    )
    if checkpoint.config is not None:
        checkpoint.config.check()
    schedule_record = checkpoint.planned_schedule()
    schedule_record.check()
    if checkpoint.epochs_done > schedule_record.total or checkpoint.epochs_done < 0:
        raise InputError(
            f"{checkpoint.epochs_done} epochs done, but its schedule covers {schedule_record.total}"
        )
    for name, tensor in checkpoint.state.items():
        if not isinstance(tensor, torch.Tensor):
            raise InputError(f"weight {name!r} is not a tensor")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise InputError(f"weight {name!r} holds NaN or inf (a diverged run?)")
    classes = payload.get("classes")
    if classes is not None:
        classes = [int(c) for c in classes]
        if len(classes) != checkpoint.outputs or len(set(classes)) != len(classes):
            raise InputError(f"classes {classes} for a head of {checkpoint.outputs} outputs")
        checkpoint.classes = classes
    return checkpoint


def is_checkpoint(path: Path) -> bool:
    """Whether `path` is a file `load_checkpoint` reads."""
    try:
        load_checkpoint(path)
    except InputError:
        return False
    return True


def restore(checkpoint: Checkpoint, name: str = "the checkpoint") -> nn.Module:
    """The checkpoint's model, rebuilt and loaded, in eval mode. A checkpoint that records a factory
    (`Architecture.factory`) is rebuilt by importing and calling it: that runs the code it names."""
    model = build_model(checkpoint.architecture)
    try:
        model.load_state_dict(checkpoint.state)
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"{name}: its weights do not fit its architecture ({first_line(exc)})"
        ) from None
    return model.eval()
