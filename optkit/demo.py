"""The bundled default model for `optkit demo`: a small CNN with BatchNorm, built in code (no torch).

    x (N,3,32,32) -> [Conv3x3 -> BN -> Relu] -> [depthwise Conv3x3 -> BN -> Relu]
      -> [Conv1x1 -> BN -> Relu] -> GlobalAveragePool -> Flatten -> Gemm -> BN -> Dropout -> Identity

Weights are seeded random, BN statistics non-trivial, so folding is visible in the numbers.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _bn_params(rng: np.random.Generator, name: str, channels: int) -> list[TensorProto]:
    return [
        numpy_helper.from_array(
            rng.uniform(0.5, 1.5, channels).astype(np.float32), f"{name}.scale"
        ),
        numpy_helper.from_array(
            rng.uniform(-0.5, 0.5, channels).astype(np.float32), f"{name}.bias"
        ),
        numpy_helper.from_array(
            rng.uniform(-1.0, 1.0, channels).astype(np.float32), f"{name}.mean"
        ),
        numpy_helper.from_array(rng.uniform(0.5, 2.0, channels).astype(np.float32), f"{name}.var"),
    ]


def demo_model(seed: int = 0, opset: int = 17) -> onnx.ModelProto:
    """The demo CNN as an `onnx.ModelProto` (dynamic batch)."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def weight(name: str, *shape: int) -> str:
        fan_in = int(np.prod(shape[1:]))
        inits.append(
            numpy_helper.from_array(
                (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32), name
            )
        )
        return name

    def conv_bn_relu(x: str, name: str, c_in: int, c_out: int, k: int, group: int = 1) -> str:
        w = weight(f"{name}.weight", c_out, c_in // group, k, k)
        nodes.append(
            helper.make_node(
                "Conv",
                [x, w],
                [f"{name}.conv"],
                name=f"{name}.conv",
                pads=[k // 2] * 4,
                group=group,
            )
        )
        inits.extend(_bn_params(rng, f"{name}.bn", c_out))
        nodes.append(
            helper.make_node(
                "BatchNormalization",
                [f"{name}.conv", *(f"{name}.bn.{p}" for p in ("scale", "bias", "mean", "var"))],
                [f"{name}.bn"],
                name=f"{name}.bn",
                epsilon=1e-5,
            )
        )
        nodes.append(
            helper.make_node("Relu", [f"{name}.bn"], [f"{name}.relu"], name=f"{name}.relu")
        )
        return f"{name}.relu"

    h = conv_bn_relu("image", "stem", 3, 16, 3)
    h = conv_bn_relu(h, "dw", 16, 16, 3, group=16)
    h = conv_bn_relu(h, "pw", 16, 32, 1)
    nodes.append(helper.make_node("GlobalAveragePool", [h], ["pool"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"))
    w = weight("fc.weight", 10, 32)
    inits.append(numpy_helper.from_array(np.zeros(10, np.float32), "fc.bias"))
    nodes.append(helper.make_node("Gemm", ["flat", w, "fc.bias"], ["fc"], name="fc", transB=1))
    inits.extend(_bn_params(rng, "head.bn", 10))
    nodes.append(
        helper.make_node(
            "BatchNormalization",
            ["fc", *(f"head.bn.{p}" for p in ("scale", "bias", "mean", "var"))],
            ["head.bn"],
            name="head.bn",
        )
    )
    nodes.append(helper.make_node("Dropout", ["head.bn"], ["drop"], name="dropout"))
    nodes.append(helper.make_node("Identity", ["drop"], ["logits"], name="identity"))
    graph = helper.make_graph(
        nodes,
        "optkit_demo_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="optkit-demo"
    )
    onnx.checker.check_model(model)
    return model
