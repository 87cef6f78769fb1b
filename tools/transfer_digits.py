"""Measure the lecture's transfer-learning claim on scikit-learn's digits, several seeds in one run.

    python tools/transfer_digits.py [--seeds 5] [--arch cnn] [--per-class 20 5 10]

Pretrain on digits 0-4 (all their training examples), then learn 5-9 from a few examples per class
with each strategy (linear head on the top layer; linear classifiers on several stages, best kept;
last two layers retrained; everything fine-tuned), against the same network trained from scratch on
those examples with the same budget. Accuracy on the 5-9 test split; mean and min over seeds. One
pretrained network per seed serves every strategy and every number of examples.
"""

from __future__ import annotations

import argparse
import copy
import warnings

import numpy as np
import torch

from optkit.torch.data import digits, fit_preprocessing, preprocess, split, subset
from optkit.torch.train import Architecture, TrainConfig, build_model, evaluate, train
from optkit.torch.transfer import fit_stage_classifier, prepare_transfer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--arch", default="cnn", choices=["mlp", "cnn", "resnet"])
    parser.add_argument("--per-class", type=int, nargs="+", default=[20])
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    train_raw, test_raw = split(digits(), 0.25, seed=0)
    spec = fit_preprocessing(train_raw)
    train_set, test_set = preprocess(spec, train_raw), preprocess(spec, test_raw)
    low, low_test = subset(train_set, [0, 1, 2, 3, 4]), subset(test_set, [0, 1, 2, 3, 4])
    high_test = subset(test_set, [5, 6, 7, 8, 9])
    arch = Architecture(args.arch, (1, 8, 8), 5)
    results: dict[tuple[int, str], list[float]] = {}
    fine = TrainConfig(epochs=30, batch_size=20)
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        pretrained = build_model(arch)
        train(pretrained, arch, low, low_test, TrainConfig(epochs=10, seed=seed))
        for per_class in args.per_class:
            few = subset(train_set, [5, 6, 7, 8, 9], per_class, seed=seed)
            for name, k in (("linear", 0), ("last-k", 2), ("all", 0)):
                model = copy.deepcopy(pretrained)
                groups = prepare_transfer(model, 5, name, k, 0.05, seed)
                train(model, arch, few, high_test, fine, param_groups=groups)
                results.setdefault((per_class, f"{name}{k or ''}"), []).append(
                    evaluate(model, high_test)
                )
            probe = fit_stage_classifier(pretrained, few, seed=seed)
            results.setdefault((per_class, "stages"), []).append(evaluate(probe, high_test))
            torch.manual_seed(seed)
            scratch = build_model(arch)
            train(scratch, arch, few, high_test, fine)
            results.setdefault((per_class, "scratch"), []).append(evaluate(scratch, high_test))
    print(f"{args.arch}, digits 0-4 -> 5-9, {args.seeds} seeds")
    for (per_class, name), values in results.items():
        print(
            f"  {per_class:>3} per class  {name:<8} mean {np.mean(values):.2%}"
            f"  min {np.min(values):.2%}"
        )


if __name__ == "__main__":
    main()
