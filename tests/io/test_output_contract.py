"""The output contract, swept: every writer x every forbidden output is refused before any work,
with exit 2 and one line, nothing written, every input byte-identical.

Forbidden: the input model, each of its external data files and shards, an output whose data file
would land on one of them, a data file the command reads (`--data`, `--labels`, `--spec`), a
directory, a folder that does not exist. "Before any work" is checked by making the work itself
fail the test: the function each command would call first after its checks is replaced by one
that raises.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

import optkit
from helpers import F32, bn_node, bn_params, make_model, run_main
from optkit.errors import InputError
from optkit.io.external_data import external_locations


def _proto(rng: np.random.Generator) -> onnx.ModelProto:
    """Conv -> BN -> Conv -> Relu; both weights large enough to be external data (over 1 KB)."""
    inits = {"W": rng.standard_normal((16, 3, 3, 3)).astype(np.float32), **bn_params(rng, 16),
             "W2": rng.standard_normal((16, 16, 3, 3)).astype(np.float32)}  # fmt: skip
    nodes = [onnx.helper.make_node("Conv", ["x", "W"], ["h"], name="conv"), bn_node("h", "b"),
             onnx.helper.make_node("Conv", ["b", "W2"], ["c"], name="conv2"),
             onnx.helper.make_node("Relu", ["c"], ["y"], name="relu")]  # fmt: skip
    return make_model(nodes, [("x", F32, ["N", 3, 8, 8])], [("y", F32, None)], inits)


@pytest.fixture
def workspace(tmp_path: Path, rng: np.random.Generator) -> dict[str, Path]:
    """Models with external data (one file, and shards), a data file, labels, a spec."""
    model = optkit.load(_proto(rng))
    single = tmp_path / "single.onnx"
    optkit.save(model, single, external_data="single.onnx.data")
    sharded = tmp_path / "sharded.onnx"
    optkit.save(model, sharded, shard_size=4000)
    shards = sorted(p for p in tmp_path.iterdir() if p.name.startswith("sharded-"))
    assert len(shards) >= 2, shards
    other_data = tmp_path / "other.onnx"  # its weights live in a file named like another output
    optkit.save(model, other_data, external_data="taken.onnx.data")
    data = tmp_path / "x.npz"
    np.savez(data, x=rng.standard_normal((4, 3, 8, 8)).astype(np.float32))
    images = tmp_path / "images.npy"
    np.save(images, rng.integers(0, 256, (6, 8, 8, 3)).astype(np.uint8))
    labels = tmp_path / "labels.npy"
    np.save(labels, np.zeros(4, dtype=np.int64))
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"dtype": "float32", "layout": "NCHW", "mean": [0.5, 0.5, 0.5]}))
    (tmp_path / "folder").mkdir()
    return {
        "single": single,
        "single_data": tmp_path / "single.onnx.data",
        "sharded": sharded,
        "shard": shards[0],
        "other": other_data,
        "taken": tmp_path / "taken.onnx",  # writing it would write taken.onnx.data
        "data": data,
        "images": images,
        "labels": labels,
        "spec": spec,
        "folder": tmp_path / "folder",
        "missing": tmp_path / "no" / "such" / "out.onnx",
    }


# (writer, command line with {placeholders}, the forbidden outputs it is swept against, and the
# function that would do the work)
WRITERS = {
    "fuse": (
        ["fuse", "{model}", "-o", "{out}"],
        "optkit.cli.fuse.fuse",
    ),
    "preprocess": (
        ["preprocess", "{model}", "--spec", "{spec}", "-o", "{out}"],
        "optkit.embedding.embed",
    ),
    "swap": (
        [
            "swap",
            "{model}",
            "--map",
            "Relu=LeakyRelu:0.1",
            "--allow-lossy",
            "--data",
            "{data}",
            "--labels",
            "{labels}",
            "-o",
            "{out}",
        ],
        "optkit.swap.swap",
    ),
    "ensemble": (["ensemble", "{model}", "{model}", "-o", "{out}"], "optkit.ensembles.ensemble"),
    "tta": (["tta", "{model}", "--hflip", "-o", "{out}"], "optkit.augment.tta"),
}
FORBIDDEN = {
    # name: (model to read, output)
    "the input": ("single", "single"),
    "its external data": ("single", "single_data"),
    "a shard": ("sharded", "shard"),
    "a data file landing on its data": ("other", "taken"),
    "a directory": ("single", "folder"),
    "a missing folder": ("single", "missing"),
}
DATA_FILES = {"a --spec file": ("preprocess", "spec"), "a --data file": ("swap", "data"),
              "a --labels file": ("swap", "labels")}  # fmt: skip


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _refused(monkeypatch, capsys, workspace, argv, work):
    folder = workspace["single"].parent
    before = _snapshot(folder)

    def no_work(*args, **kwargs):
        raise AssertionError("the command started its work before refusing the output")

    monkeypatch.setattr(work, no_work)
    code, out, err = run_main(monkeypatch, capsys, *argv)
    assert code == 2, (code, out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert _snapshot(folder) == before  # nothing written, every input byte-identical
    return err


@pytest.mark.parametrize("forbidden", FORBIDDEN)
@pytest.mark.parametrize("writer", WRITERS)
def test_every_writer_refuses_every_forbidden_output(monkeypatch, capsys, workspace, writer,
                                                     forbidden):  # fmt: skip
    template, work = WRITERS[writer]
    model, out = FORBIDDEN[forbidden]
    names = {**{k: str(v) for k, v in workspace.items()}, "model": str(workspace[model]),
             "out": str(workspace[out])}  # fmt: skip
    err = _refused(monkeypatch, capsys, workspace, [a.format(**names) for a in template], work)
    assert str(workspace[out].name) in err or str(workspace[out].parent) in err


@pytest.mark.parametrize("forbidden", DATA_FILES)
def test_a_writer_refuses_to_write_over_a_file_it_reads(monkeypatch, capsys, workspace, forbidden):
    writer, target = DATA_FILES[forbidden]
    template, work = WRITERS[writer]
    names = {**{k: str(v) for k, v in workspace.items()}, "model": str(workspace["single"]),
             "out": str(workspace[target])}  # fmt: skip
    err = _refused(monkeypatch, capsys, workspace, [a.format(**names) for a in template], work)
    assert "refusing to overwrite" in err


@pytest.mark.parametrize("target", ["images", "folder", "missing"])
def test_preprocess_fit_refuses_its_data_a_directory_and_a_missing_folder(
    monkeypatch, capsys, workspace, target
):
    argv = ["preprocess", "fit", "--data", str(workspace["images"]), "--layout", "NHWC",
            "--mode", "per-channel-mean", "-o", str(workspace[target])]  # fmt: skip
    _refused(monkeypatch, capsys, workspace, argv, "optkit.cli.preprocess.fit")


def test_the_python_api_refuses_the_source_without_overwrite_and_its_data_always(workspace):
    source = workspace["single"]
    before = _snapshot(source.parent)
    result = optkit.fuse(source)
    with pytest.raises(InputError, match="refusing to overwrite the input"):
        result.save(source)
    with pytest.raises(InputError, match="refusing to overwrite"):
        result.save(workspace["single_data"], overwrite=True)  # the result still reads it
    loaded = optkit.load(source)
    with pytest.raises(InputError, match="refusing to overwrite the input"):
        optkit.save(loaded, source)
    with pytest.raises(InputError, match="does not exist"):
        optkit.save(loaded, workspace["missing"])
    with pytest.raises(InputError, match=r"single\.onnx\.data would overwrite"):
        result.save(source, overwrite=True)  # its weights would go where it reads them from
    assert _snapshot(source.parent) == before


def test_overwrite_replaces_a_source_that_keeps_its_weights_inline(tmp_path, rng):
    source = tmp_path / "inline.onnx"
    onnx.save(_proto(rng), str(source))
    result = optkit.fuse(source)
    with pytest.raises(InputError, match="refusing to overwrite the input"):
        result.save(source)
    result.save(source, overwrite=True)
    assert [n.op_type for n in onnx.load(str(source)).graph.node] == ["Conv", "Conv", "Relu"]


def test_the_api_protects_the_source_and_its_data_however_it_was_given(workspace, monkeypatch):
    """Found by an adversarial pass: an IR model loaded from the path, a save after chdir, the
    input's external data or shards as the output, and an explicit external_data name all wrote
    over what the input reads."""
    single, sharded = workspace["single"], workspace["sharded"]
    before = _snapshot(single.parent)
    with pytest.raises(InputError, match="refusing to overwrite the input"):
        optkit.fuse(optkit.load(single)).save(single)
    result = optkit.fuse(str(single))
    monkeypatch.chdir(workspace["folder"])
    with pytest.raises(InputError, match="refusing to overwrite the input"):
        result.save(Path("..") / single.name)
    with pytest.raises(InputError, match="which the input reads"):
        result.save(workspace["single_data"])
    with pytest.raises(InputError, match="which the input reads"):
        optkit.fuse(str(sharded)).save(workspace["shard"])
    with pytest.raises(InputError, match="which the input reads"):
        optkit.fuse(str(workspace["other"])).save(workspace["taken"])
    with pytest.raises(InputError, match="refusing to overwrite the input"):
        optkit.save(optkit.load(single), single.parent / "x.onnx", external_data=single.name)
    assert _snapshot(single.parent) == before


def test_writing_shards_again_replaces_the_earlier_ones(workspace, monkeypatch, capsys):
    """A second `fuse --shard-size` to the same output was exit 3 (FileExistsError)."""
    out = workspace["single"].parent / "out" / "p.onnx"
    out.parent.mkdir()
    for size in ("2KB", "2KB", "64KB"):
        args = ["fuse", str(workspace["single"]), "-o", str(out), "--shard-size", size]
        code, _, err = run_main(monkeypatch, capsys, *args)
        assert code == 0, err
        named = set(external_locations(onnx.load(str(out), load_external_data=False)))
        on_disk = {p.name for p in out.parent.iterdir()} - {out.name}
        assert named == on_disk, (named, on_disk)  # no stale shard of the earlier run is left
    assert optkit.verify(workspace["single"], out, shapes={"x": (1, 3, 8, 8)}).ok


@pytest.mark.parametrize("kind", ["data-directory", "fifo"])
def test_outputs_that_are_not_regular_files_are_refused_first(workspace, monkeypatch, capsys, kind):
    """A directory where the output's data file goes was exit 3 after the work; a FIFO or device
    under the output's name was replaced."""
    out = workspace["single"].parent / "o.onnx"
    if kind == "fifo":
        os.mkfifo(out)
    else:
        (workspace["single"].parent / "o.onnx.data").mkdir()
    err = _refused(monkeypatch, capsys, workspace, ["fuse", str(workspace["single"]), "-o", str(out)],
                   "optkit.cli.fuse.fuse")  # fmt: skip
    assert "refusing to replace it" in err


def test_model_reads_lists_external_data_and_skips_the_parse_only_when_it_cannot_name_any(
    tmp_path, rng, monkeypatch
):
    """`model_reads`: the model and its data file; a file whose bytes hold no b"location" is not
    parsed (no tensor in it can name a data file); one that holds it elsewhere is parsed."""
    from optkit.io import outputs

    proto = _proto(rng)
    optkit.save(optkit.load(proto), tmp_path / "ext.onnx", external_data="ext.onnx.data")
    onnx.save(proto, tmp_path / "inline.onnx")
    proto.doc_string = "its location: here"
    onnx.save(proto, tmp_path / "says_location.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    parsed: list[str] = []
    load = onnx.load
    monkeypatch.setattr(onnx, "load", lambda f, **kw: parsed.append(Path(f).name) or load(f, **kw))
    assert outputs.model_reads(tmp_path / "ext.onnx") == [
        tmp_path / "ext.onnx", tmp_path / "ext.onnx.data"
    ]  # fmt: skip
    for name in ("inline.onnx", "says_location.onnx", "empty.onnx"):
        assert outputs.model_reads(tmp_path / name) == [tmp_path / name]
    assert parsed == ["ext.onnx", "says_location.onnx"]
