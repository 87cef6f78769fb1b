"""optkit: verified ONNX graph rewrites.

import optkit
result = optkit.fuse("model.onnx")        # fold BatchNorm, clean up, verify on ONNX Runtime
print(result.report.format_text())
result.save("model.optkit.onnx")            # atomic write
assert optkit.verify("model.onnx", result.model)           # bool(verdict) is verdict.ok
optkit.testing.assert_equivalent("model.onnx", result.model)  # AssertionError: the table
"""

from optkit import testing
from optkit.contract import (
    Exactness,
    PassOptions,
    PassReport,
    PassSpec,
    RewritePass,
    Site,
    Tolerance,
)
from optkit.errors import InputError, OptkitError, VerificationError
from optkit.fusion import FuseReport, FuseResult, fuse
from optkit.io import load, save, to_proto
from optkit.pipeline import Pipeline, PipelineReport
from optkit.verify import Nondeterministic, Unverifiable, Verdict, verify

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
    "fuse",
    "load",
    "save",
    "testing",
    "to_proto",
    "verify",
]
