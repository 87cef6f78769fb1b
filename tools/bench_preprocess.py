"""Benchmark: end-to-end latency from a uint8 NHWC BGR image batch to logits, in one run.

    python tools/bench_preprocess.py [--models resnet,resnet18] [--batches 1,32] [--scale 1]

Ways, all at ORT optimization `all`, 1 thread, alternating run by run:

- bare: the original model on an already-preprocessed float32 NCHW batch (the baseline, ratio 1.00:
  preprocessing costs nothing);
- numpy + ORT: numpy preprocessing (optkit.preprocessing.apply: cast, transpose, channel swap, /255,
  mean, std) then the original model;
- embedded: the embedded model on the raw batch (preprocessing as ONNX nodes);
- folded: the folded model on the raw batch (scale, std and channel swap absorbed into the first
  Conv; Cast, Transpose and, where the fold keeps it there, the mean's Add on the input left);
- bare + cast/T: the original model behind only Cast(uint8 -> float) + Transpose(NHWC -> NCHW) on the
  raw batch (the part of preprocessing no fold can remove; not the same function, the same work):
  the floor for the folded model;
- cast/T alone: a model that is only that Cast + Transpose, timed on its own (a session call of its
  own, so it includes one more call's overhead than the same nodes inside a model);
- numpy alone: optkit.preprocessing.apply on the raw batch, no model.

Models: the ResNet-style network of `models/` (ZOO["resnet"], 32x32 input) and a ResNet-18
(optkit.models.reference.resnet18, BatchNorm statistics randomized, 224x224 input). Each way's
median time is printed with its ratio to bare: the median over runs of (this way's time / bare's time
in the same run), so that load drifting between runs cancels; the runs are also split into blocks of
consecutive runs and the min-max of the per-block ratios is printed as the spread.
Also printed per model: the nodes ORT's optimized folded graph runs before its first Conv.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

import optkit
from optkit import io
from optkit.check import runtime
from optkit.embedding import embed
from optkit.models import ZOO, randomize_batchnorm
from optkit.models.reference import resnet18
from optkit.preprocessing import PreprocessSpec, apply
from optkit.torch import export_onnx

SPEC = PreprocessSpec(
    dtype="uint8",
    layout="NHWC",
    channel_order=[2, 1, 0],
    scale=1 / 255,
    mean=[0.485, 0.456, 0.406],
    std=[0.229, 0.224, 0.225],
)

# name -> (constructor, input height = width)
MODELS: dict[str, tuple[Callable[[], torch.nn.Module], int]] = {
    "resnet": (ZOO["resnet"][0], 32),
    "resnet18": (resnet18, 224),
}
# Runs per (model, batch), before --scale: about 5 minutes in all on the 2-core machine, most of it
# ResNet-18 at batch 32 (about 1 s per inference on one thread, five inferences per run).
RUNS = {("resnet", 1): 2000, ("resnet", 32): 300, ("resnet18", 1): 200, ("resnet18", 32): 40}
WAYS = (
    "bare",
    "bare + cast/T",
    "numpy + ORT",
    "embedded",
    "folded",
    "cast/T alone",
    "numpy alone",
)


def cast_transpose(size: int) -> onnx.ModelProto:
    """Cast(uint8 -> float32) + Transpose(NHWC -> NCHW), nothing else."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["input"], ["cast"], to=TensorProto.FLOAT),
            helper.make_node("Transpose", ["cast"], ["output"], perm=[0, 3, 1, 2]),
        ],
        "cast_transpose",
        [helper.make_tensor_value_info("input", TensorProto.UINT8, ["batch", size, size, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3, size, size])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def paired_ratios(
    samples: list[float], base: list[float], blocks: int
) -> tuple[float, list[float]]:
    """Median over runs of each run's time over the bare time of the same run, overall and per block
    of consecutive runs (the pairing cancels load that drifts between runs)."""
    ratios = [a / b for a, b in zip(samples, base, strict=True)]
    size = len(ratios) // blocks
    return statistics.median(ratios), [
        statistics.median(ratios[b * size : (b + 1) * size]) for b in range(blocks)
    ]


def first_nodes(model, threads: int) -> list[str]:
    """The ops ORT's optimized graph (level `all`) runs before its first Conv."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="bench-preprocess-") as tmp:
        options = runtime.session_options("all", threads)
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        proto = model if isinstance(model, onnx.ModelProto) else io.to_proto(model)
        ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        nodes = onnx.load(options.optimized_model_filepath).graph.node
    ops = []
    for node in nodes:
        ops.append(f"{node.domain}:{node.op_type}" if node.domain else node.op_type)
        if node.op_type == "Conv":
            break
    return ops


def bench_model(name: str, batches: list[int], scale: float, threads: int, blocks: int) -> None:
    make, size = MODELS[name]
    torch.manual_seed(0)
    original = export_onnx(randomize_batchnorm(make()).eval(), torch.randn(2, 3, size, size))
    embedded = embed(original, SPEC)
    folded = optkit.fuse(embedded, shapes={"input": (1, size, size, 3)}).model
    print(f"{name} {size}x{size}: ORT-optimized folded graph, up to its first Conv:")
    print("  " + " -> ".join(first_nodes(folded, threads)))

    def session(model):
        return runtime.make_session(model, optimization="all", threads=threads)

    bare = session(original)
    sessions = {
        "bare + cast/T": session(embed(original, PreprocessSpec(dtype="uint8", layout="NHWC"))),
        "embedded": session(embedded),
        "folded": session(folded),
        "cast/T alone": session(cast_transpose(size)),
    }
    rng = np.random.default_rng(0)
    for batch in batches:
        runs = max(blocks, round(RUNS.get((name, batch), 100) * scale))
        runs -= runs % blocks
        raw = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
        ready = apply(SPEC, raw)
        ways: dict[str, Callable[[], list[np.ndarray]]] = {
            "bare": lambda ready=ready: bare.run(None, {"input": ready}),
            "numpy + ORT": lambda raw=raw: bare.run(None, {"input": apply(SPEC, raw)}),
            "numpy alone": lambda raw=raw: [apply(SPEC, raw)],
        }
        for way, sess in sessions.items():
            ways[way] = lambda raw=raw, sess=sess: sess.run(None, {"input": raw})
        outputs = {way: ways[way]()[0] for way in ("bare", "embedded", "folded")}
        for way in ("embedded", "folded"):
            error = float(np.max(np.abs(outputs[way] - outputs["bare"])))
            assert error < 1e-4, f"{name} batch {batch}: {way} differs by {error}"
        for _ in range(max(2, runs // 20)):
            for way in ways.values():
                way()
        times: dict[str, list[float]] = {way: [] for way in WAYS}
        for i in range(runs):
            for way in WAYS if i % 2 == 0 else reversed(WAYS):
                began = time.perf_counter()
                ways[way]()
                times[way].append(time.perf_counter() - began)
        print(f"{name} {size}x{size}, batch {batch}, {runs} runs in {blocks} blocks")
        for way in WAYS:
            median = statistics.median(times[way])
            ratio, ratios = paired_ratios(times[way], times["bare"], blocks)
            print(
                f"  {way:<14} {median * 1000:9.3f} ms  ratio {ratio:.3f}"
                f"  (blocks {min(ratios):.3f}-{max(ratios):.3f})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="resnet,resnet18")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the run counts")
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    began = time.perf_counter()
    print(f"ORT optimization all, {args.threads} thread(s); ratios to bare")
    batches = [int(b) for b in args.batches.split(",")]
    for name in args.models.split(","):
        bench_model(name, batches, args.scale, args.threads, args.blocks)
    print(f"wall {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
