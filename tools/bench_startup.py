"""Benchmark: what starting optkit costs, in fresh processes, against `python -c pass` and
`python -c 'import onnx'` measured in the same run.

    python tools/bench_startup.py [--runs 11] [--json] [--top 15]

Each command runs `--runs` times in a fresh interpreter (after one untimed run that warms the
page cache and the bytecode cache); the commands take turns run by run, so a slow moment of the
machine hits them all alike. Printed: the median wall time of each, its minimum, and the median's
ratio to `python -c pass` and to `python -c 'import onnx'`. `--top N` adds, for `import optkit` and
`optkit --help`, the N costliest imports by cumulative time (one `python -X importtime` run each).

The targets (exit 1 with --check when missed): `optkit --help` <= 0.3 s, `import optkit` <= 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata

PYTHON = sys.executable
# The console script next to this interpreter (a virtual environment's bin/), else python -m optkit.
_SCRIPT = os.path.join(os.path.dirname(PYTHON), "optkit")
OPTKIT = [_SCRIPT] if os.access(_SCRIPT, os.X_OK) else [PYTHON, "-m", "optkit"]

COMMANDS: dict[str, list[str]] = {
    "python -c pass": [PYTHON, "-c", "pass"],
    "import onnx": [PYTHON, "-c", "import onnx"],
    "import optkit": [PYTHON, "-c", "import optkit"],
    "optkit --help": [*OPTKIT, "--help"],
    "optkit fuse --help": [*OPTKIT, "fuse", "--help"],
    "optkit.fuse (whole library)": [PYTHON, "-c", "import optkit; optkit.fuse"],
}
TARGETS = {"optkit --help": 0.3, "import optkit": 0.5}
VERSIONS = ("onnx", "onnx-ir", "onnxruntime", "ml_dtypes", "numpy", "click")


def time_once(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def measure(runs: int) -> dict[str, list[float]]:
    for command in COMMANDS.values():  # untimed: page cache, __pycache__
        time_once(command)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(runs):
        for name, command in COMMANDS.items():
            times[name].append(time_once(command))
    return times


def top_imports(command: list[str], count: int) -> list[tuple[str, float]]:
    """The `count` costliest imports of one run of `command`, by cumulative time (seconds)."""
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    rows = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.split("|", 2)
        rows.append((name.strip(), int(cumulative) / 1e6))
    return sorted(rows, key=lambda row: row[1], reverse=True)[:count]


def versions() -> dict[str, str]:
    found = {}
    for name in VERSIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def _load_process_bench():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).with_name("bench_fuse_process.py")
    spec = importlib.util.spec_from_file_location("bench_fuse_process", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11, help="fresh processes per command")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--top", type=int, default=0, metavar="N", help="N costliest imports")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    _load_process_bench().compile_optkit()  # optkit's bytecode written, as a pip install does
    times = measure(max(args.runs, 1))
    medians = {name: statistics.median(values) for name, values in times.items()}
    bare, onnx_import = medians["python -c pass"], medians["import onnx"]
    rows = [
        {
            "command": name,
            "median_s": round(medians[name], 4),
            "min_s": round(min(values), 4),
            "vs_python": round(medians[name] / bare, 2),
            "vs_import_onnx": round(medians[name] / onnx_import, 3),
            **({"target_s": TARGETS[name]} if name in TARGETS else {}),
        }
        for name, values in times.items()
    ]
    missed = [name for name, limit in TARGETS.items() if medians[name] > limit]
    tops = {
        name: top_imports(COMMANDS[name], args.top)
        for name in ("import optkit", "optkit --help")
        if args.top > 0
    }
    if args.json:
        result = {
            "runs": args.runs,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "versions": versions(),
            "results": rows,
            "missed": missed,
            "top_imports": {k: [[n, round(t, 4)] for n, t in v] for k, v in tops.items()},
        }
        print(json.dumps(result, indent=2))
    else:
        print(
            f"start-up, median of {args.runs} fresh processes (Python {platform.python_version()}, "
            f"{os.cpu_count()} CPUs; " + ", ".join(f"{k} {v}" for k, v in versions().items()) + ")"
        )
        print(f"  {'command':<28} {'median':>8} {'min':>8} {'x python':>9} {'x onnx':>7}  target")
        for row in rows:
            target = f"<= {row['target_s']} s" if "target_s" in row else ""
            if row["command"] in missed:
                target += "  MISSED"
            print(
                f"  {row['command']:<28} {row['median_s']:>7.3f}s {row['min_s']:>7.3f}s "
                f"{row['vs_python']:>8.1f}x {row['vs_import_onnx']:>6.2f}x  {target}"
            )
        for name, found in tops.items():
            print(f"\n  costliest imports of `{name}` (cumulative, one -X importtime run):")
            for module, seconds in found:
                print(f"    {seconds:7.3f}s  {module}")
    if args.check and missed:
        sys.exit(1)


if __name__ == "__main__":
    main()
