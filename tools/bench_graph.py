"""Benchmark: the graph optkit and its peers leave, what it costs on ONNX Runtime, and whether it
still computes the same thing, per model, in one run.

    python tools/bench_graph.py [--models shufflenet,bert-17,...] [--quick] [--json rows.json]

Tools: optkit (`optkit.fuse(model, verify_result=False)`), onnxsim (`onnxsim.simplify`), onnxslim
(`onnxslim.slim`) and onnxscript's optimizer (`onnxscript.optimizer.optimize`), each through its
public API with its defaults, on a fresh copy of the model, in a child process per model (a tool
that raises, hangs or crashes on a model is a row with the error, not the end of the run: after a
crash a fresh process goes on with the other tools).

Models (exported into a temporary folder; nothing is written elsewhere): the `models/` ZOO entries
(BatchNorm randomized, `optkit.torch.export_onnx(model, sample, dynamic_batch=True)`: BatchNorm
kept, no constant folding), and with `torch.onnx.export(dynamo=False, opset 17 unless stated)`, its
default constant folding (BatchNorm folded into the Convs) and a dynamic batch: `shufflenet`
(models/shufflenet.py ShuffleNetV2, input [N,3,224,224]), `bert-14` / `bert-17` (models/bert.py
BertEncoder, vocab 1000, 6 layers 384 wide, int64 `ids` and `attention_mask` [batch, tokens], both
dims dynamic, at opsets 14 and 17), `encoder-2` / `encoder-6` (models/transformer.py Encoder at
depths 2 and 6, input (batch, 16, 32)); and the onnx package's light zoo models (`light-resnet50`,
..., read from its install; static shapes). The light models make their weights with
ConstantOfShape: with ORT optimizations off the original computes them on every run.

Columns, per model and tool:
  nodes    non-constant nodes in the result: nodes whose op_type is not Constant, subgraphs included
           (the "(original)" row: the exported model's)
  disable  ORT latency of the result / the original's, ORT_DISABLE_ALL (what the graph itself
           costs); the "(original)" row gives the original's own median latency in ms (over all
           its runs)
  all      the same at ORT_ENABLE_ALL (after ORT's own fusions)
           Both: CPU provider, 1 intra-op and 1 inter-op thread, at the first input shape. The
           original and the result run alternately (the order swapped every pair), in --blocks
           blocks of at least --block-ms each (at least one pair); each block gives one ratio (median
           result time / median original time within the block) and the cell prints the median over
           blocks and [min-max] over blocks. Every tool's blocks are interleaved with the other
           tools' in one process, the tools' order reversed every block.
  max err  largest abs difference from the original's outputs, both on ORT with optimizations off,
           over every input shape checked (two where the model has dynamic dims, one otherwise)
  notes    WRONG when an output differs beyond 1e-3 x max(1, max |original output|) or in shape or
           NaN pattern; FAILED when the tool raised or crashed, or its result did not run; for
           optkit, whether `optkit.fuse(model)` with its own verification reports ok
           (`result.report.ok`)

Input shapes: a dynamic dim named `batch` or on axis 0 takes 1, then 3; any other dynamic dim (the
tokens) 32, then 11. Latency is measured at the first shape. Inputs: floats standard normal; an
integer input whose name contains "mask" is ones with the last (row + 1) / 8 of each row's positions
(at least one, never all) zero, like right-padded sequences; other integer inputs uniform in
[0, 1000) (BERT's vocabulary here; a model with a smaller table would need its own bound); bools
random. The light models' weights are uniform fills, so most of them output a uniform softmax
(0.001 everywhere): their "max err" checks little.

The summary compares optkit's non-constant nodes with the best peer's (the fewest among the peers
whose result is correct; MORE flags optkit leaving more) and shows optkit's ratio at ORT `all` with
its spread (SLOWER when even the fastest block is above 1.00, faster when even the slowest is below).
`--quick` runs 3 blocks of 50 ms instead of 7 of 250 ms. Needs the `torch` and `bench` extras.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx

from optkit.core.graph import DEFAULT_DOMAINS

TOOLS = ["optkit", "onnxsim", "onnxslim", "onnxscript"]
LEVELS = ["disable", "all"]
BATCHES = (1, 3)  # a dynamic batch dim at the first and second input shape
OTHER_DIMS = (32, 11)  # any other dynamic dim (tokens)
TOLERANCE = 1e-3  # relative to max(1, max |original output|)
ID_BOUND = 1000  # integer inputs other than masks are uniform in [0, ID_BOUND)
LIGHT = [
    "resnet50",
    "inception_v1",
    "inception_v2",
    "shufflenet",
    "densenet121",
    "squeezenet",
    "bvlc_alexnet",
    "zfnet512",
    "vgg19",
]
TIMEOUT_S = 900  # per child process

Shape = dict[str, list[int]]  # input name -> dims fed


# --- models ---------------------------------------------------------------------------------------


def default_models() -> list[str]:
    from optkit.models import ZOO

    return [
        *ZOO,
        "shufflenet",
        "bert-14",
        "bert-17",
        "encoder-2",
        "encoder-6",
        *(f"light-{name}" for name in LIGHT),
    ]


def light_path(name: str) -> str:
    return os.path.join(
        os.path.dirname(onnx.__file__), "backend/test/data/light", f"light_{name}.onnx"
    )


def _torch_export(model: Any, args: tuple, names: list[str], dynamic: dict, opset: int) -> bytes:
    import io

    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            args,
            buffer,  # type: ignore[arg-type]  # the TorchScript exporter writes to a file object
            dynamo=False,
            opset_version=opset,
            input_names=names,
            output_names=["output"],
            dynamic_axes=dynamic,
        )
    return buffer.getvalue()


def export_model(name: str, folder: str) -> str:
    """The model's ONNX file: exported into `folder`, or the light model's file in onnx's install."""
    if name.startswith("light-"):
        path = light_path(name.removeprefix("light-"))
        if not os.path.exists(path):
            raise FileNotFoundError(path)
        return path
    import torch

    from optkit.models import ZOO, Encoder, randomize_batchnorm
    from optkit.torch import export_onnx

    torch.manual_seed(0)
    batch = {0: "batch"}
    if name in ZOO:
        factory, shape = ZOO[name]
        model = randomize_batchnorm(factory()).eval()
        data = export_onnx(model, torch.randn(*shape), dynamic_batch=True).SerializeToString()
    elif name == "shufflenet":
        from optkit.models.shufflenet import ShuffleNetV2

        data = _torch_export(
            randomize_batchnorm(ShuffleNetV2()),
            (torch.randn(1, 3, 224, 224),),
            ["input"],
            {"input": batch, "output": batch},
            17,
        )
    elif name in ("bert-14", "bert-17"):
        from optkit.models.bert import BertEncoder

        dims = {0: "batch", 1: "tokens"}
        ids = torch.randint(0, ID_BOUND, (2, 16))
        data = _torch_export(
            BertEncoder(vocab=ID_BOUND),
            (ids, torch.ones(2, 16, dtype=torch.int64)),
            ["ids", "attention_mask"],
            {"ids": dims, "attention_mask": dims, "output": dims},
            int(name.removeprefix("bert-")),
        )
    elif name in ("encoder-2", "encoder-6"):
        data = _torch_export(
            Encoder(depth=int(name.removeprefix("encoder-"))),
            (torch.randn(2, 16, 32),),
            ["input"],
            {"input": batch, "output": batch},
            17,
        )
    else:
        raise ValueError(f"unknown model {name!r}")
    path = os.path.join(folder, f"{name}.onnx")
    with open(path, "wb") as handle:
        handle.write(data)
    return path


# --- inputs ---------------------------------------------------------------------------------------


def graph_inputs(proto: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {i.name for i in proto.graph.initializer}
    return [value for value in proto.graph.input if value.name not in inits]


def input_shapes(proto: onnx.ModelProto) -> list[Shape]:
    """The shapes fed: two when any input dim is dynamic (see the module docstring), else one."""
    shapes: list[Shape] = [{}, {}]
    dynamic = False
    for value in graph_inputs(proto):
        for which in (0, 1):
            dims = []
            for axis, dim in enumerate(value.type.tensor_type.shape.dim):
                if dim.HasField("dim_value") and dim.dim_value > 0:
                    dims.append(dim.dim_value)
                    continue
                dynamic = True
                is_batch = dim.dim_param == "batch" or axis == 0
                dims.append((BATCHES if is_batch else OTHER_DIMS)[which])
            shapes[which][value.name] = dims
    return shapes if dynamic else shapes[:1]


def make_feeds(proto: onnx.ModelProto, shape: Shape, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in graph_inputs(proto):
        dims = shape[value.name]
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type))
        if dtype.kind == "f":
            feeds[value.name] = rng.standard_normal(dims).astype(dtype)
        elif dtype.kind in "iu" and "mask" in value.name.lower():
            mask = np.ones(dims, dtype=dtype)
            if mask.ndim:
                rows = mask.reshape(-1, dims[-1])
                for row in range(rows.shape[0]):
                    zeros = min(dims[-1] - 1, max(1, (row + 1) * dims[-1] // 8))
                    if zeros > 0:
                        rows[row, -zeros:] = 0
            feeds[value.name] = mask
        elif dtype.kind in "iu":
            feeds[value.name] = rng.integers(0, ID_BOUND, dims).astype(dtype)
        elif dtype.kind == "b":
            feeds[value.name] = rng.random(dims) < 0.5
        else:
            raise ValueError(f"input {value.name!r}: no generator for {dtype}")
    return feeds


def format_shape(shape: Shape) -> str:
    return ", ".join(f"{name}={'x'.join(map(str, dims))}" for name, dims in shape.items())


# --- the child processes --------------------------------------------------------------------------


def optimizer(tool: str) -> Callable[[onnx.ModelProto], onnx.ModelProto]:
    """One tool's whole-graph optimization through its public API, with its imports done."""
    if tool == "optkit":
        import optkit

        return lambda proto: optkit.fuse(proto, verify_result=False).to_proto()
    if tool == "onnxsim":
        import onnxsim

        return lambda proto: onnxsim.simplify(proto)[0]
    if tool == "onnxslim":
        import onnxslim

        def slim(proto: onnx.ModelProto) -> onnx.ModelProto:
            result = onnxslim.slim(proto)
            if not isinstance(result, onnx.ModelProto):
                raise RuntimeError(f"onnxslim.slim returned {type(result).__name__}")
            return result

        return slim
    if tool == "onnxscript":
        import onnxscript.optimizer

        return lambda proto: onnxscript.optimizer.optimize(proto)
    raise ValueError(tool)


def non_constant_nodes(graph: onnx.GraphProto) -> int:
    """Nodes whose op_type is not Constant, in `graph` and every subgraph."""
    count = 0
    for node in graph.node:
        count += node.op_type != "Constant" or node.domain not in DEFAULT_DOMAINS
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                count += non_constant_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                count += sum(non_constant_nodes(g) for g in attr.graphs)
    return count


def session(path: str, level: str) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if level == "disable"
        else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    )
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 4
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _fed(sess: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {i.name: feeds[i.name] for i in sess.get_inputs()}


def _first_line(exc: BaseException, limit: int = 100) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"{type(exc).__name__}: {text}"[:limit]


def compare(want: list[np.ndarray], got: list[np.ndarray]) -> tuple[float, str]:
    """(max abs error, "" or why the outputs differ)."""
    if len(want) != len(got):
        return float("nan"), f"{len(got)} outputs, not {len(want)}"
    worst = 0.0
    for index, (a, b) in enumerate(zip(want, got, strict=True)):
        if a.shape != b.shape:
            return float("nan"), f"output {index} has shape {b.shape}, not {a.shape}"
        if a.dtype.kind not in "fc":
            if not np.array_equal(a, b):
                return float("nan"), f"output {index} ({a.dtype}) differs"
            continue
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        if not np.array_equal(np.isnan(a64), np.isnan(b64)):
            return float("nan"), f"output {index}: NaN where the original has none, or vice versa"
        finite = np.isfinite(a64) & np.isfinite(b64)
        if not np.array_equal(a64[~finite], b64[~finite], equal_nan=True):
            return float("nan"), f"output {index}: infinities differ"
        if not finite.any():
            continue
        err = float(np.max(np.abs(a64[finite] - b64[finite])))
        worst = max(worst, err)
        scale = max(1.0, float(np.max(np.abs(a64[finite]))))
        if err > TOLERANCE * scale:
            return worst, f"output {index}: max abs err {err:.2e} (scale {scale:.2g})"
    return worst, ""


def child_optimize(spec_path: str) -> None:
    """Run each tool of the spec in turn on the model (a fresh copy each), save its result, count
    its nodes, check it against the original at every shape; for optkit also run `optkit.fuse` with
    verification. The report file (tool -> row) is rewritten after every step, so that a crash
    leaves what was done, and a tool already in it (from a crashed run) is not run again."""
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    with open(spec_path) as handle:
        spec = json.load(handle)
    model_path, report_path = spec["model"], spec["report"]
    report: dict[str, dict[str, Any]] = {}
    if os.path.exists(report_path):
        with open(report_path) as handle:
            report = json.load(handle)

    def save() -> None:
        with open(report_path, "w") as handle:
            json.dump(report, handle)

    original = onnx.load(model_path, load_external_data=False)
    shapes: list[Shape] = spec["shapes"]
    feeds = [make_feeds(original, shape, seed) for seed, shape in enumerate(shapes)]
    want_sess = session(model_path, "disable")
    wants = [want_sess.run(None, _fed(want_sess, fed)) for fed in feeds]
    del want_sess
    for tool, out_path in spec["tools"].items():
        if tool in report:
            continue
        row = report[tool] = {}
        save()
        check_tool(tool, model_path, out_path, shapes, feeds, wants, row, save)
        row["done"] = True
        save()


def check_tool(
    tool: str,
    model_path: str,
    out_path: str,
    shapes: list[Shape],
    feeds: list[dict[str, np.ndarray]],
    wants: list[list[np.ndarray]],
    row: dict[str, Any],
    save: Callable[[], None],
) -> None:
    """One tool's steps for `child_optimize`, recorded into `row` (`save` after each)."""

    def fresh() -> onnx.ModelProto:  # tools may change the proto they are given
        return onnx.load(model_path)

    began = time.perf_counter()
    try:
        result = optimizer(tool)(fresh())
    except Exception as exc:
        row["error"] = f"raised {_first_line(exc)}"
        return
    row["seconds"] = time.perf_counter() - began
    row["nodes"] = non_constant_nodes(result.graph)
    row["nodes_total"] = len(result.graph.node)
    save()
    try:
        onnx.save(result, out_path)
    except Exception as exc:
        row["error"] = f"result not saved: {_first_line(exc)}"
        return
    row["saved"] = True
    del result
    save()
    if tool == "optkit":
        import optkit

        try:
            verified = optkit.fuse(fresh())
            row["verify_ok"] = bool(verified.report.ok)
            row["verify"] = verified.report.state
            if verified.report.unverified_reason:
                row["verify"] += f": {verified.report.unverified_reason[:60]}"
            if verified.report.faulty_passes:  # the verified result is not the timed one then
                row["verify_rolled_back"] = verified.report.faulty_passes
        except Exception as exc:
            row["verify_ok"] = False
            row["verify"] = f"raised {_first_line(exc, 60)}"
        save()
    try:
        got_sess = session(out_path, "disable")
    except Exception as exc:
        row["error"] = f"result does not load in ORT: {_first_line(exc)}"
        return
    row["errors"] = []
    for shape, fed, want in zip(shapes, feeds, wants, strict=True):
        try:
            got = got_sess.run(None, _fed(got_sess, fed))
        except Exception as exc:
            row["error"] = f"result fails at {format_shape(shape)}: {_first_line(exc)}"
            return
        err, wrong = compare(want, got)
        row["errors"].append(err)
        if wrong and "wrong" not in row:
            row["wrong"] = f"at {format_shape(shape)}: {wrong}"
        save()
    errors = row["errors"]
    row["max_err"] = float("nan") if any(np.isnan(errors)) else max(errors)
    row["checked"] = True


def child_time(spec_path: str) -> None:
    """Latency ratios of each candidate against the original, at each ORT level, interleaved."""
    warnings.simplefilter("ignore")
    with open(spec_path) as handle:
        spec = json.load(handle)
    original = onnx.load(spec["original"], load_external_data=False)
    feeds = make_feeds(original, spec["shape"], 0)
    blocks, block_s = spec["blocks"], spec["block_ms"] / 1000
    out: dict[str, Any] = {"original_ms": {}, "tools": {tool: {} for tool in spec["candidates"]}}
    for level in LEVELS:
        base = session(spec["original"], level)
        base_feeds = _fed(base, feeds)
        cands: dict[str, tuple[Any, dict[str, np.ndarray]]] = {}
        for tool, path in spec["candidates"].items():
            try:
                sess = session(path, level)
                cands[tool] = (sess, _fed(sess, feeds))
                for _ in range(2):
                    sess.run(None, cands[tool][1])
            except Exception as exc:
                out["tools"][tool][level] = {"error": _first_line(exc)}
        for _ in range(2):
            base.run(None, base_feeds)
        ratios: dict[str, list[float]] = {tool: [] for tool in cands}
        cand_ms: dict[str, list[float]] = {tool: [] for tool in cands}
        base_all: list[float] = []
        pairs = dict.fromkeys(cands, 0)  # each tool's pairs so far: odd ones run it first
        gc.collect()
        gc.disable()
        try:
            for block in range(blocks):
                order = list(cands) if block % 2 == 0 else list(reversed(cands))
                for tool in order:
                    sess, fed = cands[tool]
                    mine: list[float] = []
                    theirs: list[float] = []
                    began = time.perf_counter()
                    while not mine or time.perf_counter() - began < block_s:
                        runs = [(base, base_feeds, theirs), (sess, fed, mine)]
                        if pairs[tool] % 2:
                            runs.reverse()
                        pairs[tool] += 1
                        for runner, given, times in runs:
                            start = time.perf_counter()
                            runner.run(None, given)
                            times.append(time.perf_counter() - start)
                    ratios[tool].append(statistics.median(mine) / statistics.median(theirs))
                    cand_ms[tool].append(statistics.median(mine) * 1000)
                    base_all.extend(theirs)
        finally:
            gc.enable()
        if base_all:
            out["original_ms"][level] = statistics.median(base_all) * 1000
        for tool in cands:
            out["tools"][tool][level] = {
                "ratio": statistics.median(ratios[tool]),
                "min": min(ratios[tool]),
                "max": max(ratios[tool]),
                "blocks": ratios[tool],
                "ms": statistics.median(cand_ms[tool]),
            }
        del base, cands
        gc.collect()
    with open(spec["out"], "w") as handle:
        json.dump(out, handle)


def _run_child(args: list[str], report: str) -> tuple[dict[str, Any], str]:
    """(the child's report, "" or how the process ended badly)."""
    try:
        done = subprocess.run(
            [sys.executable, __file__, "--child", *args],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
        failure = ""
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or [""])[-1][:100]
            how = f"signal {-done.returncode}" if done.returncode < 0 else f"exit {done.returncode}"
            failure = f"crashed ({how})" + (f": {tail}" if tail else "")
    except subprocess.TimeoutExpired:
        failure = f"timed out after {TIMEOUT_S} s"
    found: dict[str, Any] = {}
    if os.path.exists(report):
        with open(report) as handle:
            found = json.load(handle)
    return found, failure


# --- the parent -----------------------------------------------------------------------------------


def _status(text: str) -> None:
    """A transient progress line on a terminal's stderr (nothing when stderr is not a terminal)."""
    if sys.stderr.isatty():
        print(f"\r{text:<60}\r", end="", file=sys.stderr, flush=True)


def measure(name: str, path: str, folder: str, blocks: int, block_ms: float) -> list[dict]:
    """One row for the original and one per tool."""
    began = time.perf_counter()
    proto = onnx.load(path, load_external_data=False)
    shapes = input_shapes(proto)
    original: dict[str, Any] = {
        "model": name,
        "tool": "(original)",
        "nodes": non_constant_nodes(proto.graph),
        "nodes_total": len(proto.graph.node),
        "shapes": shapes,
    }
    rows = [original]
    outs = {tool: os.path.join(folder, f"{name}.{tool}.onnx") for tool in TOOLS}
    spec = os.path.join(folder, f"{name}.optimize-spec.json")
    report = os.path.join(folder, f"{name}.optimize.json")
    found: dict[str, Any] = {}
    while remaining := [t for t in TOOLS if not found.get(t, {}).get("done")]:
        # one process runs every tool; when it crashes, the tool it was on gets the error and a
        # fresh process goes on with the rest
        _status(f"{name}: {', '.join(remaining)}...")
        with open(spec, "w") as handle:
            json.dump({"model": path, "tools": outs, "shapes": shapes, "report": report}, handle)
        found, failure = _run_child(["optimize", spec], report)
        started = [t for t in remaining if t in found]
        for tool in started:
            if not found[tool].get("done"):
                step = "the check" if found[tool].get("saved") else "the tool"
                found[tool].update(error=f"{step} {failure or 'stopped'}", done=True)
        if not started:  # the process ended before any tool ran: no use in another
            for tool in remaining:
                found[tool] = {"error": f"not run: {failure or 'stopped'}", "done": True}
        with open(report, "w") as handle:
            json.dump(found, handle)
    candidates = {}
    for tool in TOOLS:
        row = {"model": name, "tool": tool, **found[tool]}
        row.pop("done", None)
        if row.get("checked"):
            candidates[tool] = outs[tool]
        rows.append(row)
    if candidates:
        _status(f"{name}: timing...")
        spec = os.path.join(folder, f"{name}.timing-spec.json")
        report = os.path.join(folder, f"{name}.timing.json")
        with open(spec, "w") as handle:
            json.dump(
                {
                    "original": path,
                    "candidates": candidates,
                    "shape": shapes[0],
                    "blocks": blocks,
                    "block_ms": block_ms,
                    "out": report,
                },
                handle,
            )
        timed, failure = _run_child(["time", spec], report)
        original["latency_ms"] = timed.get("original_ms", {})
        for row in rows[1:]:
            if row["tool"] in candidates:
                row["latency"] = timed.get("tools", {}).get(row["tool"], {})
                if failure and not row["latency"]:
                    row["timing_error"] = f"timing {failure}"
    for out in outs.values():
        if os.path.exists(out):
            os.unlink(out)
    _status("")
    original["bench_seconds"] = time.perf_counter() - began
    return rows


HEADER = (
    f"{'model':<18} {'tool':<11} {'nodes':>6} {'ORT disable':>17} {'ORT all':>17} {'max err':>9}"
    "  notes"
)


def _ratio_cell(cell: dict | None) -> str:
    if not cell:
        return "-"
    if "error" in cell:
        return "error"
    return f"{cell['ratio']:.2f} [{cell['min']:.2f}-{cell['max']:.2f}]"


def format_rows(rows: list[dict]) -> list[str]:
    lines = []
    for row in rows:
        model = row["model"] if row["tool"] == "(original)" else ""
        if row["tool"] == "(original)":
            ms = row.get("latency_ms", {})
            cells = [f"{ms[lv]:.3f} ms" if lv in ms else "-" for lv in LEVELS]
            shapes = " | ".join(format_shape(s) for s in row["shapes"])
            lines.append(
                f"{model:<18} {row['tool']:<11} {row['nodes']:>6} {cells[0]:>17} {cells[1]:>17} "
                f"{'':>9}  at {shapes}"
            )
            continue
        notes = []
        if "wrong" in row:
            notes.append(f"WRONG {row['wrong']}")
        if "error" in row:
            notes.append(f"FAILED: {row['error']}")
        if "timing_error" in row:
            notes.append(row["timing_error"])
        for level, cell in row.get("latency", {}).items():
            if "error" in cell:
                notes.append(f"no {level} session: {cell['error']}")
        if "verify_ok" in row:
            notes.append("verify ok" if row["verify_ok"] else f"verify NOT ok ({row['verify']})")
        if row.get("verify_rolled_back"):
            notes.append(f"verified fuse rolled back {','.join(row['verify_rolled_back'])}")
        nodes = str(row["nodes"]) if "nodes" in row else "-"
        latency = row.get("latency", {})
        err = f"{row['max_err']:9.2e}" if "max_err" in row else "-"
        lines.append(
            f"{model:<18} {row['tool']:<11} {nodes:>6} {_ratio_cell(latency.get('disable')):>17} "
            f"{_ratio_cell(latency.get('all')):>17} {err:>9}  {'; '.join(notes)}"
        )
    return lines


def summarize(rows: list[dict]) -> list[str]:
    """Per model: optkit's non-constant nodes vs the best correct peer's, optkit's ratio at `all`."""
    lines = [
        "summary: non-constant nodes, optkit vs the best peer (fewest among correct results; MORE: "
        "optkit leaves more); optkit's latency ratio at ORT all [min-max over blocks]"
    ]
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = next((r for r in rows if r["model"] == model and r["tool"] == "optkit"), None)
        good = [
            r
            for r in rows
            if r["model"] == model
            and r["tool"] not in ("optkit", "(original)")
            and r.get("checked")
            and "wrong" not in r
        ]
        line = f"  {model:<18} "
        if mine is None or "nodes" not in mine:
            lines.append(line + f"optkit FAILED: {(mine or {}).get('error', 'not run')}")
            continue
        if good:
            best = min(good, key=lambda r: r["nodes"])
            flag = "MORE" if mine["nodes"] > best["nodes"] else ""
            peer = f"({best['tool']})"
            line += f"nodes {mine['nodes']:>4} vs {best['nodes']:>4} {peer:<12} {flag:<4}"
        else:
            line += f"nodes {mine['nodes']:>4} vs    - {'(none)':<12} {'':<4}"
        cell = mine.get("latency", {}).get("all")
        if cell and "ratio" in cell:
            # as printed: a spread that rounds to touch 1.00 is no verdict
            low, high = round(cell["min"], 2), round(cell["max"], 2)
            verdict = "SLOWER" if low > 1.0 else "faster" if high < 1.0 else ""
            line += f"  all {_ratio_cell(cell):>17} {verdict:<6}"
        else:
            line += f"  all {'-':>17} {'':<6}"
        if "wrong" in mine or "error" in mine:
            line += f"  optkit {'WRONG' if 'wrong' in mine else 'FAILED'}"
        if "verify_ok" in mine:
            line += "  verify ok" if mine["verify_ok"] else "  verify NOT ok"
        lines.append(line)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", help="comma-separated names (default: all; see the docstring)")
    parser.add_argument("--quick", action="store_true", help="3 blocks of 50 ms per ratio")
    parser.add_argument("--blocks", type=int, help="timing blocks per ratio (default 7)")
    parser.add_argument("--block-ms", type=float, help="least time per block (default 250)")
    parser.add_argument("--json", help="also write all rows to this file")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.child[0] == "optimize":
            child_optimize(args.child[1])
        else:
            child_time(args.child[1])
        return
    began = time.perf_counter()
    known = default_models()
    names = args.models.split(",") if args.models else known
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown models {', '.join(unknown)}; known: {', '.join(known)}")
    blocks = args.blocks or (3 if args.quick else 7)
    block_ms = args.block_ms or (50.0 if args.quick else 250.0)
    import onnxruntime as ort

    print(
        f"ORT {ort.__version__} CPU, 1 thread; ratio = result / original latency, median "
        f"[min-max] of {blocks} blocks of >= {block_ms:g} ms; nodes = non-constant nodes"
    )
    print(HEADER, flush=True)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="optkit-bench-graph-") as folder:
        for name in names:
            try:
                path = export_model(name, folder)
            except Exception as exc:
                print(f"{name:<18} export FAILED: {_first_line(exc)}", flush=True)
                continue
            model_rows = measure(name, path, folder, blocks, block_ms)
            rows.extend(model_rows)
            print("\n".join(format_rows(model_rows)), flush=True)
    print()
    print("\n".join(summarize(rows)))
    print(f"wall time {time.perf_counter() - began:.0f} s")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
