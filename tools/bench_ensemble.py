"""Benchmark: do ensembles and test-time augmentation help on digits, and what do they cost?

    python tools/bench_ensemble.py [--archs mlp,resnet] [--groups 3] [--members 5] [--epochs 10]
                                   [--runs 200] [--batches 1,64]

Accuracy. scikit-learn's digits (8x8), one 75/25 split (seed 0) for every model, so no member has
seen the test images. For each architecture and each of `--groups` groups, `--members` models are
trained from scratch with optkit's torch side (seeds 100 g + m: initialization and shuffling differ),
exported with their preprocessing embedded (raw pixels 0..16 in, so a zero-padded shift brings in
background), and measured on the 450 test images on ONNX Runtime:
  single     each model alone (mean over the members, and the range)
  ensemble   `optkit.ensemble` of the group's members, softmax-mean and vote
  TTA        `optkit.tta --shift 1` of each member (the identity and 4 one-pixel shifts, zero
             padding, and edge padding; no flips: they do not preserve digit labels), softmax-mean
  shifted    each member on one shifted copy alone (each of the 4 shifts, zero padding): what
             the copies TTA averages score by themselves
Every combined model is fused and verified against its reference (the members run separately;
the numpy copies run one by one) before it is measured.

Latency, in one run (ORT optimization `all`, 1 thread, the variants alternating run by run, medians
of `--runs`), at each batch size of `--batches`, for the first group's fused models:
  ensemble   one session of the one-graph ensemble vs the members' sessions run one after the
             other plus the softmax-mean in numpy
  TTA        one session of the batched TTA model vs the model run once per copy on copies made
             in numpy, plus the softmax-mean in numpy
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
import onnx
import torch

import optkit
import optkit.augment
from optkit.augment import tta
from optkit.check import runtime
from optkit.ensembles import ensemble
from optkit.torch import export_checked
from optkit.torch.data import digits, fit_preprocessing, preprocess, split
from optkit.torch.train import Architecture, TrainConfig, build_model, train


def trained(arch: str, seed: int, epochs: int, data: tuple) -> onnx.ModelProto:
    _, test_raw, spec, train_set, test_set = data
    torch.manual_seed(seed)
    architecture = Architecture(arch, (1, 8, 8), 10)
    model = build_model(architecture)
    train(model, architecture, train_set, test_set, TrainConfig(epochs=epochs, seed=seed))
    proto, _ = export_checked(model, test_set.x, spec=spec, raw_samples=test_raw.x, fuse_it=False)
    return proto


def accuracy(model: object, x: np.ndarray, y: np.ndarray) -> float:
    session = runtime.make_session(model, optimization="all")  # type: ignore[arg-type]
    (out,) = session.run(None, {session.get_inputs()[0].name: x})
    predicted = out if out.ndim == 1 else out.argmax(-1)
    return float(np.mean(predicted == y))


def verified(result: object, what: str) -> object:
    report = result.report  # type: ignore[attr-defined]
    if not report.ok:
        raise SystemExit(f"{what}: not verified:\n{report.format_text()}")
    return result.model  # type: ignore[attr-defined]


def softmax_mean(outputs: list[np.ndarray]) -> np.ndarray:
    total = None
    for y in outputs:
        e = np.exp(y - y.max(-1, keepdims=True))
        p = e / e.sum(-1, keepdims=True) / len(outputs)
        total = p if total is None else total + p
    assert total is not None
    return total


def medians(variants: dict[str, Callable[[], object]], runs: int) -> dict[str, float]:
    """Median seconds per call, the variants alternating call by call (order reversed each round)."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for _ in range(10):
        for fn in variants.values():
            fn()
    for index in range(runs):
        for name in names if index % 2 == 0 else names[::-1]:
            began = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - began)
    return {name: statistics.median(values) for name, values in times.items()}


def _variants(one, sessions, batched, plain, copies, xb) -> dict[str, Callable[[], object]]:
    feeds = {"input": xb}

    def separate_copies() -> object:
        outputs = [
            plain.run(None, {"input": optkit.augment.apply(c, xb, (2, 3), "zero", (8, 8))})[0]
            for c in copies
        ]
        return softmax_mean(outputs)

    return {
        "ensemble graph": lambda: one.run(None, feeds),
        "N sessions": lambda: softmax_mean([s.run(None, feeds)[0] for s in sessions]),
        "batched TTA": lambda: batched.run(None, feeds),
        "N runs": separate_copies,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--archs", default="mlp,resnet")
    parser.add_argument("--groups", type=int, default=3)
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--threads", type=int, default=2, help="torch's threads for training")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    data = digits()
    train_raw, test_raw = split(data, 0.25, 0)
    spec = fit_preprocessing(train_raw)
    prepared = (train_raw, test_raw, spec, preprocess(spec, train_raw), preprocess(spec, test_raw))
    x, y = test_raw.x, test_raw.y
    print(
        f"digits: {len(train_raw)} training, {len(test_raw)} test images; {args.members} members "
        f"per group, {args.groups} groups, {args.epochs} epochs"
    )
    print(
        "| arch | group | single (mean, min-max) | ensemble softmax-mean | ensemble vote "
        "| TTA shift 1, zero pad (mean, min-max) | TTA shift 1, edge pad | one shifted copy alone |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    first: dict[str, tuple] = {}
    moves = [c for c in optkit.augment.Augmentations(shift=1).copies(None) if c.steps]
    for arch in args.archs.split(","):
        rows = []
        for group in range(args.groups):
            members = [
                trained(arch, 100 * group + m, args.epochs, prepared) for m in range(args.members)
            ]
            singles = [accuracy(m, x, y) for m in members]
            soft = verified(ensemble(members, combine="softmax-mean", fuse=True), "ensemble")
            vote = verified(ensemble(members, combine="vote", fuse=True), "vote")
            shifted = [
                verified(tta(m, shift=1, combine="softmax-mean", fuse=True), "tta") for m in members
            ]
            tta_acc = [accuracy(t, x, y) for t in shifted]
            edge = [
                accuracy(verified(tta(m, shift=1, pad="edge", combine="softmax-mean"), "tta"), x, y)
                for m in members
            ]
            alone = [
                accuracy(m, optkit.augment.apply(c, x, (2, 3), "zero", (8, 8)), y)
                for m in members
                for c in moves
            ]
            row = (
                np.mean(singles),
                min(singles),
                max(singles),
                accuracy(soft, x, y),
                accuracy(vote, x, y),
                np.mean(tta_acc),
                min(tta_acc),
                max(tta_acc),
                np.mean(edge),
                np.mean(alone),
            )
            rows.append(row)
            print(
                f"| {arch} | {group} | {row[0]:.2%} ({row[1]:.2%}-{row[2]:.2%}) | {row[3]:.2%} "
                f"| {row[4]:.2%} | {row[5]:.2%} ({row[6]:.2%}-{row[7]:.2%}) | {row[8]:.2%} "
                f"| {row[9]:.2%} |",
                flush=True,
            )
            if group == 0:
                first[arch] = (members, soft, shifted[0])
        mean = np.mean(rows, axis=0)
        print(
            f"| {arch} | mean | {mean[0]:.2%} | {mean[3]:.2%} | {mean[4]:.2%} | {mean[5]:.2%} "
            f"| {mean[8]:.2%} | {mean[9]:.2%} |"
        )
    print(f"\ntraining and building: {time.perf_counter() - began:.0f} s")

    print("\nlatency (ORT optimization all, 1 thread, medians; ratio = one graph / separate runs)")
    for arch, (members, soft, shifted) in first.items():
        fused_members = [verified(optkit.fuse(m), "fuse") for m in members]
        sessions = [runtime.make_session(m, optimization="all", threads=1) for m in fused_members]
        one = runtime.make_session(soft, optimization="all", threads=1)
        batched = runtime.make_session(shifted, optimization="all", threads=1)
        plain = sessions[0]
        copies = optkit.augment.Augmentations(shift=1).copies(None)
        for batch in (int(b) for b in args.batches.split(",")):
            xb = np.ascontiguousarray(x[:batch])
            variants = _variants(one, sessions, batched, plain, copies, xb)
            t = medians(variants, args.runs)
            print(
                f"  {arch}, batch {batch}: ensemble of {len(members)}: "
                f"{t['ensemble graph'] * 1e3:.3f} ms vs {t['N sessions'] * 1e3:.3f} ms, ratio "
                f"{t['ensemble graph'] / t['N sessions']:.2f}; TTA of {len(copies)} copies: "
                f"{t['batched TTA'] * 1e3:.3f} ms vs {t['N runs'] * 1e3:.3f} ms, ratio "
                f"{t['batched TTA'] / t['N runs']:.2f}",
                flush=True,
            )
    print(f"\ntotal: {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
