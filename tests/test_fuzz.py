"""Property-based fuzzing (hypothesis): mutated models, bytes and structure, never make `fuse`,
`inspect` or `verify` raise anything but optkit's own errors, and a successful `fuse` of a model ORT
can run never changes its outputs. `python tools/fuzz.py` runs the same property for longer."""

from __future__ import annotations

import random

from fuzzing import SEEDS, check, mutate_bytes, mutate_structure
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,  # the same cases on every run: CI stays reproducible
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(seed=st.sampled_from(sorted(SEEDS)), salt=st.integers(0, 2**32 - 1))
def test_structure_mutations(tmp_path, seed, salt):
    path = tmp_path / f"{seed}-{salt}.onnx"
    path.write_bytes(mutate_structure(SEEDS[seed](), random.Random(salt)).SerializeToString())
    check(path)


@FUZZ
@given(seed=st.sampled_from(sorted(SEEDS)), salt=st.integers(0, 2**32 - 1))
def test_byte_mutations(tmp_path, seed, salt):
    path = tmp_path / f"{seed}-{salt}.onnx"
    path.write_bytes(mutate_bytes(SEEDS[seed]().SerializeToString(), random.Random(salt)))
    check(path)


def test_the_seeds_fuse_and_compare_cleanly(tmp_path):
    for name, build in SEEDS.items():
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(build().SerializeToString())
        stats: dict[str, int] = {}
        check(path, stats)
        assert stats.get("outputs compared") == 1, (name, stats)
