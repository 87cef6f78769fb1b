"""The PyTorch side for the user's own model: a factory in the user's module (`--model`), a local
state_dict (`--weights`), real photographs from scikit-image in an image folder, transfer learning on
the module's own stages, export into a fused, verified ONNX model, and every mistake exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from helpers import run_main
from optkit.errors import InputError
from optkit.torch.data import fit_preprocessing, load_data, preprocess, split

USER_MODULE = '''
"""A user's own networks (written by the test)."""
import torch
from torch import nn


def small(num_classes=10, width=8):
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes),
    )


class Named(nn.Module):
    """Named stages, as a ResNet has them: stem, stage1, stage2, head."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.stage1 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16),
                                    nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.head(torch.flatten(self.pool(self.stage2(self.stage1(self.stem(x)))), 1))


def layer_norm_mlp(num_classes=10):  # no BatchNorm: two processes compute what one does
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.LayerNorm(32), nn.ReLU(),
                         nn.Linear(32, num_classes))


def broken(num_classes=10):
    raise ValueError("the factory's own complaint")


def not_a_module():
    return 42
'''


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Three classes of real photographs shipped with scikit-image, several crops of each at their
    own sizes, as JPEG and PNG: RGB, grayscale (camera) and RGBA (logo)."""
    from PIL import Image
    from skimage import data

    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    classes = {
        "animal": [data.chelsea(), data.coffee()],
        "scene": [data.astronaut(), data.rocket()],
        "mono": [data.camera(), data.logo()],
    }
    for name, images in classes.items():
        (root / name).mkdir()
        for i, image in enumerate(images):
            for j in range(3):
                h, w = image.shape[:2]
                y, x = int(rng.integers(0, h // 4)), int(rng.integers(0, w // 4))
                crop = np.ascontiguousarray(image[y : y + 3 * h // 4, x : x + 3 * w // 4])
                lossy = image.ndim == 3 and image.shape[2] == 3 and j != 1
                suffix = "jpg" if lossy else "tif" if image.ndim == 2 and j == 2 else "png"
                Image.fromarray(crop).save(root / name / f"{i}_{j}.{suffix}")
    return root


@pytest.fixture(scope="module")
def user(tmp_path_factory) -> Path:
    """A folder with the user's module, a state_dict for `small(num_classes=5)` and bad weights."""
    folder = tmp_path_factory.mktemp("user")
    (folder / "usernet.py").write_text(USER_MODULE)
    spec = f"{folder / 'usernet.py'}:small"
    from optkit.models import randomize_batchnorm
    from optkit.torch.usermodel import make_model

    torch.manual_seed(1)
    model = randomize_batchnorm(make_model(spec, {"num_classes": 5}), seed=1)
    state = model.state_dict()
    torch.save(state, folder / "pre.pt")
    torch.save({"state_dict": state, "epoch": 3}, folder / "nested.pt")
    torch.save({k: v for k, v in state.items() if k != "4.weight"}, folder / "missing.pt")
    torch.save({**state, "extra.weight": torch.zeros(2)}, folder / "unexpected.pt")
    torch.save(make_model(spec, {"num_classes": 5, "width": 4}).state_dict(), folder / "narrow.pt")
    torch.save([1, 2, 3], folder / "list.pt")
    torch.save(model, folder / "whole.pt")  # a pickled module: weights_only refuses it
    (folder / "notes.txt").write_text("not weights\n")
    torch.save({k: v.to_sparse() if k == "4.weight" else v for k, v in state.items()},
               folder / "sparse.pt")  # fmt: skip
    torch.save({k: v.to("meta") for k, v in state.items()}, folder / "meta.pt")
    return folder


def _refused(monkeypatch, capsys, folder: Path, *args: str) -> str:
    """Exit 2, one line on stderr, no traceback, nothing written in `folder`."""
    before = sorted(p.name for p in folder.iterdir())
    code, out, err = run_main(monkeypatch, capsys, *args)
    assert code == 2, (args, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("optkit: error: "), (args, err)
    assert "Traceback" not in out + err
    assert sorted(p.name for p in folder.iterdir()) == before, args
    return lines[0]


def _onnx_line(out: str) -> tuple[str, str]:
    """(torch accuracy, ONNX accuracy) as `export` printed them."""
    line = [line for line in out.splitlines() if line.startswith("test accuracy: torch")][-1]
    torch_acc, rest = line.split("torch ")[1].split(", ONNX ")
    return torch_acc, rest.split(" ")[0]


def test_an_image_folder_of_real_photographs(photos, tmp_path):
    """Photos of different sizes, RGB / grayscale / RGBA, as JPEG and PNG: resized and center-
    cropped to the size asked, made the channels asked, and the loader says what it did."""
    data = load_data(str(photos), (32, 32))
    assert data.x.shape == (18, 3, 32, 32) and data.classes == 3 and data.x.dtype == np.float32
    assert data.names == ("animal", "mono", "scene") and np.bincount(data.y).tolist() == [6, 6, 6]
    assert "18 of 18 images resized and center-cropped to 32x32" in data.note
    assert "3 grayscale images given 3 channels" in data.note  # camera
    assert "3 images with transparency composited onto white" in data.note  # logo (RGBA)
    assert 0 <= data.x.min() and data.x.max() <= 255 and data.x.std() > 30
    gray = load_data(str(photos), (24, 40), channels=1)
    assert gray.x.shape == (18, 1, 24, 40) and "colour images made grayscale" in gray.note
    with pytest.raises(InputError, match="give --input-size"):
        load_data(str(photos))  # sizes differ and none was asked
    # transparency shows white; an all-grayscale folder is one channel unless asked otherwise
    from PIL import Image

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[:, :5] = (200, 0, 0, 255)  # left half opaque red, right half fully transparent
    Image.fromarray(rgba).save(tmp_path / "a" / "rgba.png")
    Image.fromarray(np.full((10, 10), 7, np.uint8)).save(tmp_path / "b" / "gray.png")
    mixed = load_data(str(tmp_path))
    assert mixed.x.shape == (2, 3, 10, 10)
    assert mixed.x[0, :, 0, 0].tolist() == [200, 0, 0] and mixed.x[0, :, 0, 9].tolist() == [255] * 3
    assert mixed.x[1].min() == mixed.x[1].max() == 7
    (tmp_path / "a" / "rgba.png").unlink()
    Image.fromarray(np.full((10, 10), 9, np.uint8)).save(tmp_path / "a" / "gray.png")
    assert load_data(str(tmp_path)).x.shape == (2, 1, 10, 10)
    # a camera's portrait photo: stored 10 wide and 6 high, EXIF orientation 6 (turn a quarter)
    stored = np.zeros((6, 10), np.uint8)
    stored[0, :] = 255  # the stored top row becomes the right-hand column once upright
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "a" / "gray.jpg", exif=exif, quality=100)
    upright = load_data(str(tmp_path), (10, 6), channels=1)
    assert upright.x.shape == (3, 1, 10, 6)
    assert "2 of 3 images resized" in upright.note  # the two 10x10 ones, not the upright photo
    photo = upright.x[0, 0]  # a/gray.jpg sorts first
    assert photo[:, -1].mean() > 200 and photo[:, 0].mean() < 50


def test_a_users_factory_and_weights_train_resume_export(
    photos, user, tmp_path, monkeypatch, capsys
):
    """train --model file.py:factory --weights: the factory's 5-class head replaced for the 3
    classes of the photos; the checkpoint records the factory, its arguments, the classes and the
    preprocessing; --resume continues it; export rebuilds it, folds every BatchNorm, verifies."""
    from optkit.torch.train import FACTORY, load_checkpoint

    ck = tmp_path / "mine.pt"
    spec = f"{user / 'usernet.py'}:small"
    code, out, err = run_main(monkeypatch, capsys, "train", "--model", spec, "--model-arg",
                              "num_classes=5", "--weights", str(user / "pre.pt"), "--data",
                              str(photos), "--input-size", "32", "--epochs", "2",
                              "--batch-size", "4", "--checkpoint", str(ck))  # fmt: skip
    assert code == 0, err
    assert "loaded strictly" in out and "resized and center-cropped to 32x32" in out
    assert "head 9: 5 outputs -> 3" in out and "epoch   2/2" in out
    saved = load_checkpoint(ck)
    arch = saved.architecture
    assert (arch.name, arch.factory, arch.factory_args, arch.head) == (
        FACTORY, spec, {"num_classes": 5}, "9"
    )  # fmt: skip
    assert arch.input_shape == (3, 32, 32) and arch.classes == 3 and saved.classes == [0, 1, 2]
    assert saved.preprocessing is not None and saved.data is not None
    # the backbone started from the weights file (a layer the first epochs barely move)
    start = torch.load(user / "pre.pt", weights_only=True)
    assert not torch.equal(saved.state["0.weight"], start["0.weight"])
    assert torch.allclose(saved.state["0.weight"], start["0.weight"], atol=0.5)
    code, out, err = run_main(monkeypatch, capsys, "train", "--checkpoint", str(ck), "--resume",
                              "--epochs", "3")  # fmt: skip
    assert code == 0, err
    assert "rebuilding its model with" in out and "resuming" in out
    assert [h.epoch for h in load_checkpoint(ck).history] == [1, 2, 3]
    line = _refused(monkeypatch, capsys, tmp_path, "train", "--checkpoint", str(ck), "--resume",
                    "--model", spec, "--model-arg", "num_classes=7", "--epochs", "4")  # fmt: skip
    assert "--model-arg" in line and "num_classes=5" in line
    code, out, err = run_main(monkeypatch, capsys, "export", str(ck), "-o",
                              str(tmp_path / "mine.onnx"), "--embed-preprocessing")  # fmt: skip
    assert code == 0, err
    assert '"batchnorm_after": 0' in out and "BatchNorm 2 -> 0" in out
    assert "verification: equivalent" in out
    torch_acc, onnx_acc = _onnx_line(out)
    assert torch_acc == onnx_acc


@pytest.mark.parametrize("strategy", ["linear", "last-k", "all", "stages"])
def test_finetune_a_users_model_with_each_strategy(
    strategy, photos, user, tmp_path, monkeypatch, capsys
):
    """finetune --model (a module on the path, named stages) --weights: the frozen part stays bit
    for bit (BatchNorm statistics too), last-k trains the module's last stages, and the result
    exports into a fused model with every BatchNorm folded, equal to torch."""
    from optkit.torch.train import load_checkpoint
    from optkit.torch.usermodel import make_model

    monkeypatch.syspath_prepend(str(user))
    spec = "usernet:Named"
    torch.manual_seed(2)
    from optkit.models import randomize_batchnorm

    weights = tmp_path / "named.pt"
    torch.save(randomize_batchnorm(make_model(spec, {"num_classes": 4})).state_dict(), weights)
    before = torch.load(weights, weights_only=True)
    out_ck = tmp_path / "ft.pt"
    extra = ["--compare-scratch"] if strategy == "last-k" else []
    code, out, err = run_main(monkeypatch, capsys, "finetune", "--model", spec, "--model-arg",
                              "num_classes=4", "--weights", str(weights), "--data", str(photos),
                              "--input-size", "16", "--classes", "0,2", "--strategy", strategy,
                              "--k", "1", "--epochs", "2", "--batch-size", "4", "-o", str(out_ck),
                              *extra)  # fmt: skip
    assert code == 0, err
    assert "on classes 0,2" in out
    tuned = load_checkpoint(out_ck)
    assert tuned.classes == [0, 2] and tuned.origin == "finetune"
    state = tuned.state
    if strategy == "stages":
        assert "best stage" in out
        assert tuned.architecture.stage in ("stem", "stage1", "stage2", "pool")
        unchanged = [k for k in before if not k.startswith("head.")]
        assert all(torch.equal(state[f"backbone.{k}"], before[k]) for k in unchanged)
    else:
        frozen = {"linear": ("stem.", "stage1.", "stage2."), "last-k": ("stem.", "stage1."),
                  "all": ()}[strategy]  # fmt: skip
        for key, value in before.items():
            if key.startswith(frozen):
                assert torch.equal(state[key], value), key  # running statistics included
        if strategy == "last-k":
            assert "last-k: training stage2 and the head head" in out
            assert not torch.equal(state["stage2.1.running_mean"], before["stage2.1.running_mean"])
            assert "transfer" in out.splitlines()[-1] and "from scratch" in out
        if strategy == "all":
            assert not torch.equal(state["stem.0.weight"], before["stem.0.weight"])
        assert state["head.weight"].shape == (2, 16)
    code, out, err = run_main(monkeypatch, capsys, "export", str(out_ck), "-o",
                              str(tmp_path / "ft.onnx"), "--embed-preprocessing")  # fmt: skip
    assert code == 0, err
    assert '"batchnorm_after": 0' in out and "verification: equivalent" in out
    torch_acc, onnx_acc = _onnx_line(out)
    assert torch_acc == onnx_acc


def test_finetune_a_checkpoint_of_a_users_model(photos, user, tmp_path, monkeypatch, capsys):
    """A checkpoint of `train --model` fine-tunes like optkit's own: the factory is called again."""
    ck, ft = tmp_path / "base.pt", tmp_path / "ft.pt"
    spec = f"{user / 'usernet.py'}:small"
    code, _, err = run_main(monkeypatch, capsys, "train", "--model", spec, "--head", "9",
                            "--data", str(photos), "--input-size", "16", "--epochs", "1",
                            "--checkpoint", str(ck))  # fmt: skip
    assert code == 0, err
    for command in (["export", str(ck)], ["finetune", str(ck), "--data", str(photos)]):
        line = _refused(monkeypatch, capsys, user, *command, "-o", str(user / "usernet.py"))
        assert "refusing to overwrite" in line  # the code the checkpoint names
    code, out, err = run_main(monkeypatch, capsys, "finetune", str(ck), "--data", str(photos),
                              "--classes", "1,2", "--strategy", "last-k", "--k", "2",
                              "--epochs", "1", "-o", str(ft))  # fmt: skip
    assert code == 0, err
    assert "rebuilding its model with" in out and "last-k: training 4, 5 and the head 9" in out
    line = _refused(monkeypatch, capsys, tmp_path, "finetune", str(ck), "--data", str(photos),
                    "--input-size", "20", "-o", str(tmp_path / "x.pt"))  # fmt: skip
    assert "--input-size 20" in line and "16x16" in line


WRONG_WEIGHTS = [
    ("missing.pt", ["1 missing key: 4.weight"]),
    ("unexpected.pt", ["1 unexpected key: extra.weight"]),
    ("narrow.pt", ["keys of another shape", "0.weight (file 4x3x3x3, model 8x3x3x3)"]),
    ("list.pt", ["not a state_dict", "list"]),
    ("whole.pt", ["not only tensors", "state_dict()"]),
    ("notes.txt", ["not a readable torch file"]),
    ("absent.pt", ["no such file"]),
    ("sparse.pt", ["'4.weight' is a sparse_coo (sparse) tensor"]),
    ("meta.pt", ["'0.weight' is a meta (no data) tensor"]),
]


@pytest.mark.parametrize(("name", "words"), WRONG_WEIGHTS, ids=[w[0] for w in WRONG_WEIGHTS])
def test_wrong_weights_are_exit_2_with_the_keys_named(
    name, words, user, photos, tmp_path, monkeypatch, capsys
):
    spec = f"{user / 'usernet.py'}:small"
    for command, output in (("train", ["--checkpoint", str(tmp_path / "w.pt")]),
                            ("finetune", ["-o", str(tmp_path / "w.pt")])):  # fmt: skip
        line = _refused(monkeypatch, capsys, tmp_path, command, "--model", spec, "--model-arg",
                        "num_classes=5", "--weights", str(user / name), "--data", str(photos),
                        "--input-size", "16", "--epochs", "1", *output)  # fmt: skip
        assert f"--weights {user / name}" in line and all(w in line for w in words), line


def test_a_nested_state_dict_loads_and_says_so(user):
    from optkit.torch.usermodel import load_weights, make_model

    model = make_model(f"{user / 'usernet.py'}:small", {"num_classes": 5})
    assert load_weights(model, user / "nested.pt") == ["the state_dict under 'state_dict'"]
    assert torch.equal(model.state_dict()["0.weight"], torch.load(user / "pre.pt")["0.weight"])


def test_model_mistakes_are_exit_2_naming_the_thing(user, photos, tmp_path, monkeypatch, capsys):
    file = user / "usernet.py"
    cases = [
        (["--model", "usernet"], "no ':factory'"),
        (["--model", "usernet:"], "the factory is empty"),
        (["--model", ":small"], "the module is empty"),
        (["--model", "no_such_module_xyz:f"], "no module named 'no_such_module_xyz'"),
        (["--model", f"{tmp_path}/absent.py:f"], "no such file"),
        (["--model", f"{file}:nothing"], "has no 'nothing'"),
        (["--model", f"{file}:broken"], "raised ValueError: the factory's own complaint"),
        (["--model", f"{file}:not_a_module"], "returned a int, not a torch.nn.Module"),
        (["--model", f"{file}:small", "--model-arg", "colour=red"], "unexpected keyword"),
        (["--model", f"{file}:small", "--model-arg", "width"], "give key=value"),
        (["--model", f"{file}:small", "--model-arg", "1x=2"], "give key=value"),
        (["--model", f"{file}:small", "--model-arg", "a=1", "--model-arg", "a=2"], "given twice"),
        (["--model", f"{file}:small", "--head", "fc"], "--head fc: the model has no module"),
        (["--model", f"{file}:small", "--head", "1"], "a BatchNorm2d, not a Linear layer"),
        (["--model", f"{file}:small", "--head", ""], "--head '': give the classifier's module"),
        (["--model", f"{file}:small", "--input-size", "0"], "--input-size 0"),
        (["--model", f"{file}:small", "--input-size", "3x"], "--input-size 3x"),
        (["--model", f"{file}:small", "--arch", "mlp"], "--arch: applies to optkit's own"),
        (["--model", f"{file}:small", "--preprocessing", "magic"], "give fit, imagenet"),
        (["--model", f"{file}:layer_norm_mlp"], "fails on inputs of shape (2, 3, 16, 16)"),
        (["--weights", str(user / "pre.pt")], "--weights: applies to a model given with --model"),
    ]
    for args, words in cases:
        size = [] if "--input-size" in args else ["--input-size", "16"]
        line = _refused(monkeypatch, capsys, tmp_path, "train", *args, "--data", str(photos),
                        *size, "--epochs", "1", "--checkpoint", str(tmp_path / "m.pt"))  # fmt: skip
        assert words in line, (args, line)
    line = _refused(monkeypatch, capsys, tmp_path, "finetune", "--data", str(photos), "-o",
                    str(tmp_path / "f.pt"))  # fmt: skip
    assert "give a CHECKPOINT, or your model with --model" in line
    # the output may not replace the user's code or weights
    for target in (file, user / "pre.pt"):
        line = _refused(monkeypatch, capsys, user, "train", "--model", f"{file}:small",
                        "--weights", str(user / "pre.pt"), "--model-arg", "num_classes=5",
                        "--data", str(photos), "--input-size", "16", "--checkpoint",
                        str(target))  # fmt: skip
        assert "refusing to overwrite" in line


def test_model_option_mistakes_are_refused_before_torch_is_imported(user, tmp_path):
    code = (
        "import sys\n"
        "from optkit.cli import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as e:\n"
        "    print(e.code, 'torch' in sys.modules)\n"
    )
    for args in (["--model", "usernet"], ["--model", f"{user}/usernet.py:small", "--model-arg",
                 "1x=3"], ["--weights", str(user / "pre.pt")],
                 ["--model", f"{user}/usernet.py:small", "--input-size", "3x"]):  # fmt: skip
        done = subprocess.run([sys.executable, "-c", code, "train", *args, "--checkpoint",
                               str(tmp_path / "c.pt")], capture_output=True, text=True)  # fmt: skip
        assert done.stdout.split() == ["2", "False"], (args, done.stdout, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1


def test_reference_layouts_are_torchvisions_and_export_with_every_batchnorm_folded(
    photos, tmp_path, monkeypatch, capsys
):
    """A ResNet-18 and a MobileNetV2 in torchvision's layout (built from torch.nn here): their
    parameter counts and key names are torchvision's, and on real photographs each exports with
    BatchNorm kept, checks against torch, takes raw pixels, fuses with every BatchNorm folded and
    verifies: the ResNet trained by `optkit train --model optkit.models.reference:resnet18` and
    exported by `optkit export`, the MobileNetV2 (random BatchNorm statistics) by the API."""
    from optkit.models import randomize_batchnorm
    from optkit.models.reference import mobilenet_v2, resnet18
    from optkit.torch.export import export_checked
    from optkit.torch.usermodel import stage_units, trainable_units

    r18, mnv2 = resnet18(), mobilenet_v2()
    assert sum(p.numel() for p in r18.parameters()) == 11_689_512
    assert sum(p.numel() for p in mnv2.parameters()) == 3_504_872
    for model, keys in (
        (r18, ["layer2.0.downsample.0.weight", "layer4.1.bn2.running_var", "fc.weight"]),
        (mnv2, ["features.1.conv.0.0.weight", "features.17.conv.3.running_mean",
                "features.18.1.weight", "classifier.1.bias"]),
    ):  # fmt: skip
        assert all(key in model.state_dict() for key in keys)
    assert [n for n, _ in trainable_units(r18)] == [
        "conv1", "bn1", "layer1", "layer2", "layer3", "layer4"
    ]  # fmt: skip
    assert stage_units(mnv2) == [f"features.{i}" for i in range(19)]

    ck = tmp_path / "r18.pt"
    code, out, err = run_main(monkeypatch, capsys, "train", "--model",
                              "optkit.models.reference:resnet18", "--model-arg", "num_classes=3",
                              "--data", str(photos), "--input-size", "32", "--epochs", "1",
                              "--batch-size", "8", "--checkpoint", str(ck))  # fmt: skip
    assert code == 0, err
    code, out, err = run_main(monkeypatch, capsys, "export", str(ck), "-o",
                              str(tmp_path / "r18.onnx"), "--embed-preprocessing")  # fmt: skip
    assert code == 0, err
    assert '"batchnorm_after": 0' in out and "BatchNorm 20 -> 0" in out
    assert "verification: equivalent" in out
    torch_acc, onnx_acc = _onnx_line(out)
    assert torch_acc == onnx_acc

    raw = load_data(str(photos), (32, 32))
    spec = fit_preprocessing(raw)
    torch.manual_seed(0)
    model = randomize_batchnorm(mobilenet_v2(num_classes=3), seed=3).eval()
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 52
    proto, report = export_checked(model, preprocess(spec, raw).x[:6], spec=spec,
                                   raw_samples=raw.x[:6])  # fmt: skip
    assert report["batchnorm_after"] == 0
    assert not any(n.op_type == "BatchNormalization" for n in proto.graph.node)
    assert report["export_max_abs_error"] < 1e-3 and report["embedded_max_abs_error"] < 1e-3


def test_the_python_api_takes_a_module_and_a_dataloader(photos, user, tmp_path):
    """fit / train / evaluate take an nn.Module with a DataLoader or a torch Dataset; a checkpoint
    of a module given as it is keeps its weights and says it cannot be rebuilt; a factory's
    architecture resumes bit for bit."""
    from torch.utils.data import DataLoader, TensorDataset

    from optkit.torch.train import (
        FACTORY,
        Architecture,
        TrainConfig,
        build_model,
        evaluate,
        fit,
        load_checkpoint,
        restore,
        train,
    )

    raw = load_data(str(photos), (16, 16))
    train_raw, test_raw = split(raw, 0.25, seed=0)
    spec = fit_preprocessing(train_raw)
    train_set, test_set = preprocess(spec, train_raw), preprocess(spec, test_raw)
    tensors = TensorDataset(torch.from_numpy(train_set.x), torch.from_numpy(train_set.y))
    loader = DataLoader(tensors, batch_size=4, shuffle=True,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3))  # fmt: skip
    lines: list[str] = []
    history = fit(model, loader, tensors, epochs=2, lr=0.01, log=lines.append,
                  checkpoint=tmp_path / "m.pt")  # fmt: skip
    assert len(history) == 2 and len(lines) == 2 and 0 <= history[-1].test_accuracy <= 1
    assert evaluate(model, DataLoader(tensors, batch_size=5)) == evaluate(model, train_set)
    saved = load_checkpoint(tmp_path / "m.pt")
    assert saved.architecture.input_shape == (3, 16, 16) and saved.architecture.classes == 3
    with pytest.raises(InputError, match="cannot rebuild it"):
        restore(saved)
    with pytest.raises(InputError, match="give an optkit Dataset"):
        train(model, None, [1, 2, 3], None, TrainConfig(epochs=1))
    # a factory's model: interrupted after one epoch and resumed is the uninterrupted run
    arch = Architecture(FACTORY, (3, 16, 16), 3, "", "", factory=f"{user / 'usernet.py'}:small")
    config = TrainConfig(epochs=2, batch_size=4)
    torch.manual_seed(0)
    straight = build_model(arch)
    train(straight, arch, train_set, test_set, config)
    torch.manual_seed(0)
    train(build_model(arch), arch, train_set, test_set, config, checkpoint=tmp_path / "f.pt",
          until=1)  # fmt: skip
    torch.manual_seed(9)
    resumed = build_model(arch)
    train(resumed, arch, train_set, test_set, config, checkpoint=tmp_path / "f.pt", resume=True)
    for name, tensor in straight.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    assert torch.equal(restore(load_checkpoint(tmp_path / "f.pt")).state_dict()["9.weight"],
                       resumed.state_dict()["9.weight"])  # fmt: skip


def test_frozen_batchnorms_of_a_resnet_stay_in_eval_mode(photos):
    """last-k on a ResNet-18 layout trains layer4 and fc; the BatchNorms before them keep their
    running statistics while layer4's move."""
    from optkit.models.reference import resnet18
    from optkit.torch.train import TrainConfig, train
    from optkit.torch.transfer import prepare_transfer

    raw = load_data(str(photos), (32, 32))
    spec = fit_preprocessing(raw)
    data = preprocess(spec, raw)
    torch.manual_seed(0)
    model = resnet18(num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    messages: list[str] = []
    groups = prepare_transfer(model, 3, "last-k", 1, 0.01, log=messages.append)
    assert messages == ["last-k: training layer4 and the head fc"]
    assert [g["lr"] for g in groups] == [0.01, 0.001]
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"layer4", "fc"}
    train(model, None, data, None, TrainConfig(epochs=1, batch_size=6))
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items() if not k.startswith(("layer4",
                                                                                       "fc")))  # fmt: skip
    assert not torch.equal(after["layer4.1.bn2.running_mean"], before["layer4.1.bn2.running_mean"])


@pytest.mark.slow
def test_torchrun_with_a_users_factory_matches_one_process(user, tmp_path):
    """tests/ddp_train.py with the user's factory: two processes under torchrun end where one
    does, as with optkit's own architectures."""
    script = Path(__file__).parent.parent / "ddp_train.py"
    factory = f"{user / 'usernet.py'}:layer_norm_mlp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single, double = tmp_path / "one.pt", tmp_path / "two.pt"
    subprocess.run([sys.executable, script, single, factory], check=True, env=env,
                   capture_output=True, timeout=300)  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         script, double, factory],
        check=True, env=env, capture_output=True, timeout=300,
    )  # fmt: skip
    one, two = torch.load(single), torch.load(double)
    assert set(one["state"]) == {"1.weight", "1.bias", "2.weight", "2.bias", "4.weight", "4.bias"}
    for name, weight in one["state"].items():
        torch.testing.assert_close(two["state"][name], weight, rtol=1e-4, atol=1e-5, msg=name)
    assert one["accuracy"] > 0.8 and abs(one["accuracy"] - two["accuracy"]) < 0.01


def test_a_module_factorys_source_is_never_an_output(user, photos, tmp_path, monkeypatch, capsys):
    """--model package.module:factory reads the module's file: train, finetune and export (of a
    checkpoint recording it) refuse to write over it, as they do a --model file.py."""
    (tmp_path / "mynets").mkdir()
    (tmp_path / "mynets" / "__init__.py").write_text("")
    (tmp_path / "mynets" / "cnn.py").write_text(USER_MODULE)
    (tmp_path / "flat.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    sources = {p: p.read_bytes() for p in (tmp_path / "flat.py", tmp_path / "mynets" / "cnn.py")}
    common = ["--data", str(photos), "--input-size", "8", "--epochs", "1"]
    for module, target in (("flat", "flat.py"), ("mynets.cnn", "mynets/cnn.py")):
        for command, flag in (("train", "--checkpoint"), ("finetune", "-o")):
            line = _refused(monkeypatch, capsys, tmp_path / "mynets", command, "--model",
                            f"{module}:small", *common, flag, target)  # fmt: skip
            assert "refusing to overwrite" in line and target in line, line
    code, _, err = run_main(monkeypatch, capsys, "finetune", "--model", "flat:small", *common,
                            "-o", "tuned.pt")  # fmt: skip
    assert code == 0, err
    for args in (["finetune", "tuned.pt", "--data", str(photos), "--epochs", "1", "-o", "flat.py"],
                 ["export", "tuned.pt", "-o", "flat.py"]):  # fmt: skip
        line = _refused(monkeypatch, capsys, tmp_path, *args)
        assert "refusing to overwrite" in line and "flat.py" in line, line
    assert {p: p.read_bytes() for p in sources} == sources


def test_an_input_size_too_large_is_exit_2_naming_it(photos, monkeypatch):
    """Images too large for memory, or for Pillow, at the --input-size asked: the size is named, not
    an image file (the images are fine)."""
    from optkit.torch import data

    with pytest.raises(InputError, match="give a smaller --input-size") as info:
        data.load_image_folder(photos, (16384, 16384), 3)
    assert "GB" in str(info.value)
    monkeypatch.setattr(data, "_check_fits", lambda *args: None)
    with pytest.raises(InputError, match="beyond what Pillow will make; give a smaller --input"):
        data.load_image_folder(photos, (16384, 16384), 3)


def test_an_empty_class_folder_is_refused_and_hidden_folders_are_no_classes(tmp_path):
    """A class folder without images would be a class the model never sees: exit 2 naming it. A
    hidden folder (.ipynb_checkpoints) is not a class."""
    from PIL import Image

    from optkit.torch.data import load_image_folder

    rng = np.random.default_rng(0)
    for name in ("a", "c"):
        (tmp_path / name).mkdir()
        for i in range(2):
            pixels = rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / name / f"{i}.png")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    data = load_image_folder(tmp_path)
    assert data.classes == 2 and data.names == ("a", "c")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("no images here\n")
    with pytest.raises(InputError, match=r"/b: a class folder with no images"):
        load_image_folder(tmp_path)


def test_resume_takes_the_recorded_image_folder_with_input_size(
    user, photos, tmp_path, monkeypatch, capsys
):
    """--resume with --input-size and no --data: the recorded image folder, not the default digits,
    decides (the recorded size continues, another is refused naming the checkpoint's)."""
    run = tmp_path / "run.pt"
    code, _, err = run_main(monkeypatch, capsys, "train", "--model", f"{user / 'usernet.py'}:small",
                            "--data", str(photos), "--input-size", "8", "--epochs", "1",
                            "--checkpoint", str(run))  # fmt: skip
    assert code == 0, err
    line = _refused(monkeypatch, capsys, tmp_path, "train", "--checkpoint", str(run), "--resume",
                    "--epochs", "2", "--input-size", "16")  # fmt: skip
    assert f"{run} was trained on 8x8 images" in line, line
    code, out, err = run_main(monkeypatch, capsys, "train", "--checkpoint", str(run), "--resume",
                              "--epochs", "2", "--input-size", "8")  # fmt: skip
    assert code == 0 and "epoch   2/2" in out, err
