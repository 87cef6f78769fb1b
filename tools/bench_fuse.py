"""Benchmark: optkit fuse against its peers on the same BatchNorm-heavy models, in one run.

    python tools/bench_fuse.py [--repeats 3] [--models resnet,vgg,...] [--json out.json]

Per model and tool it prints: fuse time (median of warm runs, at least --repeats of them and at
least 1 s in all, every tool's runs interleaved call by call in one fresh process), peak memory
(growth of a fresh process's peak RSS, VmHWM, over one cold run, imports done first), BatchNorm
left, nodes after, non-constant nodes after (op_type other than Constant), and the max abs error
against the truth on ONNX Runtime (optimizations off, 8 seeded inputs; for fp16 models the truth is
the fp16 weights computed in fp32, and the "(original)" row shows the fp16 original's own error
against it). Ratios compare optkit with the fastest peer *of the same run*, so machine noise hits
both alike. Needs the `torch` and `bench` extras (models are exported from `models/`; the onnx
package's light zoo models are read from its install).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable

import numpy as np
import onnx

TOOLS = ["optkit", "optkit+verify", "onnxoptimizer", "onnxsim", "onnxslim", "onnxscript"]
SAMPLES = 8  # seeded inputs the error is taken over
MIN_SECONDS = 1.0  # fast fuses repeat until this much time is measured
LIGHT_WITH_BN = ["resnet50", "inception_v2", "shufflenet", "densenet121"]


def fuser(tool: str) -> Callable[[onnx.ModelProto], onnx.ModelProto]:
    """One tool's BN-folding optimization, through its own public API, with its imports done."""
    if tool in ("optkit", "optkit+verify"):
        import optkit

        return lambda proto: optkit.fuse(proto, verify_result=tool == "optkit+verify").to_proto()
    if tool == "onnxoptimizer":
        import onnxoptimizer

        passes = onnxoptimizer.get_fuse_and_elimination_passes()
        return lambda proto: onnxoptimizer.optimize(proto, passes)
    if tool == "onnxsim":
        import onnxsim

        return lambda proto: onnxsim.simplify(proto)[0]
    if tool == "onnxslim":
        import onnxslim

        return lambda proto: onnxslim.slim(proto)
    if tool == "onnxscript":
        import onnxscript.optimizer
        import onnxscript.rewriter
        from onnxscript.rewriter.rules.common import (
            fuse_batchnorm_into_conv_rule,
            fuse_batchnorm_into_conv_transpose_rule,
            fuse_batchnorm_into_gemm_rule,
        )

        rules = [
            fuse_batchnorm_into_conv_rule,
            fuse_batchnorm_into_conv_transpose_rule,
            fuse_batchnorm_into_gemm_rule,
        ]
        return lambda proto: onnxscript.rewriter.rewrite(
            onnxscript.optimizer.optimize(proto), pattern_rewrite_rules=rules
        )
    raise ValueError(tool)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(mode: str, tools: str, model_path: str, out_prefix: str, repeats: int) -> None:
    """Run in a fresh process.

    mode "time": every tool in `tools` (comma-separated) fuses the model in turn, call by call, the
    order reversed every round, so that the machine's noise hits each tool alike; each tool's median
    over its warm calls (at least `repeats`, and at least MIN_SECONDS of them) is printed and its
    result saved as OUT_PREFIX.TOOL.onnx. mode "memory" (one tool): the growth of peak RSS over one
    cold run (imports done first)."""
    warnings.simplefilter("ignore")
    proto = onnx.load(model_path)
    if mode == "memory":
        fuse = fuser(tools)
        # getrusage's ru_maxrss carries the parent's peak across fork and exec; the kernel's
        # VmHWM, reset through clear_refs, is this process's own.
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        before = _status_kb("VmRSS")
        fuse(proto)
        print(json.dumps({"peak_mb": (_status_kb("VmHWM") - before) / 1024}))
        return

    def fresh() -> onnx.ModelProto:  # some tools change the proto they are given
        copy = onnx.ModelProto()
        copy.CopyFrom(proto)
        return copy

    fuses, results, report = {}, {}, {}
    for tool in tools.split(","):
        try:
            fuses[tool] = fuser(tool)
            results[tool] = fuses[tool](fresh())  # the cold call, not timed
        except Exception as exc:  # a peer that cannot take this model
            fuses.pop(tool, None)
            report[tool] = {"error": (str(exc).strip().splitlines() or ["?"])[0][:120]}
    times: dict[str, list[float]] = {tool: [] for tool in fuses}

    def enough(tool: str) -> bool:
        runs = times[tool]
        return len(runs) >= repeats and (sum(runs) >= MIN_SECONDS or len(runs) >= 200)

    rounds = 0
    while not all(enough(tool) for tool in times):
        order = list(times) if rounds % 2 == 0 else list(reversed(times))
        for tool in order:
            if enough(tool):
                continue
            given = fresh()
            began = time.perf_counter()
            results[tool] = fuses[tool](given)
            times[tool].append(time.perf_counter() - began)
        rounds += 1
    for tool, runs in times.items():
        onnx.save(results[tool], f"{out_prefix}.{tool}.onnx")
        report[tool] = {"seconds": statistics.median(runs)}
    print(json.dumps(report))


def export_models(folder: str, names: list[str]) -> dict[str, str]:
    import torch

    from optkit.models import ZOO, randomize_batchnorm
    from optkit.torch import export_onnx

    paths = {}
    for name in names:
        if name.startswith("light-"):
            src = os.path.join(
                os.path.dirname(onnx.__file__), "backend/test/data/light", f"light_{name[6:]}.onnx"
            )
            paths[name] = src
            continue
        half = name.endswith("-fp16")
        factory, shape = ZOO[name.removesuffix("-fp16")]
        torch.manual_seed(0)
        model = randomize_batchnorm(factory()).eval()
        sample = torch.randn(*shape)
        if half:
            model, sample = model.half(), sample.half()
        path = os.path.join(folder, f"{name}.onnx")
        onnx.save(export_onnx(model, sample, dynamic_batch=False), path)
        paths[name] = path
    return paths


def model_input(proto: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    inits = {i.name for i in proto.graph.initializer}
    feeds = {}
    rng = np.random.default_rng(seed)
    for value in proto.graph.input:
        if value.name in inits:
            continue
        shape = [d.dim_value or 1 for d in value.type.tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        feeds[value.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def run_ort(path: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"]).run(None, feeds)


def truth(path: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The original model's outputs; for fp16 models, computed in fp32 from the same fp16 weights."""
    proto = onnx.load(path)
    if proto.graph.input[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT16:
        return run_ort(path, feeds)
    for tensor in proto.graph.initializer:
        if tensor.data_type == onnx.TensorProto.FLOAT16:
            tensor.CopyFrom(
                onnx.numpy_helper.from_array(
                    onnx.numpy_helper.to_array(tensor).astype(np.float32), tensor.name
                )
            )
    for value in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        if value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16:
            value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    for node in proto.graph.node:
        for attr in node.attribute:
            if attr.name == "to" and attr.i == onnx.TensorProto.FLOAT16:
                attr.i = onnx.TensorProto.FLOAT
    with tempfile.NamedTemporaryFile(suffix=".onnx", delete=False) as handle:
        onnx.save(proto, handle.name)
    try:
        return run_ort(handle.name, {k: v.astype(np.float32) for k, v in feeds.items()})
    finally:
        os.unlink(handle.name)


def _child_run(mode: str, tools: str, path: str, out: str, repeats: int) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--child", mode, tools, path, out, str(repeats)],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1][:120]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(tools: list[str], name: str, path: str, repeats: int, folder: str) -> list[dict]:
    """One row per tool: time (all tools interleaved in one process), memory (a fresh process per
    tool), BatchNorm and nodes left, errors."""
    prefix = os.path.join(folder, name)
    timed = _child_run("time", ",".join(tools), path, prefix, repeats)
    rows = []
    for tool in tools:
        row = {"model": name, "tool": tool, **timed.get(tool, timed)}
        rows.append(row)
        if "error" in row:
            continue
        out = f"{prefix}.{tool}.onnx"
        row.update(_child_run("memory", tool, path, out, repeats))
        result = onnx.load(out)
        row["bn_left"] = sum(n.op_type == "BatchNormalization" for n in result.graph.node)
        row["nodes"] = len(result.graph.node)
        row["non_constant_nodes"] = non_constant_nodes(result)
        if name.endswith("-fp16"):
            row["fold_rms"] = fold_error(path, out)
        try:
            row["max_err"] = max_error(path, out)
        except Exception as exc:
            row["max_err"] = float("nan")
            row["error"] = f"result does not run: {str(exc)[:80]}"
    return rows


def non_constant_nodes(proto: onnx.ModelProto) -> int:
    """Top-level nodes whose op_type is not Constant."""
    return sum(node.op_type != "Constant" for node in proto.graph.node)


def fold_error(path: str, candidate: str) -> float | None:
    """Root-mean-square error of the folded Conv weights and biases against the float64 fold of
    the original's Conv -> BatchNorm pairs; None unless every BN went into its Conv."""
    original = onnx.load(path)
    result = onnx.load(candidate)
    arrays = {i.name: onnx.numpy_helper.to_array(i) for i in original.graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in original.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    exact = []
    for conv in (n for n in original.graph.node if n.op_type == "Conv"):
        (bn,) = readers[conv.output[0]]
        if bn.op_type != "BatchNormalization":
            return None
        gamma, beta, mean, var = (arrays[name].astype(np.float64) for name in bn.input[1:])
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        s = gamma / np.sqrt(var + eps)
        bias = arrays[conv.input[2]].astype(np.float64) if len(conv.input) > 2 else 0.0
        exact.append(
            (
                arrays[conv.input[1]].astype(np.float64) * s[:, None, None, None],
                bias * s + beta - mean * s,
            )
        )
    folded = [n for n in result.graph.node if n.op_type == "Conv"]
    if len(folded) != len(exact) or any(
        n.op_type == "BatchNormalization" for n in result.graph.node
    ):
        return None
    values = {i.name: onnx.numpy_helper.to_array(i) for i in result.graph.initializer}
    squares, count = 0.0, 0
    for conv in folded:  # tools may reorder Convs: pair each with the nearest exact fold
        if conv.input[1] not in values or len(conv.input) < 3 or conv.input[2] not in values:
            return None
        got_w = values[conv.input[1]].astype(np.float64)
        got_b = values[conv.input[2]].astype(np.float64)
        candidates = [(w, b) for w, b in exact if w.shape == got_w.shape]
        if not candidates:
            return None
        best = min(
            float(np.sum((got_w - w) ** 2) + np.sum((got_b - b) ** 2)) for w, b in candidates
        )
        squares += best
        count += got_w.size + got_b.size
    return float(np.sqrt(squares / count))


def max_error(path: str, candidate: str, samples: int = SAMPLES) -> float:
    """Largest abs difference from the truth over `samples` seeded inputs."""
    proto = onnx.load(path, load_external_data=False)
    worst = 0.0
    for seed in range(samples):
        feeds = model_input(proto, seed)
        for a, b in zip(truth(path, feeds), run_ort(candidate, feeds), strict=True):
            worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--models",
        default="resnet,vgg,mlp,mlp-bn-first,decoder,depthwise,input-norm,"
        "resnet-fp16,vgg-fp16,depthwise-fp16," + ",".join(f"light-{m}" for m in LIGHT_WITH_BN),
    )
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--json", help="also write all rows to this file")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, tool, model_path, out_path, repeats = args.child
        child(mode, tool, model_path, out_path, int(repeats))
        return
    tools = args.tools.split(",")
    rows = []
    with tempfile.TemporaryDirectory(prefix="optkit-bench-") as folder:
        paths = export_models(folder, args.models.split(","))
        print(
            f"{'model':<18} {'tool':<14} {'time ms':>9} {'peak MB':>8} {'BN left':>7} {'nodes':>6} "
            f"{'non-const':>9} {'max err':>10}"
        )
        for name, path in paths.items():
            proto = onnx.load(path, load_external_data=False)
            bn = sum(n.op_type == "BatchNormalization" for n in proto.graph.node)
            print(
                f"{name:<18} {'(original)':<14} {'':>9} {'':>8} {bn:>7} {len(proto.graph.node):>6} "
                f"{non_constant_nodes(proto):>9} {max_error(path, path):10.2e}"
            )
            for row in measure(tools, name, path, args.repeats, folder):
                rows.append(row)
                tool = row["tool"]
                if "seconds" not in row:
                    print(f"{'':<18} {tool:<14} FAILED: {row['error']}")
                    continue
                print(
                    f"{'':<18} {tool:<14} {row['seconds'] * 1000:9.1f} {row['peak_mb']:8.1f} "
                    f"{row['bn_left']:>7} {row['nodes']:>6} {row['non_constant_nodes']:>9} "
                    f"{row['max_err']:10.2e}"
                    + (f"  fold rms {row['fold_rms']:.2e}" if row.get("fold_rms") else "")
                    + (f"  {row['error']}" if "error" in row else "")
                )
            sys.stdout.flush()
    summarize(rows)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


def summarize(rows: list[dict]) -> None:
    """Per model: optkit's time over the fastest peer's (over all peers, and over the peers whose
    result has no more BatchNorm and no more nodes than optkit's), BN left, and error."""
    print("\nper model: optkit time / fastest peer; / fastest peer as small; BN left; max error")
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = next(
            (r for r in rows if r["model"] == model and r["tool"] == "optkit" and "seconds" in r),
            None,
        )
        peers = [
            r
            for r in rows
            if r["model"] == model
            and not r["tool"].startswith("optkit")
            and "seconds" in r
            and np.isfinite(r.get("max_err", np.nan))
        ]
        if mine is None or not peers:
            continue
        fastest = min(peers, key=lambda r: r["seconds"])
        as_good = [
            r for r in peers if r["bn_left"] <= mine["bn_left"] and r["nodes"] <= mine["nodes"]
        ]
        fewest_bn = min(r["bn_left"] for r in peers)
        line = f"  {model:<18} x{mine['seconds'] / fastest['seconds']:5.2f} ({fastest['tool']})  "
        if as_good:
            best = min(as_good, key=lambda r: r["seconds"])
            line += f"x{mine['seconds'] / best['seconds']:5.2f} ({best['tool']})  "
            line += f"BN {mine['bn_left']} vs {fewest_bn}  err {mine['max_err']:.2e} vs "
            line += f"{min(r['max_err'] for r in as_good):.2e}"
        else:
            line += (
                f"no peer as small: BN {mine['bn_left']} vs {fewest_bn}  err {mine['max_err']:.2e}"
            )
        print(line)


if __name__ == "__main__":
    main()
