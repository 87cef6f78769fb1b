"""`optkit train`, `finetune`, `export`, `stats`: every user mistake is exit 2 with one line on
stderr, no traceback, no Python warning and nothing written; outputs that would replace an input,
sit in a missing folder or are a directory are refused before any work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import run_main


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A small trained checkpoint, a corrupt one, a data file and a file that is not a checkpoint."""
    import torch

    from optkit.torch.data import digits, fit_preprocessing, preprocess, split
    from optkit.torch.train import Architecture, DataRecord, TrainConfig, build_model, train

    folder = tmp_path_factory.mktemp("inputs")
    train_raw, test_raw = split(digits(), 0.25, seed=0)
    spec = fit_preprocessing(train_raw)
    arch = Architecture("mlp", (1, 8, 8), 10)
    torch.manual_seed(0)
    train(build_model(arch), arch, preprocess(spec, train_raw).select(np.arange(200)),
          preprocess(spec, test_raw), TrainConfig(epochs=1), checkpoint=folder / "ck.pt",
          preprocessing=spec, data=DataRecord("digits"))  # fmt: skip
    (folder / "corrupt.pt").write_bytes((folder / "ck.pt").read_bytes()[:300])
    (folder / "notes.txt").write_text("not a checkpoint\n")
    (folder / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    np.savez(folder / "data.npz", x=np.zeros((20, 8, 8), np.float32), y=np.arange(20) % 2)
    from PIL import Image

    for label in ("a", "b"):
        (folder / "images" / label).mkdir(parents=True)
        for i in range(3):
            pixels = np.full((8, 8, 3), 40 * i + (100 if label == "b" else 0), np.uint8)
            Image.fromarray(pixels).save(folder / "images" / label / f"{i}.png")
    return folder


MISTAKES = [
    # train
    ("train", "--epochs", "0"),
    ("train", "--epochs", "-3"),
    ("train", "--epochs", "ten"),
    ("train", "--batch-size", "0"),
    ("train", "--lr", "0"),
    ("train", "--lr", "-0.1"),
    ("train", "--lr", "nan"),
    ("train", "--lr", "inf"),
    ("train", "--test-fraction", "0"),
    ("train", "--test-fraction", "1"),
    ("train", "--test-fraction", "1.5"),
    ("train", "--test-fraction", "0.0001"),  # no test examples left
    ("train", "--seed", "-1"),
    ("train", "--activation", "swishy"),
    ("train", "--norm", "batchnorm"),
    ("train", "--init", "he"),
    ("train", "--arch", "vgg"),
    ("train", "--optimizer", "rmsprop"),
    ("train", "--schedule", "linear"),
    ("train", "--arch", "mlp", "--norm", "instance"),  # a combination without meaning
    ("train", "--data", "{d}/missing.npz"),
    ("train", "--data", "{d}/junk.npz"),
    ("train", "--no-such-option"),
    ("train", "--checkpoint", "{d}/corrupt.pt", "--resume"),
    ("train", "--checkpoint", "{d}/ck.pt", "--resume", "--epochs", "0"),
    # finetune
    ("finetune", "{d}/ck.pt", "--classes", "5,6,99"),
    ("finetune", "{d}/ck.pt", "--classes", "5"),
    ("finetune", "{d}/ck.pt", "--classes", "5,5,6"),
    ("finetune", "{d}/ck.pt", "--classes", "1,2,x"),
    ("finetune", "{d}/ck.pt", "--classes", "-1,2"),
    ("finetune", "{d}/ck.pt", "--classes", ""),
    ("finetune", "{d}/ck.pt", "--per-class", "0"),
    ("finetune", "{d}/ck.pt", "--classes", "5,6", "--per-class", "5000"),
    ("finetune", "{d}/ck.pt", "--k", "0"),
    ("finetune", "{d}/ck.pt", "--strategy", "last-k", "--k", "999"),
    ("finetune", "{d}/ck.pt", "--strategy", "magic"),
    ("finetune", "{d}/ck.pt", "--lr", "nan"),
    ("finetune", "{d}/ck.pt", "--epochs", "0"),
    ("finetune", "{d}/corrupt.pt"),
    ("finetune", "{d}/notes.txt"),
    ("finetune", "{d}/missing.pt"),
    ("finetune", "{d}/ck.pt", "--data", "{d}/missing.npz"),
    # export
    ("export", "{d}/ck.pt", "--classes", "1,2,x"),
    ("export", "{d}/ck.pt", "--classes", "1,2"),  # the head has 10 outputs
    ("export", "{d}/ck.pt", "--classes", "9,8,7,6,5,4,3,2,1,0"),  # not the recorded ones
    ("export", "{d}/ck.pt", "--test-fraction", "0"),
    ("export", "{d}/ck.pt", "--seed", "-2"),
    ("export", "{d}/ck.pt", "--data", "{d}/missing.npz"),
    ("export", "{d}/ck.pt", "--data", "{d}/data.npz"),  # 2 classes, the head wants 0..9
    ("export", "{d}/corrupt.pt"),
    ("export", "{d}/notes.txt"),
    # stats
    ("stats", "--width", "0"),
    ("stats", "--layers", "0"),
    ("stats", "--batch", "0"),
    ("stats", "--std", "0"),
    ("stats", "--std", "-0.01"),
    ("stats", "--std", "nan"),
    ("stats", "--activation", "swishy"),
    ("stats", "--init", "he"),
    ("stats", "--seed", "-1"),
    ("stats", "--width", "10000000"),  # petabytes of weights
    ("stats", "--png", "out.txt"),
    # found by an adversarial pass
    ("train", "--arch", "mlp", "--epochs", "1", "--lr", "1e30"),  # diverges: nothing written
    ("export", "{d}/ck.pt", "--data", ""),
    ("finetune", "{d}/ck.pt", "--data", "{d}/images", "-o", "{d}/images/a/0.png"),
    ("stats", "--png", "out.png/"),
]

OUTPUT = {"train": ["--checkpoint", "out.pt"], "finetune": ["-o", "out.pt"],
          "export": ["-o", "out.onnx"], "stats": []}  # fmt: skip


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _expect_refused(monkeypatch, capsys, work: Path, inputs: Path, args: list[str]) -> str:
    before_inputs, before_work = _snapshot(inputs), _snapshot(work)
    code, out, err = run_main(monkeypatch, capsys, *args)
    assert code == 2, (args, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("optkit: error: "), (args, err)
    assert "Traceback" not in err + out and "Warning" not in err + out, (args, err)
    assert _snapshot(inputs) == before_inputs and _snapshot(work) == before_work, args
    return lines[0]


@pytest.mark.parametrize("args", MISTAKES, ids=[" ".join(a) for a in MISTAKES])
def test_every_mistake_is_one_line_exit_2_and_writes_nothing(
    args, inputs, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    filled = [a.format(d=inputs) for a in args]
    # an -o of the case's own is the output under test (a second -o would replace it)
    output = [] if "--checkpoint" in args or "-o" in args else OUTPUT[args[0]]
    line = _expect_refused(monkeypatch, capsys, tmp_path, inputs, [*filled, *output])
    named = [a for a in args if a.startswith("--") and a not in ("--resume", "--no-such-option")]
    if named:  # it names what is wrong: the option, or the file
        files = [Path(a).name for a in filled if os.sep in a]
        assert named[-1] in line or any(name in line for name in files), line


def test_choices_list_themselves_and_take_any_case(inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = _expect_refused(monkeypatch, capsys, tmp_path, inputs, ["train", "--activation", "x"])
    assert all(name in line for name in ("sigmoid", "tanh", "relu", "maxout", "gelu"))
    code, out, err = run_main(monkeypatch, capsys, "stats", "--activation", "TANH", "--init",
                              "Xavier", "--layers", "2", "--width", "16")  # fmt: skip
    assert code == 0 and "Tanh" in out, err
    code, out, err = run_main(monkeypatch, capsys, "train", "--arch", "MLP", "--norm", "Layer",
                              "--optimizer", "ADAM", "--schedule", "Step", "--epochs", "1",
                              "--checkpoint", "m.pt")  # fmt: skip
    assert code == 0, err
    from optkit.torch.train import load_checkpoint

    saved = load_checkpoint(tmp_path / "m.pt")
    assert (saved.architecture.name, saved.architecture.norm) == ("mlp", "layer")
    assert saved.config is not None and saved.config.optimizer == "adam"


def test_the_cli_choices_are_the_librarys():
    from optkit.cli import training
    from optkit.models import ACTIVATIONS, NORMS
    from optkit.torch import init, train, transfer

    assert training.ACTIVATIONS == ACTIVATIONS and training.NORMS == NORMS
    assert training.INIT_SCHEMES == init.SCHEMES and training.ARCHITECTURES == train.ARCHITECTURES
    assert training.OPTIMIZERS == train.OPTIMIZERS and training.SCHEDULES == train.SCHEDULES
    assert set(training.STRATEGIES) == set(transfer.STRATEGIES)


FORBIDDEN = [
    ("export", "{d}/ck.pt", "-o", "{d}/ck.pt"),  # its own source checkpoint
    ("finetune", "{d}/ck.pt", "-o", "{d}/ck.pt"),
    ("export", "{d}/ck.pt", "--data", "{d}/data.npz", "-o", "{d}/data.npz"),
    ("train", "--data", "{d}/data.npz", "--checkpoint", "{d}/data.npz"),
    ("train", "--checkpoint", "nodir/x.pt"),  # a folder that does not exist
    ("finetune", "{d}/ck.pt", "-o", "nodir/f.pt"),
    ("export", "{d}/ck.pt", "-o", "nodir/x.onnx"),
    ("stats", "--png", "nodir/x.png"),
    ("train", "--checkpoint", "{d}"),  # a directory
    ("finetune", "{d}/ck.pt", "-o", "{d}"),
    ("export", "{d}/ck.pt", "-o", "{d}"),
    ("stats", "--png", "{d}"),
    ("train", "--checkpoint", "{d}/notes.txt"),  # exists and is not a checkpoint
]


@pytest.mark.parametrize("args", FORBIDDEN, ids=[" ".join(a) for a in FORBIDDEN])
def test_forbidden_outputs_are_refused_before_any_work(args, inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _expect_refused(monkeypatch, capsys, tmp_path, inputs, [a.format(d=inputs) for a in args])
    assert not (tmp_path / "nodir").exists()


def test_train_replaces_an_optkit_checkpoint_and_says_so(inputs, tmp_path, monkeypatch, capsys):
    target = tmp_path / "again.pt"
    target.write_bytes((inputs / "ck.pt").read_bytes())
    code, out, err = run_main(monkeypatch, capsys, "train", "--arch", "mlp", "--epochs", "1",
                              "--checkpoint", str(target))  # fmt: skip
    assert code == 0, err
    assert "an optkit checkpoint; it is replaced" in out.splitlines()[0]
    assert target.read_bytes() != (inputs / "ck.pt").read_bytes()


def test_optkit_models_without_torch_says_which_extra_to_install():
    shim = "import sys; sys.modules['torch'] = None\n"
    for module in ("optkit.models", "optkit.torch"):
        done = subprocess.run(
            [sys.executable, "-c", shim + f"import {module}"],
            capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )  # fmt: skip
        assert done.returncode == 1
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("ImportError") and "optkit[torch]" in last, done.stderr
    code = shim + "from optkit.cli import main; main()"
    done = subprocess.run([sys.executable, "-c", code, "stats"], capture_output=True, text=True)
    assert done.returncode == 2 and "optkit[torch]" in done.stderr


def test_the_library_writers_check_their_outputs_too(inputs, tmp_path):
    """save_checkpoint and stats.plot raised FileNotFoundError / IsADirectoryError, or wrote
    `<name>.png` beside a directory, or replaced the data file the checkpoint records."""
    import torch

    from optkit.errors import InputError
    from optkit.torch.stats import activation_stats, plot
    from optkit.torch.train import DataRecord, load_checkpoint, save_checkpoint

    saved = load_checkpoint(inputs / "ck.pt")
    for bad in (tmp_path / "no" / "x.pt", tmp_path):
        with pytest.raises(InputError):
            save_checkpoint(bad, saved)
    saved.data = DataRecord(str(inputs / "data.npz"))
    before = (inputs / "data.npz").read_bytes()
    with pytest.raises(InputError, match="which the input reads"):
        save_checkpoint(inputs / "data.npz", saved)
    assert (inputs / "data.npz").read_bytes() == before
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh())
    stats = activation_stats(model, torch.randn(8, 4))
    with pytest.raises(InputError):
        plot(stats, tmp_path)
    assert plot(stats, tmp_path / "histograms") == tmp_path / "histograms"  # no suffix: that name
    assert (tmp_path / "histograms").read_bytes()[:4] == b"\x89PNG"


def test_an_exploding_network_reports_nan_instead_of_crashing(monkeypatch, capsys):
    """--std 1e300 made the histogram's range non-finite: exit 3."""
    code, out, err = run_main(monkeypatch, capsys, "stats", "--layers", "2", "--width", "16",
                              "--init", "small", "--std", "1e300")  # fmt: skip
    assert code == 0 and "nan" in out, err
