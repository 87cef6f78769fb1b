"""Train on digits with optkit's `train`, in one process or under torchrun (gloo), and save the
weights: tests/torch/test_torch_training.py compares the two, tests/torch/test_user_model.py does
the same with a model made by the user's factory (a second argument, `path/to/file.py:factory`, as `--model`).

    python tests/ddp_train.py OUT.pt [FACTORY]
    python -m torch.distributed.run --nproc_per_node 2 tests/ddp_train.py OUT.pt [FACTORY]
"""

from __future__ import annotations

import os
import sys

import torch

from optkit.torch.data import digits, fit_preprocessing, preprocess, split
from optkit.torch.train import FACTORY, Architecture, TrainConfig, build_model, evaluate, train


def main(out: str, factory: str | None = None) -> None:
    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        torch.distributed.init_process_group("gloo")
    torch.set_num_threads(1)
    train_raw, test_raw = split(digits(), 0.25, seed=0)
    spec = fit_preprocessing(train_raw)
    train_set, test_set = preprocess(spec, train_raw), preprocess(spec, test_raw)
    # Layer norm: per-sample statistics, so splitting a batch across processes changes nothing
    # (BatchNorm would normalize each process's half with its own statistics, as plain DDP does).
    arch = Architecture("mlp", (1, 8, 8), 10, "relu", "layer")
    if factory is not None:  # the user's model, rebuilt from its factory as a checkpoint does
        arch = Architecture(FACTORY, (1, 8, 8), 10, "", "", factory=factory)
    torch.manual_seed(0)
    model = build_model(arch)
    train(model, arch, train_set, test_set, TrainConfig(epochs=3, batch_size=64, lr=0.05))
    if not distributed or torch.distributed.get_rank() == 0:
        torch.save({"state": model.state_dict(), "accuracy": evaluate(model, test_set)}, out)
    if distributed:
        torch.distributed.barrier()  # both ranks done before the group goes (rank 0 was saving)
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
