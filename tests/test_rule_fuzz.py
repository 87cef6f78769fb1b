"""The rule fuzzer (tests/rule_fuzzing.py), bounded: graphs built beside what each rule expects,
fused, and compared on ONNX Runtime at two sizes and with NaN / inf inputs. `python
tools/rule_fuzz.py --cases N` runs it longer; a failing case replays by its number."""

from __future__ import annotations

import pytest
from rule_fuzzing import check_case

CHUNKS, PER_CHUNK = 4, 500


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_rule_fuzz_cases_keep_their_outputs(chunk):
    stats: dict[str, int] = {}
    for number in range(chunk * PER_CHUNK, (chunk + 1) * PER_CHUNK):
        check_case(number, stats)
    assert stats.get("cases", 0) > 0.9 * PER_CHUNK, stats  # the generator makes runnable models
    assert stats.get("rewritten", 0) > 0.3 * PER_CHUNK, stats  # and the rules fire on them
    assert stats.get("compared at two sizes", 0) > 0.1 * PER_CHUNK, stats


def test_a_case_is_the_same_model_every_time():
    from rule_fuzzing import build_case

    first, second = build_case(17), build_case(17)
    assert first[0].SerializeToString() == second[0].SerializeToString()
    assert first[1:] == second[1:]
