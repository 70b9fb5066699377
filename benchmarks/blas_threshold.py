"""Where BLAS beats printed loops: the measurements behind gradc's cost rule.

gradc prints every layer product twice, as literal-shape loops and as a BLAS
call (``np.dot`` into a buffer), and picks one at run time from the batch
size (``gradc/kernels/cpu.py``: ``BLAS_MIN_MACS``, ``BLAS_MIN_TOTAL``,
``BLAS_MIN_CONTRACT``). This script times both forms, as gradc prints them,
for layer shapes from the peers benchmark and batch sizes 1…256, and writes
``benchmarks/results/blas_threshold.md``.

    python benchmarks/blas_threshold.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import info_markdown, machine_info, markdown_table, pin_threads

pin_threads(1)

import numpy as np  # noqa: E402

SHAPES = [(10, 32), (32, 32), (32, 64), (10, 256), (128, 256), (256, 784)]
BATCHES = [1, 4, 8, 16, 32, 64, 256]

_SOURCE = """
import numpy as np, numba

@numba.njit(error_model="numpy")
def rows_loops(n, p, x, v):   # v[i] = p · x[i]: gradc's loop form, four partial sums
    for i in range(n):
        for r in range({R}):
            a0 = a1 = a2 = a3 = 0.0
            for k in range(0, {K4}, 4):
                a0 += p[r, k] * x[i, k]
                a1 += p[r, k + 1] * x[i, k + 1]
                a2 += p[r, k + 2] * x[i, k + 2]
                a3 += p[r, k + 3] * x[i, k + 3]
            v[i, r] = (a0 + a1) + (a2 + a3)

@numba.njit(error_model="numpy")
def rows_blas(n, p, x, v):
    np.dot(x[:n], p.T, v[:n])

@numba.njit(error_model="numpy")
def outer_loops(n, a, x, g):  # g = Σᵢ a[i]·x[i]ᵀ: gradc's loop form
    for r in range({R}):
        for c in range({K}):
            g[r, c] = 0.0
    for i in range(n):
        for r in range({R}):
            av = a[i, r]
            for c in range({K}):
                g[r, c] += av * x[i, c]

@numba.njit(error_model="numpy")
def outer_blas(n, a, x, g):
    np.dot(a[:n].T, x[:n], g)
"""


def _best_us(f, *args) -> float:
    f(*args)
    reps = 50
    best = float("inf")
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(reps):
            f(*args)
        best = min(best, (time.perf_counter() - t0) / reps)
    return best * 1e6


def main() -> None:
    rows = []
    rng = np.random.default_rng(0)
    for R, K in SHAPES:
        ns: dict = {}
        exec(_SOURCE.format(R=R, K=K, K4=K - K % 4), ns)
        p, x = rng.random((R, K)), rng.random((256, K))
        a, v, g = rng.random((256, R)), np.empty((256, R)), np.empty((R, K))
        for n in BATCHES:
            fl = _best_us(ns["rows_loops"], n, p, x, v)
            fb = _best_us(ns["rows_blas"], n, p, x, v)
            gl = _best_us(ns["outer_loops"], n, a, x, g)
            gb = _best_us(ns["outer_blas"], n, a, x, g)
            rows.append(
                [
                    f"{R}×{K}",
                    n,
                    n * R * K,
                    f"{fl:.2f}",
                    f"{fb:.2f}",
                    "BLAS" if fb < fl else "loops",
                    f"{gl:.2f}",
                    f"{gb:.2f}",
                    "BLAS" if gb < gl else "loops",
                ]
            )
            print(*rows[-1], flush=True)
    head = [
        "W (R×K)",
        "batch n",
        "n·R·K",
        "W·x loops µs",
        "W·x BLAS µs",
        "faster",
        "Σ δ·xᵀ loops µs",
        "Σ δ·xᵀ BLAS µs",
        "faster",
    ]
    info = machine_info()
    text = [
        "# BLAS or printed loops: where each is faster",
        "",
        "Best of 7 runs of 50 calls, one BLAS thread. `W·x`: a batch of layer inputs "
        "times a weight (gradc's loop form keeps four partial sums); `Σ δ·xᵀ`: a weight "
        "gradient summed over the batch. gradc's rule (`gradc/kernels/cpu.py`): BLAS "
        "for `W·x` from 256 multiply-adds per sample and 2,048 per batch, for `Σ δ·xᵀ` "
        "from batch 8 and 2,048 per batch.",
        "",
        info_markdown(info),
        "",
        "Command: `python benchmarks/blas_threshold.py`",
        "",
        markdown_table(head, rows),
        "",
    ]
    out = Path(__file__).resolve().parent / "results" / "blas_threshold.md"
    out.write_text("\n".join(text))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
