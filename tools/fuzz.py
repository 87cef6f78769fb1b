"""Fuzz optkit for longer than the test suite does: mutated models (bytes and structure) through
`fuse`, `inspect` and `verify`, checking the property of tests/fuzzing.py on each.

    python tools/fuzz.py [--cases 5000] [--start 0] [--keep DIR]

Case i mutates a seed model with random.Random(start + i), so any failure is replayed by its number.
Prints the count of cases tried and what happened to them; exits 1 on the first violation, with the
case number and (with --keep) the model file.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fuzzing import SEEDS, check, mutate_bytes, mutate_structure


def case(index: int) -> bytes:
    rnd = random.Random(index)
    seed = rnd.choice(sorted(SEEDS))
    if index % 2:
        return mutate_structure(SEEDS[seed](), rnd).SerializeToString()
    return mutate_bytes(SEEDS[seed]().SerializeToString(), rnd)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=5000)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="folder to copy a failing model into")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    stats: dict[str, int] = {}
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="optkit-fuzz-") as tmp:
        for number in range(args.start, args.start + args.cases):
            path = Path(tmp) / f"case-{number}.onnx"
            path.write_bytes(case(number))
            try:
                check(path, stats)
            except Exception as exc:
                if args.keep:
                    args.keep.mkdir(parents=True, exist_ok=True)
                    (args.keep / path.name).write_bytes(path.read_bytes())
                print(f"case {number} FAILED: {type(exc).__name__}: {exc}")
                sys.exit(1)
            path.unlink()
    seconds = time.perf_counter() - began
    print(f"{args.cases} cases tried in {seconds:.0f} s, no violation")
    for key, count in sorted(stats.items()):
        print(f"  {key}: {count}")


if __name__ == "__main__":
    main()
