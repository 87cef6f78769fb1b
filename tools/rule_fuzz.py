"""Run the rule fuzzer of tests/rule_fuzzing.py for longer than the test suite does.

    python tools/rule_fuzz.py [--cases 100000] [--start 0] [--keep DIR]

Case i is built from the integer start + i alone, so any failure replays by its number. Prints the
count of cases tried and what happened to them; exits 1 on the first violation, with the case
number and (with --keep) the model file.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from rule_fuzzing import build_case, check_case


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=10000)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="folder to write a failing model into")
    parser.add_argument("--every", type=int, default=10000, help="print progress every N cases")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    stats: dict[str, int] = {}
    began = time.perf_counter()
    for number in range(args.start, args.start + args.cases):
        try:
            check_case(number, stats)
        except Exception as exc:
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                model, _, _ = build_case(number)
                (args.keep / f"rule-case-{number}.onnx").write_bytes(model.SerializeToString())
            print(f"case {number} FAILED: {type(exc).__name__}: {exc}", flush=True)
            sys.exit(1)
        done = number - args.start + 1
        if done % args.every == 0:
            print(f"  {done} cases, {time.perf_counter() - began:.0f} s", flush=True)
    seconds = time.perf_counter() - began
    print(f"{args.cases} cases tried in {seconds:.0f} s, no violation")
    for key, count in sorted(stats.items()):
        print(f"  {key}: {count}")


if __name__ == "__main__":
    main()
