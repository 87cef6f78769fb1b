"""Benchmark: ONNX Runtime latency of each decomposed activation / norm vs its fused op, and of a
transformer-style block before vs after `optkit fuse`, as ratios measured in one run.

    python tools/bench_activations.py [--runs 200] [--threads 1] [--levels disable,all]

Each decomposed graph is exported by torch at opset 17 (the form torch emits below the op's opset,
or the formula written out), converted to opset 24 with onnx's version converter (the baseline),
then fused by `optkit fuse`; both models run alternately (`optkit.check.bench`), at ORT's optimization
levels `disable` (what the graph itself costs) and `all` (after ORT's own fusions). Ratio: fused
median latency / decomposed median latency (below 1: the fused op is faster). Single forms are fused
with `--all-canonical` (so the forms `fuse` keeps by default show why); the models with the defaults.
"""

from __future__ import annotations

import argparse
import warnings

import torch
from torch import nn

import optkit
from optkit.check.bench import bench
from optkit.core.contract import PassOptions
from optkit.io.validation import upgraded
from optkit.models import CANONICALIZE_ZOO
from optkit.torch import export_onnx

OPSET = 24


class Formula(nn.Module):
    def __init__(self, f) -> None:
        super().__init__()
        self.f = f

    def forward(self, x):
        return self.f(x)


FLAT = (8, 4096)
FORMS = {
    "Gelu (erf)": (nn.GELU(), FLAT),
    "Gelu (tanh)": (nn.GELU(approximate="tanh"), FLAT),
    "Swish": (nn.SiLU(), FLAT),
    "HardSwish": (Formula(lambda x: x * torch.clamp(x + 3, 0, 6) / 6), FLAT),
    "Mish": (nn.Mish(), FLAT),
    "Softplus": (Formula(lambda x: torch.log(torch.exp(x) + 1)), FLAT),
    "Elu": (Formula(lambda x: torch.where(x > 0, x, torch.exp(x) - 1)), FLAT),
    "LeakyRelu": (Formula(lambda x: torch.maximum(x, 0.1 * x)), FLAT),
    "LayerNorm": (nn.LayerNorm(256), (8, 64, 256)),
    "GroupNorm": (nn.GroupNorm(8, 32), (8, 32, 16, 16)),
}


def pair(module: nn.Module, shape: tuple[int, ...], opset: int, every_form: bool) -> tuple:
    """(decomposed at OPSET, fused) for `module` exported at `opset`; `every_form` fuses also the
    forms `fuse` keeps by default because ORT runs them faster decomposed."""
    proto = export_onnx(module.eval(), torch.randn(*shape), opset=opset)
    baseline = upgraded(optkit.load(proto), OPSET, "bench")
    result = optkit.fuse(baseline, options=PassOptions(all_canonical=every_form))
    assert result.report.ok, result.report.format_text()
    return baseline, result.model


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--levels", default="disable,all")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    cases = {name: (*pair(m, shape, 14 if "Norm" in name else 17, True), shape)
             for name, (m, shape) in FORMS.items()}  # fmt: skip
    for name, (factory, shape) in CANONICALIZE_ZOO.items():
        batch_shape = (8, *shape[1:])
        cases[f"model: {name}"] = (*pair(factory(), batch_shape, 14, False), batch_shape)
    levels = args.levels.split(",")
    print(f"ORT CPU, {args.threads} thread(s), {args.runs} runs each, opset {OPSET}")
    print(f"{'form':<22} {'shape':<16} {'nodes':>9}  " + "  ".join(f"{lv:>20}" for lv in levels))
    for name, (baseline, fused, shape) in cases.items():
        cells = []
        for level in levels:
            report = bench(
                fused,
                baseline,
                batch=shape[0],
                threads=args.threads,
                optimization=level,
                runs=args.runs,
                shapes={"input": shape},
            )
            assert report.baseline is not None and report.ratio is not None
            cells.append(
                f"{report.baseline.median_ms:6.3f}->{report.model.median_ms:6.3f} "
                f"{report.ratio:5.2f}"
            )
        nodes = f"{sum(1 for _ in baseline.graph)}->{sum(1 for _ in fused.graph)}"
        dims = "x".join(map(str, shape))
        print(f"{name:<22} {dims:<16} {nodes:>9}  " + "  ".join(f"{c:>20}" for c in cells))
    print("cells: decomposed ms -> fused ms, ratio (fused / decomposed)")


if __name__ == "__main__":
    main()
