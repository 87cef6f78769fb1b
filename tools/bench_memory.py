"""Benchmark: peak memory of `optkit fuse` as a whole process, as a multiple of the model's weight
bytes, on models whose weights live in external data.

    python tools/bench_memory.py [--models stack,huge] [--keep DIR]

Models (generated in a temporary folder, or kept in and reused from ``--keep``):

- ``stack``: tools/bench_fold.py's 32 x (Conv 1024->1024 3x3 + BatchNormalization), 1.2 GB fp32;
- ``huge``:  tests/huge_model.py's MatMul + BatchNormalization stack, 2.25 GiB fp32 (over 2 GB).

Each command runs in a fresh process; its peak resident set (``ru_maxrss`` from ``wait4``, which
counts the pages of memory-mapped external data a process has touched as well as its own) is
divided by the weight bytes. Commands, in one run:

    fuse --no-verify   optkit fuse MODEL -o OUT --no-verify         (target <= 1.5x)
    fuse               optkit fuse MODEL -o OUT                     (verified; target <= 2.5x)
    load+save          onnx_ir load + save to new external data     (a baseline: what a copy holds)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"fuse --no-verify": 1.5, "fuse": 2.5}


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def build(name: str, folder: Path) -> Path:
    """The model `name` in `folder` (reused when it is already there)."""
    folder.mkdir(parents=True, exist_ok=True)
    if name == "stack":
        path = folder / "stack.onnx"
        if not path.exists():
            _load(ROOT / "tools" / "bench_fold.py", "bench_fold").build(
                str(folder), 32, 1024, 3, "float32"
            )
        return path
    if name == "huge":
        path = folder / "huge.onnx"
        if not path.exists():
            _load(ROOT / "tests" / "huge_model.py", "huge_model").make(folder, 2.1)
        return path
    raise SystemExit(f"unknown model {name!r}: stack or huge")


def peak_bytes(command: list[str]) -> int:
    """Run `command` in a fresh process; its peak resident set in bytes (it must succeed)."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        assert process.stderr is not None
        raise SystemExit(f"{' '.join(command)} failed: {process.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss * 1024  # kilobytes on Linux


def commands(model: Path, out: Path) -> dict[str, list[str]]:
    optkit = str(Path(sys.executable).with_name("optkit"))
    save = "import onnx_ir as ir; m = ir.load({!r}); ir.save(m, {!r}, external_data={!r})".format(
        str(model), str(out), out.name + ".data"
    )
    return {
        "fuse --no-verify": [optkit, "fuse", str(model), "-o", str(out), "--no-verify"],
        "fuse": [optkit, "fuse", str(model), "-o", str(out)],
        "load+save": [sys.executable, "-c", save],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="stack,huge")
    parser.add_argument("--keep", type=Path, help="generate the models here and keep them")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_memory_"))
    failed = False
    try:
        print(f"{'model':<8} {'command':<18} {'peak MB':>9} {'weights MB':>11} {'x weights':>10}")
        for name in args.models.split(","):
            model = build(name, (args.keep or work) / name)
            weights = sum(p.stat().st_size for p in model.parent.glob(f"{model.name}.data"))
            for label, command in commands(model, work / f"{name}.out.onnx").items():
                for stale in work.glob(f"{name}.out.onnx*"):
                    stale.unlink()
                peak = peak_bytes(command)
                ratio = peak / weights
                target = TARGETS.get(label)
                verdict = ""
                if target is not None:
                    failed |= ratio > target
                    verdict = f"{'ok' if ratio <= target else 'OVER'} (target <= {target:.1f}x)"
                print(
                    f"{name:<8} {label:<18} {peak / 1e6:9.0f} {weights / 1e6:11.0f} "
                    f"{ratio:9.2f}x {verdict}",
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
