"""optkit: verified ONNX graph rewrites.

import optkit
result = optkit.fuse("model.onnx")        # fold BatchNorm, clean up, verify on ONNX Runtime
print(result.report.format_text())
result.save("model.optkit.onnx")            # atomic write
assert optkit.verify("model.onnx", result.model)           # bool(verdict) is verdict.ok
optkit.testing.assert_equivalent("model.onnx", result.model)  # AssertionError: the table
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from optkit.errors import InputError, OptkitError, VerificationError

if TYPE_CHECKING:
    from optkit import testing
    from optkit.augment import tta
    from optkit.check.compare import Verdict
    from optkit.check.verify import Nondeterministic, Unverifiable, verify
    from optkit.core.contract import (
        Exactness,
        PassOptions,
        PassReport,
        PassSpec,
        RewritePass,
        Site,
        Tolerance,
    )
    from optkit.core.pipeline import Pipeline, PipelineReport
    from optkit.ensembles import ensemble
    from optkit.fusion import FuseReport, FuseResult, fuse
    from optkit.io import load, save, to_proto

# The rest of the API is imported on first use (PEP 562): `import optkit` costs what optkit.errors
# costs, and onnx, onnx_ir (with sympy) and onnxruntime load when a name that needs them is used.
# See tools/bench_startup.py and the README's "Start-up".
_LAZY = {
    "testing": "optkit.testing",
    **dict.fromkeys(
        ("Exactness", "PassOptions", "PassReport", "PassSpec", "RewritePass", "Site", "Tolerance"),
        "optkit.core.contract",
    ),
    **dict.fromkeys(("FuseReport", "FuseResult", "fuse"), "optkit.fusion"),
    **dict.fromkeys(("load", "save", "to_proto"), "optkit.io"),
    **dict.fromkeys(("Pipeline", "PipelineReport"), "optkit.core.pipeline"),
    "Verdict": "optkit.check.compare",
    **dict.fromkeys(("Nondeterministic", "Unverifiable", "verify"), "optkit.check.verify"),
    "ensemble": "optkit.ensembles",
    "tta": "optkit.augment",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:  # a submodule (optkit.io, ...), as when this file imported them all
        if name.startswith("_"):
            raise AttributeError(f"module 'optkit' has no attribute {name!r}")
        try:
            return importlib.import_module(f"optkit.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"optkit.{name}":
                raise
            raise AttributeError(f"module 'optkit' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if name == "testing" else getattr(module, name)
    globals()[name] = value  # once: later look-ups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__version__ = "0.1.0"

__all__ = [
    "Exactness",
    "FuseReport",
    "FuseResult",
    "InputError",
    "Nondeterministic",
    "OptkitError",
    "PassOptions",
    "PassReport",
    "PassSpec",
    "Pipeline",
    "PipelineReport",
    "RewritePass",
    "Site",
    "Tolerance",
    "Unverifiable",
    "Verdict",
    "VerificationError",
    "ensemble",
    "fuse",
    "load",
    "save",
    "testing",
    "to_proto",
    "tta",
    "verify",
]
