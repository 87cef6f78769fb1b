"""The guarantees the README lists: nothing lost when a process is killed mid-write, byte-identical
output run after run, thread safety of the Python API, and models over 2 GB with memory bounded by a
small multiple of their size."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

import optkit
from optkit.models import CANONICALIZE_ZOO, ZOO, randomize_batchnorm
from optkit.torch import export_onnx

HERE = Path(__file__).parent


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def big_gemm_model(path: Path, features: int = 6000) -> None:
    """Gemm -> BatchNormalization with a ~140 MB weight: long enough to write that a kill lands
    in the middle of it."""
    rng = np.random.default_rng(0)
    inits = {
        "w": rng.standard_normal((features, features), dtype=np.float32),
        "c": np.zeros(features, np.float32),
        "s": np.ones(features, np.float32),
        "b": np.zeros(features, np.float32),
        "m": np.zeros(features, np.float32),
        "v": np.ones(features, np.float32),
    }
    nodes = [
        helper.make_node("Gemm", ["x", "w", "c"], ["g"]),
        helper.make_node("BatchNormalization", ["g", "s", "b", "m", "v"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "big",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, features])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, features])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, path)


@pytest.mark.slow
def test_a_process_killed_mid_write_leaves_the_input_and_no_partial_output(tmp_path):
    source = tmp_path / "big.onnx"
    big_gemm_model(source)
    before = digest(source)
    target = tmp_path / "big.out.onnx"
    killed_mid_write = 0
    for _ in range(3):
        process = subprocess.Popen(
            [sys.executable, "-m", "optkit", "fuse", str(source), "-o", str(target)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        partial = None
        while process.poll() is None:  # kill the moment the temporary output file appears
            temps = list(tmp_path.glob(".big.out.onnx.*.tmp"))
            if temps:
                process.send_signal(signal.SIGKILL)
                process.wait()
                partial = temps[0]
                break
            time.sleep(0.001)
        assert digest(source) == before
        if partial is not None:
            killed_mid_write += 1
            assert not target.exists(), "a killed write left a file under the output's name"
            partial.unlink(missing_ok=True)
        else:  # it finished before the kill: the output must then be whole
            onnx.checker.check_model(str(target))
            target.unlink()
    assert killed_mid_write >= 2  # the test did test something
    assert set(tmp_path.iterdir()) == {source}  # besides the hidden temp files removed above


def test_the_same_input_gives_a_byte_identical_output_run_after_run(tmp_path):
    torch.manual_seed(0)
    models = {
        "resnet": export_onnx(randomize_batchnorm(ZOO["resnet"][0]()), torch.randn(2, 3, 32, 32)),
        "encoder": export_onnx(CANONICALIZE_ZOO["encoder"][0](), torch.randn(2, 6, 32), opset=17),
    }
    for name, proto in models.items():
        source = tmp_path / f"{name}.onnx"
        onnx.save(proto, source)
        outputs = []
        for run, hash_seed in enumerate(("1", "2", "3")):  # fresh processes, different set orders
            target = tmp_path / f"{name}.{run}.onnx"
            env = dict(os.environ, PYTHONHASHSEED=hash_seed)
            args = [sys.executable, "-m", "optkit", "fuse", str(source), "-o", str(target)]
            if name == "encoder":
                args += ["--upgrade-opset", "20"]
            subprocess.run(args, check=True, env=env, stdout=subprocess.DEVNULL)
            outputs.append(target.read_bytes())
        assert outputs[0] == outputs[1] == outputs[2], name


def test_external_data_output_is_reproducible_and_sharded_on_request(tmp_path):
    source = tmp_path / "m.onnx"
    torch.manual_seed(0)
    proto = export_onnx(randomize_batchnorm(ZOO["vgg"][0]()), torch.randn(2, 3, 32, 32))
    onnx.save(proto, source, save_as_external_data=True, location="m.onnx.data")
    first, second = tmp_path / "a" / "m.onnx", tmp_path / "b" / "m.onnx"
    for target in (first, second):
        target.parent.mkdir()
        optkit.fuse(source).save(target, shard_size=64 * 1024)
    names = sorted(p.name for p in first.parent.iterdir())
    assert len(names) > 3 and all(n.startswith("m") for n in names)  # model + several shards
    for name in names:
        assert (first.parent / name).read_bytes() == (second.parent / name).read_bytes()
    values = optkit.load(first).graph.initializers.values()
    largest = max(v.const_value.nbytes for v in values if v.const_value is not None)
    limit = max(64 * 1024, largest)  # a tensor larger than a shard gets a shard of its own
    assert all((first.parent / n).stat().st_size <= limit for n in names if "-of-" in n)
    verdict = optkit.verify(str(source), str(first))
    assert verdict.ok
    beside = tmp_path / "m.optkit.onnx"  # next to the input, whose data it may still read
    optkit.fuse(source).save(beside, shard_size=64 * 1024)
    assert optkit.verify(str(source), str(beside)).ok


def test_the_python_api_is_safe_from_several_threads(tmp_path):
    torch.manual_seed(0)
    sources = []
    for name in ("resnet", "vgg", "mlp", "depthwise", "decoder", "input-norm"):
        factory, shape = ZOO[name]
        path = tmp_path / f"{name}.onnx"
        onnx.save(export_onnx(randomize_batchnorm(factory()), torch.randn(*shape)), path)
        sources.append(path)

    def work(path: Path) -> tuple[bytes, bool, bool]:
        result = optkit.fuse(path)
        verdict = optkit.verify(str(path), result.model)
        return result.to_proto().SerializeToString(), result.report.ok, verdict.ok

    sequential = [work(path) for path in sources]
    with ThreadPoolExecutor(max_workers=6) as pool:
        concurrent = list(pool.map(work, sources * 2))
    assert concurrent == sequential * 2
    assert all(ok and verified for _, ok, verified in sequential)


PEAK_MULTIPLE = 2.5  # peak RSS of fuse + verify over the weights' size (README, "Guarantees")


@pytest.mark.slow
def test_a_model_over_2_gb_fuses_and_verifies_with_bounded_memory(tmp_path):
    script = HERE / "huge_model.py"
    subprocess.run(
        [sys.executable, script, "make", tmp_path], check=True, stdout=subprocess.DEVNULL
    )
    data = tmp_path / "huge.onnx.data"
    assert data.stat().st_size > 2**31
    run = subprocess.run(
        [sys.executable, script, "fuse", tmp_path, "--shard-mib", "1024"],
        check=True,
        capture_output=True,
        text=True,
    )
    report = json.loads(run.stdout.strip().splitlines()[-1])
    try:
        assert report["ok"] and report["fuse_verified"] and report["batchnorm_after"] == 0
        assert report["peak_multiple"] <= PEAK_MULTIPLE, report
        shards = [name for name in report["outputs"] if "-of-" in name]
        assert len(shards) >= 3, report  # 2.25 GiB of weights in shards of at most 1 GiB
    finally:
        for path in tmp_path.iterdir():
            path.unlink()
