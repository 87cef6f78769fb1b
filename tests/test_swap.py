"""Activation swaps: every catalogue entry's stated bound holds on ONNX Runtime over a sweep of inputs,
lossy swaps are refused unless allowed, and `optkit swap` / `optkit activations` report what they did."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from onnx import helper
from torch import nn

import optkit
from helpers import F32, make_model, ort_outputs, run_main
from optkit.errors import InputError
from optkit.inspection import activation_usage
from optkit.swap import CATALOGUE, error_bound, parse_rule, swap
from optkit.torch import export_onnx

# float32 inputs: dense where the functions bend, then far out where unbounded errors show.
SWEEP = np.concatenate(
    [np.linspace(-30, 30, 120_001), np.array([-1e4, -1e3, -100, 100, 1e3, 1e4])]
).astype(np.float32)

NATIVE = {  # source kind -> (op, attributes) at opset 24
    "Gelu": ("Gelu", {}),
    "Gelu:tanh": ("Gelu", {"approximate": "tanh"}),
    "Swish": ("Swish", {}),
    "Sigmoid": ("Sigmoid", {}),
    "Relu": ("Relu", {}),
    "LeakyRelu": ("LeakyRelu", {"alpha": 0.1}),
}
TORCH = {  # source kind -> module torch exports at opset 17 (decomposed where ONNX has no op)
    "Gelu": nn.GELU(),
    "Gelu:tanh": nn.GELU(approximate="tanh"),
    "Swish": nn.SiLU(),
    "Sigmoid": nn.Sigmoid(),
    "Relu": nn.ReLU(),
    "LeakyRelu": nn.LeakyReLU(0.1),
}


def source_model(kind: str, opset: int) -> onnx.ModelProto:
    if opset >= 24:
        op, attrs = NATIVE[kind]
        node = helper.make_node(op, ["x"], ["y"], **attrs)
        return make_model([node], [("x", F32, [None])], [("y", F32, [None])], {}, opset=opset)
    return export_onnx(TORCH[kind], torch.zeros(4), opset=opset, dynamic_batch=True)


@pytest.mark.parametrize("opset", [17, 24])
@pytest.mark.parametrize("entry", list(CATALOGUE), ids=lambda e: f"{e[0]}={e[1]}")
def test_every_catalogue_swap_keeps_its_stated_bound_on_onnx_runtime(entry, opset):
    source, target = entry
    rule = parse_rule(f"{source}={target}")
    original = source_model(source, opset)
    model = optkit.load(original)
    (site,) = swap(model, [rule], allow_lossy=True)
    feeds = {original.graph.input[0].name: SWEEP}
    (want,) = ort_outputs(original, feeds)
    (got,) = ort_outputs(optkit.to_proto(model), feeds)
    error = np.abs(want.astype(np.float64) - got.astype(np.float64))
    if math.isinf(site.bound):
        assert site.exactness.value == "lossy"
        far = error[np.abs(SWEEP) == 1e4]
        assert far.max() > 1.0  # at |x| = 1e4 the difference has grown past any small bound
        return
    assert site.exactness.value == "approximate"
    # float32 evaluation of both sides adds a few ulps of the output on top of the real-line bound
    slack = 8 * np.finfo(np.float32).eps * np.maximum(1.0, np.abs(want.astype(np.float64)))
    worst = float(np.max(error - slack))
    assert worst <= site.bound, f"{rule.describe()}: error {worst:.3g} > bound {site.bound:.3g}"
    assert float(np.max(error)) > site.bound / 4  # the bound is tight, not a loose guess


def test_bounds_match_known_values():
    assert error_bound("Gelu", {}, "Gelu:tanh", {}) == pytest.approx(4.73e-4, rel=0.01)
    assert error_bound("Gelu", {}, "Swish", {"alpha": 1.702}) == pytest.approx(0.0203, rel=0.01)
    assert math.isinf(error_bound("Relu", {}, "LeakyRelu", {"alpha": 0.01}))
    # HardSigmoid with torch's slope 1/6 is closer to the sigmoid than ONNX's default 0.2
    sixth = error_bound("Sigmoid", {}, "HardSigmoid", {"alpha": 1 / 6, "beta": 0.5})
    assert sixth < error_bound("Sigmoid", {}, "HardSigmoid", {"alpha": 0.2, "beta": 0.5})


def test_a_lossy_swap_is_refused_without_allow_lossy_and_nothing_changes():
    model = optkit.load(source_model("Relu", 24))
    with pytest.raises(InputError, match=r"lossy.*--allow-lossy"):
        swap(model, [parse_rule("Relu=LeakyRelu:0.01")])
    assert [n.op_type for n in model.graph] == ["Relu"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("Relu", "expected SOURCE=TARGET"),
        ("Relu=Tanh", "not in the catalogue"),
        ("Relu=LeakyRelu:0.1,2", "takes 1 parameter"),
        ("Relu=LeakyRelu:abc", "is not a number"),
    ],
)
def test_bad_maps_are_clear_errors(text, message):
    with pytest.raises(InputError, match=message):
        parse_rule(text)


def test_parameters_and_defaults():
    assert parse_rule("Relu=LeakyRelu").target_attributes == {"alpha": 0.01}
    assert parse_rule("Sigmoid=HardSigmoid:0.1667").target_attributes == {
        "alpha": 0.1667,
        "beta": 0.5,
    }
    assert parse_rule("Gelu=Swish").target_attributes == {"alpha": 1.702}
    assert parse_rule("Gelu=Gelu:tanh").target == "Gelu:tanh"


# --- reporting and the command line ---------------------------------------------------------------


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 32), nn.SiLU())
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        return self.head(self.body(x))


@pytest.fixture
def net_path(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "net.onnx"
    onnx.save(export_onnx(Net(), torch.randn(2, 8), opset=17), path)
    return path


def test_activation_usage_names_kinds_and_decomposed_forms(net_path):
    usage = activation_usage(optkit.load(net_path))
    assert [(a["kind"], a["fused"], a["nodes"]) for a in usage] == [
        ("Gelu", False, 5),
        ("Swish", False, 2),
    ]


def test_activations_and_inspect_commands_report_them(monkeypatch, capsys, net_path):
    code, out, _ = run_main(monkeypatch, capsys, "activations", str(net_path))
    assert code == 0 and "Gelu" in out and "1 decomposed, 5 nodes" in out
    code, out, _ = run_main(monkeypatch, capsys, "inspect", str(net_path))
    assert code == 0 and "activations:" in out and "Swish" in out
    assert "Gelu needs opset 20" in out  # the dry run's declines, with their reasons


def test_swap_command_measures_accuracy_on_labelled_data(monkeypatch, capsys, net_path, tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(64, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", data)
    (logits,) = ort_outputs(onnx.load(net_path), {"input": data})
    np.save(tmp_path / "y.npy", np.argmax(logits, axis=1))  # labels the original gets all right
    out_path = tmp_path / "swapped.onnx"
    code, out, err = run_main(
        monkeypatch, capsys, "swap", str(net_path), "--map", "Gelu=Relu", "--map",
        "Swish=HardSwish", "--data", str(tmp_path / "x.npy"), "--labels",
        str(tmp_path / "y.npy"), "-o", str(out_path),
    )  # fmt: skip
    assert code == 0, err
    assert "Gelu -> Relu x1" in out and "Swish(alpha=1) -> HardSwish x1" in out
    assert "accuracy on 64 labelled samples: 100.00% ->" in out
    kinds = [a["kind"] for a in activation_usage(optkit.load(out_path))]
    assert kinds == ["Relu", "HardSwish"]


def test_swap_command_refusals(monkeypatch, capsys, net_path, tmp_path):
    code, _, err = run_main(monkeypatch, capsys, "swap", str(net_path), "--map", "Relu=LeakyRelu")
    assert code == 2 and "no Relu activation in the model (it has Gelu, Swish)" in err
    out_path = tmp_path / "never.onnx"
    code, _, err = run_main(
        monkeypatch, capsys, "swap", str(net_path), "--map", "Gelu=Relu",
        "--max-error", "1e-9", "-o", str(out_path),
    )  # fmt: skip
    assert code == 1 and "nothing written" in err and not out_path.exists()
    code, out, _ = run_main(monkeypatch, capsys, "swap", "--catalogue")
    assert code == 0 and all(f"{s} -> " in out for s, _ in CATALOGUE)


def test_cli_refuses_a_lossy_swap_without_the_flag(monkeypatch, capsys, tmp_path):
    path = tmp_path / "relu.onnx"
    onnx.save(source_model("Relu", 17), path)
    code, _, err = run_main(monkeypatch, capsys, "swap", str(path), "--map", "Relu=LeakyRelu")
    assert code == 2 and "lossy" in err and "--allow-lossy" in err
    assert not (tmp_path / "relu.swapped.onnx").exists()
    code, out, _ = run_main(
        monkeypatch, capsys, "swap", str(path), "--map", "Relu=LeakyRelu", "--allow-lossy"
    )
    assert code == 0 and "lossy, error unbounded" in out


@pytest.mark.parametrize(
    ("dtype", "alpha"), [(onnx.TensorProto.FLOAT16, "1e6"), (onnx.TensorProto.FLOAT, "1e39")]
)
def test_a_parameter_the_element_type_cannot_hold_is_exit_2_and_nothing_written(
    monkeypatch, capsys, tmp_path, dtype, alpha
):
    """Swish below opset 24 is built from primitives, its alpha a constant of the model's type:
    one too large for it is the user's mistake (it was exit 3: the overflow check of every new
    initializer raised inside swap), refused before anything changes."""
    graph = helper.make_graph(
        [helper.make_node("Gelu", ["x"], ["y"], name="g")], "g",
        [helper.make_tensor_value_info("x", dtype, [2, 4])],
        [helper.make_tensor_value_info("y", dtype, [2, 4])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    source, out = tmp_path / "gelu.onnx", tmp_path / "out.onnx"
    onnx.save(model, source)
    code, _, err = run_main(
        monkeypatch, capsys, "swap", str(source), "--map", f"Gelu=Swish:{alpha}", "-o", str(out)
    )
    assert code == 2, err
    assert "alpha" in err and "does not fit" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    with pytest.raises(InputError, match="does not fit"):
        swap(optkit.load(model), [parse_rule(f"Gelu=Swish:{alpha}")])


def test_a_parameter_that_rounds_to_zero_in_the_element_type_is_refused(tmp_path):
    """Swish:1e-9 on an fp16 model: the constant would be 0 (a different activation), not 1e-9."""
    graph = helper.make_graph(
        [helper.make_node("Gelu", ["x"], ["y"], name="g")], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT16, [2, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT16, [2, 4])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    with pytest.raises(InputError, match="does not fit FLOAT16"):
        swap(optkit.load(model), [parse_rule("Gelu=Swish:1e-9")], allow_lossy=True)
