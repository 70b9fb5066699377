"""kernels stage: matrix products for the generated kernels, through NumPy's own BLAS.

Numba's ``np.dot`` calls the BLAS that SciPy bundles, through its Fortran
interface. NumPy's wheels bundle their own OpenBLAS (``numpy.libs``; 0.3.31
here against SciPy's 0.3.30) and export its CBLAS interface. Called directly
from compiled code (with a transposed operand as a ``Trans`` flag, not a
copy), it was faster here on the products a training step makes, most in
float32 (one process, one thread, best of 7):

    float32  x·Wᵀ 32×784 by 784×256: 316 → 241 µs;  δᵀ·a 32×256 by 256×64: 23 → 14
    float64  x·Wᵀ 32×512 by 512×512: 481 → 462 µs;  δᵀ·a 10×256 by 256×32: 9.3 → 7.7

A product with one row or one column stays with ``np.dot``, which Numba hands to
gemv (1×784 by 784×256: 12 µs, OpenBLAS's CBLAS gemm 68).

The library is looked for once, at import; its gemm functions are declared to
LLVM under our own names (``binding.add_symbol``), so kernels that call them
still go to Numba's disk cache. Where OpenBLAS chose slower kernels than it has
for this CPU (its AVX-512 ones on AMD's Zen 4), products a·bᵀ go to a second
instance of the same library, loaded with the better ones (``_core_wanted``;
``GRADC_BLAS_CORE=numpy`` keeps NumPy's instance, ``GRADC_BLAS_CORE=<core>``
asks for a core type); its threads are set by ``set_threads``, not by
``threadpoolctl``. Without CBLAS (another NumPy build, or ``GRADC_BLAS=numba``)
``matmul`` is Numba's ``np.dot``. ``BLAS`` names what ``matmul`` calls; the
kernel printer writes it into each module's source, so a kernel cached with one
BLAS is never loaded with the other.

With CBLAS, a training kernel may also fold plain gradient descent into a
weight's gradient product (``matmul_acc``: gemm with β = 1 adds −η·Σₙ δₙxₙᵀ
straight into W), so the gradient is never stored nor read again (``FOLDS``;
its norm then comes from Gram matrices: ``runtime.gram_sq``).
"""

from __future__ import annotations

import ctypes
import glob
import os
from collections.abc import Callable
from typing import NamedTuple

import numba
import numpy as np
from llvmlite import binding, ir
from numba.core import cgutils, types
from numba.extending import intrinsic

__all__ = [
    "BLAS",
    "FOLDS",
    "THIN",
    "gemm_rows",
    "gemm_rows_nt",
    "gemv_rows",
    "matmul",
    "matmul_acc",
    "set_threads",
]

# CBLAS enum values (cblas.h)
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_FLOATS = {"float32": "s", "float64": "d"}  # CBLAS's prefix letter


class _Cblas(NamedTuple):
    """The CBLAS gemm functions kernels call, by float type, their integer width and
    which OpenBLAS instance answers them."""

    gemm: dict[str, str]  # "float32"/"float64" → the name LLVM resolves (our alias)
    gemm_nt: dict[str, str]  # the same, for products a·bᵀ (see _core_wanted)
    gemv: dict[str, str]  # the matrix-vector products (NumPy's instance)
    bits: int
    source: str  # the instances, in words (part of ``BLAS``)
    set_threads: list[Callable[[int], None]]  # each instance's thread setting
    get_threads: Callable[[], int] | None  # NumPy's instance's reading


# OpenBLAS picks its AVX-512 kernels (SkylakeX) for AMD's Zen 4, which runs AVX-512
# as two 256-bit halves. There its AVX2 kernels (Haswell) were faster on products
# whose right operand is a transpose, a·bᵀ (a layer's forward x·Wᵀ), and not on
# the others (EPYC family 25, one thread, medians of interleaved calls,
# ``benchmarks/results/blas_cores.md``): x·Wᵀ float32 32×784 by 784×256 225 →
# 153 µs, 256 rows 1,067 → 960, float64 32×512 by 512×512 472 → 379; but δ·W
# float32 256×256 by 256×784 1,028 → 1,211, δᵀ·x float64 512×32 by 32×512 404 →
# 512. NumPy's instance picked its kernels when it was loaded; a·bᵀ products then
# go to a second instance of the same library file, loaded with the better
# choice (``_private_instance``), every other product to NumPy's.
_AVX512_CORES = ("skylakex", "cooperlake", "sapphirerapids")
_ZEN_AVX512_FAMILIES = ("25",)  # Zen 3 / Zen 4 (Zen 3 has no AVX-512: never SkylakeX)


def _cpu_field(name: str) -> str:
    """A field of /proc/cpuinfo's first processor ("" where there is none)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return ""


def _core_wanted(corename: str) -> str | None:
    """The OpenBLAS core type kernels should run with, where it differs from the one
    NumPy's instance chose (``corename``). ``GRADC_BLAS_CORE`` overrides ("numpy":
    NumPy's instance as it is; a core name: that one; "auto", the default: this
    rule), as does the caller's own ``OPENBLAS_CORETYPE`` (NumPy's instance
    honoured it)."""
    forced = os.environ.get("GRADC_BLAS_CORE", "").strip()
    if forced.lower() == "auto":
        forced = ""
    if forced.lower() == "numpy" or os.environ.get("OPENBLAS_CORETYPE"):
        return None
    if forced:
        return None if forced.lower() == corename.lower() else forced
    amd_avx512 = (
        corename.lower() in _AVX512_CORES
        and _cpu_field("vendor_id") == "AuthenticAMD"
        and _cpu_field("cpu family") in _ZEN_AVX512_FAMILIES
    )
    return "Haswell" if amd_avx512 else None


_MEMFDS: list[int] = []  # the memory files second instances were loaded from


def _private_instance(path: str, core: str, threads: int) -> ctypes.CDLL | None:
    """A second instance of the OpenBLAS at ``path``, initialised with core type
    ``core`` and ``threads`` threads; None where that cannot be had.

    The dynamic loader shares a library loaded twice from one file, so the file is
    copied into an anonymous memory file (Linux's memfd: nothing on disk; ~10 ms
    for 25 MB) and loaded from there. OpenBLAS reads OPENBLAS_CORETYPE and
    OPENBLAS_NUM_THREADS once, when loaded: they are set around the load only."""
    if not hasattr(os, "memfd_create") or not hasattr(os, "sendfile"):
        return None
    saved = {key: os.environ.get(key) for key in ("OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS")}
    fd = -1
    try:
        fd = os.memfd_create("gradc-openblas")
        with open(path, "rb") as src:
            size, done = os.fstat(src.fileno()).st_size, 0
            while done < size:
                done += os.sendfile(fd, src.fileno(), done, size - done)
        os.environ["OPENBLAS_CORETYPE"] = core
        os.environ["OPENBLAS_NUM_THREADS"] = str(threads)
        lib = ctypes.CDLL(f"/proc/self/fd/{fd}", mode=os.RTLD_LOCAL | os.RTLD_NOW)
    except OSError:
        if fd >= 0:
            os.close(fd)
        return None
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    # kept open: the loader knows a library by its path, and a closed fd's number
    # comes back, so a later load from /proc/self/fd/<it> would get this one
    _MEMFDS.append(fd)
    return lib


def _c_function(lib: ctypes.CDLL, name: str, restype):
    """``lib``'s function ``name`` with that return type, or None."""
    fn = getattr(lib, name, None)
    if fn is not None:
        fn.restype = restype
    return fn


def _find_cblas() -> _Cblas | None:
    """The gemm functions of NumPy's bundled OpenBLAS (or of a second instance of it
    with better kernels for this CPU), registered with LLVM under our own names;
    None if there is none to use."""
    if os.environ.get("GRADC_BLAS", "").lower() == "numba":
        return None
    libs = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    for path in sorted(glob.glob(os.path.join(libs, "*openblas*"))):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        # scipy-openblas64 (NumPy ≥ 2 wheels): prefixed names, 64-bit integers
        for prefix, suffix, bits in (("scipy_", "64_", 64), ("", "64_", 64), ("scipy_", "", 32)):
            names = {dt: f"{prefix}cblas_{letter}gemm{suffix}" for dt, letter in _FLOATS.items()}
            wanted = [*names.values(), *(n.replace("gemm", "gemv") for n in names.values())]
            if not all(hasattr(lib, name) for name in wanted):
                continue
            corename_fn = _c_function(
                lib, f"{prefix}openblas_get_corename{suffix}", ctypes.c_char_p
            )
            threads_fn = _c_function(lib, f"{prefix}openblas_get_num_threads{suffix}", ctypes.c_int)
            corename = corename_fn().decode() if corename_fn else ""
            core = _core_wanted(corename) if corename_fn and threads_fn else None
            own = _private_instance(path, core, threads_fn()) if core else None
            own_core = _c_function(own, corename_fn.__name__, ctypes.c_char_p) if own else None
            if own_core is None or own_core().decode().lower() != core.lower():
                own = None  # (it would not take that core type)
            theirs = f"NumPy's OpenBLAS, {corename or 'its'} kernels"
            source = f"{theirs}; a·bᵀ products a second instance, {core} kernels" if own else theirs
            # our own names for the chosen instances' functions: code cached by Numba
            # refers to these, whichever instance a later process picks
            aliases: dict[str, dict[str, str]] = {"gemm": {}, "gemm_nt": {}, "gemv": {}}
            for kind, instance in (("gemm", lib), ("gemm_nt", own or lib), ("gemv", lib)):
                for dt, name in names.items():
                    name = name.replace("gemm", kind[:4])  # cblas_?gemm… or cblas_?gemv…
                    alias = f"gradc_cblas_{_FLOATS[dt]}{kind}_i{bits}"
                    address = ctypes.cast(getattr(instance, name), ctypes.c_void_p).value
                    binding.add_symbol(alias, address)
                    aliases[kind][dt] = alias
            setters = [
                _c_function(instance, f"{prefix}openblas_set_num_threads{suffix}", None)
                for instance in ((lib, own) if own else (lib,))
            ]
            setters = [fn for fn in setters if fn is not None]
            return _Cblas(
                aliases["gemm"],
                aliases["gemm_nt"],
                aliases["gemv"],
                bits,
                source,
                setters,
                threads_fn,
            )
    return None


def set_threads(count: int) -> int:
    """Set the threads of the BLAS the kernels call (NumPy's OpenBLAS, and a second
    instance where there is one: ``threadpoolctl`` does not see that); returns the
    count NumPy's had (1 without CBLAS).

    Example: ``previous = set_threads(1); ...; set_threads(previous)``."""
    if _CBLAS is None or _CBLAS.get_threads is None:
        return 1
    previous = int(_CBLAS.get_threads())
    for setter in _CBLAS.set_threads:
        setter(ctypes.c_int(count))
    return previous


_CBLAS = _find_cblas()
BLAS = (
    f"{_CBLAS.source} ({', '.join([*_CBLAS.gemm.values(), *_CBLAS.gemm_nt.values()])})"
    if _CBLAS
    else "Numba np.dot"
)
# whether ``matmul_acc`` adds into its output in place (gemm's β = 1), so that a
# kernel gains by folding an update into a product
FOLDS = _CBLAS is not None


def _cblas_operands(dtype, *arrays) -> bool:
    """Whether these are 2-d arrays of one float type CBLAS takes (else the
    intrinsic declines and Numba reports a typing error)."""
    return (
        _CBLAS is not None
        and dtype in (types.float32, types.float64)
        and all(isinstance(x, types.Array) and x.ndim == 2 and x.dtype == dtype for x in arrays)
    )


def _cblas_codegen(name: str, dtype, kinds: str):
    """The codegen of a call to the CBLAS function ``name`` whose arguments are,
    after the row-major order flag, of the ``kinds``: ``e`` an enum, ``i`` an
    integer, ``f`` a float scalar (arriving as float64), ``a`` an array (its data
    pointer is passed)."""
    bits = _CBLAS.bits

    def codegen(context, builder, signature, args):
        flt = context.get_value_type(dtype)
        i32, iN = ir.IntType(32), ir.IntType(bits)
        lowered = {
            "e": (i32, lambda v, ty: builder.trunc(v, i32)),
            "i": (iN, lambda v, ty: builder.trunc(v, iN) if bits == 32 else v),
            "f": (
                flt,
                lambda v, ty: builder.fptrunc(v, flt) if dtype == types.float32 else v,
            ),
            "a": (
                flt.as_pointer(),
                lambda v, ty: context.make_array(ty)(context, builder, v).data,
            ),
        }
        fnty = ir.FunctionType(ir.VoidType(), [i32] + [lowered[k][0] for k in kinds])
        fn = cgutils.get_or_insert_function(builder.module, fnty, name)
        values = [lowered[k][1](v, ty) for k, v, ty in zip(kinds, args, signature.args)]
        builder.call(fn, [ir.Constant(i32, _ROW_MAJOR), *values])
        return context.get_dummy_value()

    return codegen


def _gemm_intrinsic(functions: str, rows_only: bool = False):
    """A gemm intrinsic calling the ``_CBLAS`` field ``functions`` (by float type);
    with ``rows_only`` it takes C-contiguous arrays only (the kernels' own buffers,
    whose leading dimensions the printer writes as literals)."""

    @intrinsic
    def gemm(typingctx, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        if not _cblas_operands(getattr(c, "dtype", None), a, b, c):
            return None  # gemm reads and writes one float type
        if rows_only and any(x.layout != "C" for x in (a, b, c)):
            return None
        name = getattr(_CBLAS, functions)[str(c.dtype)]
        intp, f64 = types.intp, types.float64
        sig = types.void(intp, intp, intp, intp, intp, f64, a, intp, b, intp, f64, c, intp)
        return sig, _cblas_codegen(name, c.dtype, "eeiiifaiaifai")

    return gemm


# c ← alpha·op(a)·op(b) + beta·c by CBLAS ?gemm (row-major): ``ta``/``tb`` are the
# CBLAS transpose flags, a, b, c arrays whose data pointers are passed. ``_gemm_nt``
# for a·bᵀ (ta no transpose, tb transpose), which may go to another instance.
_gemm = _gemm_intrinsic("gemm")
_gemm_nt = _gemm_intrinsic("gemm_nt")

# The same for generated kernels, which call them straight (``THIN``): a kernel
# calling ``matmul`` links its compiled code (layout checks, fallbacks, scratch
# arrays) into its own and re-optimises it, ~0.2 s of compile per call site; an
# intrinsic is one external call. 64-32-10's training kernel: 4.5 → 3.5 s.
gemm_rows = _gemm_intrinsic("gemm", rows_only=True)
gemm_rows_nt = _gemm_intrinsic("gemm_nt", rows_only=True)


@intrinsic
def gemv_rows(typingctx, ta, m, n, alpha, a, lda, x, incx, beta, y, incy):
    """y ← alpha·op(a)·x + beta·y by CBLAS ?gemv (row-major; C-contiguous arrays,
    their data pointers passed; x and y any rows or columns, by their increments).
    OpenBLAS's gemm is several times slower on one row (1×784 by 784×256: 68
    against 12 µs)."""
    if not _cblas_operands(getattr(y, "dtype", None), a, x, y):
        return None
    if any(arr.layout != "C" for arr in (a, x, y)):
        return None
    name = _CBLAS.gemv[str(y.dtype)]
    intp, f64 = types.intp, types.float64
    sig = types.void(intp, intp, intp, f64, a, intp, x, intp, f64, y, intp)
    return sig, _cblas_codegen(name, y.dtype, "eiifaiaifai")


# whether kernels call CBLAS straight (gemm_rows, gemv_rows) rather than matmul
THIN = _CBLAS is not None


# _nrt=True stated, not left to the default: a function that does not state it
# inherits the setting of the first kernel that calls it (Numba's flag
# inheritance), and the training kernels run without reference counting, where
# np.dot(a, b, out) and ascontiguousarray cannot compile; Numba's disk cache
# then keeps whichever version came first.
@numba.njit(cache=True, _nrt=True)
def _operand(x, itemsize):
    """(CBLAS flag, leading dimension) of a 2-d operand read as row-major, or (0, 0)
    when its layout is neither row-major nor a transpose of one."""
    rows, cols = x.shape
    s0, s1 = x.strides
    if s1 == itemsize and s0 >= max(1, cols) * itemsize and s0 % itemsize == 0:
        return _NO_TRANS, s0 // itemsize
    if s0 == itemsize and s1 >= max(1, rows) * itemsize and s1 % itemsize == 0:
        return _TRANS, s1 // itemsize
    if rows == 1 and s1 == itemsize:  # one row: any row stride
        return _NO_TRANS, max(1, cols)
    if cols == 1 and s0 == itemsize:  # one column: any column stride
        return _TRANS, max(1, rows)
    return 0, 0


# OpenBLAS's float32 gemm (0.3.31, SkylakeX kernels, on this AMD EPYC) is slow on a
# short, wide product whose right operand is a transpose: a batch's forward
# product x·Wᵀ. The same product written as its transpose, W·xᵀ, into a scratch
# block and copied back, took (one thread, medians; x batch×in, W out×in):
#     x·Wᵀ  8×784 by 784×256: 126 → 66 µs;  32×784 by 784×256: 217 → 149
#           32×512 by 512×512: 281 → 197;   64×784 by 784×256: 334 → 285
# From 128 rows on, or with fewer than 128 columns, or in float64, the copy costs
# more than it saves (256×784 by 784×256: 1,055 → 1,122; float64 32×784 by
# 784×256: 299 → 313), so only that corner takes the detour. With the Haswell
# kernels of a second instance (above) the gap is smaller, the detour still
# gaining up to 32 rows (8×784 by 784×256: 59 → 47; 32 rows 146 → 137; 512×512
# 8 rows 79 → 65) and even at 64 (260 against 261).
TRANSPOSED_MAX_ROWS = 64
TRANSPOSED_MIN_COLS = 128


@numba.njit(cache=True, error_model="numpy", _nrt=True)
def _gemm_transposed(a, lda, b, ldb, out, alpha):
    """out ← alpha·a·b for a row-major a and a transposed b (b = Wᵀ), by the
    transposed product W·aᵀ into a scratch block, then copied back."""
    m, k, n = a.shape[0], a.shape[1], b.shape[1]
    scratch = np.empty((n, m), out.dtype)
    # b.T is W itself (row-major, leading dimension ldb): the same data pointer
    _gemm_nt(_NO_TRANS, _TRANS, n, m, k, float(alpha), b.T, ldb, a, lda, 0.0, scratch, max(m, 1))
    # plain loops, not ``out[:, :] = scratch.T``: a kernel that calls matmul links
    # this function's code into its own module, and Numba's generic array
    # assignment made every such kernel's compile ~0.45 s longer (64-32-10's
    # training kernel: 4.6 → 5.1 s); as fast here
    for i in range(m):
        for j in range(n):
            out[i, j] = scratch[j, i]


# The same OpenBLAS (float64, its Haswell kernels here) is slow, too, on a product
# x·Wᵀ with a small, narrow W: a hidden or output layer of a small network. With W
# copied row-major first, as a plain product x·(Wᵀ), it took (one thread, medians,
# time copied ÷ time as is; x rows×in, W out×in):
#     in→out      32 rows  64 rows  256 rows
#     64→10         0.78     0.70     0.60
#     256→10        0.68     0.60     0.50
#     16→16         0.84     0.77     0.66
#     64→32         0.94     0.87     0.81
#     64→48         0.97     0.92     0.85
#     128→32        1.03     0.91     1.09    (4,096 entries: left as is)
#     64→64         1.37     1.16     1.17
#     784→10        0.83     0.69     1.10    (7,840 entries: left as is)
# and from 16 rows down the copy costs more than it saves (64→32: 1.06 at 16 rows).
# In float32 the gains are smaller and mixed (0.71–1.38), so it keeps the product.
COPIED_MAX_ENTRIES = 4096  # W's entries: fewer than this
COPIED_MAX_OUT = 48  # W's rows (the product's columns): at most this
COPIED_MIN_ROWS = 32  # the product's rows: at least this


@numba.njit(cache=True, error_model="numpy", _nrt=True)
def _gemm_b_copied(a, lda, b, out, ldc, alpha, beta):
    """out ← alpha·a·b + beta·out for a row-major a and a small transposed b (b = Wᵀ),
    with b copied row-major first."""
    m, k, n = a.shape[0], a.shape[1], b.shape[1]
    copy = np.empty((k, n), out.dtype)
    w = b.T  # W itself, row-major: read along its rows
    for j in range(n):
        for i in range(k):
            copy[i, j] = w[j, i]
    _gemm(
        _NO_TRANS, _NO_TRANS, m, n, k, float(alpha), a, lda, copy, max(n, 1), float(beta), out, ldc
    )


@numba.njit(cache=True, error_model="numpy", _nrt=True)
def _gemm_into(a, b, out, alpha, beta):
    """out ← alpha·a·b + beta·out by one CBLAS gemm; False (nothing done) when a
    layout is one gemm cannot take."""
    size = out.itemsize
    ta, lda = _operand(a, size)
    tb, ldb = _operand(b, size)
    tc, ldc = _operand(out, size)
    if ta == 0 or tb == 0 or tc != _NO_TRANS:
        return False
    m, n, k = a.shape[0], b.shape[1], a.shape[1]
    if (
        size == 4
        and beta == 0.0
        and ta == _NO_TRANS
        and tb == _TRANS
        and m <= TRANSPOSED_MAX_ROWS
        and n >= TRANSPOSED_MIN_COLS
    ):
        _gemm_transposed(a, lda, b, ldb, out, alpha)
        return True
    if (
        size == 8
        and ta == _NO_TRANS
        and tb == _TRANS
        and k * n < COPIED_MAX_ENTRIES
        and n <= COPIED_MAX_OUT
        and m >= COPIED_MIN_ROWS
    ):
        _gemm_b_copied(a, lda, b, out, ldc, alpha, beta)
        return True
    if ta == _NO_TRANS and tb == _TRANS:
        _gemm_nt(ta, tb, m, n, k, float(alpha), a, lda, b, ldb, float(beta), out, ldc)
    else:
        _gemm(ta, tb, m, n, k, float(alpha), a, lda, b, ldb, float(beta), out, ldc)
    return True


@numba.njit(cache=True, error_model="numpy", _nrt=True)
def _matmul_cblas(a, b, out):
    """out = a · b through CBLAS gemm; np.dot for layouts gemm cannot take, and for
    a product with one row or one column, which Numba hands to gemv (OpenBLAS's
    gemm is several times slower there: 1×784 by 784×256, 68 against 12 µs)."""
    if a.shape[0] == 1 or b.shape[1] == 1 or not _gemm_into(a, b, out, 1.0, 0.0):
        np.dot(a, b, out)


@numba.njit(cache=True, error_model="numpy", _nrt=True)
def _matmul_dot(a, b, out):
    """out = a · b through Numba's np.dot."""
    np.dot(a, b, out)


# out = a · b (2-d arrays, out C-contiguous), compiled once per machine for each
# combination of array layouts. Kernels call this rather than ``np.dot``, whose
# code Numba would type and lower again at every call site (~65 ms each, ~0.5 s
# for the first in a process).
matmul = _matmul_cblas if _CBLAS else _matmul_dot


@numba.njit(cache=True, error_model="numpy", _nrt=True)
def _matmul_acc_cblas(a, b, out, alpha):
    """out += alpha · a · b by one gemm (β = 1): no product is stored apart."""
    if not _gemm_into(a, b, out, alpha, 1.0):
        out += alpha * np.dot(a, b)


@numba.njit(cache=True, error_model="numpy", _nrt=True)
def _matmul_acc_dot(a, b, out, alpha):
    """out += alpha · a · b (the product in a temporary: np.dot has no β)."""
    out += alpha * np.dot(a, b)


# out += alpha · a · b (2-d arrays, out C-contiguous)
matmul_acc = _matmul_acc_cblas if _CBLAS else _matmul_acc_dot
