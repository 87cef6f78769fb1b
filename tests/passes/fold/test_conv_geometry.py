"""`optkit.passes.fold.conv_geometry.ConvGeometry` on its own: the attributes read from a Conv, the
invalid ones named, and the padding, output size, valid-position mask and constant-image convolution
checked against ONNX Runtime's Conv."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper

from helpers import F32, make_model, ort_outputs
from optkit.core.contract import Decline
from optkit.passes.fold.conv_geometry import ConvGeometry


def geometry(kernel: tuple[int, ...], **attrs: Any) -> ConvGeometry:
    return ConvGeometry.of(ir.node("Conv", [None, None], attributes=attrs), kernel)


def problem_text(g: ConvGeometry) -> str:
    """The problem's text, '' for none (`problem` returns '' or None when there is none)."""
    found = g.problem()
    return "" if found is None else str(found)


def ort_conv(image: np.ndarray, weight: np.ndarray, groups: int = 1, **attrs: Any) -> np.ndarray:
    """ONNX Runtime's Conv (no bias) of one image (C, *spatial): (C_out, *out)."""
    x = image[None].astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=groups, **attrs)
    proto = make_model([node], [("x", F32, list(x.shape))], [("y", F32, None)],
                       {"w": weight.astype(np.float32)})  # fmt: skip
    (y,) = ort_outputs(proto, {"x": x})
    return y[0].astype(np.float64)


# (kernel, spatial, attributes): square and not, strides, dilations, asymmetric pads, auto_pad
CASES = [
    ((3, 3), (7, 7), {}),
    ((3, 3), (7, 6), {"pads": [1, 1, 1, 1]}),
    ((3, 2), (8, 7), {"pads": [2, 0, 1, 1], "strides": [2, 1]}),
    ((3, 3), (9, 9), {"pads": [1, 2, 0, 1], "strides": [2, 3], "dilations": [2, 1]}),
    ((3, 3), (7, 8), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ((2, 4), (7, 8), {"auto_pad": "SAME_LOWER", "strides": [2, 3]}),
    ((2, 2), (5, 6), {"auto_pad": "SAME_UPPER"}),
    ((3, 3), (7, 9), {"auto_pad": "VALID", "strides": [1, 2], "dilations": [2, 2]}),
    ((3,), (10,), {"pads": [2, 1], "strides": [3]}),
    ((2, 2, 2), (4, 5, 3), {"pads": [1, 0, 1, 0, 1, 1]}),
]
IDS = ["plain", "pad1", "strided", "dilated", "same-upper", "same-lower", "same-even-kernel",
       "valid", "1d", "3d"]  # fmt: skip


def test_of_reads_attributes_with_their_defaults():
    g = geometry((3, 3))
    assert g == ConvGeometry((3, 3), (1, 1), (1, 1), "NOTSET", (0, 0, 0, 0))
    same = geometry((3,), auto_pad="SAME_LOWER", strides=[2], dilations=[3])
    assert same == ConvGeometry((3,), (2,), (3,), "SAME_LOWER", None)
    explicit = geometry((1, 1), pads=[1, 2, 3, 4])
    assert explicit.pads == (1, 2, 3, 4)


@pytest.mark.parametrize(
    ("attrs", "why"),
    [({}, ""),
     ({"strides": [1]}, "Conv strides (1,) / dilations (1, 1) for a rank-2 kernel"),
     ({"dilations": [1, 1, 1]}, "Conv strides (1, 1) / dilations (1, 1, 1) for a rank-2 kernel"),
     ({"pads": [1, 1]}, "Conv pads (1, 1) for a rank-2 kernel (needs 4 values)"),
     ({"strides": [0, 1]}, "Conv has a stride or dilation below 1, or a negative pad"),
     ({"dilations": [1, -1]}, "Conv has a stride or dilation below 1, or a negative pad"),
     ({"pads": [0, 0, -1, 0]}, "Conv has a stride or dilation below 1, or a negative pad")],
)  # fmt: skip
def test_problem_names_invalid_attributes(attrs, why):
    assert problem_text(geometry((3, 3), **attrs)) == why


@pytest.mark.parametrize(
    ("attrs", "padded"),
    [({}, False), ({"pads": [0, 0, 0, 0]}, False), ({"pads": [0, 0, 0, 1]}, True),
     ({"auto_pad": "VALID"}, False), ({"auto_pad": "SAME_UPPER"}, True),
     ({"auto_pad": "SAME_LOWER"}, True)],
)  # fmt: skip
def test_has_padding(attrs, padded):
    assert geometry((3, 3), **attrs).has_padding() is padded


@pytest.mark.parametrize(("kernel", "spatial", "attrs"), CASES, ids=IDS)
def test_output_size_matches_the_runtime(rng, kernel, spatial, attrs):
    g = geometry(kernel, **attrs)
    assert problem_text(g) == ""
    _, outs = g.begin_pads_and_out(spatial)
    y = ort_conv(rng.standard_normal((1, *spatial)), np.ones((1, 1, *kernel)), **attrs)
    assert list(y.shape[1:]) == outs


def test_same_padding_puts_the_odd_pad_at_the_end_or_the_start():
    upper, _ = geometry((2,), auto_pad="SAME_UPPER").begin_pads_and_out((5,))
    lower, _ = geometry((2,), auto_pad="SAME_LOWER").begin_pads_and_out((5,))
    assert (upper, lower) == ([0], [1])
    begins, outs = geometry((3, 3), pads=[2, 1, 0, 0], strides=[2, 2]).begin_pads_and_out((6, 6))
    assert (begins, outs) == ([2, 1], [3, 3])


@pytest.mark.parametrize(("kernel", "spatial", "attrs"), CASES, ids=IDS)
def test_valid_mask_marks_the_real_input_positions(kernel, spatial, attrs):
    """Convolving an image of ones with the one-hot kernel of offset k gives 1 where output
    position p reads a real input at k, 0 where it reads padding: column k of the mask."""
    g = geometry(kernel, **attrs)
    mask, outs = g.valid_mask(spatial)
    count = int(np.prod(kernel))
    one_hot = np.eye(count).reshape(count, 1, *kernel)
    y = ort_conv(np.ones((1, *spatial)), one_hot, **attrs)
    assert mask.shape == (int(np.prod(outs)), count)
    np.testing.assert_array_equal(mask, y.reshape(count, -1).T)
    assert mask.min() >= 0 and mask.max() == 1


def test_valid_mask_without_padding_is_all_ones():
    mask, outs = geometry((3, 3), strides=[2, 2]).valid_mask((7, 7))
    assert outs == [3, 3] and mask.shape == (9, 9) and np.all(mask == 1)


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize(("kernel", "spatial", "attrs"), CASES, ids=IDS)
def test_convolve_matches_the_runtime(rng, kernel, spatial, attrs, groups):
    g = geometry(kernel, **attrs)
    image = rng.standard_normal((4, *spatial))
    weight = rng.standard_normal((6, 4 // groups, *kernel))
    got, outs = g.convolve(weight, image, groups)
    want = ort_conv(image, weight, groups, **attrs)
    assert got.shape == (6, int(np.prod(outs))) and list(want.shape[1:]) == outs
    np.testing.assert_allclose(got, want.reshape(6, -1), rtol=1e-4, atol=1e-4)


# --- on a Conv node of a real model (a weighted mask check) ---------------------------------------


def conv_node(**attrs) -> ir.Node:
    proto = make_model(
        [helper.make_node("Conv", ["x", "W"], ["y"], **attrs)],
        [("x", F32, [1, 2, 5, 6])],
        [("y", F32, None)],
        {"W": np.ones((3, 2, 3, 2), np.float32)},
    )
    return next(iter(ir.from_proto(proto).graph))


def test_problem_is_none_for_a_valid_conv_and_a_decline_otherwise():
    assert ConvGeometry.of(conv_node(pads=[1, 0, 1, 1]), (3, 2)).problem() is None
    assert ConvGeometry.of(conv_node(pads=[1, 1]), (3, 2)).problem() == Decline(
        "Conv pads (1, 1) for a rank-2 kernel (needs 4 values)"
    )
    assert ConvGeometry.of(conv_node(strides=[1]), (3, 2)).problem() == Decline(
        "Conv strides (1,) / dilations (1, 1) for a rank-2 kernel"
    )
    assert ConvGeometry.of(conv_node(strides=[0, 1]), (3, 2)).problem() == Decline(
        "Conv has a stride or dilation below 1, or a negative pad"
    )


@pytest.mark.parametrize(
    "attrs",
    [
        {"pads": [1, 0, 1, 1]},
        {"pads": [2, 1, 0, 1], "strides": [2, 1], "dilations": [1, 2]},
        {"auto_pad": "SAME_UPPER"},
        {"auto_pad": "SAME_LOWER", "strides": [2, 2]},
        {"auto_pad": "VALID"},
    ],
)
def test_convolve_and_mask_match_onnx_runtime(rng, attrs):
    weight = rng.standard_normal((3, 2, 3, 2)).astype(np.float32)
    image = rng.standard_normal((2, 5, 6)).astype(np.float32)
    proto = make_model(
        [helper.make_node("Conv", ["x", "W"], ["y"], **attrs)],
        [("x", F32, [1, 2, 5, 6])],
        [("y", F32, None)],
        {"W": weight},
    )
    geometry = ConvGeometry.of(next(iter(ir.from_proto(proto).graph)), (3, 2))
    (want,) = ort_outputs(proto, {"x": image[None]})
    got, outs = geometry.convolve(weight.astype(np.float64), image.astype(np.float64), 1)
    assert list(want.shape[2:]) == outs
    np.testing.assert_allclose(got.reshape(want.shape[1:]), want[0], rtol=1e-5, atol=1e-5)
    # A constant input of ones: each output sees the kernel offsets the mask marks valid.
    mask, mask_outs = geometry.valid_mask((5, 6))
    (ones_out,) = ort_outputs(proto, {"x": np.ones((1, 2, 5, 6), np.float32)})
    per_offset = weight.reshape(3, 2, -1).sum(axis=1)  # (c_out, K)
    assert mask_outs == outs
    np.testing.assert_allclose(
        (per_offset @ mask.T).reshape(ones_out.shape[1:]), ones_out[0], rtol=1e-5, atol=1e-5
    )
    assert geometry.has_padding() == (attrs.get("auto_pad") != "VALID")
