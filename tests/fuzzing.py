"""Model mutation for fuzzing: seed models, byte- and structure-level mutations, and the property.

The property (`check`): on any file, `fuse`, `inspect` and `verify` either succeed or raise optkit's
own error type for bad input (`InternalError`, a bug, counts as a failure); when `fuse` succeeds,
`fuse` on its result applies nothing; and when it succeeds on a model ONNX Runtime can run, the
result runs and gives the same outputs (compared here with ORT directly, within the tolerance of the
passes that changed it).
Used by tests/test_fuzz.py (a short run in CI) and tools/fuzz.py (long runs).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

import optkit
from helpers import F32, bn_node, bn_params, channel_errors, make_model
from optkit.check.inputs import synthetic_inputs
from optkit.core.contract import Exactness, tolerance_for
from optkit.demo import demo_model
from optkit.errors import InternalError, OptkitError
from optkit.inspection import inspect_model


def _conv_bn() -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    inits = {
        "w": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
        **bn_params(rng, 4),
        "half": np.array(0.5, np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        bn_node("c", "n"),
        helper.make_node("Mul", ["n", "half"], ["h"]),
        helper.make_node("Relu", ["h"], ["y"]),
    ]
    return make_model(nodes, [("x", F32, [1, 3, 6, 6])], [("y", F32, [1, 4, 6, 6])], inits,
                      ir_version=9)  # fmt: skip


def _gelu_mlp() -> onnx.ModelProto:
    rng = np.random.default_rng(2)
    inits = {
        "w": rng.normal(size=(5, 6)).astype(np.float32),
        "r2": np.array(np.sqrt(2), np.float32),
        "one": np.array(1, np.float32),
        "half": np.array(0.5, np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["z"]),
        helper.make_node("Div", ["z", "r2"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["a"]),
        helper.make_node("Mul", ["z", "a"], ["za"]),
        helper.make_node("Mul", ["za", "half"], ["y"]),
    ]
    return make_model(nodes, [("x", F32, [2, 5])], [("y", F32, [2, 6])], inits, opset=20,
                      ir_version=10)  # fmt: skip


def _preprocessed() -> onnx.ModelProto:
    """Embedded preprocessing (channel swap, scale, mean, std) before a padded Conv and a BN."""
    rng = np.random.default_rng(3)
    inits = {
        "order": np.array([2, 0, 1], np.int64),
        "a": np.full((1, 3, 1, 1), 1 / 255, np.float32),
        "m": rng.uniform(0.3, 0.6, (1, 3, 1, 1)).astype(np.float32),
        "sd": rng.uniform(0.2, 0.3, (1, 3, 1, 1)).astype(np.float32),
        "w": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
        **bn_params(rng, 4),
    }
    nodes = [
        helper.make_node("Gather", ["x", "order"], ["g"], axis=1),
        helper.make_node("Mul", ["g", "a"], ["scaled"]),
        helper.make_node("Sub", ["scaled", "m"], ["centred"]),
        helper.make_node("Div", ["centred", "sd"], ["n"]),
        helper.make_node("Conv", ["n", "w"], ["c"], pads=[1, 1, 1, 1]),
        bn_node("c", "bn"),
        helper.make_node("Relu", ["bn"], ["y"]),
    ]
    return make_model(nodes, [("x", F32, [1, 3, 6, 6])], [("y", F32, [1, 4, 6, 6])], inits,
                      ir_version=9)  # fmt: skip


SEEDS = {
    "demo": demo_model,
    "conv_bn": _conv_bn,
    "gelu_mlp": _gelu_mlp,
    "preprocessed": _preprocessed,
}
OPS = ["Relu", "Add", "Mul", "Conv", "Gemm", "MatMul", "BatchNormalization", "Erf", "Foo", ""]


def mutate_bytes(data: bytes, rnd: random.Random) -> bytes:
    """Flip, overwrite, cut or splice bytes."""
    buffer = bytearray(data)
    for _ in range(rnd.randint(1, 6)):
        choice = rnd.random()
        position = rnd.randrange(len(buffer)) if buffer else 0
        if choice < 0.5 and buffer:
            buffer[position] ^= 1 << rnd.randrange(8)
        elif choice < 0.7 and buffer:
            buffer[position] = rnd.randrange(256)
        elif choice < 0.85:
            del buffer[position : position + rnd.randint(1, 16)]
        else:
            buffer[position:position] = rnd.randbytes(rnd.randint(1, 16))
    return bytes(buffer)


def mutate_structure(model: onnx.ModelProto, rnd: random.Random) -> onnx.ModelProto:
    """One to three edits of nodes, attributes, initializers, opsets or outputs."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    names = [v for n in graph.node for v in n.output] + [i.name for i in graph.initializer]
    names += [i.name for i in graph.input]
    for _ in range(rnd.randint(1, 3)):
        kind = rnd.randrange(11)
        nodes, inits = graph.node, graph.initializer
        if kind == 0 and nodes:
            del nodes[rnd.randrange(len(nodes))]
        elif kind == 1 and nodes:
            node = nodes[rnd.randrange(len(nodes))]
            if node.input:
                pick = rnd.choice([*names, "ghost", ""])
                node.input[rnd.randrange(len(node.input))] = pick
        elif kind == 2 and nodes:
            nodes[rnd.randrange(len(nodes))].op_type = rnd.choice(OPS)
        elif kind == 3 and nodes:
            node = nodes[rnd.randrange(len(nodes))]
            if node.attribute:
                attr = node.attribute[rnd.randrange(len(node.attribute))]
                if attr.type == onnx.AttributeProto.INT:
                    attr.i = rnd.choice([-1, 0, 1, 2, 7, 2**40])
                elif attr.type == onnx.AttributeProto.FLOAT:
                    attr.f = rnd.choice([0.0, -1.0, float("nan"), float("inf"), 1e-30])
                elif attr.type == onnx.AttributeProto.INTS:
                    attr.ints[:] = [rnd.randint(-2, 4) for _ in range(rnd.randint(0, 5))]
        elif kind == 4 and inits:
            init = inits[rnd.randrange(len(inits))]
            init.dims[:] = [rnd.choice([0, 1, 2, 3, -1]) for _ in range(rnd.randint(0, 4))]
        elif kind == 5 and inits:
            inits[rnd.randrange(len(inits))].data_type = rnd.choice([1, 6, 7, 10, 11, 16, 0, 99])
        elif kind == 6 and inits:
            del inits[rnd.randrange(len(inits))]
        elif kind == 7:
            model.opset_import[0].version = rnd.randint(1, 30)
        elif kind == 8 and nodes:
            nodes.append(
                onnx.NodeProto.FromString(nodes[rnd.randrange(len(nodes))].SerializeToString())
            )
        elif kind == 9 and graph.output:
            graph.output[0].name = rnd.choice([*names, "nowhere"])
        elif kind == 10 and inits:
            init = inits[rnd.randrange(len(inits))]
            init.raw_data = rnd.randbytes(rnd.choice([0, 3, 4, 16, 64, 4 * 108]))
    return model


def check(path: Path, stats: dict[str, int] | None = None) -> str:
    """Run the property on the model file at `path`; returns what happened. Raises AssertionError
    on a violation (any exception other than optkit's, or changed outputs)."""
    stats = stats if stats is not None else {}

    def count(key: str) -> None:
        stats[key] = stats.get(key, 0) + 1

    try:
        result = optkit.fuse(path)
    except InternalError:
        raise  # optkit's own error type, but a bug: the fuzzer is here to find those
    except OptkitError:
        count("fuse refused")
        result = None
    if result is not None:
        count("fuse succeeded")
        _same_outputs(path, result, count)
        _idempotent(path, result)
    for name, call in (
        ("inspect", lambda: inspect_model(path)),
        ("verify", lambda: optkit.verify(str(path), str(path))),
    ):
        try:
            call()
            count(f"{name} succeeded")
        except InternalError:
            raise
        except OptkitError:
            count(f"{name} refused")
    return ", ".join(f"{k} {v}" for k, v in sorted(stats.items()))


def _idempotent(path: Path, result: optkit.FuseResult) -> None:
    """`fuse` on its own output applies nothing (the pipeline skips passes on that assumption)."""
    # a pass the first run rolled back (its rewrite failed the check) would apply again unchecked
    checked = bool(result.report.faulty_passes)
    again = optkit.fuse(result.to_proto(), verify_result=checked)
    applied = [
        f"{p.name}: {s.rule}" for p in again.report.pipeline.passes if p.modified for s in p.applied
    ]
    assert not applied, f"{path}: fuse on its own output applied {', '.join(applied)}"


def _same_outputs(path: Path, result: optkit.FuseResult, count) -> None:
    """When ORT runs the original, the fused model runs too and agrees with it."""
    original = optkit.load(path)
    try:
        feeds = synthetic_inputs(original, seed=0)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 4
        reference = ort.InferenceSession(str(path), options).run(None, feeds)
    except OptkitError:
        return
    except Exception:  # ORT cannot run the mutated original: nothing to compare against
        return
    count("outputs compared")
    if result.report.state == "unverified":  # its check could not run: nothing is written
        count("fuse could not verify")
        return
    if not result.report.ok:
        # fuse's own check refused the rewrite (nothing would be written). Legitimate only at the
        # edge of float range, where folding in float64 avoids an overflow the original has.
        extreme = any(
            isinstance(r, np.ndarray)
            and r.dtype.kind == "f"
            and (not np.all(np.isfinite(r)) or np.max(np.abs(r), initial=0) > 1e30)
            for r in reference
        )
        assert extreme, f"{path}: fuse reported a difference: {result.report.verdict}"
        count("fuse refused its own result (overflow edge)")
        return
    session = ort.InferenceSession(result.to_proto().SerializeToString(), options)
    got = session.run(None, feeds)
    exactness = result.report.pipeline.exactness()
    for want, have in zip(reference, got, strict=True):
        assert np.shape(want) == np.shape(have), f"{path}: output shape changed"
        if not isinstance(want, np.ndarray) or want.dtype.kind not in "fc":
            assert np.array_equal(want, have), f"{path}: outputs differ"
            continue
        tolerance = tolerance_for(exactness, want.dtype.name)
        finite = np.isfinite(want)
        if exactness is Exactness.BITWISE:
            assert np.array_equal(np.isnan(want), np.isnan(have)), f"{path}: NaNs moved"
            assert np.array_equal(want[~finite & ~np.isnan(want)], have[~finite & ~np.isnan(want)])
        # reassociate (optkit.core.contract.Exactness): the inputs are finite, so a non-finite original
        # output overflowed on the way (inf, or NaN by inf - inf), and the rewrite may give the
        # finite value there; never a non-finite one where the original is finite, except at the
        # edge of the dtype's range
        lost = finite & ~np.isfinite(have)
        edge = np.abs(want[lost].astype(np.float64)) > np.finfo(want.dtype).max / 8
        assert np.all(edge), f"{path}: non-finite where the original is finite"
        finite &= np.isfinite(have)
        if finite.any():
            within, error = channel_errors(want, have, finite, tolerance)
            assert within, f"{path}: max abs error {error:.3g}"
