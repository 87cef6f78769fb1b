"""optkit: verified ONNX graph rewrites.

import optkit
result = optkit.fuse("model.onnx")        # fold BatchNorm, clean up, verify on ONNX Runtime
print(result.report.format_text())
result.save("model.optkit.onnx")            # atomic write
"""

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
from optkit.verify import Verdict, verify

__version__ = "0.1.0"

__all__ = [
    "Exactness",
    "FuseReport",
    "FuseResult",
    "InputError",
    "OptkitError",
    "PassOptions",
    "PassReport",
    "PassSpec",
    "Pipeline",
    "PipelineReport",
    "RewritePass",
    "Site",
    "Tolerance",
    "Verdict",
    "VerificationError",
    "fuse",
    "load",
    "save",
    "to_proto",
    "verify",
]
