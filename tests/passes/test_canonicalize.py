"""The `activations` and `norms` passes: every decomposed form torch exports (and the hand-written
forms other exporters use) becomes its ONNX op, and the result matches the original on ONNX Runtime."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn

import optkit
from helpers import F32, assert_same_outputs, make_model, ort_outputs
from optkit.core.contract import PassOptions
from optkit.models import CANONICALIZE_ZOO
from optkit.passes.forms.runtime_support import RUNTIME_TYPES
from optkit.torch import export_onnx

DECOMPOSED = {"Erf", "Tanh", "Sigmoid", "Exp", "Log", "Where", "Max", "Min", "Pow", "Sqrt",
              "ReduceMean", "InstanceNormalization", "Reshape", "Clip", "HardSigmoid", "Softplus",
              "Elu", "PRelu"}  # fmt: skip


def fused_ops(result: optkit.FuseResult) -> list[str]:
    return [n.op_type for n in result.model.graph]


def export_dynamo(module: nn.Module, sample: torch.Tensor, opset: int) -> onnx.ModelProto:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module.eval(), (sample,), dynamo=True, opset_version=opset)
    return program.model_proto


def check(
    proto: onnx.ModelProto,
    sample: torch.Tensor,
    want: str,
    upgrade: int | None = None,
    allowed: tuple[str, ...] = (),
):
    """Fuse (every form, also those ORT runs faster decomposed), then: `want` is in the graph, no
    primitive of the form is left, outputs match."""
    result = optkit.fuse(proto, upgrade_opset=upgrade, options=PassOptions(all_canonical=True))
    ops = fused_ops(result)
    assert want in ops, ops
    leftover = [op for op in ops if op in DECOMPOSED and op != want and op not in allowed]
    assert not leftover, ops
    assert result.report.verdict is not None and result.report.verdict.ok
    feeds = {proto.graph.input[0].name: sample.numpy()}
    assert_same_outputs(proto, result.to_proto(), feeds, rtol=1e-5, atol=1e-6)
    return result


MODULES = {
    "Gelu": (nn.GELU(), 20),
    "Gelu:tanh": (nn.GELU(approximate="tanh"), 20),
    "Swish": (nn.SiLU(), 24),
    "HardSwish": (nn.Hardswish(), 14),
    "Elu": (nn.ELU(0.7), 6),
    "Selu": (nn.SELU(), 6),
    "Celu": (nn.CELU(0.5), 12),
    "Softplus": (nn.Softplus(), 1),
    "Mish": (nn.Mish(), 18),
    "LeakyRelu": (nn.LeakyReLU(0.1), 6),
    "PRelu": (nn.PReLU(), 6),
}


@pytest.mark.parametrize(
    "kind, opset",
    [(k, o) for k in MODULES for o in (11, 14, 17, 20) if (k, o) != ("Celu", 11)],  # no CELU at 11
)
def test_torch_activation_modules_fuse_at_the_opsets_torch_emits(kind, opset):
    module, needed = MODULES[kind]
    sample = torch.randn(3, 4, 8)
    proto = export_onnx(nn.Sequential(nn.Linear(8, 8), module), sample, opset=opset)
    op = {"Gelu:tanh": "Gelu", "PRelu": "LeakyRelu"}.get(kind, kind)
    result = check(proto, sample, op, upgrade=max(needed, opset))
    if kind == "Gelu:tanh":
        gelu = next(n for n in result.model.graph if n.op_type == "Gelu")
        assert gelu.attributes["approximate"].value == "tanh"


@pytest.mark.parametrize("kind", ["Gelu:tanh", "Softplus", "Gelu"])
def test_dynamo_exports_fuse(kind):
    module = {
        "Gelu:tanh": nn.GELU(approximate="tanh"),
        "Softplus": nn.Softplus(),
        "Gelu": nn.GELU(),
    }
    sample = torch.randn(3, 8)
    proto = export_dynamo(nn.Sequential(nn.Linear(8, 8), module[kind]), sample, 18)
    result = check(proto, sample, kind.split(":")[0], upgrade=20)
    assert result.report.opset_upgrade == (18, 20)


def test_below_the_ops_opset_the_graph_is_left_alone_and_the_decline_says_which_opset():
    sample = torch.randn(2, 8)
    proto = export_onnx(nn.Sequential(nn.Linear(8, 8), nn.GELU()), sample, opset=17)
    result = optkit.fuse(proto)
    assert "Erf" in fused_ops(result) and "Gelu" not in fused_ops(result)
    (site,) = [s for p in result.report.pipeline.passes for s in p.declined if s.rule == "Gelu"]
    assert "needs opset 20" in site.reason and "--upgrade-opset 20" in site.reason


@pytest.mark.parametrize(
    "module, shape, op, opset",
    [
        (nn.SiLU(), (3, 8), "Swish", 24),
        (nn.GroupNorm(2, 8), (2, 8, 4, 4), "GroupNormalization", 21),
    ],
)
def test_forms_ort_runs_faster_decomposed_are_kept_unless_asked(module, shape, op, opset):
    proto = export_onnx(module, torch.randn(*shape), opset=17)
    result = optkit.fuse(proto, upgrade_opset=opset)
    assert op not in fused_ops(result)
    reasons = [s.reason for p in result.report.pipeline.passes for s in p.declined]
    assert any("slower" in r and "--all-canonical" in r for r in reasons), reasons
    everything = optkit.fuse(proto, upgrade_opset=opset, options=PassOptions(all_canonical=True))
    assert op in fused_ops(everything)


def test_torchs_softplus_threshold_is_dropped_by_default():
    sample = torch.randn(3, 8)
    proto = export_dynamo(nn.Sequential(nn.Linear(8, 8), nn.Softplus()), sample, 18)
    assert fused_ops(optkit.fuse(proto)) == ["Gemm", "Softplus"]


# --- forms torch does not emit, written out as the formula -----------------------------------


class Formula(nn.Module):
    def __init__(self, f) -> None:
        super().__init__()
        self.f = f
        self.linear = nn.Linear(8, 8)

    def forward(self, x):
        return self.f(self.linear(x))


FORMULAS = {
    "elu-where": (lambda x: torch.where(x > 0, x, 0.7 * (torch.exp(x) - 1)), "Elu"),
    "elu-where-alpha-1": (lambda x: torch.where(x <= 0, torch.exp(x) - 1, x), "Elu"),
    "leaky-max": (lambda x: torch.maximum(x, 0.2 * x), "LeakyRelu"),
    "leaky-where": (lambda x: torch.where(x < 0, x * 0.3, x), "LeakyRelu"),
    "relu-clamp-inf": (lambda x: torch.clamp(x, min=0, max=float("inf")), "Relu"),
    "relu-where-less": (lambda x: torch.where(x < 0, 0.0, x), "Relu"),
    "relu-max": (lambda x: torch.maximum(x, torch.tensor(0.0)), "Relu"),
    "hardswish": (lambda x: x * torch.clamp(x + 3, 0, 6) / 6, "HardSwish"),
    "hardsigmoid": (lambda x: torch.clamp(x / 6 + 0.5, 0, 1), "HardSigmoid"),
    "hardsigmoid-div": (lambda x: torch.clamp(x + 3, 0, 6) / 6, "HardSigmoid"),
    "softplus-log": (lambda x: torch.log(torch.exp(x) + 1), "Softplus"),
    "selu": (lambda x: 1.0507 * torch.where(x > 0, x, 1.67326 * (torch.exp(x) - 1)), "Selu"),
    "celu": (
        lambda x: (
            torch.maximum(x, torch.tensor(0.0))
            + torch.minimum(torch.tensor(0.0), 0.5 * (torch.exp(x / 0.5) - 1))
        ),
        "Celu",
    ),
    "quick-gelu": (lambda x: x * torch.sigmoid(1.702 * x), "Swish"),
    "mish": (lambda x: x * torch.tanh(torch.log(1 + torch.exp(x))), "Mish"),
    "gelu-commuted": (lambda x: (torch.erf(x * 0.7071067811865476) + 1) * x * 0.5, "Gelu"),
    "gelu-tanh-pow": (
        lambda x: 0.5 * x * (1 + torch.tanh(0.7978845608028654 * (x + 0.044715 * torch.pow(x, 3)))),
        "Gelu",
    ),
}


@pytest.mark.parametrize("name", list(FORMULAS))
def test_hand_written_forms_fuse(name):
    formula, op = FORMULAS[name]
    sample = torch.randn(4, 8) * 3
    proto = export_onnx(Formula(formula), sample, opset=17)
    check(proto, sample, op, upgrade=24)


SPECIAL = np.array(
    [np.nan, np.inf, -np.inf, 0.0, -0.0, 3e38, -3e38, 100, -100, 88.8, -88.8, 1e-40, 20, 30, 1, -1],
    np.float32,
)


class Direct(nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, x):
        return self.f(x)


@pytest.mark.parametrize("name", list(FORMULAS))
def test_fused_forms_keep_nan_and_inf_where_the_original_has_them(name):
    """NaN, +-inf and values near the float range straight into the form. The fused op must give
    NaN exactly where the original does and never a non-finite value where the original is finite;
    where an intermediate of the decomposed original overflows (Exp(100), x * 6 at 3e38) the fused
    op may give the finite true value: equal in real arithmetic, which `reassociate` declares."""
    formula, _ = FORMULAS[name]
    proto = export_onnx(Direct(formula), torch.randn(4, 16), opset=17)
    result = optkit.fuse(proto, upgrade_opset=24, options=PassOptions(all_canonical=True))
    feeds = {proto.graph.input[0].name: np.tile(SPECIAL, (4, 1))}
    (want,) = ort_outputs(proto, feeds)
    (got,) = ort_outputs(result.to_proto(), feeds)
    assert np.array_equal(np.isnan(want), np.isnan(got)), (SPECIAL, want[0], got[0])
    finite = np.isfinite(want)
    assert np.all(np.isfinite(got[finite])), (SPECIAL, want[0], got[0])
    infinite = np.isinf(want) & np.isinf(got)
    assert np.array_equal(want[infinite], got[infinite])
    scale = np.maximum(np.abs(want[finite]), 1.0)
    assert np.all(np.abs(want[finite] - got[finite]) <= 1e-5 * scale), (want[0], got[0])


@pytest.mark.parametrize(
    ("formula", "words"),
    [
        (lambda x: torch.clamp(x, min=0), "maps +inf to the largest finite value"),
        (lambda x: torch.where(x > 0, x, 0.0), "gives 0 for NaN"),
        (lambda x: torch.where(x >= 0, x, 0.0), "gives 0 for NaN"),
    ],
    ids=["clip-without-max", "where-greater", "where-greater-or-equal"],
)
def test_forms_that_differ_from_relu_at_inf_or_nan_are_declined_with_the_reason(formula, words):
    proto = export_onnx(Direct(formula), torch.randn(4, 16), opset=17)
    result = optkit.fuse(proto)
    assert "Relu" not in fused_ops(result)
    reasons = [s.reason for p in result.report.pipeline.passes for s in p.declined]
    assert any(words in r for r in reasons), reasons


def test_constants_as_constant_nodes_and_commuted_operands_are_read():
    """GELU written with Constant nodes and every binary op's operands swapped; only the
    `activations` pass runs, so nothing turned the Constants into initializers first."""

    def const(name, value):
        return helper.make_node(
            "Constant", [], [name], value=numpy_helper.from_array(np.float32(value))
        )

    nodes = [
        const("r2", np.sqrt(2.0)),
        const("one", 1.0),
        const("half", 0.5),
        helper.make_node("Div", ["x", "r2"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["one", "e"], ["a"]),
        helper.make_node("Mul", ["half", "a"], ["h"]),
        helper.make_node("Mul", ["h", "x"], ["y"]),
    ]
    proto = make_model(nodes, [("x", F32, [2, 5])], [("y", F32, [2, 5])], {}, opset=20)
    result = optkit.fuse(proto, passes=["activations", "unused"])
    assert fused_ops(result) == ["Gelu"]
    feeds = {"x": np.linspace(-4, 4, 10, dtype=np.float32).reshape(2, 5)}
    assert_same_outputs(proto, result.to_proto(), feeds, rtol=1e-6, atol=1e-7)


def gelu_graph(cubic: float = 0.044715, extra_output: bool = False) -> onnx.ModelProto:
    inits = {
        "c": np.float32(cubic),
        "k": np.float32(np.sqrt(2 / np.pi)),
        "one": np.float32(1),
        "half": np.float32(0.5),
    }
    nodes = [
        helper.make_node("Mul", ["x", "x"], ["x2"]),
        helper.make_node("Mul", ["x2", "x"], ["x3"]),
        helper.make_node("Mul", ["x3", "c"], ["cx3"]),
        helper.make_node("Add", ["x", "cx3"], ["inner"]),
        helper.make_node("Mul", ["inner", "k"], ["arg"]),
        helper.make_node("Tanh", ["arg"], ["t"]),
        helper.make_node("Add", ["t", "one"], ["a"]),
        helper.make_node("Mul", ["x", "a"], ["xa"]),
        helper.make_node("Mul", ["xa", "half"], ["y"]),
    ]
    outputs = [("y", F32, [2, 5])] + ([("t", F32, [2, 5])] if extra_output else [])
    return make_model(nodes, [("x", F32, [2, 5])], outputs, inits, opset=20)


def test_a_constant_that_is_not_the_functions_is_declined_with_its_value():
    result = optkit.fuse(gelu_graph(cubic=0.0447))
    assert "Gelu" not in fused_ops(result)
    reasons = [s.reason for p in result.report.pipeline.passes for s in p.declined]
    assert any("0.0447" in r and "0.044715" in r for r in reasons), reasons
    assert "Gelu" in fused_ops(optkit.fuse(gelu_graph()))


def test_an_intermediate_read_elsewhere_blocks_the_fusion():
    result = optkit.fuse(gelu_graph(extra_output=True))
    assert "Gelu" not in fused_ops(result)
    reasons = [s.reason for p in result.report.pipeline.passes for s in p.declined]
    assert any("'t' is a graph output" in r for r in reasons), reasons


def test_float16_fuses_and_float64_stays_decomposed_where_ort_has_no_kernel():
    sample = torch.randn(3, 8)
    module = nn.Sequential(nn.Linear(8, 8), nn.GELU())
    half = export_onnx(module.half(), sample.half(), opset=17)
    assert "Erf" in [n.op_type for n in half.graph.node]
    result = optkit.fuse(half, upgrade_opset=20)
    assert "Gelu" in fused_ops(result) and "Erf" not in fused_ops(result)
    assert result.report.verdict is not None and result.report.verdict.ok
    double = export_onnx(module.double(), sample.double(), opset=17)
    result = optkit.fuse(double, upgrade_opset=20)
    assert "Gelu" not in fused_ops(result)
    reasons = [s.reason for p in result.report.pipeline.passes for s in p.declined]
    assert any("DOUBLE" in r and "no such kernel" in r for r in reasons), reasons


@pytest.mark.parametrize("op", sorted(RUNTIME_TYPES))
def test_the_runtime_type_table_holds_on_onnx_runtime(op):
    """Every (op, element type) the passes may emit runs on ONNX Runtime's CPU provider."""
    from optkit.passes.forms.runtime_support import MIN_OPSET

    for dtype in RUNTIME_TYPES[op]:
        np_type = {"FLOAT": np.float32, "FLOAT16": np.float16}[dtype.name]
        x = np.linspace(-2, 2, 24, dtype=np_type).reshape(2, 4, 3)
        inputs, inits, attrs = ["x"], [], {}
        if op in ("LayerNormalization", "GroupNormalization"):
            size = 3 if op == "LayerNormalization" else 4
            inits = [numpy_helper.from_array(np.ones(size, np_type), n) for n in ("s", "b")]
            inputs += ["s", "b"]
            attrs = {"num_groups": 2} if op == "GroupNormalization" else {}
        tensor_type = helper.np_dtype_to_tensor_dtype(np.dtype(np_type))
        graph = helper.make_graph(
            [helper.make_node(op, inputs, ["y"], **attrs)],
            "g",
            [helper.make_tensor_value_info("x", tensor_type, x.shape)],
            [helper.make_tensor_value_info("y", tensor_type, None)],
            inits,
        )
        opset = max(MIN_OPSET[op], 17)  # the opsets torch exports at; ORT mishandles fp16 at 1
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 10
        session = ort.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        assert session.run(None, {"x": x})[0].shape == x.shape


# --- normalization ------------------------------------------------------------------------------


@pytest.mark.parametrize("opset", [14, 17])
@pytest.mark.parametrize(
    "module, shape",
    [
        (nn.LayerNorm(8), (3, 5, 8)),
        (nn.LayerNorm(8, elementwise_affine=False), (3, 5, 8)),
        (nn.LayerNorm((5, 8)), (3, 5, 8)),
    ],
)
def test_layer_norm_fuses(module, shape, opset):
    for p in module.parameters():
        nn.init.uniform_(p, -1, 1)
    sample = torch.randn(*shape)
    check(export_onnx(module, sample, opset=opset), sample, "LayerNormalization", upgrade=17)


@pytest.mark.parametrize("opset", [14, 17])
@pytest.mark.parametrize(
    "module, shape",
    [
        (nn.GroupNorm(2, 8), (2, 8, 5, 5)),
        (nn.GroupNorm(4, 8, affine=False), (2, 8, 6)),
        (nn.GroupNorm(8, 8), (2, 8, 3, 3, 3)),
    ],
)
def test_group_norm_fuses(module, shape, opset):
    for p in module.parameters():
        nn.init.uniform_(p, -1, 1)
    sample = torch.randn(*shape)
    check(export_onnx(module, sample, opset=opset), sample, "GroupNormalization", upgrade=21)


def test_layer_norm_with_positive_axes_and_reciprocal():
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[2]),
        helper.make_node("Sub", ["x", "m"], ["d"]),
        helper.make_node("Mul", ["d", "d"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["v"], axes=[2]),
        helper.make_node("Add", ["eps", "v"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["s"]),
        helper.make_node("Reciprocal", ["s"], ["r"]),
        helper.make_node("Mul", ["r", "d"], ["n"]),
        helper.make_node("Mul", ["gamma", "n"], ["g"]),
        helper.make_node("Add", ["g", "beta"], ["y"]),
    ]
    rng = np.random.default_rng(0)
    inits = {
        "eps": np.float32(1e-3),
        "gamma": rng.uniform(0.5, 1.5, 6).astype(np.float32),
        "beta": rng.uniform(-1, 1, (1, 1, 6)).astype(np.float32),
    }
    proto = make_model(nodes, [("x", F32, [2, 3, 6])], [("y", F32, [2, 3, 6])], inits, opset=17)
    result = optkit.fuse(proto)
    assert fused_ops(result) == ["LayerNormalization"]
    node = next(iter(result.model.graph))
    assert node.attributes["axis"].value == 2
    assert node.attributes["epsilon"].value == pytest.approx(1e-3)
    feeds = {"x": rng.normal(size=(2, 3, 6)).astype(np.float32)}
    assert_same_outputs(proto, result.to_proto(), feeds, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(CANONICALIZE_ZOO))
def test_transformer_block_from_models_fuses_end_to_end(name):
    factory, shape = CANONICALIZE_ZOO[name]
    torch.manual_seed(0)
    sample = torch.randn(*shape)
    proto = export_onnx(factory(), sample, opset=14)
    result = check(proto, sample, "Gelu", upgrade=20, allowed=("Reshape",))  # attention's
    ops = fused_ops(result)
    assert ops.count("LayerNormalization") == 2 and ops.count("Gelu") == 1
    assert "Softmax" in ops and "MatMul" in ops
    buffer = io.BytesIO()
    onnx.save(result.to_proto(), buffer)
    assert len(buffer.getvalue()) > 0


def test_a_chain_left_decomposed_stays_whole_for_runtimes_that_fuse_it():
    """Below Gelu's and LayerNormalization's opsets the chains stay, and `affine` does not fold
    their 0.5 or their scale into the next Linear (ORT's GELU / LayerNorm fusions match them)."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.LayerNorm(16), nn.Linear(16, 4))
    for p in module[2].parameters():
        nn.init.uniform_(p, 0.5, 1.5)
    proto = export_onnx(module, torch.randn(3, 8), opset=14)
    before = sorted(n.op_type for n in proto.graph.node if n.op_type != "Constant")
    result = optkit.fuse(proto)
    after = sorted(fused_ops(result))
    for op in ("Erf", "Div", "ReduceMean", "Sqrt", "Pow"):
        assert after.count(op) == before.count(op), (op, before, after)
    assert after.count("Mul") == before.count("Mul")  # GELU's two, LayerNorm's scale
    reasons = [
        s.reason for p in result.report.pipeline.passes if p.name == "affine" for s in p.declined
    ]
    assert any("part of a decomposed Gelu" in r for r in reasons), reasons
    assert any("part of a decomposed LayerNormalization" in r for r in reasons), reasons


def test_group_norm_of_a_fully_static_export_fuses():
    """With every dim static, `constants` folds the Shape the back Reshape reads before `norms`
    runs: the form was missed, with no decline (issue 19)."""
    module = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(4, 8)).eval()
    sample = torch.randn(2, 3, 8, 8)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, sample, buffer, opset_version=18, dynamo=False)
    proto = onnx.load_from_string(buffer.getvalue())
    assert all(d.HasField("dim_value") for d in proto.graph.input[0].type.tensor_type.shape.dim)
    check(proto, sample, "GroupNormalization", upgrade=21)
