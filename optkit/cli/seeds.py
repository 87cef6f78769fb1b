"""Helpers of `optkit train --seeds` and `optkit export --ensemble`: from several training runs to
one verified, fused ensemble file.

`train --checkpoint runs.pt --seeds 3` writes ``runs.seed0.pt``, ``runs.seed1.pt``,
``runs.seed2.pt`` (`seed_paths`); `export runs.seed*.pt --ensemble -o runs.onnx` checks that the
checkpoints fit together (`check_fit`), exports each, and writes one ensemble (`write_ensemble`).

Not a command module: `optkit.cli.training` imports it. Only click and optkit's light modules at
the top (tests/test_startup.py); onnx, numpy and torch load inside the functions.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from optkit.errors import InputError

if TYPE_CHECKING:
    from optkit.torch.train import Checkpoint

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


def seed_path(checkpoint: Path, seed: int) -> Path:
    """Where run `seed` of `--checkpoint runs.pt` goes: ``runs.seed{seed}.pt`` (the suffix kept,
    none if the name has none)."""
    return checkpoint.with_name(f"{checkpoint.stem}.seed{seed}{checkpoint.suffix}")


def check_fit(paths: list[Path], saved: list[Checkpoint]) -> bool:
    """InputError naming the first checkpoint that does not fit with the first one: other classes,
    another input shape, or preprocessing where the first has none (or none where it has). Returns
    whether the members embed their preprocessing (the ensemble then takes raw input)."""
    first, base = paths[0], saved[0]
    for path, other in zip(paths[1:], saved[1:], strict=True):
        if other.labels != base.labels:
            raise InputError(
                f"{path}: scores classes {_labels(other.labels)}, {first} scores "
                f"{_labels(base.labels)}; an ensemble's members must score the same classes"
            )
        shape, want = tuple(other.architecture.input_shape), tuple(base.architecture.input_shape)
        if shape != want:
            raise InputError(
                f"{path}: takes inputs of shape {shape}, {first} takes {want}; an ensemble's "
                "members share one input"
            )
        has, had = other.preprocessing is not None, base.preprocessing is not None
        if has != had:
            raise InputError(
                f"{path}: {'records' if has else 'records no'} preprocessing, {first} "
                f"{'records' if had else 'records none'}; the members cannot share one input "
                "(raw and preprocessed)"
            )
        if has and other.preprocessing.scale != base.preprocessing.scale:  # type: ignore[union-attr]
            raise InputError(
                f"{path}: its preprocessing scales raw input by "
                f"{other.preprocessing.scale}, {first}'s by {base.preprocessing.scale}; the "  # type: ignore[union-attr]
                "members would not take the same raw input"
            )
    return base.preprocessing is not None


def _labels(labels: list[int]) -> str:
    shown = ",".join(str(c) for c in labels[:12])
    return shown + (",..." if len(labels) > 12 else "")


def write_ensemble(
    paths: list[Path], members: list[Any], combine: str, fuse_it: bool, output: Path
) -> None:
    """Combine the exported `members` (`optkit.cli.training._Exported`) with `optkit.ensemble`,
    fused and verified against the members on ONNX Runtime; write it, then measure it on the first
    member's test split. Exit 1 and nothing written when it differs, 2 when it could not verify."""
    import numpy as np

    from optkit.ensembles import ENSEMBLE_KEY, ensemble

    result = ensemble([m.proto for m in members], combine=combine, fuse=fuse_it)
    report = result.report
    report.sources = [str(p) for p in paths]
    recorded = json.loads(result.model.metadata_props[ENSEMBLE_KEY])
    recorded["members"] = [str(p) for p in paths]
    result.model.metadata_props[ENSEMBLE_KEY] = json.dumps(recorded)
    if report.state == "unverified":
        click.echo(report.format_text())
        raise InputError(
            f"the ensemble: verification could not run: {report.unverified_reason}; nothing written"
        )
    if report.state == "differs":
        click.echo(report.format_text())
        click.echo(
            "optkit: the ensemble differs from its members beyond tolerance; nothing written",
            err=True,
        )
        sys.exit(1)
    result.save(output)
    click.echo(report.format_text())
    test = members[0]
    for path, member in zip(paths[1:], members[1:], strict=True):
        if member.saved.data != test.saved.data:
            click.echo(
                f"note: {path} records another data set or split than {paths[0]}; measured on "
                f"{paths[0]}'s test split, which may hold examples {path} trained on"
            )
    from optkit.check.runtime import make_session

    session = make_session(result.to_proto())
    (scores,) = session.run(None, {session.get_inputs()[0].name: test.feed})
    picked = scores if combine == "vote" else np.argmax(scores, 1)
    accuracy = float(np.mean(picked.reshape(-1) == test.test_set.y))
    singles = [_accuracy(m.proto, test.feed, test.test_set.y) for m in members]
    click.echo(
        f"test accuracy: members {', '.join(f'{a:.2%}' for a in singles)} (mean "
        f"{float(np.mean(singles)):.2%}); ensemble ({combine}, ONNX) {accuracy:.2%} -> {output}"
    )


def _accuracy(proto: Any, feed: Any, labels: Any) -> float:
    import numpy as np

    from optkit.check.runtime import make_session

    session = make_session(proto)
    (scores,) = session.run(None, {session.get_inputs()[0].name: feed})
    return float(np.mean(np.argmax(scores, 1) == labels))
