"""program stage: where the arrays a Program owns live.

A training step of a large layer streams several megabytes of weights,
gradients and activations through its matrix products. On 4 KiB pages that
is thousands of pages, more than the CPU's TLB holds, and the products pay
for the misses. Linux backs memory advised with ``MADV_HUGEPAGE`` by 2 MiB
pages where the system allows it (transparent huge pages in ``madvise`` or
``always`` mode), one TLB entry each. NumPy advises its own allocations only
from 4 MiB; a 512×512 float64 weight is 2 MiB.

Measured (``fit``, 512-512-512-10 float64 at batch 256, one process,
alternating, µs per step): ReLU-CE 14,775 → 14,439 with fit's buffers here,
14,340 with the parameters here too; sigmoid 14,945 → 14,724 / 14,660. The
products alone, in the step's order: 14,328 → 14,016.
"""

from __future__ import annotations

import mmap
import sys

import numpy as np

__all__ = ["HUGE_MIN_BYTES", "zeroed_arrays"]

# Sets of arrays from this many bytes in all share one mapping advised for huge
# pages; smaller ones are plain NumPy arrays (a mapping costs a system call and
# rounds up to a 2 MiB page).
HUGE_MIN_BYTES = 1 << 20
_HUGE_PAGE = 2 << 20
_ALIGN = 64  # each array's start: a cache line


def zeroed_arrays(shapes: list[tuple[int, ...]], dtype) -> list[np.ndarray]:
    """Zeroed, C-contiguous arrays of ``shapes`` in ``dtype``: views into one
    anonymous mapping advised for transparent huge pages when they take
    ``HUGE_MIN_BYTES`` or more in all (on Linux), else ``np.zeros`` each. The
    mapping lives as long as any of its arrays.

    >>> a, b = zeroed_arrays([(2, 3), (4,)], np.float64)
    >>> a.shape, b.shape, float(a.sum() + b.sum())
    ((2, 3), (4,), 0.0)
    """
    dtype = np.dtype(dtype)
    sizes = [int(np.prod(shape, dtype=np.int64)) * dtype.itemsize for shape in shapes]
    padded = [-(-size // _ALIGN) * _ALIGN for size in sizes]
    total = sum(padded)
    if total < HUGE_MIN_BYTES or not sys.platform.startswith("linux"):
        return [np.zeros(shape, dtype=dtype) for shape in shapes]
    # one huge page more than needed, so the arrays can start on a 2 MiB boundary
    length = -(-total // _HUGE_PAGE) * _HUGE_PAGE + _HUGE_PAGE
    mapping = mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        mapping.madvise(mmap.MADV_HUGEPAGE)
    except (AttributeError, OSError, ValueError):  # no transparent huge pages: plain pages
        pass
    raw = np.frombuffer(mapping, dtype=np.uint8)  # holds the mapping alive
    offset = -raw.ctypes.data % _HUGE_PAGE
    out = []
    for shape, size, step in zip(shapes, sizes, padded):
        out.append(raw[offset : offset + size].view(dtype).reshape(shape))
        offset += step
    return out
