"""`optkit fuse` on transformer encoders exported by torch keeps the patterns ONNX Runtime fuses.

ONNX Runtime (level ORT_ENABLE_ALL, CPU) fuses a scalar Div / Mul next to a MatMul into FusedMatMul
(the attention scale), Add + Erf-GELU into BiasGelu, a decomposed LayerNorm into LayerNormalization,
and, where it knows the shapes of both Add operands, a residual Add + LayerNormalization into
SkipLayerNormalization (slower than the pair on its CPU provider at one thread: a 6-layer, 384-wide
BERT encoder ran 1.10x slower fused so). The fused model must give the runtime the same graph to
fuse: after ORT optimizes both, the fused model holds exactly the fused ops the original does.

Models: `models.bert.BertEncoder` (post-norm, additive mask, scores / sqrt(d)) and
`models.transformer.Encoder` (pre-norm), exported by the TorchScript exporter at opsets 14
(LayerNorm and GELU decomposed) and 17 (LayerNormalization), with dynamic batch and tokens.
"""

from __future__ import annotations

import io
import os
import warnings
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import optkit

torch = pytest.importorskip("torch")

from models.bert import BertEncoder  # noqa: E402
from models.transformer import Encoder  # noqa: E402

# Ops ONNX Runtime's level-2 fusions make (com.microsoft and default domain) on these encoders, and
# the MatMuls they leave: their counts in the optimized graphs must match.
RUNTIME_FUSED = (
    "Attention",
    "MultiHeadAttention",
    "FusedMatMul",
    "SkipLayerNormalization",
    "LayerNormalization",
    "EmbedLayerNormalization",
    "BiasGelu",
    "FastGelu",
    "Gelu",
    "BiasSoftmax",
    "MatMul",
    "Gemm",
)


def _export(model: torch.nn.Module, args: tuple, names: list[str], opset: int) -> onnx.ModelProto:
    buffer = io.BytesIO()
    dynamic = {name: {0: "batch", 1: "tokens"} for name in [*names, "out"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            args,
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=names,
            output_names=["out"],
            dynamic_axes=dynamic,
        )
    return onnx.load_from_string(buffer.getvalue())


def bert(opset: int) -> onnx.ModelProto:
    torch.manual_seed(0)
    model = BertEncoder(vocab=100, depth=2, dim=64, heads=4, hidden=128, max_tokens=32)
    ids = torch.randint(0, 100, (2, 8))
    return _export(model, (ids, torch.ones(2, 8, dtype=torch.int64)), ["ids", "mask"], opset)


def encoder(opset: int) -> onnx.ModelProto:
    torch.manual_seed(0)
    model = Encoder(depth=2, dim=64, heads=4, hidden=128)
    return _export(model, (torch.randn(2, 8, 64),), ["x"], opset)


MODELS = {"bert": bert, "encoder": encoder}
CASES = [(name, opset) for name in MODELS for opset in (14, 17)]


@pytest.fixture(scope="module")
def fused() -> dict[tuple[str, int], tuple[onnx.ModelProto, optkit.FuseResult]]:
    """(model, opset) -> (the export, its default `fuse`), each built once."""
    out = {}
    for name, opset in CASES:
        proto = MODELS[name](opset)
        out[name, opset] = (proto, optkit.fuse(proto, verify_result=False))
    return out


def _feeds(proto: onnx.ModelProto, batch: int, tokens: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch * 100 + tokens)
    feeds: dict[str, np.ndarray] = {}
    for value in proto.graph.input:
        if value.name == "ids":
            feeds["ids"] = rng.integers(0, 100, (batch, tokens), dtype=np.int64)
        elif value.name == "mask":
            mask = np.ones((batch, tokens), np.int64)
            mask[:, tokens - 2 :] = 0  # padding, so the additive mask matters
            feeds["mask"] = mask
        else:
            feeds[value.name] = rng.standard_normal((batch, tokens, 64)).astype(np.float32)
    return feeds


def _session(
    proto: onnx.ModelProto, level: ort.GraphOptimizationLevel, saved: str = ""
) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.intra_op_num_threads = 1
    options.log_severity_level = 3  # the "optimized model may be hardware specific" warning
    if saved:
        options.optimized_model_filepath = saved
    return ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _runtime_ops(proto: onnx.ModelProto, tmp_path, tag: str) -> Counter[str]:
    """Op counts of the graph ONNX Runtime runs at ORT_ENABLE_ALL on CPU."""
    saved = os.fspath(tmp_path / f"{tag}.onnx")
    _session(proto, ort.GraphOptimizationLevel.ORT_ENABLE_ALL, saved)
    optimized = onnx.load(saved)
    return Counter(n.op_type for n in optimized.graph.node)


@pytest.mark.parametrize(("name", "opset"), CASES)
def test_runtime_fuses_the_fused_model_as_it_fuses_the_original(fused, tmp_path, name, opset):
    original, result = fused[name, opset]
    before = _runtime_ops(original, tmp_path, "original")
    after = _runtime_ops(result.to_proto(), tmp_path, "fused")
    assert before["FusedMatMul"] > 0 and before["BiasGelu"] > 0  # the runtime's patterns are there
    assert before["LayerNormalization"] > 0
    assert {op: after[op] for op in RUNTIME_FUSED} == {op: before[op] for op in RUNTIME_FUSED}


@pytest.mark.parametrize(("name", "opset"), CASES)
def test_no_intermediate_is_declared_that_the_original_left_undeclared(fused, name, opset):
    """Inferred shapes stay inside optkit: told them, ORT fuses Add + LayerNormalization into
    SkipLayerNormalization (slower at one thread), which it does not do on the original."""
    original, result = fused[name, opset]
    proto = result.to_proto()
    produced = {out for node in proto.graph.node for out in node.output}
    declared = {v.name for v in proto.graph.value_info} & produced
    assert declared <= {v.name for v in original.graph.value_info}
    assert not declared


def test_declared_intermediates_stay_declared(tmp_path):
    """An input that declares its intermediates (shape inference was run on it) keeps them."""
    original = onnx.shape_inference.infer_shapes(bert(17))
    names = {v.name for v in original.graph.value_info}
    assert names
    proto = optkit.fuse(original, verify_result=False).to_proto()
    produced = {out for node in proto.graph.node for out in node.output}
    kept = {v.name for v in proto.graph.value_info} & produced
    assert kept and kept <= names
    assert kept == names & produced  # every declared value that survived the rewrites


@pytest.mark.parametrize("opset", [14, 17])
def test_the_attention_scale_stays_next_to_its_matmul(fused, opset):
    """Softmax(Add(Div(MatMul(q, k^T), sqrt(d)), mask)): the Div that ORT folds into FusedMatMul's
    alpha keeps its place and its scalar; the affine pass declines it with a reason."""
    _, result = fused["bert", opset]
    proto = result.to_proto()
    producer = {out: node for node in proto.graph.node for out in node.output}
    constants = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    softmaxes = [n for n in proto.graph.node if n.op_type == "Softmax"]
    assert len(softmaxes) == 2
    for softmax in softmaxes:
        add = producer[softmax.input[0]]
        assert add.op_type == "Add"
        div = next(producer[i] for i in add.input if i in producer and producer[i].op_type == "Div")
        assert constants[div.input[1]].size == 1
        assert float(constants[div.input[1]]) == pytest.approx(4.0)  # sqrt(64 / 4)
        assert producer[div.input[0]].op_type == "MatMul"
        affine = next(p for p in result.report.pipeline.passes if p.name == "affine")
        site = next(s for s in affine.sites if s.node == div.name)
        assert not site.applied and "MatMul weight is not a constant" in site.reason


@pytest.mark.parametrize(("name", "opset"), CASES)
@pytest.mark.parametrize(
    "level",
    [ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL],
    ids=["disable_all", "enable_all"],
)
def test_outputs_agree(fused, name, opset, level):
    original, result = fused[name, opset]
    before, after = _session(original, level), _session(result.to_proto(), level)
    for batch, tokens in ((1, 8), (3, 13)):
        feeds = _feeds(original, batch, tokens)
        want, got = before.run(None, feeds)[0], after.run(None, feeds)[0]
        assert got.shape == want.shape == (batch, tokens, 64)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
