"""Option values of `optkit train --seeds` and `optkit export --ensemble`: the seeds to train
(`parse_seeds`) and the ways to combine the members (`COMBINE_CHOICES`).

`train --checkpoint runs.pt --seeds 3` writes ``runs.seed0.pt``, ``runs.seed1.pt``,
``runs.seed2.pt`` (`optkit.torch.runs.train_seeds`); `export runs.seed*.pt --ensemble -o runs.onnx`
checks that the checkpoints fit together, exports each, and writes one ensemble
(`optkit.torch.exporting`).

Not a command module: `optkit.cli.training` imports it. Only optkit's light modules at the top
(tests/test_startup.py).
"""

from __future__ import annotations

from optkit.errors import InputError

COMBINE_CHOICES = ("mean", "softmax-mean", "vote")  # optkit.combine.COMBINES (a test checks)
MAX_SEEDS = 100


def parse_seeds(text: str) -> list[int]:
    """'5' -> seeds 0..4; '0,3,7' -> those seeds (integers >= 0, no duplicates)."""
    items = [item.strip() for item in text.split(",")]
    try:
        values = [int(item) for item in items]
    except ValueError:
        raise InputError(
            f"--seeds {text}: give a count (5: seeds 0..4) or seeds separated by commas (0,3,7)"
        ) from None
    if len(values) == 1:
        count = values[0]
        if not 1 <= count <= MAX_SEEDS:
            raise InputError(f"--seeds {text}: a count of runs from 1 to {MAX_SEEDS}")
        return list(range(count))
    for value in values:
        if value < 0:
            raise InputError(f"--seeds {text}: {value} is not a seed (seeds are >= 0)")
        if values.count(value) > 1:
            raise InputError(f"--seeds {text}: seed {value} is given twice")
    if len(values) > MAX_SEEDS:
        raise InputError(f"--seeds {text}: {len(values)} runs; at most {MAX_SEEDS}")
    return values
