"""Geometry of ONNX Conv: padding, output size, and which input positions each output sees.

Used where a per-channel constant added to a Conv's input must be pushed through the Conv: with zero
padding, output positions near the border see fewer input positions, so the constant's contribution
differs there (the border correction).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from optkit.core.contract import Decline
from optkit.core.graph import attr_ints, attr_str


@dataclass(frozen=True)
class ConvGeometry:
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    auto_pad: str
    pads: tuple[int, ...] | None  # begin..., end...; None when auto_pad decides them

    @classmethod
    def of(cls, node: ir.Node, kernel: tuple[int, ...]) -> ConvGeometry:
        rank = len(kernel)
        pads = attr_ints(node, "pads")
        auto_pad = attr_str(node, "auto_pad", "NOTSET")
        return cls(
            kernel=kernel,
            strides=tuple(attr_ints(node, "strides") or [1] * rank),
            dilations=tuple(attr_ints(node, "dilations") or [1] * rank),
            auto_pad=auto_pad,
            pads=tuple(pads) if pads else ((0,) * 2 * rank if auto_pad == "NOTSET" else None),
        )

    def problem(self) -> Decline | None:
        """Why these attributes describe no valid Conv for this kernel rank, or None."""
        rank = len(self.kernel)
        if len(self.strides) != rank or len(self.dilations) != rank:
            return Decline(
                f"Conv strides {self.strides} / dilations {self.dilations} for a rank-{rank} kernel"
            )
        if self.pads is not None and len(self.pads) != 2 * rank:
            return Decline(
                f"Conv pads {self.pads} for a rank-{rank} kernel (needs {2 * rank} values)"
            )
        if min(self.strides + self.dilations, default=1) < 1 or min(self.pads or (0,)) < 0:
            return Decline("Conv has a stride or dilation below 1, or a negative pad")
        return None

    def has_padding(self) -> bool:
        """True unless padding is zero regardless of the input size."""
        if self.auto_pad == "VALID":
            return False
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            return True
        return any(p != 0 for p in (self.pads or ()))

    def begin_pads_and_out(self, spatial: tuple[int, ...]) -> tuple[list[int], list[int]]:
        """Padding at the start of each spatial axis and the output size, for a static input size."""
        begins, outs = [], []
        for d, size in enumerate(spatial):
            k, s, dil = self.kernel[d], self.strides[d], self.dilations[d]
            extent = (k - 1) * dil + 1
            if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
                out = math.ceil(size / s)
                total = max(0, (out - 1) * s + extent - size)
                begin = total // 2 if self.auto_pad == "SAME_UPPER" else total - total // 2
            elif self.auto_pad == "VALID":
                begin, out = 0, (size - extent) // s + 1
            else:
                pads = self.pads or (0,) * (2 * len(spatial))
                begin = pads[d]
                out = (size + pads[d] + pads[d + len(spatial)] - extent) // s + 1
            begins.append(begin)
            outs.append(out)
        return begins, outs

    def valid_mask(self, spatial: tuple[int, ...]) -> tuple[np.ndarray, list[int]]:
        """M[p, k] = 1 when output position p reads a real (not padded) input at kernel offset k.

        Returns M of shape (prod(out), prod(kernel)) and the output spatial shape.
        """
        begins, outs = self.begin_pads_and_out(spatial)
        mask = np.ones((1, 1))
        for d, size in enumerate(spatial):
            pos = np.arange(outs[d])[:, None] * self.strides[d] - begins[d]
            pos = pos + np.arange(self.kernel[d])[None, :] * self.dilations[d]
            valid = ((pos >= 0) & (pos < size)).astype(np.float64)  # (out_d, k_d)
            mask = np.einsum("pk,qj->pqkj", mask, valid).reshape(
                mask.shape[0] * valid.shape[0], mask.shape[1] * valid.shape[1]
            )
        return mask, outs

    def convolve(
        self, weight: np.ndarray, image: np.ndarray, groups: int
    ) -> tuple[np.ndarray, list[int]]:
        """Conv (no bias) of one constant image (C_in, *spatial) with zero padding, in float64.

        Returns (C_out, prod(out)) and the output spatial shape: what a per-position input shift
        (a mean image) adds to the Conv's output.
        """
        spatial = image.shape[1:]
        begins, outs = self.begin_pads_and_out(tuple(int(d) for d in spatial))
        ends = [
            max(
                0,
                (outs[d] - 1) * self.strides[d]
                + (self.kernel[d] - 1) * self.dilations[d]
                + 1
                - begins[d]
                - spatial[d],
            )
            for d in range(len(spatial))
        ]
        padded = np.pad(image, [(0, 0), *zip(begins, ends, strict=True)])
        c_out, c_in_per_group = weight.shape[:2]
        out_per_group = c_out // groups
        result = np.zeros((c_out, int(np.prod(outs))))
        for offset in np.ndindex(*self.kernel):
            index = [
                np.arange(outs[d]) * self.strides[d] + offset[d] * self.dilations[d]
                for d in range(len(spatial))
            ]
            patch = padded[(slice(None), *np.ix_(*index))].reshape(padded.shape[0], -1)
            for g in range(groups):
                rows = slice(g * out_per_group, (g + 1) * out_per_group)
                cols = slice(g * c_in_per_group, (g + 1) * c_in_per_group)
                result[rows] += weight[(rows, slice(None), *offset)] @ patch[cols]
        return result, outs
