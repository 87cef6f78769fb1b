"""A differential fuzzer aimed at the rules: small graphs built from the patterns the passes match,
each placed just beside what a rule expects, fused, and compared with the original on ONNX Runtime
directly (never through optkit's verification) at two input sizes and with special values.

A case is made from one integer (`build_case(number)`), so every finding replays by its number.
The generator draws, for an input of rank 2 to 5 with static or dynamic dims:

- layers: Conv (1-D to 3-D, pads, strides, groups, bias or none), ConvTranspose, Gemm (transB),
  MatMul (2-D or batched), each with a BatchNormalization before or after it;
- per-channel Mul / Add / Sub / Div by constants of every broadcast shape (scalar, (C,), (C, 1, ..),
  (1, C, 1, ..), a whole image, a trailing axis), now and then holding 0, inf, NaN or 1e30;
- Gather on a random axis with a permutation (negative indices too) or a subset;
- decomposed activations (Relu / LeakyRelu as Max, Where and Clip, HardSigmoid) with near-miss
  constants, and a decomposed LayerNorm over the last axis with scales of several shapes;
- declarations that disagree with what the graph computes (the input made dynamic after shape
  inference, so intermediates keep stale static shapes), and a final layer moved into an If branch
  that reads the outer graph; fp16 models.

The property (`check_case`): `fuse` either succeeds or raises optkit's own error for bad input
(`InternalError` is a failure); when it says the model verified, the result runs on ORT and gives the
original's outputs (NaN where the original has NaN, a finite value where it is finite, within the
tolerance of the exactness it declares, per channel) at the default size and at a second size, on
random inputs and on inputs with special values. Used by tests/test_rule_fuzz.py (a bounded run in
CI) and tools/rule_fuzz.py (long runs).
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

import optkit
from helpers import channel_errors
from optkit.core.contract import Exactness, tolerance_for
from optkit.errors import InternalError, OptkitError

F32, F16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
SPECIAL_CONSTANTS = (0.0, np.inf, -np.inf, np.nan, 1e30)


class Builder:
    """Appends nodes and initializers; `x` is the current value and `shape` its (real) shape."""

    def __init__(self, rnd: random.Random, shape: list[int]) -> None:
        self.rnd = rnd
        self.np = np.random.default_rng(rnd.randrange(2**32))
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, np.ndarray] = {}
        self.x, self.shape = "x", list(shape)
        self.count = 0
        self.ranks = {"x": len(shape)}  # value name -> rank, for If branch outputs

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}_{self.count}"

    def const(self, base: str, array: np.ndarray) -> str:
        name = self.name(base)
        self.inits[name] = array
        return name

    def node(self, op: str, inputs: list[str], shape: list[int], **attrs) -> None:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name(f"{op}_"), **attrs))
        self.x, self.shape = out, shape
        self.ranks[out] = len(shape)

    def weights(self, *shape: int) -> np.ndarray:
        return self.np.standard_normal(shape).astype(np.float32) * 0.5


def _bn(b: Builder) -> None:
    channels = b.shape[1]
    params = [
        b.const("gamma", b.np.uniform(0.5, 1.5, channels).astype(np.float32)),
        b.const("beta", b.np.uniform(-0.5, 0.5, channels).astype(np.float32)),
        b.const("mean", b.np.uniform(-1, 1, channels).astype(np.float32)),
        b.const("var", b.np.uniform(0.5, 2, channels).astype(np.float32)),
    ]
    b.node("BatchNormalization", [b.x, *params], b.shape)


def _conv(b: Builder) -> None:
    rank = len(b.shape)
    spatial = b.shape[2:]
    c_in = b.shape[1]
    groups = b.rnd.choice([g for g in (1, 2, c_in) if c_in % g == 0])
    c_out = groups * b.rnd.choice([1, 2])
    kernel = [b.rnd.choice([1, 2, 3]) for _ in spatial]
    pads = [b.rnd.choice([0, 0, 1]) for _ in spatial] * 2
    strides = [b.rnd.choice([1, 1, 2]) for _ in spatial]
    out = [
        (s + pads[i] + pads[i + len(spatial)] - kernel[i]) // strides[i] + 1
        for i, s in enumerate(spatial)
    ]
    if rank < 3 or min(out) < 1:
        return
    inputs = [b.x, b.const("W", b.weights(c_out, c_in // groups, *kernel))]
    if b.rnd.random() < 0.5:
        inputs.append(b.const("bias", b.weights(c_out)))
    b.node("Conv", inputs, [b.shape[0], c_out, *out], kernel_shape=kernel, pads=pads,
           strides=strides, group=groups)  # fmt: skip


def _conv_transpose(b: Builder) -> None:
    if len(b.shape) < 3:
        return
    c_in, c_out = b.shape[1], b.rnd.choice([2, 3])
    kernel = [2] * (len(b.shape) - 2)
    out = [(s - 1) * 1 + 2 for s in b.shape[2:]]
    weight = b.const("Wt", b.weights(c_in, c_out, *kernel))
    b.node("ConvTranspose", [b.x, weight], [b.shape[0], c_out, *out], kernel_shape=kernel)


def _gemm_or_matmul(b: Builder) -> None:
    features = b.shape[-1]
    out = b.rnd.choice([3, 4])
    if len(b.shape) == 2 and b.rnd.random() < 0.5:
        trans = b.rnd.random() < 0.5
        weight = b.weights(out, features) if trans else b.weights(features, out)
        inputs = [b.x, b.const("B", weight)]
        if b.rnd.random() < 0.5:
            inputs.append(b.const("C", b.weights(*b.rnd.choice([(out,), (1, out), ()]))))
        b.node("Gemm", inputs, [b.shape[0], out], transB=int(trans))
        return
    b.node("MatMul", [b.x, b.const("M", b.weights(features, out))], [*b.shape[:-1], out])


def _arithmetic(b: Builder) -> None:
    rank, channels = len(b.shape), b.shape[1] if len(b.shape) > 1 else b.shape[0]
    shapes = [(), (1,), (channels,) + (1,) * (rank - 2), (1, channels) + (1,) * (rank - 2),
              (b.shape[-1],), tuple(b.shape[1:])]  # fmt: skip
    shape = b.rnd.choice([s for s in shapes if len(s) <= rank])
    value = b.np.uniform(0.5, 2.0, shape).astype(np.float32)
    if b.rnd.random() < 0.2 and value.size:
        value.reshape(-1)[b.rnd.randrange(value.size)] = b.rnd.choice(SPECIAL_CONSTANTS)
    op = b.rnd.choice(["Mul", "Add", "Sub", "Div"])
    constant = b.const("c", value)
    inputs = (
        [constant, b.x] if op in ("Mul", "Add", "Sub") and b.rnd.random() < 0.3 else [b.x, constant]
    )
    b.node(op, inputs, list(np.broadcast_shapes(tuple(b.shape), shape)))


def _gather(b: Builder) -> None:
    rank = len(b.shape)
    axis = b.rnd.randrange(rank)
    size = b.shape[axis]
    order = list(range(size))
    b.rnd.shuffle(order)
    if b.rnd.random() < 0.2 and size > 1:
        order = order[:-1]  # a subset: no permutation
    if b.rnd.random() < 0.3:
        order = [i - size for i in order]
    indices = b.const("idx", np.array(order, np.int64))
    shape = list(b.shape)
    shape[axis] = len(order)
    b.node("Gather", [b.x, indices], shape, axis=axis)


def _activation(b: Builder) -> None:
    near = 1.0 + b.rnd.choice([0.0, 0.0, 1e-3])  # now and then a near-miss constant
    zero = b.const("zero", np.array(0.0 * near, np.float32))
    kind = b.rnd.choice(
        ["max", "where-greater", "where-less", "clip", "clip-inf", "leaky", "hardsigmoid"]
    )
    if kind == "max":
        b.node("Max", [b.x, zero], b.shape)
    elif kind.startswith("where"):
        test = b.name("test")
        op = "Greater" if kind == "where-greater" else "Less"
        b.nodes.append(helper.make_node(op, [b.x, zero], [test]))
        branches = [b.x, zero] if op == "Greater" else [zero, b.x]
        b.node("Where", [test, *branches], b.shape)
    elif kind.startswith("clip"):
        bounds = [zero] + (
            [b.const("inf", np.array(np.inf, np.float32))] if kind == "clip-inf" else []
        )
        b.node("Clip", [b.x, *bounds], b.shape)
    elif kind == "leaky":
        scaled = b.name("scaled")
        alpha = b.const("alpha", np.array(0.1 * near, np.float32))
        b.nodes.append(helper.make_node("Mul", [b.x, alpha], [scaled]))
        b.node("Max", [b.x, scaled], b.shape)
    else:
        scaled, shifted = b.name("hs"), b.name("hs")
        b.nodes.append(
            helper.make_node("Mul", [b.x, b.const("a", np.array(0.2, np.float32))], [scaled])
        )
        b.nodes.append(
            helper.make_node(
                "Add", [scaled, b.const("b", np.array(0.5 * near, np.float32))], [shifted]
            )
        )
        one = b.const("one", np.array(1.0, np.float32))
        b.x = shifted
        b.node("Clip", [shifted, zero, one], b.shape)


def _layer_norm(b: Builder) -> None:
    axes = b.const("axes", np.array([-1], np.int64))
    mean, centred, square, var, var_eps, std, normed = (b.name(n) for n in
                                                         ("mu", "d", "d2", "v", "ve", "sd", "n"))  # fmt: skip
    eps = b.const("eps", np.array(1e-5, np.float32))
    b.nodes += [
        helper.make_node("ReduceMean", [b.x, axes], [mean], keepdims=1),
        helper.make_node("Sub", [b.x, mean], [centred]),
        helper.make_node("Mul", [centred, centred], [square]),
        helper.make_node("ReduceMean", [square, axes], [var], keepdims=1),
        helper.make_node("Add", [var, eps], [var_eps]),
        helper.make_node("Sqrt", [var_eps], [std]),
        helper.make_node("Div", [centred, std], [normed]),
    ]
    b.x = normed
    scale_shape = b.rnd.choice(
        [(b.shape[-1],), (1, b.shape[-1]), tuple(b.shape[-2:]), (1, 1, b.shape[-1])]
    )
    gamma = b.const("gamma", b.np.uniform(0.5, 1.5, scale_shape).astype(np.float32))
    b.node("Mul", [normed, gamma], list(np.broadcast_shapes(tuple(b.shape), scale_shape)))


STEPS: dict[str, Callable[[Builder], None]] = {
    "bn": _bn,
    "conv": _conv,
    "conv_transpose": _conv_transpose,
    "linear": _gemm_or_matmul,
    "arithmetic": _arithmetic,
    "gather": _gather,
    "activation": _activation,
    "layer_norm": _layer_norm,
}


def build_case(number: int) -> tuple[onnx.ModelProto, list[int], list[int]]:
    """Case `number`: the model, the input shape it is fed first and a second shape (the same
    where every dim is static)."""
    rnd = random.Random(number)
    rank = rnd.choice([2, 3, 4, 4, 4, 5])
    channels = rnd.choice([2, 3, 4])
    spatial = [rnd.choice([3, 4, 5]) for _ in range(rank - 2)]
    shape = [rnd.choice([1, 2]), channels, *spatial]
    b = Builder(rnd, shape)
    for _ in range(rnd.randint(1, 4)):
        step = rnd.choice(list(STEPS))
        if step == "layer_norm" and len(b.shape) < 2:
            continue
        STEPS[step](b)
        if len(b.shape) > 1 and rnd.random() < 0.4 and step in ("conv", "conv_transpose", "linear"):
            _bn(b)
    dtype = F16 if rnd.random() < 0.15 else F32
    if dtype == F16:
        with np.errstate(over="ignore"):  # 1e30 constants become inf in fp16, on purpose
            b.inits = {
                k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in b.inits.items()
            }
    nodes = b.nodes
    if (
        rnd.random() < 0.15 and nodes and nodes[-1].input[0] in b.ranks
    ):  # the last node moved into an If branch (outer-scope reads)
        last = nodes.pop()
        then = helper.make_graph(
            [last],
            "then",
            [],
            [helper.make_tensor_value_info(last.output[0], dtype, [None] * len(b.shape))],
        )
        fallback = last.output[0] + "_else"
        other = helper.make_graph(
            [helper.make_node("Identity", [last.input[0]], [fallback])], "else", [],
            [helper.make_tensor_value_info(fallback, dtype, [None] * b.ranks.get(last.input[0], 0))],
        )  # fmt: skip
        nodes.append(helper.make_node("If", ["flag"], [b.x + "_if"], then_branch=then,
                                      else_branch=other))  # fmt: skip
        b.x = b.x + "_if"
    graph_inputs = [helper.make_tensor_value_info("x", dtype, shape)]
    if any(n.op_type == "If" for n in nodes):
        graph_inputs.append(helper.make_tensor_value_info("flag", onnx.TensorProto.BOOL, []))
    graph = helper.make_graph(
        nodes, "fuzz", graph_inputs, [helper.make_tensor_value_info(b.x, dtype, [None] * len(b.shape))],
        [numpy_helper.from_array(v, k) for k, v in b.inits.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = onnx.shape_inference.infer_shapes(model)
    second = list(shape)
    if rnd.random() < 0.5:  # made dynamic after inference: intermediates keep stale shapes
        dims = ["N", channels, *(f"s{i}" for i in range(rank - 2))]
        for dim, name in zip(model.graph.input[0].type.tensor_type.shape.dim, dims, strict=True):
            if isinstance(name, str):
                dim.Clear()
                dim.dim_param = name
        for dim in model.graph.output[0].type.tensor_type.shape.dim:
            dim.Clear()
        second = [3, channels, *(s + 2 for s in spatial)]
    return model, shape, second


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


SPECIAL_INPUTS = {"": (), "nan": (np.nan, 0.0, -0.0), "inf": (np.inf, -np.inf, 1e4)}


def _feeds(
    model: onnx.ModelProto, shape: list[int], rng: np.random.Generator, special: str
) -> dict:
    """Random inputs; with `special` 'nan' a NaN and zeros among them, with 'inf' +-inf and 1e4."""
    dtype = np.float16 if model.graph.input[0].type.tensor_type.elem_type == F16 else np.float32
    x = rng.standard_normal(shape).astype(dtype)
    flat = x.reshape(-1)
    for value in SPECIAL_INPUTS[special]:
        flat[rng.integers(flat.size)] = value
    feeds = {"x": x}
    if len(model.graph.input) > 1:
        feeds["flag"] = np.array(bool(rng.integers(2)))
    return feeds


def _same(want: np.ndarray, got: np.ndarray, exactness: Exactness) -> str:
    """'' when `got` matches `want` as the declared exactness allows, else what differs."""
    if want.shape != got.shape or want.dtype != got.dtype:
        return f"shape/dtype {got.shape} {got.dtype} != {want.shape} {want.dtype}"
    if not np.array_equal(np.isnan(want), np.isnan(got)):
        return "NaN positions differ"
    finite = np.isfinite(want)
    if not np.all(np.isfinite(got[finite])):
        return "non-finite where the original is finite"
    infinite = np.isinf(want) & np.isinf(got)
    if not np.array_equal(want[infinite], got[infinite]):
        return "inf signs differ"
    tolerance = tolerance_for(exactness, want.dtype.name)
    within, error = channel_errors(want, got, finite, tolerance)
    if not within:
        return f"max abs error {error:.3g} beyond {exactness.value} tolerance"
    return ""


def _unless_closer_to_float64(
    model: onnx.ModelProto, feeds: dict, want: np.ndarray, got: np.ndarray, problem: str
) -> str:
    """'' when the fused output is at least as close as the original's to the original computed in
    float64 (the rewrite kept precision the original lost: fp16 LayerNorm statistics, say)."""
    from optkit.check.reference64 import outputs64

    truth = outputs64(optkit.load(model), feeds, rounding_ops=True)  # Where(x < 0, 0, x)
    if truth is None or len(truth) != 1 or truth[0].shape != want.shape:
        return problem
    exact = truth[0].astype(np.float64)
    finite = np.isfinite(exact) & np.isfinite(want) & np.isfinite(got)
    ours = float(np.max(np.abs(got[finite] - exact[finite]), initial=0))
    theirs = float(np.max(np.abs(want[finite] - exact[finite]), initial=0))
    return (
        ""
        if ours <= theirs
        else f"{problem}; float64 reference: fused {ours:.3g} off, original {theirs:.3g}"
    )


def _unless_fp16_conditioning(
    model: onnx.ModelProto, feeds: dict, got: np.ndarray, problem: str
) -> str:
    """'' when the fused fp16 output is within twice the original's own error in true fp16
    arithmetic (onnx's reference evaluator rounds every op's output to fp16, as the standard
    says), or within two fp16 ulps at the output's largest magnitude, both measured against the
    original computed in float64 (a fold rounds at the size of its terms, which cancellation can
    leave far above the output's values). ONNX Runtime's CPU provider runs fp16
    ops it lacks kernels for in float32 islands, so the original can look more accurate there than
    its fp16 arithmetic is, and an ill-conditioned op (a LayerNorm over nearly equal values) turns
    a moved fp16 rounding into a 1% change."""
    from onnx.reference import ReferenceEvaluator

    from optkit.check.reference64 import outputs64

    truth = outputs64(optkit.load(model), feeds, rounding_ops=True)  # Where(x < 0, 0, x)
    try:
        (own,) = ReferenceEvaluator(model).run(None, feeds)
    except Exception:
        return problem
    if truth is None or len(truth) != 1 or truth[0].shape != got.shape:
        return problem
    exact = truth[0].astype(np.float64)
    finite = np.isfinite(exact) & np.isfinite(own) & np.isfinite(got)
    ours = float(np.max(np.abs(got[finite] - exact[finite]), initial=0))
    theirs = float(np.max(np.abs(np.asarray(own)[finite] - exact[finite]), initial=0))
    largest = float(np.max(np.abs(exact[finite]), initial=0))
    two_ulps = 2 * float(np.spacing(np.float16(min(largest, 65504))))  # at the output's size
    if ours <= max(2 * theirs, two_ulps):
        return ""
    return f"{problem}; fused {ours:.3g} off float64, the original in true fp16 {theirs:.3g}"


def check_case(number: int, stats: dict[str, int] | None = None) -> None:
    """The property on case `number`; AssertionError naming the case on a violation."""
    stats = stats if stats is not None else {}

    def count(key: str) -> None:
        stats[key] = stats.get(key, 0) + 1

    model, first, second = build_case(number)
    rng = np.random.default_rng(number)
    try:
        original = _session(model)
    except Exception:
        count("not runnable on ORT (skipped)")
        return
    runs, wants = [], []
    for shape in [first, second] if second != first else [first]:
        for special in SPECIAL_INPUTS:
            feeds = _feeds(model, shape, rng, special)
            try:
                wants.append(original.run(None, feeds))
            except Exception:  # not at this size (a constant that fixes a dim): the other size
                continue
            runs.append((shape, special, feeds))
    if not runs:
        count("not runnable on ORT (skipped)")
        return
    count("cases")
    try:
        given = {"x": tuple(runs[0][0])} if number % 2 else None  # half at the default sizes
        result = optkit.fuse(model, shapes=given)
    except InternalError as exc:
        raise AssertionError(f"case {number}: fuse raised an internal error: {exc}") from None
    except OptkitError:
        count("refused as bad input")
        return
    report = result.report
    if not report.ok:
        count(f"fuse refused its result ({report.state})")
        return
    modified = [p.name for p in report.pipeline.passes if p.modified]
    if modified:
        count("rewritten")
    exactness = report.pipeline.exactness()
    fused = _session(result.to_proto())
    for (shape, special, feeds), want in zip(runs, wants, strict=True):
        got = fused.run(None, feeds)
        for w, g in zip(want, got, strict=True):
            problem = _same(w, g, exactness)
            if problem and special == "inf" and exactness is not Exactness.BITWISE:
                # inf and huge inputs through a reassociated chain: where the original overflows
                # (to inf, or NaN by inf - inf) the rewrite may be finite; the other way round only
                # at the edge of the dtype's range, where rounding decides between max and inf
                edge = np.isfinite(w) & ~np.isfinite(g)
                at_edge = np.abs(w[edge].astype(np.float64)) > np.finfo(w.dtype).max / 8
                problem = "" if "non-finite" not in problem or np.all(at_edge) else problem
            if problem and special != "inf" and "tolerance" in problem:
                problem = _unless_closer_to_float64(model, feeds, w, g, problem)
            if problem and special != "inf" and w.dtype == np.float16:
                problem = _unless_fp16_conditioning(model, feeds, g, problem)
            assert not problem, (
                f"case {number}: fused output differs at input {shape}"
                f"{f' with {special} values' if special else ''}: {problem} "
                f"(declared {exactness.value}; passes {modified})"
            )
    count("compared at two sizes" if len({tuple(r[0]) for r in runs}) > 1 else "compared")
