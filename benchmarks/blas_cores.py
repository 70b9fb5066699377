"""OpenBLAS's kernel sets on this CPU: the measurement behind gradc's BLAS choice.

NumPy's bundled OpenBLAS picks its kernels once, when loaded (on AMD's Zen 4:
its AVX-512 "SkylakeX" ones). ``gradc/kernels/blas.py`` sends float32 products
to a second instance of the same library loaded with another core type where
that was faster (``_core_wanted``). This script times, in one process and
interleaved, the gemm calls of a training step's products through NumPy's
instance and through second instances with other core types, for the peers
benchmark's layer shapes, and writes ``benchmarks/results/blas_cores.md``.

    python benchmarks/blas_cores.py [--cores Haswell,SkylakeX] [--repeats 41] [--jax]

Calls go through ctypes (~1 µs each, the same for every instance): the shapes
are large enough that this is a few per cent at most. ``--jax`` adds the same
products as jitted JAX functions (XLA's CPU dot, Eigen's gemm; the ``bench``
extra), called with ``block_until_ready`` (a few µs of dispatch each): the
products JAX's epochs in ``benchmarks/peers.py`` are made of.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, info_markdown, machine_info, markdown_table, pin_threads

pin_threads(1)

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
# (batch, in, out): x·Wᵀ forward (NT), δ·W (NN), δᵀ·x weight gradient (TN)
SHAPES = [(32, 784, 256), (256, 784, 256), (32, 512, 512), (256, 512, 512), (256, 64, 32)]
_ROW, _N, _T = 101, 111, 112


def _library() -> str:
    """The path of NumPy's bundled scipy-openblas64."""
    libs = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    paths = sorted(glob.glob(os.path.join(libs, "*scipy_openblas64_*")))
    if not paths:
        sys.exit("no scipy-openblas64 in numpy.libs: nothing to compare")
    return paths[0]


def _gemm(lib, dtype):
    """``(ta, tb, m, n, k, a, lda, b, ldb, c, ldc) → None`` through lib's CBLAS gemm."""
    fn = getattr(lib, f"scipy_cblas_{'s' if dtype == np.float32 else 'd'}gemm64_")
    flt = ctypes.c_float if dtype == np.float32 else ctypes.c_double
    i32, i64, ptr = ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p
    one, zero = flt(1.0), flt(0.0)

    def call(ta, tb, m, n, k, a, lda, b, ldb, c, ldc):
        fn(i32(_ROW), i32(ta), i32(tb), i64(m), i64(n), i64(k), one,
           ptr(a.ctypes.data), i64(lda), ptr(b.ctypes.data), i64(ldb),
           zero, ptr(c.ctypes.data), i64(ldc))  # fmt: skip

    return call


def _products(dtype, batch, n_in, n_out, rng):
    """The three products of one layer as (name, gemm arguments)."""
    x = rng.standard_normal((batch, n_in)).astype(dtype)
    W = rng.standard_normal((n_out, n_in)).astype(dtype)
    d = rng.standard_normal((batch, n_out)).astype(dtype)
    z = np.empty((batch, n_out), dtype)
    dx = np.empty((batch, n_in), dtype)
    g = np.empty((n_out, n_in), dtype)
    return [
        ("x·Wᵀ (NT)", (_N, _T, batch, n_out, n_in, x, n_in, W, n_in, z, n_out)),
        ("δ·W (NN)", (_N, _N, batch, n_in, n_out, d, n_out, W, n_in, dx, n_in)),
        ("δᵀ·x (TN)", (_T, _N, n_out, n_in, batch, d, n_out, x, n_in, g, n_in)),
    ]


def _jax_products():
    """The three products as jitted JAX functions of the gemm arguments' operands
    (``--jax``), or exit naming the missing extra."""
    # one thread, as every peer in benchmarks/peers.py (set before jax loads XLA)
    os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        sys.exit("--jax needs jax (pip install -e '.[bench]')")
    jax.config.update("jax_enable_x64", True)
    forms = {
        "x·Wᵀ (NT)": jax.jit(lambda a, b: a @ b.T),
        "δ·W (NN)": jax.jit(lambda a, b: a @ b),
        "δᵀ·x (TN)": jax.jit(lambda a, b: a.T @ b),
    }

    def make(label, gemm_args):
        fn = forms[label]
        a, b = jnp.asarray(gemm_args[5]), jnp.asarray(gemm_args[7])
        return lambda *_: fn(a, b).block_until_ready()

    return make


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cores", default="Haswell", help="other core types, comma-separated")
    ap.add_argument("--repeats", type=int, default=41)
    ap.add_argument("--jax", action="store_true", help="add JAX's jitted products (XLA, Eigen)")
    ap.add_argument("--out", default=str(HERE / "results" / "blas_cores.md"))
    args = ap.parse_args()
    sys.path.insert(0, str(HERE.parent))
    from gradc.kernels import blas

    if hasattr(os, "sched_setaffinity"):  # one core, the last (as benchmarks/peers.py)
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    path = _library()
    theirs = ctypes.CDLL(path)
    corename = theirs.scipy_openblas_get_corename64_
    corename.restype = ctypes.c_char_p
    instances = {f"NumPy's ({corename().decode()})": theirs}
    for core in [c.strip() for c in args.cores.split(",") if c.strip()]:
        own = blas._private_instance(path, core, 1)
        if own is None:
            sys.exit(f"could not load a second instance with core type {core}")
        name = own.scipy_openblas_get_corename64_
        name.restype = ctypes.c_char_p
        instances[f"{name().decode()} (second instance)"] = own
    jax_call = _jax_products() if args.jax else None
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    rows = []
    for dtype in (np.float32, np.float64):
        for batch, n_in, n_out in SHAPES:
            for label, gemm_args in _products(dtype, batch, n_in, n_out, rng):
                calls = {k: _gemm(lib, dtype) for k, lib in instances.items()}
                if jax_call is not None:
                    calls["JAX (XLA, Eigen)"] = jax_call(label, gemm_args)
                times = {k: [] for k in calls}
                for call in calls.values():
                    call(*gemm_args)  # warm: buffers, pages
                for _ in range(args.repeats):  # interleaved: noise hits all alike
                    for k, call in calls.items():
                        t0 = time.perf_counter()
                        call(*gemm_args)
                        times[k].append(time.perf_counter() - t0)
                med = {k: float(np.median(v)) * 1e6 for k, v in times.items()}
                first = next(iter(med.values()))
                row = [np.dtype(dtype).name, f"{batch}×{n_in}→{n_out}", label]
                row += [f"{v:,.1f}" for v in med.values()]
                row += [f"{first / v:.2f}" for v in list(med.values())[1:]]
                rows.append(row)
    names = list(instances) + (["JAX (XLA, Eigen)"] if jax_call is not None else [])
    headers = ["dtype", "layer (batch×in→out)", "product", *[f"{n} µs" for n in names]]
    headers += [f"NumPy's ÷ {n}" for n in names[1:]]
    wall = time.perf_counter() - started
    text = [
        "# OpenBLAS kernel sets on this CPU",
        "",
        f"Produced by `{command_line()}` in {wall:.0f} s. Median of {args.repeats} "
        "interleaved calls per product and instance, one thread, one process pinned "
        "to one CPU, "
        "through ctypes (the same ~1 µs per call for every instance). A ratio above "
        "1: the second instance (or JAX) is faster. gradc's kernels call: "
        f"{blas.BLAS}.",
        "",
        markdown_table(headers, rows),
        "",
        "## Machine",
        "",
        info_markdown(machine_info()),
        "",
    ]
    Path(args.out).write_text("\n".join(text))
    print("\n".join(text[:7]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
