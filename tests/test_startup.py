"""Start-up costs only what the command uses: checked by which modules a fresh interpreter has
loaded, not by timing (tools/bench_startup.py times it).

`import optkit`, `optkit --help`, every `optkit COMMAND --help` and a usage error load neither onnx,
onnx_ir (and its sympy), numpy, onnxruntime nor torch; the public API still resolves to the same
objects, loaded on first use.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("numpy", "ml_dtypes", "onnx", "onnx_ir", "sympy", "onnxruntime", "torch")

# Runs the `optkit` entry point in this process for each argv of sys.argv[1] (JSON), then prints
# one JSON object: each run's exit code and output, and the heavy modules loaded after all of them.
_RUN_CLI = """
import contextlib, io, json, sys
from optkit.cli import main
runs = []
for argv in json.loads(sys.argv[1]):
    sys.argv = ["optkit", *argv]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main()
        except SystemExit as exc:
            code = exc.code or 0
    runs.append({"argv": argv, "code": code, "out": out.getvalue(), "err": err.getvalue()})
print(json.dumps({"runs": runs, "loaded": [m for m in %r if m in sys.modules]}))
"""


def _python(code: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _loaded_after(statements: str) -> list[str]:
    code = f"import sys\n{statements}\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    return _python(code).split()


def _cli(*argvs: list[str]) -> tuple[list[dict], list[str]]:
    result = json.loads(_python(_RUN_CLI % (HEAVY,), json.dumps(argvs)))
    return result["runs"], result["loaded"]


def test_import_optkit_loads_nothing_heavy():
    assert _loaded_after("import optkit") == []


def test_help_of_every_command_and_usage_errors_load_nothing_heavy():
    from optkit.cli import SUBCOMMANDS

    argvs = [
        ["--help"],
        [],
        ["--version"],
        *([name, "--help"] for name in SUBCOMMANDS),
        ["preprocess", "fit", "--help"],
        ["preprocess", "embed", "--help"],
        ["fuse"],  # missing MODEL
        ["verify", "a.onnx", "b.onnx", "--bogus"],
        ["bench", "m.onnx", "--optimization", "fastest"],
        ["fus"],  # no such command
    ]
    runs, loaded = _cli(*argvs)
    assert loaded == []
    codes = {" ".join(run["argv"]): run["code"] for run in runs}
    assert all(codes[" ".join(a)] == 0 for a in argvs[:-4]), codes
    assert all(codes[" ".join(a)] == 2 for a in argvs[-4:]), codes
    listed = runs[0]["out"].split("Commands:")[1]
    assert all(f"\n  {name} " in listed for name in SUBCOMMANDS)
    assert "Did you mean 'fuse'?" in runs[-1]["err"]  # suggestions come from the unloaded names too


def test_the_lazy_subcommands_are_the_commands_they_name():
    import click

    from optkit.cli import SUBCOMMANDS, cli

    context = click.Context(cli)
    assert cli.list_commands(context) == sorted(SUBCOMMANDS)
    for name in SUBCOMMANDS:
        command = cli.get_command(context, name)
        assert isinstance(command, click.Command) and command.name == name


# Where each public name lives (the eager imports optkit/__init__.py had before start-up went lazy)
HOMES = {
    "optkit.augment": ["tta"],
    "optkit.core.contract": ["Exactness", "PassOptions", "PassReport", "PassSpec", "RewritePass",
                        "Site", "Tolerance"],
    "optkit.ensembles": ["ensemble"],
    "optkit.errors": ["InputError", "OptkitError", "VerificationError"],
    "optkit.fusion": ["FuseReport", "FuseResult", "fuse"],
    "optkit.io": ["load", "save", "to_proto"],
    "optkit.core.pipeline": ["Pipeline", "PipelineReport"],
    "optkit.check.compare": ["Verdict"],
    "optkit.check.verify": ["Nondeterministic", "Unverifiable", "verify"],
}  # fmt: skip


def test_the_public_api_loads_on_first_use_and_is_the_same_objects():
    import importlib

    import optkit

    assert sorted(optkit.__all__) == sorted(["testing", *(n for ns in HOMES.values() for n in ns)])
    assert optkit.testing is importlib.import_module("optkit.testing")
    for module, names in HOMES.items():
        for name in names:
            assert getattr(optkit, name) is getattr(importlib.import_module(module), name), name
    assert set(optkit.__all__) <= set(dir(optkit))
    assert callable(optkit.verify)  # the function, not the submodule of that name
    from optkit import fuse, verify

    assert (fuse, verify) == (optkit.fuse, optkit.verify)
    with pytest.raises(AttributeError):
        _ = optkit.no_such_name


def test_verify_stays_the_function_when_its_module_is_imported_first():
    code = "import optkit, optkit.fusion, optkit.check.verify; print(callable(optkit.verify))"
    assert _python(code).strip() == "True"


def test_onnxruntime_and_torch_load_only_when_used():
    # the whole library API resolved: onnx_ir is in, onnxruntime waits for a session, torch for
    # the PyTorch side
    loaded = _loaded_after("import optkit\nfor name in optkit.__all__: getattr(optkit, name)")
    assert "onnx_ir" in loaded and "onnxruntime" not in loaded and "torch" not in loaded
    loaded = _loaded_after("from optkit.check import runtime\nruntime.session_options('all')")
    assert "onnxruntime" in loaded


def test_the_cli_choices_are_the_librarys():
    import onnxruntime as ort

    from optkit import preprocessing
    from optkit.check import runtime
    from optkit.cli import preprocess

    assert (preprocess.DTYPES, preprocess.LAYOUTS, preprocess.MODES) == (
        preprocessing.DTYPES,
        preprocessing.LAYOUTS,
        preprocessing.MODES,
    )
    levels = {name: runtime.session_options(name) for name in runtime.OPTIMIZATION_LEVELS}
    assert levels["disable"].graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert levels["all"].graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_the_startup_benchmark_runs():
    from pathlib import Path

    tool = Path(__file__).parents[1] / "tools" / "bench_startup.py"
    done = subprocess.run(
        [sys.executable, str(tool), "--runs", "1", "--top", "3", "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    rows = {row["command"]: row for row in report["results"]}
    assert {"python -c pass", "import onnx", "import optkit", "optkit --help"} <= set(rows)
    assert rows["import onnx"]["vs_import_onnx"] == 1.0
    assert all(len(found) == 3 for found in report["top_imports"].values())
