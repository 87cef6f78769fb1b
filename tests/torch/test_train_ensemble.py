"""`optkit train --seeds` and `optkit export --ensemble`: from several training runs to one verified,
fused ensemble file. Digits, a small MLP with BatchNorm, one epoch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from helpers import run_main

SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """`train --seeds 3` run once: the folder, the output and the checkpoints."""
    folder = tmp_path_factory.mktemp("runs")
    mp = pytest.MonkeyPatch()
    try:
        from optkit.cli import main

        mp.chdir(folder)
        mp.setattr("sys.argv", ["optkit", "train", "--arch", "mlp", "--epochs", "1", "--seeds",
                                "3", "--checkpoint", "runs.pt"])  # fmt: skip
        with pytest.raises(SystemExit) as done:
            main()
        assert (done.value.code or 0) == 0
    finally:
        mp.undo()
    return folder, [folder / f"runs.seed{k}.pt" for k in SEEDS]


def test_seeds_write_one_checkpoint_per_seed_with_different_weights(runs):
    import torch

    from optkit.torch.train import load_checkpoint

    folder, paths = runs
    assert sorted(p.name for p in folder.iterdir()) == [p.name for p in paths]
    saved = [load_checkpoint(p) for p in paths]
    assert [s.config.seed for s in saved] == list(SEEDS)  # type: ignore[union-attr]
    # one split and one preprocessing (that of --seed), so the runs share their test set
    assert all(s.data == saved[0].data for s in saved) and saved[0].data.seed == 0  # type: ignore[union-attr]
    assert all(s.preprocessing == saved[0].preprocessing for s in saved)
    for a, b in ((0, 1), (0, 2), (1, 2)):
        weights = [n for n, t in saved[a].state.items() if t.dtype.is_floating_point]
        assert any(not torch.equal(saved[a].state[n], saved[b].state[n]) for n in weights)


def test_seeds_print_each_accuracy_and_their_mean(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(monkeypatch, capsys, "train", "--arch", "mlp", "--epochs", "1",
                              "--seeds", "4,7", "--checkpoint", "m")  # fmt: skip
    assert code == 0, err
    lines = out.splitlines()
    scores = [float(line.split()[4].rstrip("%")) for line in lines if line.startswith("seed ")
              and "test accuracy" in line]  # fmt: skip
    assert len(scores) == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["m.seed4", "m.seed7"]
    assert lines[-1] == f"mean test accuracy of 2 runs: {np.mean(scores):.2f}%"


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    from optkit.check.runtime import make_session

    session = make_session(onnx.load(str(path)))
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _raw_digits() -> np.ndarray:
    from optkit.torch.data import digits

    return digits().x[:64].astype(np.float32)


@pytest.mark.parametrize("combine", ["mean", "vote"])
def test_export_ensemble_is_the_combination_of_the_single_exports(
    runs, combine, tmp_path, monkeypatch, capsys
):
    folder, paths = runs
    out = tmp_path / "e.onnx"
    args = ["export", *map(str, paths), "--ensemble", "--combine", combine, "-o", str(out)]
    code, text, err = run_main(monkeypatch, capsys, *args)
    assert code == 0, err
    assert "BatchNorm 6 -> 0" in text and "ensemble (" in text.splitlines()[-1]
    model = onnx.load(str(out))
    assert not [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    recorded = json.loads({p.key: p.value for p in model.metadata_props}["optkit.ensemble"])
    assert recorded["members"] == list(map(str, paths)) and recorded["combine"] == combine
    x = _raw_digits()  # raw pixels: the checkpoints' preprocessing is embedded
    singles = []
    for k, path in enumerate(paths):
        single = tmp_path / f"s{k}.onnx"
        code, _, err = run_main(monkeypatch, capsys, "export", str(path), "--embed-preprocessing",
                                "-o", str(single))  # fmt: skip
        assert code == 0, err
        singles.append(_ort(single, x))
    got = _ort(out, x)
    mean = np.mean(singles, axis=0)
    if combine == "mean":
        np.testing.assert_allclose(got, mean, atol=1e-4 * max(1.0, float(np.abs(mean).max())))
    else:
        picks = np.stack([s.argmax(1) for s in singles])
        votes = np.stack([(picks == c).sum(0) for c in range(mean.shape[1])], 1)
        clear = np.sort(votes, 1)[:, -1] > np.sort(votes, 1)[:, -2]  # no tie to break
        assert clear.any()
        np.testing.assert_array_equal(got.reshape(-1)[clear], votes.argmax(1)[clear])
    assert sorted(p.name for p in folder.iterdir()) == [p.name for p in paths]  # nothing beside


@pytest.fixture(scope="module")
def misfits(runs, tmp_path_factory):
    """Checkpoints that do not fit with the runs': other classes, another input shape, no
    preprocessing."""
    from dataclasses import replace

    from optkit.torch.train import Checkpoint, build_model, load_checkpoint, save_checkpoint

    folder = tmp_path_factory.mktemp("misfits")
    base = load_checkpoint(runs[1][0])

    def write(name: str, **changes) -> Path:
        arch = replace(base.architecture, **changes.pop("arch", {}))
        spec = changes.pop("preprocessing", base.preprocessing)
        saved = Checkpoint(arch, build_model(arch).state_dict(), [], spec, data=base.data,
                           classes=changes.pop("classes", None))  # fmt: skip
        save_checkpoint(folder / name, saved)
        return folder / name

    return {
        "classes": write("five.pt", arch={"classes": 5}, classes=[5, 6, 7, 8, 9]),
        "shape": write("small.pt", arch={"input_shape": (1, 4, 4)}),
        "preprocessing": write("plain.pt", preprocessing=None),
    }


@pytest.mark.parametrize("case", ["classes", "shape", "preprocessing"])
def test_checkpoints_that_do_not_fit_are_one_line_exit_2(
    runs, misfits, case, tmp_path, monkeypatch, capsys
):
    _, paths = runs
    odd = misfits[case]
    out = tmp_path / "e.onnx"
    code, _, err = run_main(monkeypatch, capsys, "export", str(paths[0]), str(odd), "--ensemble",
                            "-o", str(out))  # fmt: skip
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(odd) in lines[0] and "Traceback" not in err
    word = {"classes": "classes", "shape": "shape", "preprocessing": "preprocessing"}[case]
    assert word in lines[0] and not out.exists()


def test_refusals_are_exit_2_before_any_work(runs, tmp_path, monkeypatch, capsys):
    _, paths = runs
    before = [p.read_bytes() for p in paths]
    cases = [
        ["export", *map(str, paths), "--ensemble", "-o", str(paths[1])],  # a checkpoint
        ["export", *map(str, paths[:2]), "-o", str(tmp_path / "e.onnx")],  # no --ensemble
        ["export", str(paths[0]), "--ensemble", "-o", str(tmp_path / "e.onnx")],  # one member
        ["export", str(paths[0]), "--combine", "vote", "-o", str(tmp_path / "e.onnx")],
        ["train", "--seeds", "0", "--checkpoint", str(tmp_path / "r.pt")],
        ["train", "--seeds", "1,1", "--checkpoint", str(tmp_path / "r.pt")],
        ["train", "--seeds", "1,x", "--checkpoint", str(tmp_path / "r.pt")],
        ["train", "--seeds", "2", "--resume", "--checkpoint", str(tmp_path / "r.pt")],
        ["train", "--seeds", "2", "--checkpoint", str(tmp_path / "nodir" / "r.pt")],
    ]
    (tmp_path / "x.seed1.pt").write_text("notes, not a checkpoint\n")
    cases.append(["train", "--seeds", "2", "--checkpoint", str(tmp_path / "x.pt")])
    for args in cases:
        code, _, err = run_main(monkeypatch, capsys, *args)
        assert code == 2 and len(err.strip().splitlines()) == 1, (args, err)
        assert "Traceback" not in err
    assert "--ensemble" in run_main(monkeypatch, capsys, *cases[1])[2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.seed1.pt"]  # x.seed0.pt not trained
    assert [p.read_bytes() for p in paths] == before


def test_a_checkpoint_given_twice_is_refused(runs, tmp_path, monkeypatch, capsys):
    """The same checkpoint twice (or by a link) is no ensemble: exit 2 naming it, nothing written."""
    _, paths = runs
    link = tmp_path / "again.pt"
    link.symlink_to(paths[0])
    for second, words in ((paths[0], "given twice"), (link, f"the same file as {paths[0]}")):
        out = tmp_path / "e.onnx"
        code, _, err = run_main(monkeypatch, capsys, "export", str(paths[0]), str(second),
                                "--ensemble", "-o", str(out))  # fmt: skip
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and words in lines[0], err
        assert str(second) in lines[0] and not out.exists()
