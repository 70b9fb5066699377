"""kernels stage: small fixed Numba helpers that generated kernels import."""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["shuffle_rows"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@numba.njit(cache=True)
def shuffle_rows(perm, nrows, seed):
    """Fisher–Yates shuffle of 0..nrows-1 into ``perm`` with a splitmix64 stream.

    Deterministic for a given seed, so a step can be replayed exactly.
    """
    for i in range(nrows):
        perm[i] = i
    state = np.uint64(seed)
    for i in range(nrows - 1, 0, -1):
        state = state + _GOLDEN
        z = state
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z = z ^ (z >> np.uint64(31))
        j = np.int64(z % np.uint64(i + 1))
        tmp = perm[i]
        perm[i] = perm[j]
        perm[j] = tmp
