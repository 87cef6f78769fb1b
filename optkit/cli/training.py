"""`optkit train`, `finetune`, `export`, `stats`: the PyTorch side on the command line.

torch is imported inside the commands, so the ONNX side's CLI works without the `torch` extra.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from optkit.errors import InputError

if TYPE_CHECKING:
    from optkit.torch.data import Dataset
    from optkit.torch.train import Architecture, TrainConfig


def _need_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise InputError(
            "this command needs the torch extra: pip install 'optkit[torch]'"
        ) from None


def _prepared(data_source: str, test_fraction: float, seed: int):
    from optkit.torch.data import fit_preprocessing, load_data, preprocess, split

    data = load_data(data_source)
    train_raw, test_raw = split(data, test_fraction, seed)
    spec = fit_preprocessing(train_raw)
    return data, train_raw, test_raw, spec, preprocess(spec, train_raw), preprocess(spec, test_raw)


def _training_options(command: Any) -> Any:
    for option in reversed(
        [
            click.option("--epochs", default=10, show_default=True),
            click.option("--batch-size", default=64, show_default=True),
            click.option("--lr", default=0.05, show_default=True, help="Learning rate."),
            click.option(
                "--optimizer", type=click.Choice(["sgd", "adam"]), default="sgd", show_default=True
            ),
            click.option(
                "--schedule",
                type=click.Choice(["cosine", "step", "none"]),
                default="cosine",
                show_default=True,
            ),
            click.option("--seed", default=0, show_default=True),
            click.option(
                "--test-fraction", default=0.25, show_default=True, help="Held-out share."
            ),
        ]
    ):
        command = option(command)
    return command


@click.command("train")
@click.option("--data", "data_source", default="digits", show_default=True,
              help="'digits' (scikit-learn, no download), a .npz (x, y) or an image folder.")  # fmt: skip
@click.option(
    "--arch", type=click.Choice(["mlp", "cnn", "resnet"]), default="cnn", show_default=True
)
@click.option(
    "--activation", default="relu", show_default=True, help="See optkit.models.ACTIVATIONS."
)
@click.option(
    "--norm", default="batch", show_default=True, help="batch, layer, instance, group, none."
)
@click.option("--init", "init_scheme", default="kaiming", show_default=True,
              help="constant, small, xavier, glorot_uniform, kaiming, lsuv.")  # fmt: skip
@_training_options
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("optkit-model.pt"), show_default=True)  # fmt: skip
@click.option("--resume", is_flag=True, help="Continue from --checkpoint if it exists.")
def train_command(
    data_source: str, arch: str, activation: str, norm: str, init_scheme: str, epochs: int,
    batch_size: int, lr: float, optimizer: str, schedule: str, seed: int, test_fraction: float,
    checkpoint: Path, resume: bool,
) -> None:  # fmt: skip
    """Train a model of optkit.models from scratch; one log line per epoch, a checkpoint after each.

    \b
    Preprocessing (per-channel mean and std) is fitted on the training split and applied to both;
    it is stored in the checkpoint, and `optkit export --embed-preprocessing` puts it in the ONNX.

    \b
    Examples:
      optkit train --data digits --arch cnn --epochs 10
      optkit train --arch mlp --activation tanh --init xavier --checkpoint tanh.pt
      optkit train --checkpoint run.pt --resume --epochs 20
    """
    _need_torch()
    import torch

    from optkit.torch.init import initialize
    from optkit.torch.train import Architecture, TrainConfig, build_model, train

    _, _, _, spec, train_set, test_set = _prepared(data_source, test_fraction, seed)
    shape = tuple(int(d) for d in train_set.x.shape[1:])
    architecture = Architecture(arch, shape, train_set.classes, activation, norm)  # type: ignore[arg-type]
    try:
        model = build_model(architecture)
        torch.manual_seed(seed)
        batch = torch.from_numpy(train_set.x[:256])
        initialize(model, init_scheme, nonlinearity=activation, batch=batch,
                   generator=torch.Generator().manual_seed(seed))  # fmt: skip
    except ValueError as exc:
        raise InputError(str(exc)) from None
    config = TrainConfig(epochs, batch_size, lr, optimizer, schedule=schedule, seed=seed)
    click.echo(f"{data_source}: {len(train_set)} train / {len(test_set)} test, {arch}, {activation}, "
               f"{norm}, init {init_scheme}")  # fmt: skip
    history = train(model, architecture, train_set, test_set, config, checkpoint=checkpoint,
                    resume=resume, preprocessing=spec, log=click.echo)  # fmt: skip
    click.echo(f"test accuracy {history[-1].test_accuracy:.2%} -> {checkpoint}")


@click.command("finetune")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data", "data_source", default="digits", show_default=True)
@click.option(
    "--classes", help="Use only these classes of the data, e.g. 5,6,7,8,9 (relabelled 0..)."
)
@click.option("--per-class", type=int, help="Use at most this many training examples per class.")
@click.option("--strategy", type=click.Choice(["auto", "linear", "stages", "last-k", "all"]), default="auto",
              show_default=True)  # fmt: skip
@click.option("--k", "k", default=2, show_default=True, help="Layers to retrain with last-k.")
@click.option("--similar/--different", default=True, show_default=True,
              help="Is the new data like the data the checkpoint was trained on? (for auto)")  # fmt: skip
@_training_options
@click.option("--compare-scratch", is_flag=True,
              help="Also train the same network from scratch on the same examples and say "
                   "whether transfer helped.")  # fmt: skip
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
def finetune_command(
    checkpoint: Path, data_source: str, classes: str | None, per_class: int | None,
    strategy: str, k: int, similar: bool, epochs: int, batch_size: int, lr: float,
    optimizer: str, schedule: str, seed: int, test_fraction: float, compare_scratch: bool,
    output: Path,
) -> None:  # fmt: skip
    """Transfer learning: a new head for the new classes, the backbone frozen or partly retrained.

    \b
    --strategy auto follows the lecture's table and says why:
      little data, similar domain     a linear classifier on the top layer   (linear)
      little data, different domain  linear classifiers on several stages,   (stages)
                                     the best on held-out examples kept
      more data, similar domain       fine-tune a few layers                  (last-k, k=2)
      more data, different domain     fine-tune all, backbone at lr/10        (all)
    The checkpoint is a local file; nothing is downloaded.

    \b
    Transfer does not always win: on 8x8 digits a network trained from scratch on 20 examples
    per class beats every strategy from a 0-4 backbone (tools/transfer_digits.py). With
    --compare-scratch the same network is also trained from scratch on the same examples, with
    the same training options, and both test accuracies are printed.
    """
    _need_torch()
    from optkit.torch.data import preprocess, subset
    from optkit.torch.train import (
        Architecture,
        TrainConfig,
        choose_strategy,
        load_checkpoint,
        prepare_transfer,
        restore,
        train,
        transfer_report,
    )  # fmt: skip

    saved = load_checkpoint(checkpoint)
    model = restore(saved)
    _, train_raw, test_raw, _, _, _ = _prepared(data_source, test_fraction, seed)
    wanted = [int(c) for c in classes.split(",")] if classes else list(range(train_raw.classes))
    train_raw = subset(train_raw, wanted, per_class, seed)
    test_raw = subset(test_raw, wanted)
    spec = saved.preprocessing
    train_set = preprocess(spec, train_raw) if spec else train_raw
    test_set = preprocess(spec, test_raw) if spec else test_raw
    if tuple(train_set.x.shape[1:]) != saved.architecture.input_shape:
        raise InputError(f"{data_source}: samples of shape {train_set.x.shape[1:]}, the checkpoint "
                         f"takes {saved.architecture.input_shape}")  # fmt: skip
    if strategy == "auto":
        strategy, k, why = choose_strategy(len(train_set) // len(wanted), similar)
        click.echo(
            f"strategy {strategy}" + (f" (k={k})" if strategy == "last-k" else "") + f": {why}"
        )
    new_arch = Architecture(saved.architecture.name, saved.architecture.input_shape,
                            len(wanted), saved.architecture.activation,
                            saved.architecture.norm)  # fmt: skip
    config = TrainConfig(epochs, batch_size, lr, optimizer, schedule=schedule, seed=seed)
    if strategy == "stages":
        from dataclasses import replace

        from optkit.torch.train import Checkpoint, evaluate, fit_stage_classifier, save_checkpoint

        probe = fit_stage_classifier(model, train_set, seed=seed, log=click.echo)
        arch = replace(saved.architecture, stage=probe.stage,
                       stage_features=probe.linear.in_features, stage_classes=len(wanted))  # fmt: skip
        save_checkpoint(output, Checkpoint(arch, probe.state_dict(), [], spec))
        accuracy = evaluate(probe, test_set)
    else:
        groups = prepare_transfer(model, len(wanted), strategy, k, lr, seed)
        click.echo(transfer_report(model))
        history = train(model, new_arch, train_set, test_set, config, checkpoint=output,
                        preprocessing=spec, param_groups=groups, log=click.echo)  # fmt: skip
        accuracy = history[-1].test_accuracy
    click.echo(f"test accuracy {accuracy:.2%} -> {output}")
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
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--data", "data_source", default="digits", show_default=True,
              help="Real samples to check the export on (the test split) and report accuracy.")  # fmt: skip
@click.option("--classes", help="The classes the checkpoint was fine-tuned on, e.g. 5,6,7,8,9.")
@click.option("--test-fraction", default=0.25, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--no-fuse", is_flag=True, help="Keep BatchNorm (do not run optkit fuse).")
@click.option("--embed-preprocessing", is_flag=True,
              help="Put the checkpoint's preprocessing in the graph (it takes raw input).")  # fmt: skip
def export_command(
    checkpoint: Path, output: Path, data_source: str, classes: str | None, test_fraction: float,
    seed: int, no_fuse: bool, embed_preprocessing: bool,
) -> None:  # fmt: skip
    """Export a checkpoint to ONNX (eval mode, BatchNorm kept for optkit to fold), check it against
    the torch model on real samples, optionally embed the preprocessing and fuse: one deployable file.
    Prints the test accuracy of the torch model and of the ONNX model."""
    _need_torch()
    import numpy as np

    from optkit import io
    from optkit.runtime import make_session
    from optkit.torch.export import export_checked
    from optkit.torch.train import evaluate, load_checkpoint, restore

    saved = load_checkpoint(checkpoint)
    model = restore(saved)
    from optkit.torch.data import preprocess, subset

    _, _, test_raw, _, _, _ = _prepared(data_source, test_fraction, seed)
    if classes:
        test_raw = subset(test_raw, [int(c) for c in classes.split(",")])
    spec = saved.preprocessing

    test_set = preprocess(spec, test_raw) if spec else test_raw
    if tuple(test_set.x.shape[1:]) != saved.architecture.input_shape:
        raise InputError(f"{data_source}: samples of shape {test_set.x.shape[1:]}, the checkpoint "
                         f"takes {saved.architecture.input_shape}")  # fmt: skip
    embed = spec if embed_preprocessing and spec else None
    proto, report = export_checked(model, test_set.x, spec=embed, raw_samples=test_raw.x,
                                   fuse_it=not no_fuse)  # fmt: skip
    io.save(io.load(proto), output)
    session = make_session(proto)
    feed = test_raw.x if embed else test_set.x
    (logits,) = session.run(None, {session.get_inputs()[0].name: feed})
    onnx_accuracy = float(np.mean(np.argmax(logits, 1) == test_set.y))
    torch_accuracy = evaluate(model, test_set)
    click.echo(json.dumps({k: v for k, v in report.items() if k != "fuse"}))
    click.echo(report.get("fuse", "not fused"))
    click.echo(f"test accuracy: torch {torch_accuracy:.2%}, ONNX {onnx_accuracy:.2%} -> {output}")


@click.command("stats")
@click.option("--activation", default="tanh", show_default=True)
@click.option("--init", "init_scheme", default="xavier", show_default=True)
@click.option("--std", default=0.01, show_default=True, help="For --init small.")
@click.option("--layers", default=7, show_default=True)
@click.option("--width", default=4096, show_default=True)
@click.option("--batch", default=16, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--gradients", is_flag=True, help="Also one backward pass: gradient stds per layer.")
@click.option("--png", type=click.Path(dir_okay=False, path_type=Path), help="Draw histograms.")
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
