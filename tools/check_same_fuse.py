"""Does `optkit fuse` write the same bytes at two commits? The check for behaviour-preserving
restructurings (issue 14).

    python tools/check_same_fuse.py OLD_COMMIT [NEW_COMMIT]      # NEW: the working tree

1. The corpus is made once, with this checkout's test helpers, into a temporary folder:
   - every model of `models/` exported (`ZOO` at fp32 with static and dynamic batch, three at
     fp16, the canonicalize zoo, ResNet-18 and MobileNetV2 at 64x64, ShuffleNetV2, BERT at opsets
     14 and 17, the transformer encoders);
   - the onnx package's light zoo models;
   - the fuzzing seeds (tests/fuzzing.py) with 30 structure and 10 byte mutations each, and the
     rule-fuzzing cases 0-199 (tests/rule_fuzzing.py).
2. Each commit's package tree (optkit/, passes/ and models/ laid out as its pyproject maps them) is
   unpacked into a folder of its own and put first on PYTHONPATH, ahead of the editable install.
3. One process per commit runs `optkit fuse MODEL -o OUT` and `optkit fuse MODEL -o OUT --no-verify`
   (the command line, in-process) on every model and records the exit codes and the SHA-256 of
   every file written.

It prints one line per model that differs and exits 1 if any does, 0 if all agree.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent

WORKER = r"""
import hashlib, json, sys, warnings
from pathlib import Path
warnings.simplefilter("ignore")
import optkit
from optkit.cli import main
corpus, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
assert str(Path(optkit.__file__).resolve()).startswith(sys.argv[3]), optkit.__file__
results = {}
for source in sorted(corpus.glob("*.onnx")):
    for mode, extra in (("verified", []), ("unverified", ["--no-verify"])):
        folder = out_dir / source.stem / mode
        folder.mkdir(parents=True)
        sys.argv = ["optkit", "fuse", str(source), "-o", str(folder / "fused.onnx"), *extra]
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}
        results[f"{source.stem} ({mode})"] = {"exit": code, "files": files}
(out_dir / "results.json").write_text(json.dumps(results))
"""


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def make_corpus(folder: Path) -> None:
    import onnx
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    import fuzzing
    import rule_fuzzing

    from optkit.models import CANONICALIZE_ZOO, ZOO, randomize_batchnorm
    from optkit.models.reference import mobilenet_v2, resnet18
    from optkit.torch import export_onnx

    bench_graph = _load(ROOT / "tools" / "bench_graph.py", "bench_graph")

    def export(name: str, model, shape, dynamic: bool, half: bool = False) -> None:
        torch.manual_seed(0)
        model = randomize_batchnorm(model).eval()
        sample = torch.randn(*shape)
        if half:
            model, sample = model.half(), sample.half()
        onnx.save(export_onnx(model, sample, dynamic_batch=dynamic), folder / f"{name}.onnx")

    for name, (factory, shape) in {**ZOO, **CANONICALIZE_ZOO}.items():
        torch.manual_seed(0)
        export(f"zoo-{name}-static", factory(), shape, False)
        torch.manual_seed(0)
        export(f"zoo-{name}-dynamic", factory(), shape, True)
    for name in ("resnet", "vgg", "depthwise"):
        torch.manual_seed(0)
        factory, shape = ZOO[name]
        export(f"zoo-{name}-fp16", factory(), shape, False, half=True)
    torch.manual_seed(0)
    export("resnet18", resnet18(num_classes=10), (1, 3, 64, 64), True)
    torch.manual_seed(0)
    export("mobilenet_v2", mobilenet_v2(num_classes=10), (1, 3, 64, 64), True)
    for name in ("shufflenet", "bert-14", "bert-17", "encoder-2", "encoder-6"):
        shutil.move(bench_graph.export_model(name, str(folder)), folder / f"graph-{name}.onnx")
    light = Path(onnx.__file__).parent / "backend/test/data/light"
    for path in sorted(light.glob("light_*.onnx")):
        shutil.copy(path, folder / path.name)
    for seed, make in sorted(fuzzing.SEEDS.items()):
        (folder / f"seed-{seed}.onnx").write_bytes(make().SerializeToString())
        for salt in range(30):
            mutated = fuzzing.mutate_structure(make(), random.Random(salt))
            (folder / f"seed-{seed}-structure-{salt}.onnx").write_bytes(mutated.SerializeToString())
        for salt in range(10):
            data = fuzzing.mutate_bytes(make().SerializeToString(), random.Random(salt))
            (folder / f"seed-{seed}-bytes-{salt}.onnx").write_bytes(data)
    for number in range(200):
        model, _, _ = rule_fuzzing.build_case(number)
        (folder / f"rule-{number:03d}.onnx").write_bytes(model.SerializeToString())


def unpack(commit: str | None, folder: Path) -> Path:
    """The package tree of `commit` (None: the working tree) as an importable folder."""
    source = folder / "source"
    source.mkdir(parents=True)
    if commit is None:
        for name in ("optkit", "passes", "models", "pyproject.toml"):
            path = ROOT / name
            if not path.exists():
                continue
            if path.is_dir():
                shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(path, source / name)
    else:
        archive = folder / "tree.tar"
        with archive.open("wb") as handle:
            subprocess.run(["git", "-C", str(ROOT), "archive", commit], stdout=handle, check=True)
        with tarfile.open(archive) as tar:
            tar.extractall(source, filter="data")
    config = tomllib.loads((source / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = config.get("package-dir", {})
    importable = folder / "importable"
    for package in sorted(config["packages"], key=len):
        target = importable / package.replace(".", "/")
        if target.exists():
            continue
        located = mapping.get(package, package.replace(".", "/"))
        shutil.copytree(source / located, target, ignore=shutil.ignore_patterns("__pycache__"))
    return importable


def fuse_all(importable: Path, corpus: Path, out: Path) -> dict:
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(importable), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", WORKER, str(corpus), str(out), str(importable.resolve())],
        env=env,
        cwd=out,  # not the checkout: `python -c` puts the working folder first on sys.path
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise SystemExit(f"the fusing process failed:\n{done.stderr[-3000:]}")
    return json.loads((out / "results.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", help="the commit before the change")
    parser.add_argument("new", nargs="?", help="the commit after it (default: the working tree)")
    parser.add_argument("--keep", type=Path, help="keep the corpus and outputs in this new folder")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="optkit-same-fuse-"))
    try:
        corpus = work / "corpus"
        corpus.mkdir()
        make_corpus(corpus)
        print(f"corpus: {len(list(corpus.glob('*.onnx')))} models", flush=True)
        results = {}
        for side, commit in (("old", args.old), ("new", args.new)):
            importable = unpack(commit, work / side)
            results[side] = fuse_all(importable, corpus, work / side / "out")
            print(f"{side} ({commit or 'working tree'}): fused {len(results[side])}", flush=True)
        count = len(results["old"])
        differ = [
            name for name in results["old"] if results["old"][name] != results["new"].get(name)
        ]
        for name in differ:
            print(f"DIFFERS {name}: old {results['old'][name]} new {results['new'].get(name)}")
        written = sum(1 for r in results["old"].values() if r["files"])
        print(
            f"{count - len(differ)}/{count} fuse runs identical "
            f"({written} wrote files, the rest refused with the same exit code)"
        )
        digest = hashlib.sha256(json.dumps(results["new"], sort_keys=True).encode()).hexdigest()
        print(f"digest of all outputs: {digest[:16]}")
        return 1 if differ else 0
    finally:
        if args.keep:
            shutil.copytree(work, args.keep)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
