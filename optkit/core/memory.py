"""Memory of large tensors: new ones in anonymous mappings of their own (freed with the array), and
the pages of memory-mapped external data dropped from the resident set once a fold has read them,
so folding N bytes of weights holds about N bytes, not the original and the folded copy together.
"""

from __future__ import annotations

import mmap
import os

import numpy as np

MAPPED_BYTES = 1 << 22  # arrays of `new_array` from this size get an anonymous mapping of their own


def new_array(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialized array, like `np.empty`; a large one (>= MAPPED_BYTES) in an anonymous
    memory mapping of its own with its pages populated at once (freed with the array). numpy asks
    for transparent huge pages for large arrays, and on the development machine a process's first
    1.2 GB of them took 2.2 s to fault in (the kernel compacting memory), 0.7 s as populated
    ordinary pages."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    anonymous = getattr(mmap, "MAP_ANONYMOUS", None)
    if nbytes < MAPPED_BYTES or anonymous is None or not hasattr(mmap, "MAP_PRIVATE"):
        return np.empty(shape, dtype)
    flags = mmap.MAP_PRIVATE | anonymous | getattr(mmap, "MAP_POPULATE", 0)
    try:
        mapping = mmap.mmap(-1, nbytes, flags=flags)
    except (OSError, ValueError):
        return np.empty(shape, dtype)
    return np.frombuffer(mapping, dtype).reshape(shape)


def _read_only_map(array: np.ndarray) -> mmap.mmap | None:
    """The read-only memory map `array` is a view of (as onnx_ir maps external data), else None."""
    owner: object = array
    while isinstance(owner, np.ndarray | memoryview):
        owner = owner.base if isinstance(owner, np.ndarray) else owner.obj
    if not isinstance(owner, mmap.mmap) or owner.closed:
        return None
    with memoryview(owner) as view:
        return owner if view.readonly else None


def drop_resident(array: np.ndarray) -> None:
    """Drop the whole pages under `array` from this process's resident set, where `array` is a
    contiguous view of a read-only memory map (external data): the kernel keeps them in its page
    cache, and a later read faults them back in with the same bytes (a read-only map has no
    private copy to lose). Anything else is left alone: on a writable map the pages would be lost.
    """
    mapping = _read_only_map(array)
    if mapping is None or array.size == 0 or not array.flags.c_contiguous:
        return
    start = array.ctypes.data - np.frombuffer(mapping, np.uint8).ctypes.data
    end = start + array.nbytes
    page = mmap.PAGESIZE
    first, last = -(-start // page) * page, end // page * page  # whole pages inside the array
    if last > first and hasattr(mapping, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        try:
            mapping.madvise(mmap.MADV_DONTNEED, first, last - first)
        except OSError:  # locked pages, hugetlbfs: they stay resident, which is only slower
            pass


def physical_memory() -> int | None:
    """This machine's memory in bytes, or None where the platform does not say (then no limit is
    known, and callers do not refuse work for its size)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
