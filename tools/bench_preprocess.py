"""Benchmark: end-to-end latency from a uint8 NHWC BGR image batch to logits, three ways, in one run.

    python tools/bench_preprocess.py [--runs 200] [--batches 1,32] [--threads 1]

1. numpy preprocessing (optkit.preprocessing.apply: cast, transpose, channel swap, /255, mean, std)
   then ONNX Runtime on the original model;
2. the embedded model on the raw batch (preprocessing as ONNX nodes);
3. the folded model on the raw batch (scale and channel swap absorbed into the first Conv; Cast,
   Transpose and the mean's Add on the input left: the Conv pads, so the mean is not uniform there).
The three alternate run by run; medians are printed with their ratio to (1). Model: the ResNet-style
network of `models/` (ZOO["resnet"], 32x32 input), ORT at its default optimization level.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch

import optkit
from optkit import runtime
from optkit.embedding import embed
from optkit.models import ZOO, randomize_batchnorm
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    original = export_onnx(
        randomize_batchnorm(ZOO["resnet"][0]()).eval(), torch.randn(2, 3, 32, 32)
    )
    embedded = embed(original, SPEC)
    folded = optkit.fuse(embedded, shapes={"input": (1, 32, 32, 3)}).model

    def session(model):
        return runtime.make_session(model, optimization="all", threads=args.threads)

    sessions = {
        "numpy + ORT": session(original),
        "embedded": session(embedded),
        "folded": session(folded),
    }
    rng = np.random.default_rng(0)
    print(
        f"ResNet-style (models/), ORT optimization all, {args.threads} thread(s), {args.runs} runs"
    )
    for batch in (int(b) for b in args.batches.split(",")):
        raw = rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
        ways = {
            "numpy + ORT": lambda raw=raw: runtime.run(
                sessions["numpy + ORT"], {"input": apply(SPEC, raw)}
            ),
            "embedded": lambda raw=raw: runtime.run(sessions["embedded"], {"input": raw}),
            "folded": lambda raw=raw: runtime.run(sessions["folded"], {"input": raw}),
        }
        outputs = {name: way()["output"] for name, way in ways.items()}
        for name in ("embedded", "folded"):
            error = float(np.max(np.abs(outputs[name] - outputs["numpy + ORT"])))
            assert error < 1e-4, f"{name} differs by {error}"
        times: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(10):
            for way in ways.values():
                way()
        for i in range(args.runs):
            names = list(ways) if i % 2 == 0 else list(reversed(ways))
            for name in names:
                began = time.perf_counter()
                ways[name]()
                times[name].append(time.perf_counter() - began)
        base = statistics.median(times["numpy + ORT"])
        for name, samples in times.items():
            median = statistics.median(samples)
            print(
                f"  batch {batch:>3}  {name:<12} {median * 1000:8.3f} ms  ratio {median / base:.3f}"
            )


if __name__ == "__main__":
    main()
