"""`optkit train`, `finetune`, `export`, `stats`: the PyTorch side on the command line.

The commands parse and check the options, call the library and render what it returns: the runs
are `optkit.torch.runs` (train, finetune), the export `optkit.torch.exporting`, the statistics
`optkit.torch.stats`; their progress lines come through a `log` callback (click.echo here).
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
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from optkit.cli.common import COUNT, FRACTION, POSITIVE, SEED, NonEmptyPath, choice
from optkit.cli.seeds import COMBINE_CHOICES, parse_seeds
from optkit.errors import InputError
from optkit.io.modelspec import (
    ModelSpec,
    parse_input_size,
    parse_model_args,
    parse_model_spec,
    parse_preprocessing,
)
from optkit.io.outputs import check_output
from optkit.io.run_inputs import (
    UserModel,
    data_reads,
    is_image_folder,
    labels_text,
    refuse_repeated,
)
from optkit.training_options import OPTIMIZERS, SCHEDULES, LRSchedule, Optimizer

if TYPE_CHECKING:
    from optkit.torch.exporting import ExportRequest

# The choices of optkit.models and optkit.torch.init, spelled out so that this module loads without
# torch (tests/cli/test_training_cli.py checks they are the library's).
ARCHITECTURES = ("mlp", "cnn", "resnet")
ACTIVATIONS = (
    "sigmoid", "tanh", "relu", "leaky_relu", "prelu", "elu", "selu", "maxout", "swish", "gelu",
)  # fmt: skip
NORMS = ("batch", "layer", "instance", "group", "none")
INIT_SCHEMES = ("constant", "small", "xavier", "glorot_uniform", "kaiming", "lsuv")
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


def _given_names() -> set[str]:
    """The names of the current command's options that were given (`_given`)."""
    return {p.name for p in click.get_current_context().command.params if p.name and _given(p.name)}


def _user_model_options(
    model: str | None, model_args: tuple[str, ...], weights: Path | None, head: str | None,
    input_size: str | None, preprocessing: str | None,
) -> UserModel:  # fmt: skip
    """--model, --model-arg, --weights, --head, --input-size, --preprocessing parsed, checked without
    torch: the spec's syntax (and its file), the arguments, and that the files exist."""
    if head is not None and not head.strip():
        raise InputError(f"--head {head!r}: give the classifier's module name (e.g. fc)")
    spec: ModelSpec | None = parse_model_spec(model) if model is not None else None
    args = parse_model_args(model_args)
    size = parse_input_size(input_size) if input_size is not None else None
    chosen: str | Path = parse_preprocessing(preprocessing) if preprocessing is not None else "fit"
    if spec is None:
        for flag, value in (("--model-arg", model_args), ("--weights", weights),
                            ("--head", head)):  # fmt: skip
            if value:
                raise InputError(f"{flag}: applies to a model given with --model")
    if weights is not None and not weights.is_file():
        raise InputError(f"--weights {weights}: no such file")
    return UserModel(model, spec, args, weights, head, size, input_size, chosen)


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
            click.option("--optimizer", type=choice(OPTIMIZERS), default=Optimizer.SGD.value,
                         show_default=True),
            click.option("--schedule", type=choice(SCHEDULES), default=LRSchedule.COSINE.value,
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
    user = _user_model_options(model, model_args, weights, head, input_size, preprocessing)
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
    check_output(checkpoint, **data_reads(data_source, also=user.reads), what="--checkpoint")
    from optkit.torch.runs import check_resumed_model, resumed_options, run_training
    from optkit.torch.train import is_checkpoint, load_checkpoint

    saved = None
    if checkpoint.exists() and resume:
        saved = load_checkpoint(checkpoint)
        given = _given_names()
        options = resumed_options(saved, checkpoint, options, given, log=click.echo)
        check_resumed_model(saved, checkpoint, user, given)
        _check_input_size(user, input_size, options["data_source"])
        check_output(checkpoint, **data_reads(options["data_source"], also=user.reads),
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
    run_training(saved, checkpoint, resume, user, log=click.echo, **options)


def _check_input_size(user: UserModel, input_size: str | None, data_source: str) -> None:
    if user.size is not None and not is_image_folder(data_source):
        raise InputError(f"--input-size {input_size}: resizes the images of an image folder, and "
                         f"--data {data_source} is not one")  # fmt: skip


def _train_seeds(
    seeds: list[int], checkpoint: Path, resume: bool, user: UserModel, options: dict[str, Any]
) -> None:
    """`train --seeds`: one run per seed (`optkit.torch.runs.train_seeds`), then each run's test
    accuracy and their mean."""
    if resume:
        raise InputError("--resume: continues one checkpoint; resume a run of --seeds with "
                         "--checkpoint runs.seedK.pt --resume")  # fmt: skip
    from optkit.torch.runs import train_seeds

    runs = train_seeds(seeds, checkpoint, user, options, log=click.echo)
    for k, path, accuracy in zip(runs.seeds, runs.paths, runs.accuracies, strict=True):
        click.echo(f"seed {k}: test accuracy {accuracy:.2%} -> {path}")
    click.echo(f"mean test accuracy of {len(runs.seeds)} runs: {runs.mean_accuracy:.2%}")


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
    user = _user_model_options(model, model_args, weights, head, input_size, preprocessing)
    if checkpoint is None and user.spec is None:
        raise InputError("finetune: give a CHECKPOINT, or your model with --model (and --weights)")
    if checkpoint is not None and user.spec is not None:
        raise InputError(f"--model {model}: the network comes from {checkpoint}; give one of "
                         "CHECKPOINT and --model")  # fmt: skip
    if checkpoint is not None and _given("preprocessing"):
        raise InputError(f"--preprocessing: {checkpoint} records its preprocessing (leave it out)")
    _check_input_size(user, input_size, data_source)
    inputs = (*user.reads, *((checkpoint,) if checkpoint is not None else ()))
    check_output(output, **data_reads(data_source, also=inputs), what="output")
    from optkit.torch.runs import compare_with_scratch, finetune
    from optkit.torch.train import TrainConfig

    config = TrainConfig(epochs, batch_size, lr, optimizer, schedule=schedule, seed=seed)
    run = finetune(
        checkpoint, user, output=output, reads=inputs, data_source=data_source, asked=asked,
        per_class=per_class, strategy=strategy, k=k, similar=similar, config=config,
        test_fraction=test_fraction, log=click.echo,
    )  # fmt: skip
    click.echo(f"test accuracy {run.accuracy:.2%} on classes {labels_text(run.wanted)} -> {output}")
    if compare_scratch:
        compared = compare_with_scratch(run, log=click.echo)
        verdict = ("transfer helped" if compared.helped
                   else "transfer did not help; train from scratch")  # fmt: skip
        click.echo(f"transfer {compared.transferred:.2%}, from scratch "
                   f"{compared.from_scratch:.2%} ({compared.gain:+.1f} points, one test example "
                   f"is {compared.example_points:.1f}): {verdict}")  # fmt: skip


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
        refuse_repeated(checkpoints)
    check_output(output, reads=list(checkpoints), what="output", model=True)
    from optkit.torch.exporting import ExportRequest, export_checkpoint

    request = ExportRequest(output, checkpoints, data_source, asked, classes, test_fraction, seed)
    if as_ensemble:
        _export_ensemble(request, combine, fuse_it=not no_fuse)
        return
    one = export_checkpoint(request, embed_preprocessing, fuse_it=not no_fuse, log=click.echo)
    assert one.onnx_accuracy is not None
    click.echo(json.dumps({k: v for k, v in one.report.items() if k != "fuse"}))
    click.echo(one.report.get("fuse", "not fused"))
    click.echo(f"classes {labels_text(one.labels)} -> outputs 0..{len(one.labels) - 1}")
    click.echo(f"test accuracy: torch {one.torch_accuracy:.2%}, ONNX {one.onnx_accuracy:.2%} -> "
               f"{output}")  # fmt: skip


def _export_ensemble(request: ExportRequest, combine: str, fuse_it: bool) -> None:
    """`export --ensemble`: the checkpoints checked to fit together, each exported and checked,
    then one ensemble built, fused and verified (`optkit.torch.exporting`); written only when it
    matches its members (exit 1 when it differs, 2 when it could not verify), then measured."""
    from optkit.torch.exporting import ensemble_of, export_members, measure_ensemble

    members = export_members(request, log=click.echo)
    paths = list(request.checkpoints)
    result = ensemble_of(paths, members, combine, fuse_it)
    report = result.report
    if report.state == "unverified":
        click.echo(report.format_text())
        raise InputError(
            f"the ensemble: verification could not run: {report.unverified_reason}; nothing written"
        )
    if report.state == "differs":
        click.echo(report.format_text())
        click.echo(
            "optkit: the ensemble differs from its members beyond tolerance; nothing written",
            err=True,
        )
        sys.exit(1)
    result.save(request.output)
    click.echo(report.format_text())
    scores = measure_ensemble(paths, members, result, combine)
    for note in scores.notes:
        click.echo(note)
    click.echo(
        f"test accuracy: members {', '.join(f'{a:.2%}' for a in scores.members)} (mean "
        f"{scores.mean_member:.2%}); ensemble ({combine}, ONNX) {scores.accuracy:.2%} -> "
        f"{request.output}"
    )


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
    from optkit.torch.stats import format_table, lecture_stats, plot

    result = lecture_stats(activation, init_scheme, std=std, layers=layers, width=width,
                           batch=batch, seed=seed, gradients=gradients)  # fmt: skip
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
