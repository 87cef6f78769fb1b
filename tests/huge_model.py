"""A model over 2 GB, written straight to disk with external data (no protobuf ever holds it), and a
driver that fuses and verifies it in a fresh process, reporting its peak memory.

    python tests/huge_model.py make FOLDER [--gib 2.1]     # -> FOLDER/huge.onnx + huge.onnx.data
    python tests/huge_model.py fuse FOLDER [--shard-mib N] # fuse + verify; prints one JSON line

The model is a stack of MatMul -> BatchNormalization -> Relu blocks on (batch, features) inputs,
each weight generated lazily (one at a time) while it is written. `fuse` runs with every
serialization of the model checked to carry under 2 GB of tensor bytes inline: the weights stay on
disk (memory-mapped) or are streamed to external data.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import onnx_ir as ir

FEATURES = 8192
_LIMIT = 2**31


def make(folder: Path, gib: float) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    layer_bytes = FEATURES * FEATURES * 4
    layers = max(1, int(np.ceil(gib * 2**30 / layer_bytes)))
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(["N", FEATURES]))
    graph = ir.Graph([x], [], nodes=[], opset_imports={"": 17}, name="huge")
    current = x
    for i in range(layers):

        def weight(i: int = i) -> ir.Tensor:
            rng = np.random.default_rng(i)
            data = rng.standard_normal((FEATURES, FEATURES), dtype=np.float32)
            data *= np.float32(1 / np.sqrt(FEATURES))
            return ir.Tensor(data)

        w = ir.Value(name=f"w{i}", const_value=ir.LazyTensor(
            weight, dtype=ir.DataType.FLOAT, shape=ir.Shape([FEATURES, FEATURES]), name=f"w{i}"
        ))  # fmt: skip
        w.type, w.shape = ir.TensorType(ir.DataType.FLOAT), ir.Shape([FEATURES, FEATURES])
        graph.register_initializer(w)
        rng = np.random.default_rng(1000 + i)
        bn_inputs = []
        for name, values in (
            ("scale", rng.uniform(0.5, 1.5, FEATURES)),
            ("bias", rng.uniform(-0.1, 0.1, FEATURES)),
            ("mean", rng.uniform(-0.1, 0.1, FEATURES)),
            ("var", rng.uniform(0.5, 1.5, FEATURES)),
        ):
            value = ir.Value(name=f"bn{i}.{name}", const_value=ir.tensor(values.astype(np.float32)))
            value.type, value.shape = ir.TensorType(ir.DataType.FLOAT), ir.Shape([FEATURES])
            graph.register_initializer(value)
            bn_inputs.append(value)
        matmul = ir.Node("", "MatMul", [current, w], name=f"matmul{i}")
        bn = ir.Node("", "BatchNormalization", [matmul.outputs[0], *bn_inputs], name=f"bn{i}")
        relu = ir.Node("", "Relu", [bn.outputs[0]], name=f"relu{i}")
        for node in (matmul, bn, relu):
            node.outputs[0].name = f"{node.name}_out"
            graph.append(node)
        current = relu.outputs[0]
    current.type, current.shape = ir.TensorType(ir.DataType.FLOAT), ir.Shape(["N", FEATURES])
    graph.outputs.append(current)
    path = folder / "huge.onnx"
    ir.save(ir.Model(graph, ir_version=10), path, external_data="huge.onnx.data")
    return path


def _guard_serialization() -> None:
    """Make any serialization that inlines 2 GB of tensor bytes fail loudly."""
    original = ir.serde.serialize_model

    def checked(model: ir.Model):
        proto = original(model)
        inline = sum(len(t.raw_data) for t in proto.graph.initializer)
        if inline >= _LIMIT:
            raise AssertionError(f"a model proto with {inline} inline tensor bytes was built")
        return proto

    ir.serde.serialize_model = checked
    ir.to_proto = checked


def fuse_and_verify(folder: Path, shard_mib: int | None) -> dict:
    _guard_serialization()
    import optkit

    source = folder / "huge.onnx"
    began = time.perf_counter()
    result = optkit.fuse(source, shapes={"x": (1, FEATURES)})
    output = folder / "huge.optkit.onnx"
    result.save(output, shard_size=shard_mib * 2**20 if shard_mib else None)
    fused = time.perf_counter() - began
    verdict = optkit.verify(str(source), str(output), shapes={"x": (1, FEATURES)})
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    data_bytes = sum(p.stat().st_size for p in folder.glob("huge.onnx.data"))
    return {
        "ok": result.report.ok and verdict.ok,
        "batchnorm_after": result.report.batchnorm_after,
        "fuse_verified": result.report.verdict is not None,
        "max_abs_error": verdict.max_abs_error,
        "model_bytes": data_bytes,
        "peak_rss_bytes": peak,
        "peak_multiple": peak / data_bytes,
        "fuse_seconds": round(fused, 1),
        "total_seconds": round(time.perf_counter() - began, 1),
        "outputs": sorted(p.name for p in folder.glob("huge*optkit*")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("action", choices=["make", "fuse"])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--gib", type=float, default=2.1)
    parser.add_argument("--shard-mib", type=int)
    args = parser.parse_args()
    if args.action == "make":
        print(make(args.folder, args.gib))
    else:
        print(json.dumps(fuse_and_verify(args.folder, args.shard_mib)))
    sys.stdout.flush()
    os._exit(0)  # skip tearing down gigabytes of objects


if __name__ == "__main__":
    main()
