"""`optkit.tta` / `optkit tta`: each transform alone and combined, built, verified against the numpy
reference, fused, verified again; the copies run as ONE pass of the model; bad inputs are exit 2.

The numeric checks here make the copies with this file's own numpy (and torch's interpolate for
the scales) and run the original model on ONNX Runtime once per copy, apart from optkit's code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper

import optkit.augment
from helpers import F32, make_model, run_main
from optkit.augment import tta
from optkit.embedding import embed
from optkit.io import to_proto
from optkit.models import ImageMLP, ResNetStyle, randomize_batchnorm
from optkit.preprocessing import PreprocessSpec
from optkit.torch import export_onnx


def resnet(channels: int = 1, size: int = 8, seed: int = 0) -> onnx.ModelProto:
    torch.manual_seed(seed)
    model = randomize_batchnorm(ResNetStyle(10, 8, 2, channels), seed)
    return export_onnx(model, torch.randn(2, channels, size, size))


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options)
    return session.run(None, {session.get_inputs()[0].name: x})[0]


# --- this file's own transforms (axes: H, W) ----------------------------------------------------


def shifted(x: np.ndarray, dy: int, dx: int, pad: str, axes=(2, 3)) -> np.ndarray:
    """out[y, x] = in[y - dy, x - dx]; outside: 0, or the nearest pixel (edge)."""
    ay, ax = axes
    h, w = x.shape[ay], x.shape[ax]
    rows, cols = np.arange(h) - dy, np.arange(w) - dx
    out = np.take(np.take(x, np.clip(rows, 0, h - 1), axis=ay), np.clip(cols, 0, w - 1), axis=ax)
    if pad == "zero":
        inside = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
        shape = [1] * x.ndim
        shape[ay], shape[ax] = h, w
        out = out * inside.reshape(shape).astype(x.dtype)
    return out


def zoomed(x: np.ndarray, scale: float, pad: str) -> np.ndarray:
    """Bilinear (torch, half-pixel) to round(s H) x round(s W), then the centre H x W."""
    h, w = x.shape[2:]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    y = torch.nn.functional.interpolate(
        torch.from_numpy(x), size=size, mode="bilinear", align_corners=False
    ).numpy()
    out = np.zeros_like(x)
    for i in range(h):
        for j in range(w):
            si, sj = i + (size[0] - h) // 2, j + (size[1] - w) // 2
            if pad == "edge":
                si, sj = min(max(si, 0), size[0] - 1), min(max(sj, 0), size[1] - 1)
            elif not (0 <= si < size[0] and 0 <= sj < size[1]):
                continue
            out[:, :, i, j] = y[:, :, si, sj]
    return out


def mean_of(model: onnx.ModelProto, copies: list[np.ndarray], how: str = "mean") -> np.ndarray:
    outs = [run(model, c).astype(np.float64) for c in copies]
    if how == "softmax-mean":
        outs = [np.exp(o - o.max(-1, keepdims=True)) for o in outs]
        outs = [o / o.sum(-1, keepdims=True) for o in outs]
    return sum(outs) / len(outs)


CASES = {
    "hflip": (dict(hflip=True), 2),
    "vflip": (dict(vflip=True), 2),
    "shift 1": (dict(shift=1), 5),
    "shift 2, 8 directions, edge": (dict(shift=2, directions=8, pad="edge"), 9),
    "scales": (dict(scales=(0.75, 1.25)), 3),
    "crops 5": (dict(crops=5, input_size=(10, 12)), 5),
    "crop 1 + hflip": (dict(crops=1, input_size=(9, 11), hflip=True), 2),
    "hflip + vflip + shift": (dict(hflip=True, vflip=True, shift=1), 20),
    "scale + hflip + shift, edge": (dict(scales=(1.25,), hflip=True, shift=1, pad="edge"), 20),
}


def own_copies(x: np.ndarray, options: dict) -> list[np.ndarray]:
    """The copies in the order optkit lists them: crop, scale, vflip, hflip, shift."""
    crops = [x]
    if options.get("crops"):
        big_h, big_w = options["input_size"]
        top_lefts = {
            1: [((big_h - 8) // 2, (big_w - 8) // 2)],
            5: [
                (0, 0),
                (0, big_w - 8),
                (big_h - 8, 0),
                (big_h - 8, big_w - 8),
                ((big_h - 8) // 2, (big_w - 8) // 2),
            ],
        }[options["crops"]]
        crops = [x[:, :, t : t + 8, left : left + 8] for t, left in top_lefts]
    pad = options.get("pad", "zero")
    scales = [1.0, *options.get("scales", ())]
    p = options.get("shift", 0)
    moves = [(0, 0)] + ([(0, p), (0, -p), (p, 0), (-p, 0)] if p else [])
    if options.get("directions") == 8:
        moves += [(p, p), (p, -p), (-p, p), (-p, -p)]
    out = []
    for c in crops:
        for s in scales:
            zc = c if s == 1.0 else zoomed(c, s, pad)
            for v in [False, True] if options.get("vflip") else [False]:
                vc = zc[:, :, ::-1] if v else zc
                for hf in [False, True] if options.get("hflip") else [False]:
                    hc = vc[:, :, :, ::-1] if hf else vc
                    out += [np.ascontiguousarray(shifted(hc, dy, dx, pad)) for dy, dx in moves]
    return out


@pytest.mark.parametrize("case", CASES)
def test_each_transform_alone_and_combined_verifies_fuses_and_verifies_again(case):
    options, count = CASES[case]
    original = resnet()
    size = options.get("input_size", (8, 8))
    result = tta(original, fuse=True, shapes={"input": (4, 1, *size)}, **options)
    report = result.report
    assert len(report.copies) == count, report.copies
    assert report.verdict is not None and report.verdict.ok, report.format_text()
    assert report.fused is not None and report.fused.state == "equivalent"
    assert report.fused.batchnorm_before > 0 and report.fused.batchnorm_after == 0
    assert report.fused_verdict is not None and report.fused_verdict.ok
    fused = result.to_proto()
    # one pass: the model's layers appear once, reading the copies stacked along the batch
    convs = [n for n in fused.graph.node if n.op_type == "Conv"]
    assert len(convs) == sum(n.op_type == "Conv" for n in original.graph.node)
    concat = [
        n
        for n in fused.graph.node
        if n.op_type == "Concat" and any(a.name == "axis" and a.i == 0 for a in n.attribute)
    ]
    assert any(len(n.input) == count for n in concat)
    x = np.random.default_rng(3).standard_normal((6, 1, *size)).astype(np.float32)
    want = mean_of(original, own_copies(x, options))
    np.testing.assert_allclose(run(fused, x), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("how", ["softmax-mean", "vote"])
def test_combined_like_an_ensemble(how):
    original = resnet(seed=1)
    result = tta(original, shift=1, combine=how, weights=[2, 1, 1, 1, 1])
    assert result.report.ok, result.report.format_text()
    x = np.random.default_rng(4).standard_normal((32, 1, 8, 8)).astype(np.float32)
    outs = [run(original, c).astype(np.float64) for c in own_copies(x, {"shift": 1})]
    w = np.array([2, 1, 1, 1, 1]) / 6
    got = run(result.to_proto(), x)
    if how == "softmax-mean":
        probs = [np.exp(o - o.max(-1, keepdims=True)) for o in outs]
        want = sum(wi * p / p.sum(-1, keepdims=True) for wi, p in zip(w, probs, strict=True))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    else:
        votes = sum(wi * np.eye(10)[o.argmax(-1)] for wi, o in zip(w, outs, strict=True))
        mean = sum(wi * o for wi, o in zip(w, outs, strict=True))
        tied = np.isclose(votes, votes.max(-1, keepdims=True), rtol=0, atol=1e-6)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, np.where(tied, mean, -np.inf).argmax(-1))


def test_raw_nhwc_input_of_embedded_preprocessing_is_augmented_in_its_layout():
    spec = PreprocessSpec(
        dtype="uint8",
        layout="NHWC",
        scale=1 / 255,
        mean=[0.5, 0.4, 0.3],
        std=[0.2, 0.25, 0.3],
        channel_order=[2, 1, 0],
    )
    original = to_proto(embed(resnet(channels=3), spec))
    result = tta(original, hflip=True, shift=1, fuse=True)
    assert result.report.ok, result.report.format_text()
    x = np.random.default_rng(5).integers(0, 256, (4, 8, 8, 3)).astype(np.uint8)
    copies = []
    for flipped in (x, x[:, :, ::-1]):
        copies += [
            np.ascontiguousarray(shifted(flipped, dy, dx, "zero", axes=(1, 2)))
            for dy, dx in [(0, 0), (0, 1), (0, -1), (1, 0), (-1, 0)]
        ]
    np.testing.assert_allclose(
        run(result.to_proto(), x), mean_of(original, copies), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_scales_of_raw_uint8_input_round_as_the_reference_does(layout):
    """ONNX Runtime's integer Resize truncates; the graph interpolates in float and rounds, as the
    numpy reference does, so scales of raw pixels verify (they were 'differs')."""
    original = to_proto(
        embed(resnet(), PreprocessSpec(dtype="uint8", layout=layout, scale=1 / 255))
    )
    result = tta(original, scales=(0.75, 1.25, 2.0))
    assert result.report.state == "equivalent", result.report.format_text()
    shape = (3, 1, 8, 8) if layout == "NCHW" else (3, 8, 8, 1)
    x = np.random.default_rng(7).integers(0, 256, shape).astype(np.uint8)
    axes = (2, 3) if layout == "NCHW" else (1, 2)
    copies = [x]
    for scale in (0.75, 1.25, 2.0):
        size = (round(8 * scale), round(8 * scale))
        big = optkit.augment._resize(x, axes, size)
        copies.append(np.ascontiguousarray(optkit.augment._fit(big, axes, "constant", (8, 8))))
    np.testing.assert_allclose(run(result.to_proto(), x), mean_of(original, copies), atol=2e-2)


def test_float_raw_input_of_embedded_preprocessing():
    """The embedding declares its output with the input's batch dim: the copies make it K times
    that, which ONNX Runtime refused until those declarations were dropped."""
    original = to_proto(embed(resnet(), PreprocessSpec(mean=[3.0], std=[5.0])))
    result = tta(original, shift=1, combine="softmax-mean", fuse=True)
    assert result.report.ok, result.report.format_text()
    x = np.random.default_rng(6).uniform(0, 16, (5, 1, 8, 8)).astype(np.float32)
    want = mean_of(original, own_copies(x, {"shift": 1}), "softmax-mean")
    np.testing.assert_allclose(run(result.to_proto(), x), want, rtol=1e-5, atol=1e-6)


def test_verification_finds_a_wrong_copy(monkeypatch):
    """The graph and the numpy reference are built apart: a graph flipping the wrong axis fails."""
    real = optkit.augment._build_copy

    def wrong(builder, x, copy, axes, rank, pad, size, cache):
        return real(builder, x, copy, axes[::-1], rank, pad, size, cache)

    monkeypatch.setattr(optkit.augment, "_build_copy", wrong)
    result = tta(resnet(), hflip=True)
    assert result.report.state == "differs", result.report.format_text()


# --- the command line ----------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    paths = {"dir": str(tmp_path)}
    two_inputs = make_model(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        [("a", F32, ["N", 1, 8, 8]), ("b", F32, ["N", 1, 8, 8])],
        [("y", F32, ["N", 1, 8, 8])],
        {},
    )
    flat = make_model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [("x", F32, ["N", 64])],
        [("y", F32, ["N", 64])],
        {},
    )
    dynamic = make_model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [("x", F32, ["N", 1, "H", "W"])],
        [("y", F32, ["N", 1, "H", "W"])],
        {},
    )
    fixed_out = make_model(
        [helper.make_node("ReduceSum", ["x"], ["y"], keepdims=0)],
        [("x", F32, ["N", 1, 8, 8])],
        [("y", F32, [])],
        {},
        opset=11,
    )
    models = {
        "m": resnet(),
        "static": export_onnx(
            ImageMLP((1, 8, 8), (16,), 10), torch.randn(2, 1, 8, 8), dynamic_batch=False
        ),
        "two": two_inputs,
        "flat": flat,
        "dynamic": dynamic,
        "scalar": fixed_out,
    }
    for name, proto in models.items():
        onnx.save(proto, str(tmp_path / f"{name}.onnx"))
        paths[name] = str(tmp_path / f"{name}.onnx")
    return paths


def test_the_command_writes_a_verified_tta_model(monkeypatch, capsys, files):
    code, stdout, err = run_main(
        monkeypatch, capsys, "tta", files["m"], "--shift", "1", "--hflip", "--fuse", "--json"
    )
    assert code == 0, err
    report = json.loads(stdout)
    assert report["ok"] and len(report["copies"]) == 10 and report["fused_verification"]["ok"]
    out = Path(files["dir"]) / "m.tta.onnx"
    assert out.exists()
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    want = mean_of(onnx.load(files["m"]), own_copies(x, {"hflip": True, "shift": 1}))
    np.testing.assert_allclose(run(onnx.load(str(out)), x), want, rtol=1e-4, atol=1e-5)


BAD = {
    "no augmentation": (["{m}"], "no augmentation chosen"),
    "static batch": (["{static}", "--hflip"], "static (2)"),
    "two inputs": (["{two}", "--hflip"], "one image input, this one has a, b"),
    "flat input": (["{flat}", "--hflip"], "TTA needs (N, C, H, W) images"),
    "crops without --input-size": (["{m}", "--crops", "5"], "needs --input-size"),
    "--input-size smaller than the crops": (
        ["{m}", "--crops", "4", "--input-size", "6x6"],
        "smaller than the crops",
    ),
    "--input-size without --crops": (["{m}", "--hflip", "--input-size", "9x9"], "give --crops"),
    "--crop-size that contradicts the model": (
        ["{m}", "--crops", "1", "--input-size", "9x9", "--crop-size", "7x7"],
        "takes 8x8",
    ),
    "crops of dynamic dims without --crop-size": (
        ["{dynamic}", "--crops", "1", "--input-size", "9x9"],
        "--crop-size HxW",
    ),
    "scales of dynamic dims": (["{dynamic}", "--scales", "1.2"], "--scales needs static"),
    "bad --input-size": (["{m}", "--crops", "1", "--input-size", "9by9"], "expected HxW"),
    "bad --scales": (["{m}", "--scales", "1.2,big"], "--scales '1.2,big'"),
    "zero scale": (["{m}", "--scales", "0"], "not a positive number"),
    "huge scale": (["{m}", "--scales", "1e6"], "--scales: 1e+06 is above 16"),
    "overflowing scale": (["{m}", "--scales", "1e300"], "--scales: 1e+300 is above 16"),
    "shift as wide as the image": (["{m}", "--shift", "8"], "only 8 pixels across"),
    "weights count": (["{m}", "--hflip", "--weights", "1,2,3"], "3 weight(s) for 2 copies"),
    "output without a batch axis": (["{scalar}", "--hflip"], "no batch axis"),
    "vote on images": (["{dynamic}", "--hflip", "--combine", "vote"], "(rows, classes)"),
    "unknown pad": (["{m}", "--shift", "1", "--pad", "reflect"], "reflect"),
    "output is the input": (["{m}", "--hflip", "-o", "{m}"], "refusing to overwrite the input"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_inputs_are_one_line_and_exit_2(monkeypatch, capsys, files, case):
    template, named = BAD[case]
    before = {p: p.read_bytes() for p in Path(files["dir"]).iterdir()}
    code, _out, err = run_main(monkeypatch, capsys, "tta", *(a.format(**files) for a in template))
    assert code == 2, (code, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert named.format(**files) in err, err
    assert {p: p.read_bytes() for p in Path(files["dir"]).iterdir()} == before


@pytest.mark.parametrize(
    "options, message",
    [({"shift": 1.5}, "shift: a whole number"), ({"scales": 2.0}, "scales: a list of numbers")],
)
def test_options_of_the_wrong_type_are_an_input_error(options, message):
    with pytest.raises(optkit.InputError, match=message):
        optkit.tta("unused.onnx", **options)
