"""Every command x malformed option values: exit 2, one line on stderr naming the option or value,
no traceback, no warning, nothing written. (The PyTorch commands have their own sweep in
tests/cli/test_training_cli.py, bench its own in tests/check/test_bench.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from helpers import F32, bn_node, bn_params, make_model, run_main


@pytest.fixture
def files(tmp_path: Path, rng: np.random.Generator) -> dict[str, str]:
    inits = {"W": rng.standard_normal((4, 3, 3, 3)).astype(np.float32), **bn_params(rng, 4)}
    nodes = [onnx.helper.make_node("Conv", ["x", "W"], ["h"], name="conv"), bn_node("h", "b"),
             onnx.helper.make_node("Relu", ["b"], ["y"], name="relu")]  # fmt: skip
    model = tmp_path / "m.onnx"
    onnx.save(
        make_model(nodes, [("x", F32, ["N", 3, 8, 8])], [("y", F32, None)], inits), str(model)
    )
    np.save(tmp_path / "x.npy", rng.standard_normal((2, 1, 3, 8, 8)).astype(np.float32))
    np.save(tmp_path / "images.npy", rng.integers(0, 256, (4, 8, 8, 3)).astype(np.uint8))
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "spec.json").write_text('{"dtype": "float32", "mean": [0.5, 0.5, 0.5]}')
    (tmp_path / "nan_spec.json").write_text('{"mean": [NaN, 0, 0]}')
    np.save(tmp_path / "flat.npy", rng.standard_normal((20, 6)).astype(np.float32))
    return {"model": str(model), "dir": str(tmp_path), "npy": str(tmp_path / "x.npy"),
            "images": str(tmp_path / "images.npy"), "bad_json": str(tmp_path / "bad.json"),
            "missing": str(tmp_path / "missing.onnx"), "spec": str(tmp_path / "spec.json"),
            "nan_spec": str(tmp_path / "nan_spec.json"), "flat": str(tmp_path / "flat.npy")}  # fmt: skip


FUSE = ["fuse", "{model}", "-o", "{dir}/out.onnx"]
VERIFY = ["verify", "{model}", "{model}"]
SWAP = ["swap", "{model}", "--map", "Relu=LeakyRelu:0.1", "--allow-lossy", "-o", "{dir}/s.onnx"]
EMBED = ["preprocess", "{model}", "-o", "{dir}/r.onnx"]
FIT = ["preprocess", "fit", "--data", "{images}", "--layout", "NHWC", "--dtype", "uint8",
       "--mode", "per-channel-mean", "-o", "{dir}/spec.json"]  # fmt: skip

CASES = {
    "fuse: missing model": (["fuse", "{missing}"], "missing.onnx"),
    "fuse: --fold-limit -1": ([*FUSE, "--fold-limit", "-1"], "--fold-limit"),
    "fuse: --fold-limit abc": ([*FUSE, "--fold-limit", "abc"], "--fold-limit"),
    "fuse: --upgrade-opset 0": ([*FUSE, "--upgrade-opset", "0"], "opset"),
    "fuse: --upgrade-opset 999": ([*FUSE, "--upgrade-opset", "999"], "opset"),
    "fuse: --shard-size 0": ([*FUSE, "--shard-size", "0"], "size"),
    "fuse: --shard-size lots": ([*FUSE, "--shard-size", "lots"], "size"),
    "fuse: --seed x": ([*FUSE, "--seed", "x"], "--seed"),
    "fuse: --seed -1": ([*FUSE, "--seed", "-1"], "--seed"),
    "fuse: --int-range 5:1": ([*FUSE, "--int-range", "5:1"], "--int-range"),
    "fuse: --shape x=ax3": ([*FUSE, "--shape", "x=ax3"], "--shape"),
    "fuse: --shape x=1x3": ([*FUSE, "--shape", "x=1x3"], "rank"),
    "fuse: --shape y=1x3x8x8": ([*FUSE, "--shape", "y=1x3x8x8"], "unknown input"),
    "fuse: --shape x=1x4x8x8 (static dim)": ([*FUSE, "--shape", "x=1x4x8x8"], "x"),
    "fuse: --shape x=0x3x8x8 (empty)": ([*FUSE, "--shape", "x=0x3x8x8"], "x"),
    "fuse: --passes bogus": ([*FUSE, "--passes", "bogus"], "bogus"),
    "fuse: --skip bogus": ([*FUSE, "--skip", "bogus"], "bogus"),
    "verify: --samples 0": ([*VERIFY, "--samples", "0"], "--samples"),
    "verify: --exactness exact": ([*VERIFY, "--exactness", "exact"], "--exactness"),
    "verify: --tolerance abc": ([*VERIFY, "--tolerance", "abc"], "--tolerance"),
    "verify: --tolerance -1,0": ([*VERIFY, "--tolerance", "-1,0"], "--tolerance"),
    "verify: --tolerance nan,0": ([*VERIFY, "--tolerance", "nan,0"], "--tolerance"),
    "verify: --tolerance z=0,0": ([*VERIFY, "--tolerance", "z=0,0"], "z"),
    "verify: --provider gpu": ([*VERIFY, "--provider", "gpu"], "--provider"),
    "verify: --optimization max": ([*VERIFY, "--optimization", "max"], "--optimization"),
    "verify: --data missing": ([*VERIFY, "--data", "{dir}/nope.npz"], "nope.npz"),
    "verify: --labels missing": ([*VERIFY, "--data", "{npy}", "--labels", "{dir}/l.npy"], "l.npy"),
    "verify: missing candidate": (["verify", "{model}", "{missing}"], "missing.onnx"),
    "swap: --map Bogus=Relu": ([*SWAP[:2], "--map", "Bogus=Relu"], "Bogus"),
    "swap: --map nonsense": ([*SWAP[:2], "--map", "nonsense"], "nonsense"),
    "swap: --samples 0": ([*SWAP, "--samples", "0"], "--samples"),
    "swap: --max-error -1": ([*SWAP, "--max-error", "-1"], "--max-error"),
    "swap: --max-error nan": ([*SWAP, "--max-error", "nan"], "--max-error"),
    "swap: --max-accuracy-drop nan": ([*SWAP, "--max-accuracy-drop", "nan"], "--max-accuracy"),
    "swap: --data missing": ([*SWAP, "--data", "{dir}/nope.npz"], "nope.npz"),
    "swap: no --map": (["swap", "{model}"], "--map"),
    "preprocess: --dtype int7": ([*EMBED, "--dtype", "int7"], "--dtype"),
    "preprocess: --layout NWHC": ([*EMBED, "--layout", "NWHC"], "--layout"),
    "preprocess: --scale 0": ([*EMBED, "--scale", "0"], "scale"),
    "preprocess: --scale nan": ([*EMBED, "--scale", "nan"], "scale"),
    "preprocess: --mean a,b": ([*EMBED, "--mean", "a,b"], "a,b"),
    "preprocess: --mean 1,2 (2 of 3 channels)": ([*EMBED, "--mean", "1,2"], "mean"),
    "preprocess: --std 0": ([*EMBED, "--std", "0"], "std"),
    "preprocess: --std nan": ([*EMBED, "--std", "nan"], "std"),
    "preprocess: --mean inf": ([*EMBED, "--mean", "inf"], "mean"),
    "preprocess: --channel-order 0,0,1": ([*EMBED, "--channel-order", "0,0,1"], "0, 0, 1"),
    "preprocess: --channel-order x": ([*EMBED, "--channel-order", "x"], "--channel-order"),
    "preprocess: --input bogus": ([*EMBED, "--mean", "1", "--input", "bogus"], "bogus"),
    "preprocess: --spec missing": ([*EMBED, "--spec", "{dir}/nope.json"], "nope.json"),
    "preprocess: --spec malformed": ([*EMBED, "--spec", "{bad_json}"], "bad.json"),
    "preprocess: --seed -1": ([*EMBED, "--mean", "1", "--seed", "-1"], "--seed"),
    "fit: --mode bogus": ([*FIT[:-4], "--mode", "bogus"], "--mode"),
    "fit: --components 0": ([*FIT[:-4], "--mode", "pca", "--components", "0"], "components"),
    "fit: --data missing": (["preprocess", "fit", "--data", "{dir}/no.npy", "--mode", "pca"], "no.npy"),
    "fit: --data malformed": (["preprocess", "fit", "--data", "{bad_json}", "--mode", "pca"], "bad.json"),
    "fit: --scale 0": ([*FIT, "--scale", "0"], "scale"),
    "inspect: missing model": (["inspect", "{missing}"], "missing.onnx"),
    "activations: missing model": (["activations", "{missing}"], "missing.onnx"),
    "demo: --out a file": (["demo", "--out", "{npy}"], "x.npy"),
    "unknown command": (["fusee", "{model}"], "fusee"),
    "unknown option": ([*FUSE, "--fast"], "--fast"),
    # found by an adversarial pass (exit 3, or accepted)
    "fuse: a JSON file as the model": (["fuse", "{bad_json}", "-o", "{dir}/o.onnx"], "bad.json"),
    "fuse: a spec as the model": (["fuse", "{spec}", "-o", "{dir}/o.onnx"], "spec.json"),
    "fuse: --shard-size nan": ([*FUSE, "--shard-size", "nan"], "nan"),
    "fuse: --shard-size inf": ([*FUSE, "--shard-size", "inf"], "inf"),
    "fuse: --shard-size 1e400GB": ([*FUSE, "--shard-size", "1e400GB"], "1e400"),
    "fuse: --shard-size ''": ([*FUSE, "--shard-size", ""], "size"),
    "fuse: --passes ''": ([*FUSE, "--passes", ""], "--passes"),
    "fuse: --skip ,,": ([*FUSE, "--skip", ",,"], "--skip"),
    "fuse: -o ending in /": (["fuse", "{model}", "-o", "{dir}/out.onnx/"], "ends with '/'"),
    "swap: --map Relu=LeakyRelu:nan": ([*SWAP[:2], "--map", "Relu=LeakyRelu:nan", "--allow-lossy"], "nan"),
    "swap: --map Relu=LeakyRelu:-1": ([*SWAP[:2], "--map", "Relu=LeakyRelu:-1", "--allow-lossy"], "alpha"),
    "swap: --map Relu=LeakyRelu:": ([*SWAP[:2], "--map", "Relu=LeakyRelu:", "--allow-lossy"], "':'"),
    "swap: --map Sigmoid=HardSigmoid:0.2,inf": ([*SWAP[:2], "--map", "Sigmoid=HardSigmoid:0.2,inf"], "inf"),
    "preprocess: --spec a model file": ([*EMBED, "--spec", "{model}"], "not a preprocessing spec"),
    "preprocess: --spec with a NaN mean": ([*EMBED, "--spec", "{nan_spec}"], "NaN"),
    "preprocess: --std -1": ([*EMBED, "--std", "-1"], "std"),
    "preprocess: --std 1e-45": ([*EMBED, "--std", "1e-45"], "too small"),
    "fit: --channel-order 0,1 of 3 channels": ([*FIT, "--channel-order", "0,1"], "3 channels"),
    "fit: --components 1000 of 6 features": (["preprocess", "fit", "--data", "{flat}", "--layout",
        "flat", "--mode", "pca", "--components", "1000", "-o", "{dir}/p.json"], "6 features"),
    "bench: --shape x=0x3x8x8": (["bench", "{model}", "--shape", "x=0x3x8x8"], "empty"),
    "demo: --out ''": (["demo", "--out", ""], "empty path"),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_a_malformed_option_is_one_line_and_exit_2(monkeypatch, capsys, files, case):
    template, named = CASES[case]
    before = sorted(Path(files["dir"]).iterdir())
    code, _out, err = run_main(monkeypatch, capsys, *(a.format(**files) for a in template))
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and "Traceback" not in err and "Warning" not in err, err
    assert named in err, err
    assert sorted(Path(files["dir"]).iterdir()) == before  # nothing written


@pytest.mark.parametrize(
    "argv",
    [
        [*VERIFY, "--exactness", "BITWISE", "--provider", "CPU", "--optimization", "Disable"],
        [*EMBED, "--layout", "nchw", "--dtype", "FLOAT32", "--mean", "0.5"],
    ],
)
def test_choices_take_any_case(monkeypatch, capsys, files, argv):
    code, _out, err = run_main(monkeypatch, capsys, *(a.format(**files) for a in argv))
    assert code == 0, err
