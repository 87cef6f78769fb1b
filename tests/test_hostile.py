"""Hostile and broken model files: every command ends in one clear line and exit 2, reads nothing
outside the model's folder, writes nothing, and leaves the input as it was; valid models with ops optkit
does not know pass through untouched."""

from __future__ import annotations

import hashlib

import onnx
import pytest
from hostile_models import RUNS_UNTOUCHED, write_hostile

from helpers import run_main


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    return write_hostile(tmp_path_factory.mktemp("hostile"))


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


BROKEN = [
    "ext_dotdot", "ext_absolute", "ext_symlink", "ext_symlinked_folder", "ext_missing",
    "ext_longer_than_file", "ext_wrong_length", "init_too_short", "init_negative_dim",
    "init_absurd_dims", "cycle", "two_producers", "missing_input", "initializer_type_mismatch",
    "initializer_shape_mismatch", "unknown_default_op", "op_newer_than_opset",
    "opset_from_the_future", "no_opset_import", "non_utf8_attribute", "non_utf8_node_name",
    "non_utf8_overload", "garbage", "empty", "truncated",
]  # fmt: skip


@pytest.mark.parametrize("command", ["fuse", "inspect", "verify", "activations"])
@pytest.mark.parametrize("name", BROKEN)
def test_broken_input_is_one_clear_line_and_exit_2(monkeypatch, capsys, hostile, name, command):
    path = hostile[name]
    before = digest(path)
    args = {
        "fuse": ["fuse", str(path)],
        "inspect": ["inspect", str(path)],
        "verify": ["verify", str(path), str(path)],
        "activations": ["activations", str(path)],
    }[command]
    code, out, err = run_main(monkeypatch, capsys, *args)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("optkit: error: "), err
    assert path.name in lines[0]
    assert digest(path) == before
    assert not path.with_name(f"{name}.optkit.onnx").exists()


@pytest.mark.parametrize(
    "name, words",
    [
        ("ext_dotdot", "leaves the model's folder"),
        ("ext_absolute", "leaves the model's folder"),
        ("ext_symlink", "symbolic link"),
        ("ext_symlinked_folder", "symbolic link"),
        ("ext_longer_than_file", "which has 8"),
        ("ext_wrong_length", "need 24"),
        ("initializer_type_mismatch", "holds INT64 data but is declared FLOAT"),
        ("initializer_shape_mismatch", "holds shape [2, 3] but is declared [3, 2]"),
        ("opset_from_the_future", "opset 999"),
        ("non_utf8_attribute", "attribute 'auto_pad' of"),
        ("non_utf8_node_name", "the name of a node is not UTF-8 text"),
        ("non_utf8_overload", "the overload of Relu->y is not UTF-8 text"),
    ],
)
def test_errors_name_the_reason(monkeypatch, capsys, hostile, name, words):
    _, _, err = run_main(monkeypatch, capsys, "fuse", str(hostile[name]))
    assert words in err


def count_ifs(graph: onnx.GraphProto) -> int:
    return sum(
        (node.op_type == "If") + sum(count_ifs(a.g) for a in node.attribute if a.HasField("g"))
        for node in graph.node
    )


@pytest.mark.parametrize("name", RUNS_UNTOUCHED)
def test_valid_models_with_unknown_ops_pass_through_untouched(monkeypatch, capsys, hostile, name):
    path = hostile[name]
    out_path = path.with_name(f"{name}.out.onnx")
    code, out, err = run_main(monkeypatch, capsys, "fuse", str(path), "-o", str(out_path))
    unverifiable = {"custom_domain": "com.acme", "huge_declared_input": "optkit synthesizes"}
    if name in unverifiable:  # ORT cannot run it: nothing written unless asked for unverified
        assert code == 2 and "verification could not run" in err and unverifiable[name] in err
        assert len(err.strip().splitlines()) == 1 and not out_path.exists()
        code, out, err = run_main(
            monkeypatch, capsys, "fuse", str(path), "-o", str(out_path), "--no-verify"
        )
    assert code == 0, err
    before, after = onnx.load(path), onnx.load(out_path)
    if name == "nested_if":  # 29 levels of If, each kept (only the trailing Identity goes)
        assert count_ifs(after.graph) == count_ifs(before.graph) == 29
        return
    assert [(n.op_type, n.domain) for n in after.graph.node] == [
        (n.op_type, n.domain) for n in before.graph.node
    ]
    if name in unverifiable:
        assert "NOT RUN (disabled by --no-verify)" in out, out
