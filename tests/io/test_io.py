"""Loading and saving: clear errors, atomic writes, external data never overwritten while read."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

import optkit
from helpers import F32, bn_node, bn_params, make_model
from optkit.errors import InputError


def conv_bn_proto(rng, c=64):
    inits = {"W": rng.standard_normal((c, 3, 3, 3)).astype(np.float32), **bn_params(rng, c)}
    nodes = [onnx.helper.make_node("Conv", ["x", "W"], ["h"]), bn_node("h", "y")]
    return make_model(nodes, [("x", F32, [1, 3, 6, 6])], [("y", F32, None)], inits)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        optkit.load(tmp_path / "nope.onnx")


def test_not_an_onnx_file(tmp_path):
    path = tmp_path / "text.onnx"
    path.write_text("this is not a model\n")
    with pytest.raises(InputError, match=r"text\.onnx"):
        optkit.load(path)


def test_truncated_file(tmp_path, rng):
    path = tmp_path / "model.onnx"
    data = conv_bn_proto(rng).SerializeToString()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"model\.onnx"):
        optkit.fuse(path)


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path, rng):
    model = optkit.load(conv_bn_proto(rng))
    target = tmp_path / "out.onnx"
    optkit.save(model, target)
    assert onnx.load(str(target)).graph.node[0].op_type == "Conv"
    assert sorted(os.listdir(tmp_path)) == ["out.onnx"]


def test_failed_save_leaves_previous_file_intact(tmp_path, rng, monkeypatch):
    target = tmp_path / "out.onnx"
    target.write_bytes(b"previous")
    model = optkit.load(conv_bn_proto(rng))

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("onnx_ir.to_proto", explode)
    with pytest.raises(RuntimeError):
        optkit.save(model, target)
    assert target.read_bytes() == b"previous"
    assert sorted(os.listdir(tmp_path)) == ["out.onnx"]


def test_external_data_round_trip_and_no_overwrite_of_referenced_data(tmp_path, rng):
    proto = conv_bn_proto(rng)
    src = tmp_path / "model.onnx"
    onnx.save(
        proto, str(src), save_as_external_data=True, location="model.onnx.data", size_threshold=0
    )
    model = optkit.load(src)
    result = optkit.fuse(src)
    assert result.report.ok and result.report.batchnorm_after == 0
    out = tmp_path / "fused.onnx"
    result.save(str(out))
    assert (tmp_path / "fused.onnx.data").exists()  # input used external data: so does the output
    reloaded = onnx.load(str(out))
    assert reloaded.graph.node[0].op_type == "Conv"
    with pytest.raises(InputError, match="which the input reads"):
        optkit.save(model, tmp_path / "other.onnx", external_data="model.onnx.data")
