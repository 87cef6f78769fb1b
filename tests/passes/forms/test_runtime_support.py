"""The tables of `optkit.passes.forms.runtime_support` agree with each other, with the recognizers
and with the ONNX schemas: every emitted op has an opset, CPU element types ONNX accepts for it,
and the opset limits make sense."""

from __future__ import annotations

import onnx
import onnx_ir as ir
import pytest

from optkit.passes.forms import activations, normalizations
from optkit.passes.forms.runtime_support import (
    EMITTED,
    MIN_OPSET,
    RUNTIME_MAX_OPSET,
    RUNTIME_TYPES,
    SLOWER_ON_RUNTIME,
)

# What the recognizers' matches name as their op (see the module docstrings' tables).
RECOGNIZED_OPS = {
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Softplus", "HardSigmoid", "HardSwish", "Mish",
    "Gelu", "Swish", "LayerNormalization", "GroupNormalization",
}  # fmt: skip


def test_every_op_a_recognizer_emits_is_in_the_tables():
    assert set(EMITTED) == RECOGNIZED_OPS
    assert len(EMITTED) == len(set(EMITTED))


def test_every_emitted_op_has_runtime_types_and_an_opset():
    assert set(RUNTIME_TYPES) == set(EMITTED)
    for op in EMITTED:
        assert op in MIN_OPSET, op
        assert RUNTIME_TYPES[op], op
        assert RUNTIME_TYPES[op] <= {ir.DataType.FLOAT, ir.DataType.FLOAT16}, op
    assert RUNTIME_TYPES["Celu"] == frozenset({ir.DataType.FLOAT})


def test_min_opset_is_the_union_of_the_recognizers_tables():
    assert MIN_OPSET == activations.MIN_OPSET | normalizations.MIN_OPSET
    assert not set(activations.MIN_OPSET) & set(normalizations.MIN_OPSET)
    assert MIN_OPSET["LayerNormalization"] == 17 and MIN_OPSET["GroupNormalization"] == 21


@pytest.mark.parametrize("op", EMITTED)
def test_onnx_defines_the_op_at_its_min_opset_for_its_runtime_types(op):
    schema = onnx.defs.get_schema(op, MIN_OPSET[op], "")
    assert schema.since_version <= MIN_OPSET[op]
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    x_types = allowed[schema.inputs[0].type_str]
    for dtype in RUNTIME_TYPES[op]:
        name = f"tensor({onnx.helper.tensor_dtype_to_string(int(dtype)).split('.')[-1].lower()})"
        assert name in x_types, (op, name)


@pytest.mark.parametrize("op", ["Gelu", "Swish", "Mish", "HardSwish", "Celu",
                                "LayerNormalization", "GroupNormalization"])  # fmt: skip
def test_min_opset_is_the_version_that_introduced_the_op_as_emitted(op):
    """The op's schema at MIN_OPSET starts there (GroupNormalization-18, with per-group scale and
    bias, is not the op emitted: 21 takes them per channel)."""
    assert onnx.defs.get_schema(op, MIN_OPSET[op], "").since_version == MIN_OPSET[op]
    if op != "GroupNormalization":
        with pytest.raises(onnx.defs.SchemaError):
            onnx.defs.get_schema(op, MIN_OPSET[op] - 1, "")


def test_runtime_opset_limits_leave_a_usable_range():
    for op, highest in RUNTIME_MAX_OPSET.items():
        assert op in EMITTED and MIN_OPSET[op] <= highest, op
    assert RUNTIME_MAX_OPSET == {"Swish": 24}


def test_ops_slower_on_the_runtime_are_emitted_ops():
    assert SLOWER_ON_RUNTIME <= set(EMITTED)
    assert frozenset({"Swish", "Softplus", "GroupNormalization"}) == SLOWER_ON_RUNTIME
