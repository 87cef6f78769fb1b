"""optkit.core.memory: pages of read-only mapped external data leave the resident set once read (the
bytes stay readable and the same); writable and ordinary memory is never touched."""

from __future__ import annotations

import mmap

import numpy as np
import pytest

from optkit.core.memory import drop_resident, new_array

MB = 1 << 20


def _rss_file_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssFile:"):
                return int(line.split()[1]) / 1024
    pytest.skip("no RssFile in /proc/self/status")


@pytest.fixture
def mapped(tmp_path):
    """A 64 MB file of known floats, memory-mapped read-only as onnx_ir maps external data."""
    data = np.arange(16 * MB, dtype=np.float32)
    path = tmp_path / "weights.data"
    data.tofile(path)
    with open(path, "rb") as handle:
        mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    array = np.frombuffer(mapping, np.float32).reshape(1024, -1)
    return array, data.reshape(1024, -1)  # the map closes with its last array


def test_a_read_only_map_leaves_the_resident_set_and_keeps_its_bytes(mapped):
    array, expected = mapped
    assert float(array.sum(dtype=np.float64)) == float(expected.sum(dtype=np.float64))  # resident
    before = _rss_file_mb()
    drop_resident(array)
    after = _rss_file_mb()
    assert before - after > 48, (before, after)  # most of the 64 MB left
    np.testing.assert_array_equal(array, expected)  # faulted back in, the same bytes


def test_part_of_a_map_drops_only_whole_pages_inside_it(mapped):
    array, expected = mapped
    rows = array[100:300]
    drop_resident(rows)
    np.testing.assert_array_equal(array, expected)


def test_writable_and_ordinary_memory_are_left_alone():
    folded = new_array((1024, 4096), np.dtype(np.float32))  # an anonymous private map (>= 4 MB)
    folded[...] = 7.0
    drop_resident(folded)  # MADV_DONTNEED here would zero it
    assert np.all(folded == 7.0)
    plain = np.full((256, 256), 3.0)
    drop_resident(plain)
    assert np.all(plain == 3.0)


def test_a_strided_view_is_left_alone(mapped):
    array, expected = mapped
    drop_resident(array[:, ::2])  # not contiguous: no single byte range to advise
    np.testing.assert_array_equal(array[:, ::2], expected[:, ::2])


def test_a_refused_advice_leaves_the_pages_resident(mapped, monkeypatch):
    """madvise fails on locked pages (EINVAL): dropping is only an optimization, never an error
    (an advice the kernel does not know gets the same EINVAL here)."""
    array, expected = mapped
    monkeypatch.setattr(mmap, "MADV_DONTNEED", 0x7FFF)
    with pytest.raises(OSError):  # the kernel refuses it: the case drop_resident must absorb
        _probe(array)
    drop_resident(array)
    np.testing.assert_array_equal(array, expected)


def _probe(array: np.ndarray) -> None:
    owner: object = array
    while not isinstance(owner, mmap.mmap):
        owner = owner.obj if isinstance(owner, memoryview) else owner.base  # type: ignore[union-attr]
    owner.madvise(mmap.MADV_DONTNEED, 0, mmap.PAGESIZE)
