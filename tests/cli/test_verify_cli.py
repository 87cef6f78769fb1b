"""`optkit verify`, `bench`, `inspect`: metrics by hand, tolerances, matching, bad inputs, JSON,
bisection of a planted error across a rewrite, CUDA asked for without a GPU."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import optkit
from helpers import F32, make_model, run_main
from optkit.check.compare import compare_arrays, compare_outputs
from optkit.core.contract import Exactness, Tolerance
from optkit.models import ZOO, randomize_batchnorm
from optkit.torch import export_onnx


def test_metrics_against_hand_computed_values():
    a = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    b = np.array([[1.0, 2.5], [3.0, 3.0]], np.float32)
    c = compare_arrays("y", a, b, Exactness.REASSOCIATE)
    assert c.max_abs_error == 1.0
    assert c.max_rel_error == pytest.approx(0.25)  # |2.5-2|/2 = |3-4|/4 = 0.25
    assert c.mean_abs_error == pytest.approx(0.375)  # (0 + 0.5 + 0 + 1) / 4
    assert c.cosine == pytest.approx((1 + 5 + 9 + 12) / (np.sqrt(30) * np.sqrt(1 + 6.25 + 9 + 9)))
    assert c.top1_agreement == 0.5  # row 0 argmax 1 in both, row 1: 1 vs 0
    assert c.top5_agreement is None  # fewer than 5 classes
    assert c.reference_max_abs == 4.0
    assert not c.ok  # 1.0 > 1e-6 + 1e-4 * 4


def test_top5_agreement_by_hand():
    ref = np.zeros((2, 6), np.float32)
    ref[0, 5] = ref[1, 0] = 1.0  # reference classes 5 and 0
    got = np.tile(np.arange(6, dtype=np.float32), (2, 1))  # candidate ranks 5,4,3,2,1 first
    c = compare_arrays("y", ref, got, Exactness.REASSOCIATE)
    assert c.top1_agreement == 0.5 and c.top5_agreement == 0.5  # class 0 is not in its top 5


def test_per_output_tolerance_overrides_the_dtype_one():
    a = np.ones(4, np.float32)
    b = a + 1e-3
    assert not compare_arrays("y", a, b, Exactness.REASSOCIATE).ok
    assert compare_arrays("y", a, b, Exactness.REASSOCIATE, Tolerance(rtol=1e-2, atol=0)).ok


def test_outputs_match_by_name_then_position():
    x, y = np.ones(2, np.float32), np.zeros(2, np.float32)
    by_name = compare_outputs({"a": x, "b": y}, {"b": y, "a": x}, Exactness.BITWISE)
    assert by_name.ok
    by_position = compare_outputs({"a": x, "b": y}, {"p": x, "q": y}, Exactness.BITWISE)
    assert by_position.ok and [o.name for o in by_position.outputs] == ["a", "b"]
    with pytest.raises(optkit.InputError, match="tolerance given for unknown output"):
        compare_outputs({"a": x}, {"a": x}, Exactness.BITWISE, {"zzz": Tolerance(0, 0)})


# --- models -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet_files(tmp_path_factory):
    """A ResNet from models/, its correct fuse, and a copy with one middle weight perturbed."""
    folder = tmp_path_factory.mktemp("resnet")
    torch.manual_seed(0)
    model = randomize_batchnorm(ZOO["resnet"][0]()).eval()
    proto = export_onnx(model, torch.randn(2, 3, 32, 32), dynamic_batch=False)
    original = folder / "resnet.onnx"
    onnx.save(proto, str(original))
    fused = folder / "fused.onnx"
    optkit.fuse(original).save(str(fused))
    conv = [n for n in proto.graph.node if n.op_type == "Conv"][4]  # a middle layer
    planted = folder / "planted.onnx"
    _perturb(proto, conv.input[1], planted)
    fused_proto = onnx.load(str(fused))
    fused_conv = [n for n in fused_proto.graph.node if n.op_type == "Conv"][4]
    fused_planted = folder / "fused_planted.onnx"
    _perturb(fused_proto, fused_conv.input[1], fused_planted)
    bn_output = next(n for n in proto.graph.node if conv.output[0] in n.input).output[0]
    return {
        "original": original,
        "fused": fused,
        "planted": planted,
        "fused_planted": fused_planted,
        "conv": conv,
        "bn_output": bn_output,
        "fused_conv": fused_conv,
    }


def _perturb(proto: onnx.ModelProto, weight: str, path) -> None:
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    tensor = next(t for t in copy.graph.initializer if t.name == weight)
    array = onnx.numpy_helper.to_array(tensor).copy()
    array.flat[0] += 0.05
    tensor.CopyFrom(onnx.numpy_helper.from_array(array, weight))
    onnx.save(copy, str(path))


def test_planted_error_is_caught_and_located(resnet_files, monkeypatch, capsys):
    f = resnet_files
    code, out, _ = run_main(
        monkeypatch, capsys, "verify", str(f["original"]), str(f["planted"]), "--bisect", "--json"
    )
    assert code == 1
    found = json.loads(out)["bisect"]["divergence"]
    assert found["tensor"] == f["conv"].output[0]
    assert found["producer_before"] == found["producer_after"] == f["conv"].name


def test_planted_error_is_located_across_the_rewrite(resnet_files, monkeypatch, capsys):
    """The fused Conv carries the BN's output name, so the error is found at the BN's output."""
    f = resnet_files
    code, out, _ = run_main(
        monkeypatch,
        capsys,
        "verify",
        str(f["original"]),
        str(f["fused_planted"]),
        "--bisect",
        "--json",
    )
    assert code == 1
    result = json.loads(out)["bisect"]
    assert result["divergence"]["tensor"] == f["bn_output"]
    assert result["divergence"]["producer_after"] == f["fused_conv"].name
    assert f["conv"].output[0] in result["unmatched_before"]  # the pre-BN tensor was folded away


def test_correct_fuse_verifies_and_bisects_clean(resnet_files, monkeypatch, capsys):
    f = resnet_files
    code, out, _ = run_main(
        monkeypatch,
        capsys,
        "verify",
        str(f["original"]),
        str(f["fused"]),
        "--bisect",
        "--samples",
        "3",
    )
    assert code == 0, out
    assert "equivalent (reassociate, 3 samples)" in out and "no divergence" in out


def test_exact_tolerance_fails_a_reassociating_fuse(resnet_files, monkeypatch, capsys):
    f = resnet_files
    code, _, _ = run_main(
        monkeypatch, capsys, "verify", str(f["original"]), str(f["fused"]), "--tolerance", "0,0"
    )
    assert code == 1


def test_fp16_model_folded_in_float64_verifies_under_the_fp16_tolerance(
    tmp_path, monkeypatch, capsys
):
    torch.manual_seed(0)
    model = randomize_batchnorm(ZOO["resnet"][0]()).eval().half()
    proto = export_onnx(model, torch.randn(2, 3, 32, 32).half(), dynamic_batch=False)
    original, fused = tmp_path / "half.onnx", tmp_path / "half_fused.onnx"
    onnx.save(proto, str(original))
    result = optkit.fuse(original)
    assert result.report.batchnorm_after == 0
    result.save(str(fused))
    code, out, _ = run_main(monkeypatch, capsys, "verify", str(original), str(fused), "--json")
    assert code == 0, out
    (output,) = json.loads(out)["outputs"]
    assert output["dtype"] == "float16" and output["rtol"] == 1e-2


def test_json_schema(resnet_files, monkeypatch, capsys):
    f = resnet_files
    _, out, _ = run_main(
        monkeypatch, capsys, "verify", str(f["original"]), str(f["fused"]), "--json"
    )
    result = json.loads(out)
    assert set(result) == {
        "reference",
        "candidate",
        "ok",
        "exactness",
        "samples",
        "outputs",
        "accuracy",
        "problem",
        "notes",
    }
    assert set(result["outputs"][0]) == {
        "name",
        "dtype",
        "ok",
        "elements",
        "max_abs_error",
        "max_rel_error",
        "mean_abs_error",
        "cosine",
        "reference_max_abs",
        "top1_agreement",
        "top5_agreement",
        "rtol",
        "atol",
        "problem",
    }


def test_accuracy_on_labelled_data(resnet_files, tmp_path, monkeypatch, capsys):
    f = resnet_files
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", input=rng.standard_normal((3, 2, 3, 32, 32)).astype(np.float32))
    np.save(tmp_path / "labels.npy", rng.integers(0, 10, size=6))
    code, out, _ = run_main(
        monkeypatch,
        capsys,
        "verify",
        str(f["original"]),
        str(f["fused"]),
        "--data",
        str(tmp_path / "data.npz"),
        "--labels",
        str(tmp_path / "labels.npy"),
        "--json",
    )
    assert code == 0
    result = json.loads(out)
    assert result["samples"] == 3
    acc = result["accuracy"]
    assert acc["count"] == 6 and acc["agreement"] == 1.0 and acc["reference"] == acc["candidate"]


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"input": np.zeros((2, 3, 32, 32), np.float64)}, "expects float32, the file has float64"),
        ({"input": np.zeros((2, 3, 16, 16), np.float32)}, "needs dim 2 = 32"),
        ({"other": np.zeros((2, 3, 32, 32), np.float32)}, "no array for input(s) input"),
        (b"garbage", "not a readable numpy file"),
    ],
    ids=["wrong-dtype", "wrong-shape", "missing-input", "unreadable"],
)
def test_bad_data_files_exit_2(resnet_files, tmp_path, monkeypatch, capsys, content, message):
    data = tmp_path / "bad.npz"
    if isinstance(content, bytes):
        data.write_bytes(content)
    else:
        np.savez(data, **content)
    code, _, err = run_main(
        monkeypatch,
        capsys,
        "verify",
        str(resnet_files["original"]),
        str(resnet_files["fused"]),
        "--data",
        str(data),
    )
    assert code == 2
    assert message in err and "bad.npz" in err and len(err.strip().splitlines()) == 1


def test_unreadable_model_file_exits_2(resnet_files, tmp_path, monkeypatch, capsys):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x00\x01not a model")
    code, _, err = run_main(
        monkeypatch, capsys, "verify", str(resnet_files["original"]), str(broken)
    )
    assert code == 2 and "broken.onnx" in err


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="GPU present")
def test_cuda_without_a_gpu_is_a_clear_error(resnet_files, monkeypatch, capsys):
    code, _, err = run_main(
        monkeypatch,
        capsys,
        "verify",
        str(resnet_files["original"]),
        str(resnet_files["fused"]),
        "--provider",
        "cuda",
    )
    assert code == 2 and "provider 'cuda' is not available" in err


def test_npy_for_a_multi_input_model_is_refused(tmp_path, monkeypatch, capsys):
    nodes = [onnx.helper.make_node("Add", ["a", "b"], ["y"])]
    path = tmp_path / "two.onnx"
    onnx.save(
        make_model(nodes, [("a", F32, [2]), ("b", F32, [2])], [("y", F32, [2])], {}), str(path)
    )
    np.save(tmp_path / "x.npy", np.zeros(2, np.float32))
    code, _, err = run_main(
        monkeypatch, capsys, "verify", str(path), str(path), "--data", str(tmp_path / "x.npy")
    )
    assert code == 2 and "use .npz" in err


# --- bench and inspect --------------------------------------------------------------------------


def test_bench_reports_a_ratio(resnet_files, monkeypatch, capsys):
    f = resnet_files
    code, out, _ = run_main(
        monkeypatch,
        capsys,
        "bench",
        str(f["fused"]),
        "--baseline",
        str(f["original"]),
        "--runs",
        "5",
        "--warmup",
        "1",
        "--json",
    )
    assert code == 0
    report = json.loads(out)
    assert report["ratio"] == pytest.approx(
        report["model"]["median_ms"] / report["baseline"]["median_ms"]
    )
    assert report["model"]["runs"] == report["baseline"]["runs"] == 5
    assert report["model"]["throughput"] > 0 and report["optimization"] == "all"


def test_inspect_lists_what_fuse_would_do(resnet_files, monkeypatch, capsys):
    code, out, _ = run_main(monkeypatch, capsys, "inspect", str(resnet_files["original"]), "--json")
    assert code == 0
    info = json.loads(out)
    assert info["batchnorm"] == 9 and info["ops"]["Conv"] == 9
    assert info["inputs"][0] == {"name": "input", "dtype": "FLOAT", "shape": [2, 3, 32, 32]}
    assert info["fuse"]["batchnorm_after"] == 0
    assert sum(s["rule"] == "conv+bn" for s in info["fuse"]["applied"]) == 9
    assert info["parameters"] > 0 and info["parameter_bytes"] == 4 * info["parameters"]
