"""The PyTorch side end to end on scikit-learn's digits: training from scratch, checkpoints that
resume, BatchNorm train/eval handling, transfer learning, export into a verified fused ONNX model,
and the bad-input paths."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from helpers import run_main
from optkit.check.runtime import make_session
from optkit.errors import InputError, VerificationError
from optkit.torch.data import digits, fit_preprocessing, load_data, preprocess, split, subset
from optkit.torch.export import check_against_torch, export_checked
from optkit.torch.train import (
    Architecture,
    TrainConfig,
    build_model,
    evaluate,
    load_checkpoint,
    train,
)
from optkit.torch.transfer import fit_stage_classifier, prepare_transfer, stage_names


@pytest.fixture(scope="module")
def splits():
    train_raw, test_raw = split(digits(), 0.25, seed=0)
    spec = fit_preprocessing(train_raw)
    return train_raw, test_raw, spec, preprocess(spec, train_raw), preprocess(spec, test_raw)


def fresh(name="cnn", classes=10, seed=0):
    torch.manual_seed(seed)
    arch = Architecture(name, (1, 8, 8), classes)
    return arch, build_model(arch)


def test_from_scratch_on_digits_then_exported_fused_onnx_has_the_same_accuracy(splits):
    _, test_raw, spec, train_set, test_set = splits
    arch, model = fresh()
    history = train(model, arch, train_set, test_set, TrainConfig(epochs=8))
    torch_accuracy = evaluate(model, test_set)
    assert torch_accuracy >= 0.95 and history[-1].test_accuracy == torch_accuracy
    proto, report = export_checked(model, test_set.x, spec=spec, raw_samples=test_raw.x)
    assert report["batchnorm_after"] == 0 and report["export_max_abs_error"] < 1e-4
    session = make_session(proto)
    (logits,) = session.run(None, {session.get_inputs()[0].name: test_raw.x})  # raw input
    assert float(np.mean(np.argmax(logits, 1) == test_raw.y)) == torch_accuracy


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(splits, tmp_path):
    _, _, _, train_set, test_set = splits
    small = train_set.select(np.arange(300))
    arch, straight = fresh("mlp")
    train(straight, arch, small, test_set, TrainConfig(epochs=4))
    checkpoint = tmp_path / "run.pt"
    _, first = fresh("mlp")
    train(first, arch, small, test_set, TrainConfig(epochs=4), checkpoint=checkpoint, until=2)
    _, resumed = fresh("mlp", seed=99)  # different init: everything must come from the checkpoint
    history = train(resumed, arch, small, test_set, TrainConfig(epochs=4),
                    checkpoint=checkpoint, resume=True)  # fmt: skip
    assert [h.epoch for h in history] == [1, 2, 3, 4]
    for (name, a), b in zip(
        straight.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert load_checkpoint(checkpoint).extra["epoch"] == 4


def test_batchnorm_mode_is_handled_and_a_training_mode_export_is_caught(splits):
    _, _, _, train_set, test_set = splits
    arch, model = fresh()
    train(model, arch, train_set, test_set, TrainConfig(epochs=2))
    model.train()  # the user forgot model.eval()
    accuracy = evaluate(model, test_set)
    assert model.training  # evaluate used eval mode and gave the mode back
    proto, _ = export_checked(model, test_set.x[:64], fuse_it=False)  # exports in eval mode
    assert any(n.op_type == "BatchNormalization" for n in proto.graph.node) and model.training
    # An export made with BatchNorm in training mode (batch statistics) is caught on real samples.
    import io as _io

    buffer = _io.BytesIO()
    torch.onnx.export(model, (torch.from_numpy(test_set.x[:2]),), buffer, dynamo=False,
                      training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False,
                      input_names=["input"], dynamic_axes={"input": {0: "n"}})  # fmt: skip
    wrong = onnx.load_from_string(buffer.getvalue())
    with pytest.raises(VerificationError, match="training mode"):
        check_against_torch(wrong, model, test_set.x[:64])
    assert accuracy > 0.5


def test_transfer_with_a_frozen_backbone_trains_only_the_new_head(splits):
    """Pretrain on digits 0-4, then 20 examples per class of 5-9 with the backbone frozen."""
    _, _, _, train_set, test_set = splits
    low_train, low_test = subset(train_set, [0, 1, 2, 3, 4]), subset(test_set, [0, 1, 2, 3, 4])
    few, high_test = (
        subset(train_set, [5, 6, 7, 8, 9], 20, seed=0),
        subset(test_set, [5, 6, 7, 8, 9]),
    )
    arch, model = fresh(classes=5)
    train(model, arch, low_train, low_test, TrainConfig(epochs=8))
    backbone = {k: v.clone() for k, v in model.state_dict().items() if "classifier.5" not in k}
    groups = prepare_transfer(model, 5, "linear", 0, lr=0.05)
    train(model, arch, few, high_test, TrainConfig(epochs=30, batch_size=20), param_groups=groups)
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in backbone.items())  # running stats too
    assert evaluate(model, high_test) > 0.75


def test_the_stages_strategy_picks_a_stage_and_exports(splits, tmp_path, monkeypatch, capsys):
    """Little data from a different domain: linear classifiers on several stages, the best kept;
    the result is a checkpoint `optkit export` turns into a fused ONNX model."""
    _, _, _, train_set, test_set = splits
    arch, model = fresh(classes=5)
    low = subset(train_set, [0, 1, 2, 3, 4])
    train(model, arch, low, subset(test_set, [0, 1, 2, 3, 4]), TrainConfig(epochs=6),
          checkpoint=tmp_path / "low.pt")  # fmt: skip
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probe = fit_stage_classifier(model, subset(train_set, [5, 6, 7, 8, 9], 20), seed=0)
    assert probe.stage in stage_names(model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # untouched
    assert evaluate(probe, subset(test_set, [5, 6, 7, 8, 9])) > 0.8
    out = tmp_path / "stages.pt"
    code, text, err = run_main(monkeypatch, capsys, "finetune", str(tmp_path / "low.pt"),
                               "--classes", "5,6,7,8,9", "--per-class", "20", "--different",
                               "-o", str(out))  # fmt: skip
    assert code == 0, err
    assert "strategy stages" in text and "best stage:" in text
    code, text, err = run_main(monkeypatch, capsys, "export", str(out), "-o",
                               str(tmp_path / "stages.onnx"), "--classes", "5,6,7,8,9")  # fmt: skip
    assert code == 0, err
    torch_acc, onnx_acc = text.strip().splitlines()[-1].split("torch ")[1].split(", ONNX ")
    assert torch_acc == onnx_acc.split(" ")[0] and float(torch_acc.rstrip("%")) > 80


def test_bad_inputs_are_clear_errors(tmp_path, splits):
    with pytest.raises(InputError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    np.savez(tmp_path / "flat.npz", x=np.zeros((10, 64), np.float32), y=np.zeros(10, np.int64))
    with pytest.raises(InputError, match="expected \\(N, C, H, W\\)"):
        load_data(str(tmp_path / "flat.npz"))
    np.savez(tmp_path / "nolabels.npz", x=np.zeros((10, 8, 8), np.float32))
    with pytest.raises(InputError, match="needs arrays 'x' and 'y'"):
        load_data(str(tmp_path / "nolabels.npz"))
    _, _, _, train_set, test_set = splits
    arch, model = fresh("mlp")
    checkpoint = tmp_path / "ten.pt"
    train(model, arch, train_set.select(np.arange(100)), test_set, TrainConfig(epochs=1),
          checkpoint=checkpoint)  # fmt: skip
    five = Architecture("mlp", (1, 8, 8), 5)
    with pytest.raises(InputError, match="trained for"):  # a class-count mismatch on resume
        train(build_model(five), five, train_set, test_set, TrainConfig(epochs=2),
              checkpoint=checkpoint, resume=True)  # fmt: skip


def test_the_commands_end_to_end(monkeypatch, capsys, tmp_path):
    checkpoint, onnx_path = tmp_path / "d.pt", tmp_path / "d.onnx"
    code, out, err = run_main(monkeypatch, capsys, "train", "--arch", "mlp", "--epochs", "3",
                              "--checkpoint", str(checkpoint))  # fmt: skip
    assert code == 0, err
    assert "epoch   3/3" in out and checkpoint.exists()
    code, out, err = run_main(monkeypatch, capsys, "export", str(checkpoint), "-o", str(onnx_path),
                              "--embed-preprocessing")  # fmt: skip
    assert code == 0, err
    torch_acc, onnx_acc = out.strip().splitlines()[-1].split("torch ")[1].split(", ONNX ")
    assert torch_acc == onnx_acc.split(" ")[0]
    code, out, err = run_main(monkeypatch, capsys, "finetune", str(checkpoint), "--classes",
                              "5,6,7,8,9", "--per-class", "20", "--epochs", "2", "-o",
                              str(tmp_path / "ft.pt"), "--compare-scratch")  # fmt: skip
    assert code == 0, err
    assert "strategy linear: little data (20 per class) from a similar domain" in out
    transferred = float(out.split("test accuracy ")[-1].split("%")[0])
    comparison = out.strip().splitlines()[-1]
    assert comparison.startswith(f"transfer {transferred:.2f}%, from scratch ")
    scratch = float(comparison.split("from scratch ")[1].split("%")[0])
    helped = "transfer helped" if transferred > scratch else "transfer did not help"
    assert helped in comparison
    code, out, err = run_main(monkeypatch, capsys, "stats", "--layers", "3", "--width", "256",
                              "--png", str(tmp_path / "s.png"), "--gradients")  # fmt: skip
    assert code == 0 and "dW std" in out and (tmp_path / "s.png").exists()
    code, _, err = run_main(monkeypatch, capsys, "export", str(tmp_path / "nope.pt"), "-o",
                            str(onnx_path))  # fmt: skip
    assert code == 2 and "no such checkpoint" in err
    code, _, err = run_main(monkeypatch, capsys, "train", "--init", "he", "--epochs", "1",
                            "--checkpoint", str(checkpoint))  # fmt: skip
    assert code == 2 and "'he' is not one of" in err and "kaiming" in err


@pytest.mark.slow
def test_torchrun_with_two_processes_matches_one_process(tmp_path):
    script = Path(__file__).parent.parent / "ddp_train.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single, double = tmp_path / "one.pt", tmp_path / "two.pt"
    subprocess.run([sys.executable, script, single], check=True, env=env, capture_output=True)
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         script, double],
        check=True, env=env, capture_output=True, timeout=300,
    )  # fmt: skip
    one, two = torch.load(single), torch.load(double)
    for name, weight in one["state"].items():
        torch.testing.assert_close(two["state"][name], weight, rtol=1e-4, atol=1e-5, msg=name)
    assert one["accuracy"] > 0.9 and abs(one["accuracy"] - two["accuracy"]) < 0.01


def test_an_image_folder_loads_and_trains(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, name in enumerate(("cats", "dogs")):
        (tmp_path / name).mkdir()
        for i in range(12):
            pixels = rng.integers(0, 80, (8, 8, 3)) + (150 if label else 0)
            Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / name / f"{i}.png")
    (tmp_path / "dogs" / "notes.txt").write_text("not an image")
    data = load_data(str(tmp_path))
    assert data.x.shape == (24, 3, 8, 8) and data.classes == 2 and data.y.sum() == 12
    train_set, test_set = split(data, 0.25, seed=0)
    spec = fit_preprocessing(train_set)
    arch = Architecture("cnn", (3, 8, 8), 2)
    torch.manual_seed(0)
    model = build_model(arch)
    history = train(model, arch, preprocess(spec, train_set), preprocess(spec, test_set),
                    TrainConfig(epochs=5, batch_size=6))  # fmt: skip
    assert history[-1].test_accuracy == 1.0  # the two classes differ by 150 grey levels
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "cats" / "small.png")
    with pytest.raises(InputError, match="size"):
        load_data(str(tmp_path))
