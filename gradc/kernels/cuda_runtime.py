"""kernels stage: fixed numba-cuda helpers that generated CUDA modules import.

Only generated CUDA modules (and the CUDA Program) import this module, so
``import gradc`` never needs numba-cuda. Everything here is spec-independent:
launch arithmetic, block-wide tree reductions, and the gather that builds a
shuffled mini-batch on the device.
"""

from __future__ import annotations

from numba import cuda

__all__ = ["BLOCK", "gather_rows", "launch_1d", "pow2_at_most", "tree_max", "tree_sum"]

# threads per block of one-thread-per-entry kernels: a multiple of the warp size
# (32) small enough for any GPU and large enough to keep one busy
BLOCK = 256


def launch_1d(total: int, block: int = BLOCK) -> tuple[int, int]:
    """(blocks, threads) for ``total`` one-thread-per-entry threads.

    Small launches get a block no larger than their work: on a GPU that wastes
    nothing, and on the CUDA simulator, where every thread is a Python thread,
    it is what keeps tiny tests fast.
    """
    threads = max(1, min(block, total))
    return (total + threads - 1) // threads, threads


def pow2_at_most(value: int, cap: int) -> int:
    """The largest power of two ≤ min(value, cap) (and ≥ 1): a tree reduction's width."""
    width = 1
    while width * 2 <= min(value, cap):
        width *= 2
    return width


@cuda.jit(device=True)
def tree_sum(buf, tid, width):
    """buf[0] ← buf[0] + … + buf[width−1], halving the active threads each level.

    Every thread of the block calls it (with its own ``tid``) after the block has
    written ``buf`` and synchronised; ``width`` is a power of two.
    """
    half = width // 2
    while half > 0:
        if tid < half:
            buf[tid] += buf[tid + half]
        cuda.syncthreads()  # this level is complete before the next one reads it
        half //= 2


@cuda.jit(device=True)
def tree_max(buf, tid, width):
    """buf[0] ← max(buf[0], …, buf[width−1]); called like :func:`tree_sum`."""
    half = width // 2
    while half > 0:
        if tid < half:
            buf[tid] = max(buf[tid], buf[tid + half])
        cuda.syncthreads()  # this level is complete before the next one reads it
        half //= 2


@cuda.jit
def gather_rows(n, lo, perm, src, dst):
    """dst[i, j] = src[perm[lo + i], j] for the n rows of a shuffled batch: one thread per entry."""
    e = cuda.grid(1)
    width = dst.shape[1]
    if e < n * width:
        i = e // width
        j = e - i * width
        dst[i, j] = src[perm[lo + i], j]
