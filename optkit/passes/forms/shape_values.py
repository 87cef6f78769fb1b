"""What is known, before running, about the small integer tensors that shape computations make.

Exporters compute shapes at run time: `x.view(n, g, c // g, h, w)` with `n, c, h, w = x.shape`
becomes Shape -> Gather -> (Div) -> Unsqueeze -> Concat -> Reshape, even where only `n` is dynamic.
`ShapeValues` reads such a computation without changing the graph and says, per element of each
rank-0 or rank-1 integer value, what it is:

    an int                 a constant, the same for every input (a static dim, or arithmetic on them)
    Dim(x, i)              the size of axis i of tensor x, whatever it is at run time
    None                   not known here

Rules (T a tracked value, its elements e_k; everything else is not tracked):

    Shape(x, start, end)        -> the dims of x in that range, ints where x's shape is static
    Size(x)                     -> the product, when every dim of x is static
    Gather(T, constant i)       -> e_i   (axis 0, negative i counted from the end)
    Slice(T, constants)         -> the elements the slice selects (one axis)
    Concat(T1, T2, ..., axis 0) -> the elements one after the other
    Unsqueeze / Squeeze / Reshape / Identity keeping the element count -> the same elements
    Cast(T) to int64 / uint64   -> the same elements (a dim always fits); to another integer
                                   type the ints that fit, others unknown
    Add / Sub / Mul / Div / Neg of int elements, elementwise with broadcasting of one element
                                -> the result where it fits the type (Div only for a non-negative
                                   dividend and a positive divisor, where truncating and flooring
                                   division agree)

Shapes are the ones shape inference derived from the graph inputs (`optkit.fuse` re-infers them
before any pass runs); symbolic dims are never given a size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from optkit.core.graph import (
    ConstantPolicy,
    attr_int,
    attr_ints,
    input_at,
    is_default_domain,
    opset_version,
)

MAX_ELEMENTS = 64  # shape tensors are short; longer integer tensors are data, not tracked


@dataclass(frozen=True)
class Dim:
    """The run-time size of axis `axis` of `source` (compared by the value's identity)."""

    source: ir.Value
    axis: int

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Dim) and other.source is self.source and other.axis == self.axis

    def __hash__(self) -> int:
        return hash((id(self.source), self.axis))


Element = int | Dim | None


@dataclass(frozen=True)
class Tracked:
    """A rank-0 (`scalar`) or rank-1 integer value of element type `dtype`, element by element."""

    elements: tuple[Element, ...]
    scalar: bool
    dtype: ir.DataType

    @property
    def known(self) -> bool:
        """Every element is a constant."""
        return all(isinstance(e, int) for e in self.elements)

    def array(self) -> np.ndarray:
        """The constant tensor (only when `known`)."""
        data = np.array([int(e) for e in self.elements if isinstance(e, int)], self.dtype.numpy())
        return data.reshape(()) if self.scalar else data


_INTEGER_TYPES = {
    ir.DataType.INT8, ir.DataType.INT16, ir.DataType.INT32, ir.DataType.INT64,
    ir.DataType.UINT8, ir.DataType.UINT16, ir.DataType.UINT32, ir.DataType.UINT64,
}  # fmt: skip
_DIM_TYPES = {ir.DataType.INT64, ir.DataType.UINT64}  # hold any dim's size


def _fits(number: int, dtype: ir.DataType) -> bool:
    info = np.iinfo(dtype.numpy())
    return int(info.min) <= number <= int(info.max)


class ShapeValues:
    """Tracks the integer values of one model on demand, memoized; reads the graph, never changes
    it. One instance serves one unchanged model: rewrites invalidate it."""

    def __init__(self, model: ir.Model, policy: ConstantPolicy) -> None:
        self._policy = policy
        self._opset = opset_version(model)
        self._memo: dict[int, Tracked | None] = {}

    def of(self, value: ir.Value | None) -> Tracked | None:
        """What is known about `value`, or None when it is not a tracked integer value."""
        if value is None:
            return None
        key = id(value)
        if key not in self._memo:
            self._memo[key] = None  # a cycle (invalid graph) reads as unknown
            self._memo[key] = self._compute(value)
        return self._memo[key]

    # --- the rules ------------------------------------------------------------------------------

    def _compute(self, value: ir.Value) -> Tracked | None:
        if value.const_value is not None and value.const_value.size > MAX_ELEMENTS:
            return None  # a weight (an embedding table read by Gather, say): not read at all
        array = self._policy.contents(value)
        if array is not None:
            return _from_array(array)
        node = value.producer()
        if node is None or not is_default_domain(node.domain) or len(node.outputs) != 1:
            return None
        rule = _RULES.get(node.op_type)
        result = rule(self, node) if rule is not None else None
        if result is None or len(result.elements) > MAX_ELEMENTS:
            return None
        declared = value.type.dtype if isinstance(value.type, ir.TensorType) else None
        return result if declared in (None, result.dtype) else None

    def _shape(self, node: ir.Node) -> Tracked | None:
        source = node.inputs[0] if node.inputs else None
        if source is None or source.shape is None:
            return None
        rank = len(source.shape)
        start = _clamp(attr_int(node, "start", 0), rank)
        end = _clamp(attr_int(node, "end", rank), rank)
        elements: list[Element] = []
        for axis in range(start, end):
            dim = source.shape[axis]
            elements.append(dim if isinstance(dim, int) else Dim(source, axis))
        return Tracked(tuple(elements), False, ir.DataType.INT64)

    def _size(self, node: ir.Node) -> Tracked | None:
        source = node.inputs[0] if node.inputs else None
        if source is None or source.shape is None or not source.shape.is_static():
            return None
        return Tracked(
            (int(np.prod(source.shape.numpy(), dtype=np.int64)),), True, ir.DataType.INT64
        )

    def _gather(self, node: ir.Node) -> Tracked | None:
        data = self.of(node.inputs[0]) if node.inputs else None
        indices = input_at(node, 1)
        if data is None or data.scalar or attr_int(node, "axis", 0) not in (0, -1):
            return None
        picks = self._policy.contents(indices)
        if picks is None or picks.dtype.kind not in "iu" or picks.ndim > 1:
            return None
        count = len(data.elements)
        chosen = []
        for index in picks.reshape(-1).tolist():
            if not -count <= index < count:
                return None  # out of range: the runtime's error to give
            chosen.append(data.elements[index])
        return Tracked(tuple(chosen), picks.ndim == 0, data.dtype)

    def _slice(self, node: ir.Node) -> Tracked | None:
        data = self.of(node.inputs[0]) if node.inputs else None
        if data is None or data.scalar:
            return None
        if self._opset < 10:
            starts, ends = attr_ints(node, "starts"), attr_ints(node, "ends")
            axes, steps = attr_ints(node, "axes"), [1]
        else:
            params = [self._policy.contents(v) for v in node.inputs[1:5]]
            params += [None] * (4 - len(params))
            if any(p is None for p in params[:2]) or len(node.inputs) < 3:
                return None
            starts, ends = (p.reshape(-1).tolist() for p in params[:2] if p is not None)
            axes = params[2].reshape(-1).tolist() if params[2] is not None else None
            steps = params[3].reshape(-1).tolist() if params[3] is not None else [1]
            if input_at(node, 3) is not None and params[2] is None:
                return None  # axes computed at run time
            if input_at(node, 4) is not None and params[3] is None:
                return None
        if starts is None or ends is None or len(starts) != 1 or len(ends) != 1:
            return None
        if axes not in (None, [0], [-1]) or len(steps) != 1 or steps[0] <= 0:
            return None  # a negative step clamps unlike Python's slicing (start < -len keeps 0)
        # With a positive step, ONNX Slice clamps like Python's slicing (start, end past either end).
        picked = data.elements[slice(starts[0], ends[0], steps[0])]
        return Tracked(tuple(picked), False, data.dtype)

    def _concat(self, node: ir.Node) -> Tracked | None:
        if attr_int(node, "axis", 0) not in (0, -1):
            return None
        parts = [self.of(v) for v in node.inputs]
        if not parts or any(p is None or p.scalar for p in parts):
            return None
        dtypes = {p.dtype for p in parts if p is not None}
        if len(dtypes) != 1:
            return None
        elements = tuple(e for p in parts if p is not None for e in p.elements)
        return Tracked(elements, False, dtypes.pop())

    def _same_elements(self, node: ir.Node) -> Tracked | None:
        """Identity, Unsqueeze, Squeeze, Reshape: the elements stay; only rank 0 <-> 1 changes."""
        data = self.of(node.inputs[0]) if node.inputs else None
        out = node.outputs[0]
        if data is None:
            return None
        if node.op_type == "Identity":
            return data
        if len(data.elements) != 1:
            if node.op_type == "Reshape":
                target = self._policy.contents(input_at(node, 1))
                if target is not None and target.reshape(-1).tolist() in (
                    [-1],
                    [len(data.elements)],
                ):
                    return Tracked(data.elements, False, data.dtype)
            return None
        # One element: the output's rank (from shape inference) says scalar or [1].
        if out.shape is None or len(out.shape) > 1 or (len(out.shape) == 1 and out.shape[0] != 1):
            return None
        return Tracked(data.elements, len(out.shape) == 0, data.dtype)

    def _cast(self, node: ir.Node) -> Tracked | None:
        data = self.of(node.inputs[0]) if node.inputs else None
        to = attr_int(node, "to", 0)
        if data is None or to not in {int(t) for t in _INTEGER_TYPES}:
            return None
        dtype = ir.DataType(to)
        elements: list[Element] = []
        for e in data.elements:
            if isinstance(e, int):
                elements.append(e if _fits(e, dtype) else None)
            else:
                elements.append(e if dtype in _DIM_TYPES else None)
        return Tracked(tuple(elements), data.scalar, dtype)

    def _arithmetic(self, node: ir.Node) -> Tracked | None:
        if node.op_type == "Neg":
            data = self.of(node.inputs[0]) if node.inputs else None
            if data is None:
                return None
            negated = tuple(
                -e if isinstance(e, int) and _fits(-e, data.dtype) else None for e in data.elements
            )
            return Tracked(negated, data.scalar, data.dtype)
        a, b = self._inputs(node, 2)
        if a is None or b is None or a.dtype != b.dtype:
            return None
        left, right = a.elements, b.elements
        if len(left) != len(right):  # numpy broadcasting of rank <= 1: one side has one element
            if len(left) == 1:
                left = left * len(right)
            elif len(right) == 1:
                right = right * len(left)
            else:
                return None
        combined = tuple(
            _binary(node.op_type, x, y, a.dtype) for x, y in zip(left, right, strict=True)
        )
        return Tracked(combined, a.scalar and b.scalar, a.dtype)

    def _inputs(self, node: ir.Node, count: int) -> list[Tracked | None]:
        values = list(node.inputs[:count]) + [None] * (count - len(node.inputs))
        return [self.of(v) for v in values]


def _binary(op: str, x: Element, y: Element, dtype: ir.DataType) -> Element:
    if not isinstance(x, int) or not isinstance(y, int):
        return None
    if op == "Add":
        result = x + y
    elif op == "Sub":
        result = x - y
    elif op == "Mul":
        result = x * y
    elif x >= 0 and y > 0:  # Div: truncation and flooring agree
        result = x // y
    else:
        return None
    return result if _fits(result, dtype) else None


def _from_array(array: np.ndarray) -> Tracked | None:
    if array.dtype.kind not in "iu" or array.ndim > 1 or array.size > MAX_ELEMENTS:
        return None
    elements = tuple(int(v) for v in array.reshape(-1).tolist())
    return Tracked(elements, array.ndim == 0, ir.DataType.from_numpy(array.dtype))


def _clamp(index: int, rank: int) -> int:
    """Shape's start / end: negative counts from the end, then clamped to [0, rank]."""
    return min(max(index + rank if index < 0 else index, 0), rank)


_RULES = {
    "Shape": ShapeValues._shape,
    "Size": ShapeValues._size,
    "Gather": ShapeValues._gather,
    "Slice": ShapeValues._slice,
    "Concat": ShapeValues._concat,
    "Identity": ShapeValues._same_elements,
    "Unsqueeze": ShapeValues._same_elements,
    "Squeeze": ShapeValues._same_elements,
    "Reshape": ShapeValues._same_elements,
    "Cast": ShapeValues._cast,
    "Add": ShapeValues._arithmetic,
    "Sub": ShapeValues._arithmetic,
    "Mul": ShapeValues._arithmetic,
    "Div": ShapeValues._arithmetic,
    "Neg": ShapeValues._arithmetic,
}
