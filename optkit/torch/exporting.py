"""Checkpoint -> ONNX, as `optkit export` does it: one checkpoint, or several as one ensemble.

- `export_one` rebuilds a checkpoint's model, exports it (BatchNorm kept for optkit to fold, the
  preprocessing embedded when asked) and checks it against torch on the test split the checkpoint
  records (or the data asked for), on the classes its head's outputs stand for (`export_labels`).
- `export_checkpoint` does that for one file, fused, writes it and measures it on ONNX Runtime.
- `export_members` checks that checkpoints fit together (`check_fit`) and exports each;
  `ensemble_of` combines them (`optkit.ensembles`), fused and verified; `measure_ensemble` scores
  the ensemble and its members on the first member's test split.

Progress lines go to `log`; user mistakes are InputError. The command renders what they return.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from optkit.errors import InputError
from optkit.io.outputs import check_output
from optkit.io.run_inputs import data_reads, labels_text
from optkit.torch.data import Dataset
from optkit.torch.runs import check_present, factory_reads, image_shape, rebuilt, split_data
from optkit.torch.train import Checkpoint

Log = Callable[[str], None]


def _silent(_line: str) -> None:
    """The default `log`: progress lines go nowhere."""


@dataclass(frozen=True)
class ExportRequest:
    """What `export` was asked: the output, every checkpoint, and the data options (None: the
    recorded ones); `asked` the --classes parsed, `classes` as given."""

    output: Path
    checkpoints: tuple[Path, ...]
    data_source: str | None = None
    asked: list[int] | None = None
    classes: str | None = None
    test_fraction: float | None = None
    seed: int | None = None


@dataclass(frozen=True)
class Exported:
    """One checkpoint exported: the ONNX model, its report, the test split it was checked on, the
    input it takes there (`feed`: raw if the preprocessing is embedded), the torch model's test
    accuracy, and (`export_checkpoint`) the ONNX model's."""

    proto: Any
    report: dict[str, Any]
    saved: Checkpoint
    labels: list[int]
    test_set: Dataset
    feed: Any
    torch_accuracy: float
    onnx_accuracy: float | None = None


def export_one(
    checkpoint: Path, request: ExportRequest, embed_preprocessing: bool, fuse_it: bool,
    saved: Checkpoint | None = None, log: Log = _silent,
) -> Exported:  # fmt: skip
    """`checkpoint` exported and checked against torch on its recorded test split (or --data)."""
    from optkit.torch.data import preprocess, subset
    from optkit.torch.export import export_checked
    from optkit.torch.train import evaluate, load_checkpoint, restore

    data_source, test_fraction, seed = request.data_source, request.test_fraction, request.seed
    saved = saved if saved is not None else load_checkpoint(checkpoint)
    recorded = saved.data
    source = data_source or (recorded.source if recorded else "digits")
    option = "--data" if data_source else f"the recorded data of {checkpoint} (give --data)"
    also = (*request.checkpoints, *factory_reads(saved.architecture))
    check_output(request.output, **data_reads(source, option, also=also), what="output",
                 model=True)  # fmt: skip
    if recorded is not None and source == recorded.source:
        for flag, given, kept in (("--test-fraction", test_fraction, recorded.test_fraction),
                                  ("--seed", seed, recorded.seed)):  # fmt: skip
            if given is not None and given != kept:
                raise InputError(
                    f"{flag} {given}: {checkpoint} was trained on {source} split with {flag} "
                    f"{kept}; another split would measure on examples it trained on (leave "
                    f"{flag} out)"
                )
    if test_fraction is None:
        test_fraction = recorded.test_fraction if recorded else 0.25
    if seed is None:
        seed = recorded.seed if recorded else 0
    labels = export_labels(saved, checkpoint, request.asked, request.classes)
    rebuilt(saved.architecture, checkpoint, log)
    model = restore(saved, str(checkpoint))
    data, _, test_raw = split_data(source, test_fraction, seed,
                                   *image_shape(saved.architecture, source), log=log)  # fmt: skip
    check_present(labels, data, source, "classes")
    test_raw = subset(test_raw, labels)
    if len(test_raw) == 0:
        raise InputError(f"{source}: no test examples of classes {labels_text(labels)}")
    spec = saved.preprocessing
    test_set = preprocess(spec, test_raw) if spec else test_raw
    if tuple(test_set.x.shape[1:]) != saved.architecture.input_shape:
        raise InputError(f"{source}: samples of shape {test_set.x.shape[1:]}, the checkpoint "
                         f"takes {saved.architecture.input_shape}")  # fmt: skip
    embed = spec if embed_preprocessing and spec else None
    proto, report = export_checked(model, test_set.x, spec=embed, raw_samples=test_raw.x,
                                   fuse_it=fuse_it)  # fmt: skip
    return Exported(proto=proto, report=report, saved=saved, labels=labels, test_set=test_set,
                    feed=test_raw.x if embed else test_set.x,
                    torch_accuracy=evaluate(model, test_set))  # fmt: skip


def export_checkpoint(
    request: ExportRequest, embed_preprocessing: bool, fuse_it: bool, log: Log = _silent
) -> Exported:
    """`request`'s one checkpoint exported, checked, written to `request.output` and measured on
    ONNX Runtime (`Exported.onnx_accuracy`)."""
    from dataclasses import replace

    from optkit import io

    one = export_one(request.checkpoints[0], request, embed_preprocessing, fuse_it, log=log)
    io.save(io.load(one.proto), request.output)
    return replace(one, onnx_accuracy=accuracy(one.proto, one.feed, one.test_set.y))


def onnx_scores(proto: Any, feed: Any) -> Any:
    """The model's output on ONNX Runtime for `feed`."""
    from optkit.check.runtime import make_session

    session = make_session(proto)
    (scores,) = session.run(None, {session.get_inputs()[0].name: feed})
    return scores


def accuracy(proto: Any, feed: Any, labels: Any) -> float:
    """The share of `feed` whose highest score on ONNX Runtime is its label."""
    return float(np.mean(np.argmax(onnx_scores(proto, feed), 1) == labels))


def export_labels(
    saved: Checkpoint, path: Path, asked: list[int] | None, text: str | None
) -> list[int]:
    """The label id of each head output: the recorded ones; --classes must agree with them."""
    if asked is None:
        return saved.labels
    if len(asked) != saved.outputs:
        known = (f"classes {labels_text(saved.classes)}" if saved.classes is not None
                 else "classes not recorded")  # fmt: skip
        raise InputError(f"--classes {text}: {len(asked)} classes, but {path}'s head has "
                         f"{saved.outputs} outputs ({known})")  # fmt: skip
    if saved.classes is not None and asked != saved.classes:
        raise InputError(f"--classes {text}: {path} records classes "
                         f"{','.join(map(str, saved.classes))} for its outputs")  # fmt: skip
    return asked


# --- ensembles ------------------------------------------------------------------------------------


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


def export_members(request: ExportRequest, log: Log = _silent) -> list[Exported]:
    """`export --ensemble`: the checkpoints checked to fit together, then each exported (not fused)
    and checked against torch; one line per member to `log`."""
    from optkit.torch.train import load_checkpoint

    saved = [load_checkpoint(path) for path in request.checkpoints]
    embed = check_fit(list(request.checkpoints), saved)
    members = []
    for path, checkpoint in zip(request.checkpoints, saved, strict=True):
        one = export_one(path, request, embed, fuse_it=False, saved=checkpoint, log=log)
        log(f"{path}: exported, checked against torch (max abs error "
            f"{one.report['export_max_abs_error']:.3g}), test accuracy torch "
            f"{one.torch_accuracy:.2%}")  # fmt: skip
        members.append(one)
    return members


def ensemble_of(paths: list[Path], members: list[Exported], combine: str, fuse_it: bool) -> Any:
    """The members combined by `optkit.ensembles.ensemble` (`combine`), fused when `fuse_it` and
    verified against the members on ONNX Runtime; the report and the model name the checkpoints.
    Nothing is written: the caller reads `result.report.state` first."""
    from optkit.ensembles import ENSEMBLE_KEY, ensemble

    result = ensemble([m.proto for m in members], combine=combine, fuse=fuse_it)
    result.report.sources = [str(p) for p in paths]
    recorded = json.loads(result.model.metadata_props[ENSEMBLE_KEY])
    recorded["members"] = [str(p) for p in paths]
    result.model.metadata_props[ENSEMBLE_KEY] = json.dumps(recorded)
    return result


@dataclass(frozen=True)
class EnsembleScores:
    """An ensemble measured on its first member's test split: its accuracy, each member's, and a
    note for each member recorded with another data set or split."""

    accuracy: float
    members: list[float]
    notes: list[str]

    @property
    def mean_member(self) -> float:
        return float(np.mean(self.members))


def measure_ensemble(
    paths: list[Path], members: list[Exported], result: Any, combine: str
) -> EnsembleScores:
    """The ensemble `result` and its members on the first member's test split (ONNX Runtime)."""
    test = members[0]
    notes = [
        f"note: {path} records another data set or split than {paths[0]}; measured on "
        f"{paths[0]}'s test split, which may hold examples {path} trained on"
        for path, member in zip(paths[1:], members[1:], strict=True)
        if member.saved.data != test.saved.data
    ]
    scores = onnx_scores(result.to_proto(), test.feed)
    picked = scores if combine == "vote" else np.argmax(scores, 1)
    ensemble_accuracy = float(np.mean(picked.reshape(-1) == test.test_set.y))
    singles = [accuracy(m.proto, test.feed, test.test_set.y) for m in members]
    return EnsembleScores(ensemble_accuracy, singles, notes)
