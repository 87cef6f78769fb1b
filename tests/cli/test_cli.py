"""The `optkit` command line: outputs, exit codes, errors, never touching the input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from helpers import F32, bn_node, bn_params, make_model
from optkit.cli.common import default_output


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "optkit", *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def model_path(tmp_path, rng):
    inits = {"W": rng.standard_normal((4, 3, 3, 3)).astype(np.float32), **bn_params(rng, 4)}
    nodes = [
        onnx.helper.make_node("Conv", ["x", "W"], ["h"], name="conv"),
        bn_node("h", "y"),
        onnx.helper.make_node("Relu", ["y"], ["z"]),
    ]
    path = tmp_path / "net.onnx"
    onnx.save(make_model(nodes, [("x", F32, ["N", 3, 8, 8])], [("z", F32, None)], inits), str(path))
    return path


def test_fuse_writes_next_to_input_and_reports(model_path):
    before = model_path.read_bytes()
    done = run_cli("fuse", str(model_path))
    assert done.returncode == 0, done.stderr
    assert "BatchNorm 1 -> 0" in done.stdout and "equivalent" in done.stdout
    out = default_output(model_path)
    assert out.name == "net.optkit.onnx"
    assert [n.op_type for n in onnx.load(str(out)).graph.node] == ["Conv", "Relu"]
    assert model_path.read_bytes() == before


def test_fuse_json(model_path, tmp_path):
    done = run_cli("fuse", str(model_path), "-o", str(tmp_path / "o.onnx"), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["batchnorm_before"] == 1 and report["batchnorm_after"] == 0
    assert report["verification"]["ok"] is True
    assert report["pipeline"]["hits"]["conv+bn"] == 1


def test_fuse_refuses_to_overwrite_input(model_path):
    before = model_path.read_bytes()
    done = run_cli("fuse", str(model_path), "-o", str(model_path))
    assert done.returncode == 2
    assert "refusing to overwrite the input" in done.stderr
    assert model_path.read_bytes() == before


@pytest.mark.parametrize("content", [b"", b"not onnx at all", None])
def test_bad_inputs_exit_2_with_one_line(tmp_path, content):
    path = tmp_path / "bad.onnx"
    if content is not None:
        path.write_bytes(content)
    done = run_cli("fuse", str(path))
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "bad.onnx" in done.stderr
    assert "Traceback" not in done.stderr
    assert not default_output(path).exists()


def test_model_failing_the_checker_exits_2(tmp_path):
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["missing"], ["y"])],
        "g",
        [],
        [onnx.helper.make_tensor_value_info("y", F32, [1])],
    )
    path = tmp_path / "broken.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path))
    done = run_cli("fuse", str(path))
    assert done.returncode == 2 and "fails the ONNX checker" in done.stderr


def test_passes_and_skip_select_passes(model_path, tmp_path):
    done = run_cli(
        "fuse", str(model_path), "-o", str(tmp_path / "o.onnx"), "--skip", "batchnorm", "--json"
    )
    assert json.loads(done.stdout)["batchnorm_after"] == 1
    done = run_cli("fuse", str(model_path), "--passes", "nonsense")
    assert done.returncode == 2 and "unknown pass" in done.stderr


def test_bad_shape_option(model_path):
    done = run_cli("fuse", str(model_path), "--shape", "x=1xfoo")
    assert done.returncode == 2 and "bad --shape" in done.stderr


def test_verification_failure_exits_1_and_writes_nothing(model_path, tmp_path, monkeypatch):
    from click.testing import CliRunner

    import optkit.fusion as fuse_module
    from optkit.check.compare import Verdict
    from optkit.cli import cli

    def failing(*args, **kwargs):
        return Verdict(False, fuse_module.Exactness.REASSOCIATE, [])

    monkeypatch.setattr(fuse_module, "verify_rewrite", failing)
    out = tmp_path / "o.onnx"
    result = CliRunner().invoke(cli, ["fuse", str(model_path), "-o", str(out)])
    assert result.exit_code == 1 and not out.exists()
    result = CliRunner().invoke(cli, ["fuse", str(model_path), "-o", str(out), "--force"])
    assert result.exit_code == 1 and out.exists()


def test_demo_runs(tmp_path):
    done = run_cli("demo", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "BatchNorm 4 -> 0" in done.stdout and "equivalent" in done.stdout
    assert (tmp_path / "demo.optkit.onnx").exists()


def test_help_teaches():
    done = run_cli("fuse", "--help")
    assert (
        done.returncode == 0
        and "Examples:" in done.stdout
        and "--freeze-initializer-inputs" in done.stdout
    )


def test_fold_limit_option(tmp_path):
    graph = onnx.helper.make_graph(
        [
            onnx.helper.make_node("ConstantOfShape", ["shape"], ["big"]),
            onnx.helper.make_node("Add", ["x", "big"], ["y"]),
        ],
        "g",
        [onnx.helper.make_tensor_value_info("x", F32, [8, 8])],
        [onnx.helper.make_tensor_value_info("y", F32, [8, 8])],
        [onnx.numpy_helper.from_array(np.array([8, 8], np.int64), "shape")],
    )
    path = tmp_path / "m.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path))
    done = run_cli("fuse", str(path), "--fold-limit", "10", "--json")
    assert done.returncode == 0, done.stderr
    declined = [
        s
        for p in json.loads(done.stdout)["pipeline"]["passes"]
        for s in p["sites"]
        if not s["applied"]
    ]
    assert any("above the cap of 10" in s["reason"] for s in declined)
