"""Benchmark: whole-process wall time of `optkit fuse --no-verify` against the peers' command lines.

    python tools/bench_fuse_process.py [--models light-resnet50,torch-resnet50,...] [--runs 5]
    python tools/bench_fuse_process.py --in-process [--models ...] [--runs 7]

What a user waits for at the shell: start-up, load, fold, save. Per model, each command runs
`--runs` times in fresh processes, the commands taking turns (the order reversed every round), and
the median wall time of each is printed with its ratio to the fastest peer that folds as many
BatchNorms and to a bare `onnx.load` + `onnx.save` process, all measured in the same run:

    optkit      optkit fuse MODEL -o OUT --no-verify
    onnxsim     onnxsim MODEL OUT
    onnxslim    onnxslim MODEL OUT
    load+save   python -c "import onnx; onnx.save(onnx.load(MODEL), OUT)"

Models: the onnx package's light zoo models with BatchNorm (`light-NAME`, read from its install),
and ResNet-50, DenseNet-121 and ShuffleNetV2 built from torch.nn (`torch-NAME`, `optkit.models`)
with BatchNorm statistics calibrated on random data (`calibrate_batchnorm`), exported at 1x3x224x224
by `optkit.torch.export_onnx` with BatchNorm kept. Needs the `bench` extra (onnxsim, onnxslim) and,
for the torch models, the `torch` extra.

`--in-process`: per model, in one process, `optkit.fuse(path, verify_result=False)` +
`result.save(out)` against a bare `onnx_ir.load(path)` + `onnx_ir.save(model, out)`, taking turns,
`--runs` of each (imports done first), medians and their ratio.

To compare two checkouts, export once (`--export-dir DIR`) and run each with PYTHONPATH at it.
optkit's bytecode is written first (`compile_optkit`), as a pip install writes it (and did for the
peers).
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
TORCH = ["resnet50", "densenet121", "shufflenetv2"]
MODELS = [f"light-{m}" for m in LIGHT] + [f"torch-{m}" for m in TORCH]


def export_torch(name: str, path: str) -> None:
    """`torch-NAME` built from torch.nn, BatchNorm calibrated, exported at 1x3x224x224 to `path`."""
    import torch

    from optkit.models import calibrate_batchnorm
    from optkit.models.reference import densenet121, resnet50
    from optkit.models.shufflenet import ShuffleNetV2
    from optkit.torch import export_onnx

    factories = {"resnet50": resnet50, "densenet121": densenet121, "shufflenetv2": ShuffleNetV2}
    torch.manual_seed(0)
    model = calibrate_batchnorm(factories[name](), (4, 3, 224, 224), steps=2)
    onnx.save(export_onnx(model, torch.zeros(1, 3, 224, 224)), path)


def model_path(name: str, folder: str) -> str:
    """The file `name` (light-NAME or torch-NAME) is read from; a torch model is exported into
    `folder` unless it is there already."""
    if name.startswith("torch-"):
        path = os.path.join(folder, f"{name}.onnx")
        if not os.path.exists(path):
            export_torch(name.removeprefix("torch-"), path)
        return path
    light = os.path.join(os.path.dirname(onnx.__file__), "backend/test/data/light")
    return os.path.join(light, f"light_{name.removeprefix('light-')}.onnx")


def in_process(model: str, runs: int, folder: str) -> tuple[float, float]:
    """Median seconds of optkit fuse (no verification) + save and of onnx_ir load + save."""
    import onnx_ir as ir

    import optkit

    def fuse_save() -> None:
        optkit.fuse(model, verify_result=False).save(os.path.join(folder, "optkit.onnx"))

    def load_save() -> None:
        ir.save(ir.load(model), os.path.join(folder, "bare.onnx"))

    fuse_save(), load_save()  # warm: imports, first-call caches
    times: dict[str, list[float]] = {"optkit": [], "bare": []}
    for round_ in range(runs):
        pair = [("optkit", fuse_save), ("bare", load_save)]
        for name, call in pair if round_ % 2 == 0 else reversed(pair):
            began = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - began)
    return statistics.median(times["optkit"]), statistics.median(times["bare"])


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


def compile_optkit() -> None:
    """Write optkit's bytecode (`__pycache__`) before timing, as pip does on a regular install and
    did for the peers: an editable install under PYTHONDONTWRITEBYTECODE=1 (as on the development
    machine) otherwise compiles optkit's ~90 modules from source in every process, 0.15-0.3 s of
    each `optkit fuse` measured."""
    import compileall
    import importlib.util

    spec = importlib.util.find_spec("optkit")
    assert spec is not None and spec.submodule_search_locations
    for folder in spec.submodule_search_locations:
        compileall.compile_dir(folder, quiet=1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--in-process", action="store_true")
    parser.add_argument(
        "--export-dir", help="keep the torch models' exports here and reuse them (default: a temp)"
    )
    args = parser.parse_args()
    compile_optkit()
    if args.in_process:
        print(f"{'model':<20} {'fuse+save s':>11} {'load+save s':>11} {'ratio':>6}")
    else:
        print(f"{'model':<20} {'command':<10} {'wall s':>7} {'BN left':>7}  ratios")
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory(prefix="optkit-bench-process-") as folder:
            model = model_path(name, args.export_dir or folder)
            if args.in_process:
                mine, bare = in_process(model, args.runs, folder)
                print(f"{name:<20} {mine:11.3f} {bare:11.3f} {mine / bare:6.2f}", flush=True)
                continue
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
