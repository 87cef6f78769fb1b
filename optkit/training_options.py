"""The closed sets of the PyTorch side's training options, importable without torch: the command
line (`optkit.cli.training`) builds its choices from them and `optkit.torch.train` checks a
`TrainConfig` against them. Configs and checkpoints store the plain values ('sgd', 'cosine')."""

from __future__ import annotations

import enum


class Optimizer(str, enum.Enum):
    """What `train` updates the weights with."""

    SGD = "sgd"  # torch.optim.SGD with momentum and weight decay
    ADAM = "adam"  # torch.optim.Adam with weight decay

    def __str__(self) -> str:  # the option's spelling in messages, not 'Optimizer.SGD'
        return self.value


class LRSchedule(str, enum.Enum):
    """The learning rate over a run (`optkit.torch.train.Schedule` gives its formulas)."""

    COSINE = "cosine"  # CosineAnnealingLR, T_max = epochs
    STEP = "step"  # StepLR: x0.1 every max(1, epochs // 3) epochs
    NONE = "none"  # constant

    def __str__(self) -> str:
        return self.value


OPTIMIZERS = tuple(o.value for o in Optimizer)
SCHEDULES = tuple(s.value for s in LRSchedule)
