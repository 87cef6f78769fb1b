"""Broken and hostile model files, written into a folder for the hardening tests.

`write_hostile(folder)` returns {name: path}; every file there must end in a one-line error (exit 2)
from `fuse`, `verify` and `inspect`, except those in `RUNS_UNTOUCHED`, which are valid models with ops
optkit does not know and must pass through unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F32 = TensorProto.FLOAT
RUNS_UNTOUCHED = ("custom_domain", "nested_if", "huge_declared_input")


def _model(nodes=None, inits=(), inputs=None, opset: int = 17, extra_opsets=()) -> onnx.ModelProto:
    nodes = nodes if nodes is not None else [helper.make_node("Relu", ["x"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "g",
        inputs or [helper.make_tensor_value_info("x", F32, [2, 3])],
        [helper.make_tensor_value_info("y", F32, [2, 3])],
        list(inits),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *extra_opsets])
    model.ir_version = 10
    return model


def _add_weight(weight: TensorProto) -> onnx.ModelProto:
    return _model([helper.make_node("Add", ["x", "w"], ["y"])], [weight])


def _external(location: str, length: int = 24) -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.ones((2, 3), np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    return _add_weight(weight)


def _weight(dims=None, raw: bytes | None = None, dtype=np.float32) -> TensorProto:
    weight = numpy_helper.from_array(np.ones((2, 3), dtype), "w")
    if dims is not None:
        weight.dims[:] = dims
    if raw is not None:
        weight.raw_data = raw
    return weight


def _nested_if(depth: int) -> onnx.ModelProto:
    """`depth` If nodes, each inside the then-branch of the one above (protobuf caps the depth)."""
    inner = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["o0"])],
        "g0",
        [],
        [helper.make_tensor_value_info("o0", F32, [2, 3])],
    )
    for i in range(1, depth):
        leaf = helper.make_graph(
            [helper.make_node("Neg", ["x"], [f"e{i}"])],
            f"e{i}",
            [],
            [helper.make_tensor_value_info(f"e{i}", F32, [2, 3])],
        )
        node = helper.make_node("If", ["c"], [f"o{i}"], then_branch=inner, else_branch=leaf)
        inner = helper.make_graph(
            [node], f"g{i}", [], [helper.make_tensor_value_info(f"o{i}", F32, [2, 3])]
        )
    nodes = [*inner.node, helper.make_node("Identity", [f"o{depth - 1}"], ["y"])]
    inputs = [
        helper.make_tensor_value_info("x", F32, [2, 3]),
        helper.make_tensor_value_info("c", TensorProto.BOOL, []),
    ]
    return _model(nodes, inputs=inputs)


def _non_utf8_overload() -> bytes:
    """A node's `overload` (IR 10) that is not UTF-8 (found by tools/fuzz.py: the IR keeps it as
    bytes and cannot write the fused model back)."""
    model = _model()
    model.graph.node[0].overload = "overload"
    return model.SerializeToString().replace(b"overload", b"overloa\xee")


def _non_utf8_attribute() -> onnx.ModelProto:
    node = helper.make_node("Conv", ["x", "w"], ["y"])
    attr = node.attribute.add()
    attr.name, attr.type, attr.s = "auto_pad", onnx.AttributeProto.STRING, b"\xef\xff"
    model = _model([node], [numpy_helper.from_array(np.ones((3, 2, 1), np.float32), "w")])
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 2
    model.graph.input[0].type.tensor_type.shape.dim.add().dim_value = 3
    del model.graph.output[0].type.tensor_type.shape.dim[:]
    return model


def write_hostile(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "short.data").write_bytes(b"\0" * 8)
    os.symlink("/etc/hostname", folder / "link.data")
    (folder / "inner").mkdir()
    os.symlink("/etc", folder / "inner" / "escape")
    no_opset = _model()
    del no_opset.opset_import[:]
    models: dict[str, onnx.ModelProto | bytes] = {
        "ext_dotdot": _external("../../../../etc/passwd"),
        "ext_absolute": _external("/etc/passwd"),
        "ext_symlink": _external("link.data"),
        "ext_symlinked_folder": _external("inner/escape/hostname"),
        "ext_missing": _external("nothere.data"),
        "ext_longer_than_file": _external("short.data"),
        "ext_wrong_length": _external("short.data", length=4),
        "init_too_short": _add_weight(_weight(raw=b"\0" * 8)),
        "init_negative_dim": _add_weight(_weight(dims=[-2, 3])),
        "init_absurd_dims": _add_weight(_weight(dims=[10**6, 10**6])),
        "cycle": _model(
            [
                helper.make_node("Relu", ["b"], ["a"]),
                helper.make_node("Add", ["x", "a"], ["b"]),
                helper.make_node("Relu", ["b"], ["y"]),
            ]
        ),
        "two_producers": _model(
            [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["x"], ["y"])]
        ),
        "missing_input": _model([helper.make_node("Add", ["x", "ghost"], ["y"])]),
        "initializer_type_mismatch": _model(
            [helper.make_node("Add", ["x", "w"], ["y"])],
            [_weight(dtype=np.int64)],
            inputs=[
                helper.make_tensor_value_info("x", F32, [2, 3]),
                helper.make_tensor_value_info("w", F32, [2, 3]),
            ],
        ),
        "initializer_shape_mismatch": _model(
            [helper.make_node("Add", ["x", "w"], ["y"])],
            [_weight()],
            inputs=[
                helper.make_tensor_value_info("x", F32, [2, 3]),
                helper.make_tensor_value_info("w", F32, [3, 2]),
            ],
        ),
        "unknown_default_op": _model([helper.make_node("FooBar", ["x"], ["y"])]),
        "op_newer_than_opset": _model([helper.make_node("Gelu", ["x"], ["y"])], opset=17),
        "opset_from_the_future": _model(opset=999),
        "no_opset_import": no_opset,
        "custom_domain": _model(
            [
                helper.make_node("Relu", ["x"], ["r"]),
                helper.make_node("Foo", ["r"], ["y"], domain="com.acme"),
            ],
            extra_opsets=[helper.make_opsetid("com.acme", 1)],
        ),
        "nested_if": _nested_if(30),
        "huge_declared_input": _model(
            inputs=[helper.make_tensor_value_info("x", F32, [100_000, 100_000])]
        ),
        "non_utf8_attribute": _non_utf8_attribute(),
        "non_utf8_node_name": _model([helper.make_node("Relu", ["x"], ["y"], name="nodename")])
        .SerializeToString()
        .replace(b"nodename", b"nodenam\xee"),
        "non_utf8_overload": _non_utf8_overload(),
        "garbage": os.urandom(2000),
        "empty": b"",
        "truncated": _model().SerializeToString()[:30],
    }
    paths = {}
    for name, model in models.items():
        path = folder / f"{name}.onnx"
        path.write_bytes(model if isinstance(model, bytes) else model.SerializeToString())
        paths[name] = path
    return paths
