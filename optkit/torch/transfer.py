"""Transfer learning: a new head for new classes, the backbone frozen or partly retrained.

- `choose_strategy` is the lecture's table (little or more data, a similar or different domain).
- `prepare_transfer` reinitializes the head, freezes per strategy (`linear`, `last-k`, `all`) and
  returns the optimizer's parameter groups (trained backbone layers at a tenth of the rate);
  `optkit.torch.train.train` then trains them.
- `fit_stage_classifier` (`stages`): linear classifiers on a frozen backbone's stages, the best on
  held-out examples kept, as a `StageClassifier` (exportable like any model; defined in
  `optkit.torch.train`, whose `build_model` rebuilds it from a checkpoint).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from optkit.errors import InputError
from optkit.torch.data import Dataset
from optkit.torch.train import StageClassifier, evaluate
from optkit.torch.usermodel import find_head, replace_head, stage_units, trainable_units

STRATEGIES = ("linear", "stages", "last-k", "all", "auto")
SMALL_PER_CLASS = 100  # "little data" in the lecture's table: up to about this many per class


def head(model: nn.Module, name: str | None = None) -> tuple[nn.Linear, str]:
    """The model's classifier and its dotted name: the Linear layer `name`, else the last one."""
    return find_head(model, name)


def blocks(model: nn.Module) -> list[nn.Module]:
    """The leaf modules with parameters, input to output: the layers `last-k` counts in optkit's own
    architectures."""
    return [m for m in model.modules() if not list(m.children()) and list(m.parameters())]


def is_own_model(model: nn.Module) -> bool:
    """A model `build_model` makes from ARCHITECTURES: `last-k` counts its layers and `stages`
    reads its activation and pooling outputs (as measured in the README). Any other model (the
    user's) is taken by its own children / named stages (`optkit.torch.usermodel.units`)."""
    from optkit.models import ImageMLP, ResNetStyle, VGGStyle

    return type(model) in (ImageMLP, ResNetStyle, VGGStyle)


def backbone_units(model: nn.Module, head_name: str | None = None) -> list[tuple[str, nn.Module]]:
    """What `last-k` chooses from, input to output, the head left out: the layers (leaf modules with
    parameters) of optkit's own architectures, the named stages of any other model."""
    layer, name = find_head(model, head_name)
    if is_own_model(model):
        named = {id(m): n for n, m in model.named_modules()}
        return [(named[id(m)], m) for m in blocks(model) if m is not layer]
    return trainable_units(model, name)


def choose_strategy(per_class: int, similar: bool) -> tuple[str, int, str]:
    """The lecture's table: (strategy, k, why)."""
    little = f"little data ({per_class} per class)"
    more = f"quite a lot of data ({per_class} per class)"
    if per_class <= SMALL_PER_CLASS and similar:
        why = f"{little} from a similar domain: train a linear classifier on the top layer"
        return "linear", 0, why
    if per_class <= SMALL_PER_CLASS:
        why = (
            f"{little} from a different domain: the top features are too specific; train "
            "linear classifiers on features from several stages and keep the best"
        )
        return "stages", 0, why
    if similar:
        return "last-k", 2, f"{more} from a similar domain: fine-tune a few layers"
    why = (
        f"{more} from a different domain: fine-tune a larger number of layers "
        "(all, the backbone at a tenth of the learning rate)"
    )
    return "all", 0, why


def prepare_transfer(
    model: nn.Module,
    classes: int,
    strategy: str,
    k: int,
    lr: float,
    seed: int = 0,
    head_name: str | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Reinitialize the head (`head_name`, else the last Linear) for `classes` outputs, freeze per
    `strategy`, and return the optimizer's parameter groups (the head at `lr`, trained backbone
    layers at lr / 10). `last-k` trains the last k of `backbone_units`; `log` hears which."""
    if strategy not in ("linear", "last-k", "all"):
        raise InputError(f"strategy {strategy!r}: choose {', '.join(STRATEGIES)}")
    _, name = head(model, head_name)
    candidates = backbone_units(model, name)
    if strategy == "last-k" and k > len(candidates):
        kind = "layers" if is_own_model(model) else "stages"
        shown = ", ".join(n for n, _ in candidates[-8:])
        raise InputError(
            f"--k {k}: the network has {len(candidates)} {kind} before its head"
            + (f" (... {shown})" if shown else "")
            + " (--strategy all fine-tunes every layer)"
        )
    torch.manual_seed(seed)
    new = replace_head(model, name, classes)
    for p in model.parameters():
        p.requires_grad = strategy == "all"
    for p in new.parameters():
        p.requires_grad = True
    trained_backbone: list[nn.Parameter] = []
    if strategy == "last-k":
        chosen = candidates[-k:] if k > 0 else []
        if log is not None:
            log(f"last-k: training {', '.join(n for n, _ in chosen)} and the head {name}")
        for _, stage in chosen:
            for p in stage.parameters():
                p.requires_grad = True
                trained_backbone.append(p)
    elif strategy == "all":
        trained_backbone = [
            p for p in model.parameters() if all(p is not q for q in new.parameters())
        ]
    groups = [{"params": list(new.parameters()), "lr": lr}]
    if trained_backbone:
        groups.append({"params": trained_backbone, "lr": lr / 10})
    return groups


def transfer_report(model: nn.Module) -> str:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"{trainable:,} of {total:,} parameters trainable"


def stage_names(model: nn.Module, head_name: str | None = None) -> list[str]:
    """Candidate stages: for optkit's own architectures the outputs of activation and pooling
    layers, input to output; for any other model its named stages (`usermodel.stage_units`: a
    ResNet's conv1 .. layer4, avgpool; a MobileNetV2's features.0 .. features.18)."""
    if not is_own_model(model):
        return stage_units(model, find_head(model, head_name)[1])
    kinds = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.MaxPool2d)
    return [name for name, m in model.named_modules() if isinstance(m, kinds) and name]


def _readable_stages(model: nn.Module, stages: list[str], x: torch.Tensor) -> list[str]:
    """The stages that give one tensor per example when the model runs on `x` (in eval mode):
    a stage the forward pass never calls, or whose output is a tuple, is left out."""
    outputs: dict[str, Any] = {}
    handles = []
    for stage in stages:

        def hook(_m: nn.Module, _i: object, out: Any, name: str = stage) -> None:
            outputs[name] = out

        handles.append(model.get_submodule(stage).register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return [
        s for s in stages
        if isinstance(outputs.get(s), torch.Tensor) and outputs[s].shape[:1] == x.shape[:1]
    ]  # fmt: skip


def fit_stage_classifier(
    backbone: nn.Module,
    train_set: Dataset,
    *,
    validation: float = 0.25,
    epochs: int = 300,
    lr: float = 0.01,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    head_name: str | None = None,
) -> StageClassifier:
    """The lecture's "linear classifiers on features from several stages": for every stage, fit a
    linear classifier on the frozen features of most of `train_set` and score it on the rest; the
    best stage is then refitted on all of it."""
    from optkit.torch.data import split

    fit_part, held_out = split(train_set, validation, seed)
    best: tuple[float, str] | None = None
    candidates = stage_names(backbone, head_name)
    if not is_own_model(backbone):
        candidates = _readable_stages(backbone, candidates, torch.from_numpy(train_set.x[:2]))
    for stage in candidates:
        score = evaluate(_fit_probe(backbone, stage, fit_part, epochs, lr, seed), held_out)
        if log is not None:
            log(f"  stage {stage:<28} held-out accuracy {score:.2%}")
        if best is None or score > best[0]:
            best = (score, stage)
    if best is None:
        raise InputError("the model has no activation or pooling layer to read features from")
    if log is not None:
        log(f"best stage: {best[1]}")
    return _fit_probe(backbone, best[1], train_set, epochs, lr, seed)


def _fit_probe(
    backbone: nn.Module, stage: str, data: Dataset, epochs: int, lr: float, seed: int
) -> StageClassifier:
    """A linear classifier (Adam, full batch, weight decay) on standardized frozen features."""
    import copy

    frozen = copy.deepcopy(backbone)
    x = torch.from_numpy(data.x)
    with torch.no_grad():
        sample = StageClassifier(frozen, stage, 1, data.classes).features(x)
    frozen = copy.deepcopy(backbone)  # a clean copy: the probe above left a hook on the first
    probe = StageClassifier(frozen, stage, sample.shape[1], data.classes)
    probe.mean.copy_(sample.mean(0))
    probe.std.copy_(sample.std(0) + 1e-5)
    torch.manual_seed(seed)
    probe.linear.reset_parameters()
    optimizer = torch.optim.Adam(probe.linear.parameters(), lr=lr, weight_decay=1e-3)
    standardized = (sample - probe.mean) / probe.std
    labels = torch.from_numpy(data.y)
    for _ in range(epochs):  # a convex problem on a few hundred examples
        optimizer.zero_grad()
        nn.functional.cross_entropy(probe.linear(standardized), labels).backward()
        optimizer.step()
    return probe.eval()
