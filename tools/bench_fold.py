"""Benchmark: BatchNorm fold throughput on a stack of Conv + BatchNormalization layers whose weights
live in external data, against same-run baselines.

    python tools/bench_fold.py [--layers 32] [--channels 1024] [--kernel 3] [--repeats 1]
                               [--passes batchnorm,unused,dedupe] [--dtype float32] [--keep DIR]

The model (``--layers`` x Conv(C->C, k x k, with bias) + BatchNormalization with non-trivial
statistics; 32 x 1024 x 1024 x 3 x 3 fp32 is 1.2 GB of weights) is generated in a temporary folder
with its weights in one external data file, and deleted afterwards. For each repeat it runs
``optkit.fuse(path, verify_result=False, passes=...)`` and prints each pass's seconds and the
batchnorm pass's throughput in weight bytes per second, next to two baselines measured in the same
run on the same file: a numpy copy of every weight out of the memory-mapped data file (what reading
and writing the weights once costs), and a bare onnx_ir load + save of the model (weights written
to a new external data file). Ratios are fold throughput / baseline throughput.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
import onnx_ir as ir

GB = 1e9


def build(folder: str, layers: int, channels: int, kernel: int, dtype: str, seed: int = 0) -> str:
    """Write the stack to `folder`/stack.onnx (+ stack.onnx.data); returns the model path."""
    rng = np.random.default_rng(seed)
    np_dtype = np.dtype(dtype)
    ir_dtype = ir.DataType.from_numpy(np_dtype)
    x = ir.Value(name="x", type=ir.TensorType(ir_dtype), shape=ir.Shape([1, channels, 8, 8]))
    graph = ir.Graph([x], [], nodes=[], opset_imports={"": 17}, name="stack")
    current = x
    for i in range(layers):
        w = rng.standard_normal((channels, channels, kernel, kernel), dtype=np.float32)
        w *= np.float32(1.0 / np.sqrt(channels * kernel * kernel))
        params = {
            f"w{i}": w.astype(np_dtype, copy=False),
            f"b{i}": rng.standard_normal(channels).astype(np_dtype),
            f"gamma{i}": rng.uniform(0.5, 1.5, channels).astype(np_dtype),
            f"beta{i}": rng.standard_normal(channels).astype(np_dtype),
            f"mean{i}": (0.1 * rng.standard_normal(channels)).astype(np_dtype),
            f"var{i}": rng.uniform(0.5, 2.0, channels).astype(np_dtype),
        }
        values = {}
        for name, array in params.items():
            value = ir.Value(
                name=name,
                type=ir.TensorType(ir_dtype),
                shape=ir.Shape(array.shape),
                const_value=ir.Tensor(array, name=name),
            )
            graph.register_initializer(value)
            values[name] = value
        pad = kernel // 2
        conv = ir.node(
            "Conv",
            [current, values[f"w{i}"], values[f"b{i}"]],
            attributes={"pads": [pad] * 4, "kernel_shape": [kernel, kernel]},
            name=f"conv{i}",
        )
        conv.outputs[0].name = f"c{i}"
        conv.outputs[0].type = ir.TensorType(ir_dtype)
        conv.outputs[0].shape = ir.Shape([1, channels, 8, 8])
        graph.append(conv)
        bn = ir.node(
            "BatchNormalization",
            [conv.outputs[0], *(values[f"{p}{i}"] for p in ("gamma", "beta", "mean", "var"))],
            attributes={"epsilon": 1e-5},
            name=f"bn{i}",
        )
        bn.outputs[0].name = f"y{i}"
        bn.outputs[0].type = ir.TensorType(ir_dtype)
        bn.outputs[0].shape = ir.Shape([1, channels, 8, 8])
        graph.append(bn)
        current = bn.outputs[0]
    graph.outputs.append(current)
    model = ir.Model(graph, ir_version=8, producer_name="bench_fold")
    path = os.path.join(folder, "stack.onnx")
    ir.save(model, path, external_data="stack.onnx.data", size_threshold_bytes=0)
    return path


def weight_bytes(path: str) -> int:
    model = ir.load(path)
    return sum(
        v.const_value.nbytes
        for v in model.graph.initializers.values()
        if v.const_value is not None and len(v.shape or ()) == 4
    )


def baseline_memcpy(path: str) -> float:
    """Seconds to copy every initializer out of the memory-mapped data file with numpy."""
    model = ir.load(path)
    began = time.perf_counter()
    for value in model.graph.initializers.values():
        assert value.const_value is not None
        source = value.const_value.numpy()
        np.copyto(np.empty_like(source), source)
    return time.perf_counter() - began


def baseline_ir_load_save(path: str) -> float:
    """Seconds for a bare onnx_ir load + save of the model (weights to a new external data file)."""
    target = os.path.join(os.path.dirname(path), "copy.onnx")
    began = time.perf_counter()
    ir.save(ir.load(path), target, external_data="copy.onnx.data", size_threshold_bytes=0)
    seconds = time.perf_counter() - began
    for name in ("copy.onnx", "copy.onnx.data"):
        os.remove(os.path.join(os.path.dirname(path), name))
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--channels", type=int, default=1024)
    parser.add_argument("--kernel", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--passes", default="batchnorm,unused,dedupe")
    parser.add_argument(
        "--keep", help="write the model to this folder and keep it (reused when already there)"
    )
    args = parser.parse_args(argv)

    import optkit  # after argument parsing: --help stays fast

    folder = args.keep or tempfile.mkdtemp(prefix="bench_fold_")
    os.makedirs(folder, exist_ok=True)
    try:
        began = time.perf_counter()
        path = os.path.join(folder, "stack.onnx")
        reused = bool(args.keep) and os.path.exists(path)  # a kept folder's model is reused
        if not reused:
            path = build(folder, args.layers, args.channels, args.kernel, args.dtype)
        made = "reused" if reused else f"built in {time.perf_counter() - began:.1f} s"
        weights = weight_bytes(path)
        print(
            f"stack: {args.layers} x Conv({args.channels}->{args.channels}, "
            f"{args.kernel}x{args.kernel}) + BN, {args.dtype}, {weights / GB:.3f} GB of Conv "
            f"weights in external data ({made})"
        )
        passes = [p for p in args.passes.split(",") if p]
        folds, copies, loads = [], [], []
        for repeat in range(args.repeats):
            memcpy = baseline_memcpy(path)
            load = baseline_ir_load_save(path)
            began = time.perf_counter()
            result = optkit.fuse(path, verify_result=False, passes=passes)
            total = time.perf_counter() - began
            left = result.report.batchnorm_after
            per_pass = {p.name: p.seconds for p in result.report.pipeline.passes}
            bn_seconds = per_pass.get("batchnorm", float("nan"))
            fold = weights / bn_seconds
            print(f"run {repeat + 1}: BatchNorms left {left}")
            for name, seconds in per_pass.items():
                print(f"  pass {name:<10} {seconds:8.3f} s")
            print(f"  fuse total      {total:8.3f} s")
            print(
                f"  batchnorm fold  {fold / GB:8.2f} GB/s of weights  | numpy copy "
                f"{weights / memcpy / GB:6.2f} GB/s (fold/copy {fold * memcpy / weights:.2f})"
                f"  | onnx_ir load+save {weights / load / GB:6.2f} GB/s "
                f"(fold/load+save {fold * load / weights:.2f})"
            )
            del result
            folds.append(fold)
            copies.append(weights / memcpy)
            loads.append(weights / load)
        if args.repeats > 1:
            fold, copy, load = (statistics.median(x) for x in (folds, copies, loads))
            ratios = [f / c for f, c in zip(folds, copies, strict=True)]
            ratios_load = [f / c for f, c in zip(folds, loads, strict=True)]
            print(
                f"median of {args.repeats}: batchnorm fold {fold / GB:.2f} GB/s "
                f"[{min(folds) / GB:.2f}-{max(folds) / GB:.2f}], numpy copy {copy / GB:.2f} GB/s, "
                f"onnx_ir load+save {load / GB:.2f} GB/s; fold/copy "
                f"{statistics.median(ratios):.2f}, fold/load+save "
                f"{statistics.median(ratios_load):.2f} (medians of the per-run ratios)"
            )
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
