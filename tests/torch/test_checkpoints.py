"""Checkpoints that know what they are (format 2; format 1 still read), a resume that continues the
recorded schedule and extends it without raising the learning rate, and `export` measuring a
fine-tuned checkpoint on the classes it was fine-tuned on."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from helpers import run_main
from optkit.torch.train import CHECKPOINT_FORMAT, Schedule, load_checkpoint


def non_increasing(values: list[float]) -> bool:
    return all(later <= earlier for earlier, later in itertools.pairwise(values))


def last_accuracy(out: str, prefix: str = "test accuracy ") -> str:
    """The accuracy (as printed, e.g. '97.33%') on the last line that has `prefix`."""
    line = [line for line in out.splitlines() if prefix in line][-1]
    return line.split(prefix)[1].split()[0].rstrip(",")


@pytest.mark.parametrize("kind", ["cosine", "step", "none"])
@pytest.mark.parametrize("epochs", [1, 2, 3, 8, 10, 30])
def test_the_base_schedule_is_torchs_bit_for_bit(kind, epochs):
    for base in (0.05, 0.005, 0.1):
        p = torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.SGD([p], lr=base)
        scheduler = {
            "cosine": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=epochs),
            "step": lambda o: torch.optim.lr_scheduler.StepLR(o, max(1, epochs // 3), 0.1),
            "none": lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda _e: 1.0),
        }[kind](optimizer)
        torchs = []
        for _ in range(epochs):
            torchs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        assert [Schedule(kind, epochs).lr(base, e) for e in range(epochs)] == torchs


@pytest.mark.parametrize("kind", ["cosine", "step", "none"])
def test_extensions_keep_the_covered_epochs_and_never_raise_the_rate(kind):
    base = Schedule(kind, 10)
    extended = base.extend(20).extend(23).extend(40)
    assert extended.total == 40 and extended.extended_to == [20, 23, 40]
    lrs = [extended.lr(0.05, e) for e in range(40)]
    assert lrs[:10] == [base.lr(0.05, e) for e in range(10)]
    assert lrs[10] == lrs[9]  # the first new epoch continues at the rate the run ended on
    if kind == "cosine":
        assert non_increasing(lrs[9:])
        assert lrs[19] == pytest.approx(lrs[9] * (1 + math.cos(math.pi * 9 / 10)) / 2)
        assert lrs[-1] > 0
    else:
        assert lrs[10:] == [lrs[9]] * 30
    assert non_increasing(lrs)  # the base schedule decays too
    assert base.extend(10) is base
    with pytest.raises(Exception, match="cannot shorten"):
        extended.extend(30)


def test_a_checkpoint_records_what_it_is(monkeypatch, capsys, tmp_path):
    ck = tmp_path / "d.pt"
    code, _, err = run_main(monkeypatch, capsys, "train", "--arch", "mlp", "--epochs", "2",
                            "--seed", "3", "--test-fraction", "0.2", "--checkpoint", str(ck))  # fmt: skip
    assert code == 0, err
    saved = load_checkpoint(ck)
    assert saved.format == CHECKPOINT_FORMAT == torch.load(ck)["format"] == "optkit-checkpoint-2"
    assert saved.classes == list(range(10)) and saved.origin == "train"
    assert saved.architecture.name == "mlp" and saved.preprocessing is not None
    assert saved.config is not None and (saved.config.epochs, saved.config.seed) == (2, 3)
    assert saved.schedule == Schedule("cosine", 2)
    assert saved.data is not None and (saved.data.source, saved.data.test_fraction) == (
        "digits",
        0.2,
    )
    ft = tmp_path / "ft.pt"
    code, _, err = run_main(monkeypatch, capsys, "finetune", str(ck), "--classes", "7,3,5",
                            "--epochs", "1", "-o", str(ft))  # fmt: skip
    assert code == 0, err
    tuned = load_checkpoint(ft)
    assert tuned.classes == [7, 3, 5] and tuned.origin == "finetune" and tuned.outputs == 3


def test_export_measures_a_finetuned_checkpoint_on_its_classes(monkeypatch, capsys, tmp_path):
    """The measured bug: `export ft.pt` scored a 5-9 head on all ten digits (17.6 % for 93.8 %)."""
    ck, ft = tmp_path / "d.pt", tmp_path / "ft.pt"
    assert run_main(monkeypatch, capsys, "train", "--epochs", "4", "--checkpoint", str(ck))[0] == 0
    code, out, err = run_main(monkeypatch, capsys, "finetune", str(ck), "--classes", "5,6,7,8,9",
                              "--per-class", "20", "--seed", "1", "-o", str(ft))  # fmt: skip
    assert code == 0, err
    tuned = last_accuracy(out)
    for extra in ([], ["--classes", "5,6,7,8,9"]):
        code, out, err = run_main(monkeypatch, capsys, "export", str(ft), "-o",
                                  str(tmp_path / "ft.onnx"), *extra)  # fmt: skip
        assert code == 0, err
        assert f"torch {tuned}, ONNX {tuned}" in out.splitlines()[-1]
        assert "classes 5..9 -> outputs 0..4" in out
    assert float(tuned.rstrip("%")) > 80


def _as_format_1(path, tmp_path, name="v1.pt"):
    """The checkpoint at `path` as the previous format wrote it: no classes, schedule, data or
    origin, and the cosine scheduler's state in `extra`."""
    payload = torch.load(path, weights_only=True)
    for key in ("classes", "schedule", "data", "origin"):
        payload.pop(key)
    payload["format"] = "optkit-checkpoint-1"
    payload["extra"]["scheduler"] = {"T_max": payload["config"]["epochs"], "last_epoch": 0}
    target = tmp_path / name
    torch.save(payload, target)
    return target


def test_format_1_checkpoints_still_load_export_and_resume(monkeypatch, capsys, tmp_path):
    ck, ft = tmp_path / "d.pt", tmp_path / "ft.pt"
    assert run_main(monkeypatch, capsys, "train", "--arch", "mlp", "--epochs", "3",
                    "--checkpoint", str(ck))[0] == 0  # fmt: skip
    old = _as_format_1(ck, tmp_path)
    saved = load_checkpoint(old)
    assert saved.format == "optkit-checkpoint-1" and saved.classes is None
    assert saved.labels == list(range(10)) and saved.planned_schedule() == Schedule("cosine", 3)
    code, out, err = run_main(
        monkeypatch, capsys, "export", str(old), "-o", str(tmp_path / "a.onnx")
    )
    assert code == 0, err
    assert last_accuracy(out, "torch ") == last_accuracy(out, "ONNX ")
    code, out, err = run_main(monkeypatch, capsys, "train", "--checkpoint", str(old), "--resume",
                              "--epochs", "5")  # fmt: skip
    assert code == 0, err
    resumed = load_checkpoint(old)
    assert resumed.format == CHECKPOINT_FORMAT and resumed.schedule == Schedule("cosine", 3, [5])
    assert [h.epoch for h in resumed.history] == [1, 2, 3, 4, 5]
    # A format-1 fine-tuned checkpoint: its classes are unknown, so export needs --classes
    code, out, err = run_main(monkeypatch, capsys, "finetune", str(ck), "--classes", "5,6,7,8,9",
                              "--per-class", "20", "--epochs", "3", "-o", str(ft))  # fmt: skip
    assert code == 0, err
    tuned = last_accuracy(out)
    old_ft = _as_format_1(ft, tmp_path, "v1ft.pt")
    assert load_checkpoint(old_ft).labels == [0, 1, 2, 3, 4]
    code, out, err = run_main(monkeypatch, capsys, "export", str(old_ft), "-o",
                              str(tmp_path / "b.onnx"), "--classes", "5,6,7,8,9")  # fmt: skip
    assert code == 0, err
    assert f"torch {tuned}, ONNX {tuned}" in out
    code, _, err = run_main(monkeypatch, capsys, "export", str(old_ft), "-o",
                            str(tmp_path / "b.onnx"), "--classes", "5,6,7")  # fmt: skip
    assert code == 2 and "3 classes" in err and "5 outputs" in err and "not recorded" in err


def test_resuming_to_more_epochs_continues_the_schedule(monkeypatch, capsys, tmp_path):
    """Train 10 epochs, resume to 20: the recorded lrs are kept, the rate never goes up after
    epoch 10, and the 20-epoch model is not worse than the 10-epoch one by more than one test
    example (it was: the cosine wrapped around, back up to 4.9e-2, and accuracy fell)."""
    ck = tmp_path / "digits.pt"
    code, out, err = run_main(
        monkeypatch, capsys, "train", "--epochs", "10", "--checkpoint", str(ck)
    )
    assert code == 0, err
    ten = load_checkpoint(ck)
    code, out, err = run_main(monkeypatch, capsys, "train", "--checkpoint", str(ck), "--resume",
                              "--epochs", "20")  # fmt: skip
    assert code == 0, err
    twenty = load_checkpoint(ck)
    lrs = [h.lr for h in twenty.history]
    assert [h.epoch for h in twenty.history] == list(range(1, 21))
    assert twenty.history[:10] == ten.history  # the first ten epochs are the recorded ones
    assert non_increasing(lrs[9:]) and non_increasing(lrs), lrs
    assert twenty.schedule == Schedule("cosine", 10, [20]) and twenty.config.epochs == 20
    from optkit.torch.data import digits, split

    test_size = len(split(digits(), 0.25, seed=0)[1])  # 450
    before, after = ten.history[-1].test_accuracy, twenty.history[-1].test_accuracy
    assert after >= before - 1 / test_size - 1e-12, (before, after, lrs)
    assert f"{after:.2%}" in out.splitlines()[-1]


def test_a_resume_refuses_what_contradicts_the_record(monkeypatch, capsys, tmp_path):
    ck = tmp_path / "d.pt"
    assert run_main(monkeypatch, capsys, "train", "--arch", "mlp", "--epochs", "3",
                    "--checkpoint", str(ck))[0] == 0  # fmt: skip
    before = ck.read_bytes()
    for args, words in (
        (["--lr", "0.1"], ["--lr 0.1", "--lr 0.05"]),
        (["--optimizer", "adam"], ["--optimizer adam", "--optimizer sgd"]),
        (["--schedule", "step"], ["--schedule step", "--schedule cosine"]),
        (["--batch-size", "32"], ["--batch-size 32", "--batch-size 64"]),
        (["--arch", "cnn"], ["--arch cnn", "--arch mlp"]),
        (["--seed", "1"], ["--seed 1", "--seed 0"]),
        (["--test-fraction", "0.3"], ["--test-fraction 0.3", "--test-fraction 0.25"]),
        (["--epochs", "2"], ["--epochs 2", "already trained 3 epochs"]),
    ):
        code, out, err = run_main(monkeypatch, capsys, "train", "--checkpoint", str(ck),
                                  "--resume", *args)  # fmt: skip
        assert code == 2 and all(w in err for w in words), (args, err)
        assert len(err.strip().splitlines()) == 1 and ck.read_bytes() == before
    # the recorded values given explicitly are fine, and all epochs done is nothing to do
    code, out, err = run_main(monkeypatch, capsys, "train", "--checkpoint", str(ck), "--resume",
                              "--lr", "0.05", "--arch", "MLP")  # fmt: skip
    assert code == 0 and "nothing to train" in out and ck.read_bytes() == before
    ft = tmp_path / "ft.pt"
    assert run_main(monkeypatch, capsys, "finetune", str(ck), "--classes", "1,2", "--epochs", "1",
                    "-o", str(ft))[0] == 0  # fmt: skip
    code, _, err = run_main(monkeypatch, capsys, "train", "--checkpoint", str(ft), "--resume")
    assert code == 2 and "optkit finetune" in err


def test_an_interrupted_run_finishes_its_schedule_then_extends(tmp_path):
    """Stopped after 2 of 4 epochs: --epochs 3 would cut the schedule short; --epochs 6 finishes
    the 4 planned epochs with the rates an uninterrupted run had, then extends."""
    import numpy as np

    from optkit.errors import InputError
    from optkit.torch.data import digits, fit_preprocessing, preprocess, split
    from optkit.torch.train import Architecture, TrainConfig, build_model, train

    train_raw, test_raw = split(digits(), 0.25, seed=0)
    spec = fit_preprocessing(train_raw)
    small = preprocess(spec, train_raw).select(np.arange(200))
    test_set = preprocess(spec, test_raw)
    arch = Architecture("mlp", (1, 8, 8), 10)
    torch.manual_seed(0)
    straight = train(build_model(arch), arch, small, test_set, TrainConfig(epochs=4))
    ck = tmp_path / "run.pt"
    torch.manual_seed(0)
    train(build_model(arch), arch, small, test_set, TrainConfig(epochs=4), checkpoint=ck, until=2)
    with pytest.raises(InputError, match="schedule runs 4 epochs"):
        train(build_model(arch), arch, small, test_set, TrainConfig(epochs=3), checkpoint=ck,
              resume=True)  # fmt: skip
    with pytest.raises(InputError, match="learning rate"):
        TrainConfig(lr=float("nan")).check()
    history = train(build_model(arch), arch, small, test_set, TrainConfig(epochs=6),
                    checkpoint=ck, resume=True)  # fmt: skip
    assert [h.lr for h in history[:4]] == [h.lr for h in straight]
    assert [h.test_accuracy for h in history[:4]] == [h.test_accuracy for h in straight]
    assert history[4].lr == history[3].lr and history[5].lr < history[4].lr


def test_a_resumed_run_with_dropout_is_the_uninterrupted_run(tmp_path):
    """The CNN has Dropout, which draws from torch's global generator: resuming without its state
    gave another run (epoch-5 loss 0.1849 vs 0.1679)."""
    import numpy as np

    from optkit.torch.data import digits, fit_preprocessing, preprocess, split
    from optkit.torch.train import Architecture, TrainConfig, build_model, train

    train_raw, test_raw = split(digits(), 0.25, seed=0)
    spec = fit_preprocessing(train_raw)
    small = preprocess(spec, train_raw).select(np.arange(256))
    test_set = preprocess(spec, test_raw)
    arch = Architecture("cnn", (1, 8, 8), 10)
    assert any(isinstance(m, torch.nn.Dropout) for m in build_model(arch).modules())
    torch.manual_seed(0)
    straight_model = build_model(arch)
    straight = train(straight_model, arch, small, test_set, TrainConfig(epochs=3))
    ck = tmp_path / "run.pt"
    torch.manual_seed(0)
    train(build_model(arch), arch, small, test_set, TrainConfig(epochs=3), checkpoint=ck, until=1)
    torch.manual_seed(12345)  # another process, another generator state
    resumed_model = build_model(arch)
    resumed = train(resumed_model, arch, small, test_set, TrainConfig(epochs=3), checkpoint=ck,
                    resume=True)  # fmt: skip
    assert [(h.loss, h.test_accuracy) for h in resumed] == [
        (h.loss, h.test_accuracy) for h in straight
    ]
    for name, tensor in straight_model.state_dict().items():
        assert torch.equal(tensor, resumed_model.state_dict()[name]), name


@pytest.fixture
def one_epoch(tmp_path, monkeypatch, capsys):
    ck = tmp_path / "ck.pt"
    code, _, err = run_main(monkeypatch, capsys, "train", "--arch", "mlp", "--epochs", "1",
                            "--checkpoint", str(ck))  # fmt: skip
    assert code == 0, err
    return ck


@pytest.mark.parametrize("flag", [("--seed", "1"), ("--test-fraction", "0.5")])
def test_export_refuses_another_split_of_the_data_it_was_trained_on(
    one_epoch, tmp_path, monkeypatch, capsys, flag
):
    """--seed 1 reported 98.67% where finetune had printed 96.89%: its test split overlapped the
    examples the model trained on."""
    out = tmp_path / "x.onnx"
    code, _, err = run_main(monkeypatch, capsys, "export", str(one_epoch), "-o", str(out), *flag)
    assert code == 2 and "another split would measure on examples it trained on" in err, err
    assert not out.exists()


def _damaged(source, target, change) -> None:
    payload = torch.load(source, weights_only=True)
    change(payload)
    torch.save(payload, target)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda p: p["schedule"].update(kind="weird"), "schedule 'weird'"),
        (lambda p: p["schedule"].update(epochs=0), "each must be more than the last"),
        (lambda p: p["extra"].update(epoch=7), "7 epochs done, but its schedule covers 1"),
        (lambda p: p["config"].update(lr=-1.0), "learning rate -1.0"),
        (lambda p: next(iter(p["state"].values())).fill_(float("nan")), "holds NaN or inf"),
    ],
    ids=["schedule-kind", "schedule-epochs", "epochs-done", "lr", "nan-weights"],
)
def test_a_damaged_checkpoint_is_refused_and_left_as_it_is(
    one_epoch, tmp_path, monkeypatch, capsys, change, words
):
    """A schedule of kind 'weird' resumed at lr 5e-2 after 1.2e-3, and NaN weights trained on;
    both wrote over the file."""
    damaged = tmp_path / "damaged.pt"
    _damaged(one_epoch, damaged, change)
    before = damaged.read_bytes()
    for args in (
        ["train", "--checkpoint", str(damaged), "--resume", "--epochs", "3"],
        ["export", str(damaged), "-o", str(tmp_path / "d.onnx")],
        ["finetune", str(damaged), "--epochs", "1", "-o", str(tmp_path / "f.pt")],
    ):
        code, _, err = run_main(monkeypatch, capsys, *args)
        assert code == 2 and "a damaged optkit checkpoint" in err and words in err, (args, err)
        assert len(err.strip().splitlines()) == 1
    assert damaged.read_bytes() == before
    assert not (tmp_path / "d.onnx").exists() and not (tmp_path / "f.pt").exists()
