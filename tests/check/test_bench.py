"""`optkit bench` says what it ran: the shape of every input fed, the dims that took a default,
`--batch` against static and dynamic batch dims, throughput in the rows fed, and one-line errors for
malformed options."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from helpers import F32, bn_node, bn_params, make_model, run_main
from optkit.check.bench import bench, plan_shapes
from optkit.errors import InputError

FAST = ("--runs", "2", "--warmup", "0")


def _conv_bn(tmp_path, name: str, shape: list) -> str:
    rng = np.random.default_rng(0)
    inits = {"W": rng.standard_normal((4, 3, 3, 3)).astype(np.float32), **bn_params(rng, 4)}
    nodes = [helper.make_node("Conv", ["x", "W"], ["h"], name="conv"), bn_node("h", "y")]
    path = tmp_path / name
    onnx.save(make_model(nodes, [("x", F32, shape)], [("y", F32, None)], inits), str(path))
    return str(path)


@pytest.fixture
def dynamic(tmp_path):
    return _conv_bn(tmp_path, "dynamic.onnx", ["N", 3, "H", "W"])


@pytest.fixture
def static(tmp_path):
    return _conv_bn(tmp_path, "static.onnx", [2, 3, 8, 8])


def _json(monkeypatch, capsys, *args: str) -> dict:
    code, out, err = run_main(monkeypatch, capsys, "bench", *args, *FAST, "--json")
    assert code == 0, err
    return json.loads(out)


def test_text_report_names_the_shape_fed_and_the_defaults(dynamic, monkeypatch, capsys):
    code, out, err = run_main(monkeypatch, capsys, "bench", dynamic, *FAST)
    assert code == 0, err
    assert out.startswith("batch 1,")
    assert "input 'x': 1x3x16x16 FLOAT" in out
    assert "N=1 (default; set it with --batch)" in out
    assert "H=16, W=16 (defaults; set them with --shape x=1x3x16x16)" in out


def test_json_report_names_the_shape_fed_and_the_defaults(dynamic, monkeypatch, capsys):
    report = _json(monkeypatch, capsys, dynamic)
    assert report["inputs"] == {"x": {"shape": [1, 3, 16, 16], "dtype": "FLOAT"}}
    assert [(d["dim"], d["axis"], d["value"], d["option"]) for d in report["defaults"]] == [
        ("N", 0, 1, "--batch"),
        ("H", 2, 16, "--shape"),
        ("W", 3, 16, "--shape"),
    ]
    assert report["batch"] == 1 and report["execution_providers"] == ["CPUExecutionProvider"]


def test_batch_sets_a_dynamic_batch_dim_and_throughput_counts_it(dynamic, monkeypatch, capsys):
    report = _json(monkeypatch, capsys, dynamic, "--batch", "8")
    assert report["inputs"]["x"]["shape"] == [8, 3, 16, 16] and report["batch"] == 8
    assert [d["dim"] for d in report["defaults"]] == ["H", "W"]  # the batch was given
    model = report["model"]
    assert model["throughput"] == pytest.approx(8 / (model["median_ms"] / 1000))


def test_shape_with_a_matching_batch_leaves_no_defaults(dynamic, monkeypatch, capsys):
    code, out, err = run_main(
        monkeypatch, capsys, "bench", dynamic, "--batch", "4", "--shape", "x=4x3x20x24", *FAST
    )
    assert code == 0, err
    assert "input 'x': 4x3x20x24 FLOAT" in out and "note:" not in out and "batch 4," in out


def test_batch_disagreeing_with_shape_is_exit_2(dynamic, monkeypatch, capsys):
    code, _, err = run_main(
        monkeypatch, capsys, "bench", dynamic, "--batch", "8", "--shape", "x=2x3x8x8", *FAST
    )
    assert code == 2 and "--batch 8" in err and "x=2x3x8x8" in err and "dim 0" in err
    assert len(err.strip().splitlines()) == 1


def test_batch_on_a_static_batch_dim_is_exit_2(static, monkeypatch, capsys):
    code, out, err = run_main(monkeypatch, capsys, "bench", static, "--batch", "8", *FAST)
    assert code == 2 and out == ""
    assert "--batch 8: input 'x' has a static batch dimension of 2" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_static_batch_is_reported_and_counted_without_batch(static, monkeypatch, capsys):
    report = _json(monkeypatch, capsys, static)
    assert report["batch"] == 2 and report["defaults"] == []
    assert report["inputs"]["x"]["shape"] == [2, 3, 8, 8]
    model = report["model"]
    assert model["throughput"] == pytest.approx(2 / (model["median_ms"] / 1000))


def test_batch_equal_to_a_static_batch_dim_is_fine(static, monkeypatch, capsys):
    assert _json(monkeypatch, capsys, static, "--batch", "2")["batch"] == 2


def test_choices_are_case_insensitive_and_normalised(dynamic, monkeypatch, capsys):
    report = _json(monkeypatch, capsys, dynamic, "--provider", "CPU", "--optimization", "Disable")
    assert report["provider"] == "cpu" and report["optimization"] == "disable"


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--runs", "0"), "--runs"),
        (("--batch", "0"), "--batch"),
        (("--warmup", "-1"), "--warmup"),
        (("--threads", "-1"), "--threads"),
        (("--runs", "many"), "many"),
        (("--provider", "gpu"), "gpu"),
        (("--optimization", "max"), "max"),
        (("--shape", "x=1x3"), "rank 2"),
        (("--shape", "y=1x3x8x8"), "unknown input"),
    ],
)
def test_malformed_options_are_one_line_exit_2(dynamic, monkeypatch, capsys, args, named):
    code, out, err = run_main(monkeypatch, capsys, "bench", dynamic, *FAST, *args)
    assert code == 2 and out == ""
    assert named in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is available here"
)
def test_absent_cuda_is_exit_2(dynamic, monkeypatch, capsys):
    code, _, err = run_main(monkeypatch, capsys, "bench", dynamic, "--provider", "cuda", *FAST)
    assert code == 2 and "provider 'cuda' is not available" in err
    assert len(err.strip().splitlines()) == 1


def _two_inputs(batch_dim) -> onnx.ModelProto:
    nodes = [helper.make_node("Add", ["a", "b"], ["y"])]
    inputs = [("a", F32, [batch_dim, "L"]), ("b", F32, [batch_dim, "L"])]
    return make_model(nodes, inputs, [("y", F32, None)], {})


def test_a_symbolic_dim_set_by_one_shape_is_the_same_everywhere():
    import onnx_ir as ir

    model = ir.from_proto(_two_inputs("N"))
    planned, defaults = plan_shapes(model, None, {"a": (3, 5)})
    assert planned == {"a": (3, 5), "b": (3, 5)} and defaults == ()
    planned, defaults = plan_shapes(model, 4, {})
    assert planned == {"a": (4, 16), "b": (4, 16)}
    assert [(d.input, d.dim) for d in defaults] == [("a", "L"), ("b", "L")]


def test_library_refuses_a_batch_the_model_cannot_take(tmp_path):
    static = _two_inputs(2)
    with pytest.raises(InputError, match="static batch dimension of 2"):
        bench(static, batch=3, runs=1, warmup=0)
    scalar = make_model(
        [helper.make_node("Neg", ["s"], ["y"])], [("s", F32, [])], [("y", F32, [])], {}
    )
    with pytest.raises(InputError, match="no input with a batch dimension"):
        bench(scalar, batch=2, runs=1, warmup=0)
    with pytest.raises(InputError, match="--runs"):
        bench(scalar, runs=0)


def test_a_baseline_that_takes_other_inputs_is_one_line_before_any_run(
    tmp_path, static, monkeypatch, capsys
):
    other_rank = _conv_bn(tmp_path, "rank3.onnx", [3, 8, 8])
    other_size = _conv_bn(tmp_path, "size.onnx", [2, 3, 9, 9])
    renamed = onnx.load(static)
    renamed.graph.input[0].name = "image"
    renamed.graph.node[0].input[0] = "image"
    onnx.save(renamed, str(tmp_path / "renamed.onnx"))
    as_double = onnx.load(static)
    as_double.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    onnx.save(as_double, str(tmp_path / "double.onnx"))
    for baseline, words in (
        (other_rank, "is declared 3x8x8, the model is fed 2x3x8x8"),
        (other_size, "is declared 2x3x9x9, the model is fed 2x3x8x8"),
        (str(tmp_path / "renamed.onnx"), "takes inputs ['image'], the model takes ['x']"),
        (str(tmp_path / "double.onnx"), "input 'x' is DOUBLE, the model's is FLOAT"),
    ):
        code, out, err = run_main(
            monkeypatch, capsys, "bench", static, "--baseline", baseline, *FAST
        )
        assert code == 2 and f"--baseline {baseline}: " in err and words in err, err
        assert len(err.strip().splitlines()) == 1 and out == ""
