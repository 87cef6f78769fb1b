"""Benchmark: whole-process wall time of `optkit fuse --no-verify` against the peers' command lines.

    python tools/bench_fuse_process.py [--models light-resnet50,light-densenet121,...] [--runs 5]

What a user waits for at the shell: start-up, load, fold, save. Per model, each command runs
`--runs` times in fresh processes, the commands taking turns (the order reversed every round), and
the median wall time of each is printed with its ratio to the fastest peer that folds as many
BatchNorms and to a bare `onnx.load` + `onnx.save` process, all measured in the same run:

    optkit      optkit fuse MODEL -o OUT --no-verify
    onnxsim     onnxsim MODEL OUT
    onnxslim    onnxslim MODEL OUT
    load+save   python -c "import onnx; onnx.save(onnx.load(MODEL), OUT)"

Models: the onnx package's light zoo models with BatchNorm (`light-NAME`, read from its install).
Needs the `bench` extra (onnxsim, onnxslim).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import onnx

LIGHT = ["resnet50", "densenet121", "shufflenet", "inception_v2"]


def commands(model: str, out: str) -> dict[str, list[str]]:
    bin_dir = os.path.dirname(sys.executable)
    save = f"import onnx; onnx.save(onnx.load({model!r}), {out!r})"
    return {
        "optkit": [os.path.join(bin_dir, "optkit"), "fuse", model, "-o", out, "--no-verify"],
        "onnxsim": [os.path.join(bin_dir, "onnxsim"), model, out],
        "onnxslim": [os.path.join(bin_dir, "onnxslim"), model, out],
        "load+save": [sys.executable, "-c", save],
    }


def batchnorms(path: str) -> int:
    proto = onnx.load(path, load_external_data=False)
    return sum(n.op_type == "BatchNormalization" for n in proto.graph.node)


def measure(model: str, runs: int, folder: str) -> dict[str, dict]:
    """Median wall seconds per command over `runs` fresh processes, and BatchNorms left."""
    outs = {
        name: os.path.join(folder, f"{name}.onnx")
        for name in ("optkit", "onnxsim", "onnxslim", "load+save")
    }
    cmds = {name: commands(model, outs[name])[name] for name in outs}
    times: dict[str, list[float]] = {name: [] for name in cmds}
    failed: dict[str, str] = {}
    for round_ in range(runs):
        order = list(cmds) if round_ % 2 == 0 else list(reversed(cmds))
        for name in order:
            if name in failed:
                continue
            began = time.perf_counter()
            done = subprocess.run(cmds[name], capture_output=True, text=True)
            elapsed = time.perf_counter() - began
            if done.returncode != 0:
                failed[name] = (done.stderr.strip().splitlines() or ["?"])[-1][:100]
                continue
            times[name].append(elapsed)
    rows = {}
    for name in cmds:
        if name in failed:
            rows[name] = {"error": failed[name]}
            continue
        rows[name] = {"seconds": statistics.median(times[name]), "bn_left": batchnorms(outs[name])}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=",".join(f"light-{m}" for m in LIGHT))
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    light = os.path.join(os.path.dirname(onnx.__file__), "backend/test/data/light")
    print(f"{'model':<20} {'command':<10} {'wall s':>7} {'BN left':>7}  ratios")
    for name in args.models.split(","):
        model = os.path.join(light, f"light_{name.removeprefix('light-')}.onnx")
        with tempfile.TemporaryDirectory(prefix="optkit-bench-process-") as folder:
            rows = measure(model, args.runs, folder)
        mine = rows["optkit"]
        peers = [
            (tool, row)
            for tool, row in rows.items()
            if tool in ("onnxsim", "onnxslim")
            and "seconds" in row
            and "seconds" in mine
            and row["bn_left"] <= mine["bn_left"]
        ]
        for tool, row in rows.items():
            if "error" in row:
                print(f"{name:<20} {tool:<10} FAILED: {row['error']}")
                continue
            print(f"{name:<20} {tool:<10} {row['seconds']:7.2f} {row['bn_left']:>7}")
        if "seconds" in mine and peers:
            best_tool, best = min(peers, key=lambda item: item[1]["seconds"])
            bare = rows["load+save"].get("seconds")
            line = f"  optkit / {best_tool} {mine['seconds'] / best['seconds']:.2f}"
            if bare:
                line += f", optkit / load+save {mine['seconds'] / bare:.2f}"
            print(line)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
