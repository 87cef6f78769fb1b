import os
import sys
from pathlib import Path

# Under pytest-xdist every worker is its own process: one compute thread each, or torch's and ONNX
# Runtime's thread pools fight over the cores (a 2 s training test took 2 minutes that way).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
