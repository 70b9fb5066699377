"""kernels stage: small fixed Numba helpers that generated kernels import."""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from .blas import gemm_rows, gemm_rows_nt, gemv_rows, matmul, matmul_acc

__all__ = [
    "abs_bound",
    "copy_into",
    "gemm_rows",
    "gemm_rows_nt",
    "gemv_rows",
    "gram_sq",
    "matmul",
    "matmul_acc",
    "max_abs",
    "vexp",
    "fill_zero",
    "fill_zero_each",
    "gather_rows",
    "gather_columns",
    "entries_finite",
    "local_matrix",
    "local_row",
    "rows_finite",
    "seed_base",
    "shuffle_epoch",
    "shuffle_rows",
    "step_failure",
    "sum_squares",
    "sum_squares_into",
]

# What generated kernels link from here and from blas.py, as a digest their source
# carries: Numba's disk cache checks a kernel's own file only, so without it a
# kernel cached before these helpers changed (a gradc upgrade) kept their old code.
RUNTIME_DIGEST = hashlib.sha256(
    b"".join((Path(__file__).parent / f).read_bytes() for f in ("runtime.py", "blas.py"))
).hexdigest()[:12]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


# fit shuffles epoch e with the seed (seed·SEED_STRIDE + e) mod 2⁶³ (documented:
# a run can be replayed, and a kernel call may span several epochs)
SEED_STRIDE = 1_000_003
_SEED_MASK = np.uint64(2**63 - 1)


@functools.lru_cache(maxsize=64)  # fit asks at every call: ~0.3 µs each
def seed_base(seed: int) -> np.uint64:
    """(seed·SEED_STRIDE) mod 2⁶³: epoch e's shuffle seed is (seed_base + e) mod 2⁶³.

    >>> int(seed_base(5)) == 5 * 1_000_003
    True
    """
    return np.uint64((int(seed) * SEED_STRIDE) % 2**63)


def _stack_array(shape: tuple[int, ...], elem):
    """(array type, codegen) of a C-contiguous array of this literal ``shape`` on the
    calling kernel's stack, in its entry block (cgutils does that), so it is
    allocated once per call."""
    array_type = types.Array(elem, len(shape), "C")

    def codegen(context, builder, signature, args):
        item = context.get_data_type(elem)
        storage = cgutils.alloca_once(builder, ir.ArrayType(item, math.prod(shape)))
        intp = context.get_value_type(types.intp)
        size = context.get_abi_sizeof(item)
        strides = [size * math.prod(shape[k + 1 :]) for k in range(len(shape))]
        array = context.make_array(array_type)(context, builder)
        context.populate_array(
            array,
            data=builder.bitcast(storage, item.as_pointer()),
            shape=[ir.Constant(intp, extent) for extent in shape],
            strides=[ir.Constant(intp, stride) for stride in strides],
            itemsize=ir.Constant(intp, size),
            meminfo=None,
        )
        return array._getvalue()

    return array_type, codegen


@intrinsic
def local_row(typingctx, entries, dtype):
    """A 1-d array of ``entries`` (a literal) numbers of ``dtype``, on the calling
    kernel's stack: one sample's values in a sample loop.

    An argument buffer may alias every other array as far as LLVM knows, so each
    store to it reloads the weights; a stack row aliases nothing, and once its
    literal-extent loops are unrolled its entries live in registers (3-4-2 at
    batch 1: ~20 % of a training step).
    """
    if not isinstance(entries, types.IntegerLiteral) or not isinstance(dtype, types.NumberClass):
        return None
    row, codegen = _stack_array((entries.literal_value,), dtype.instance_type)
    return row(entries, dtype), codegen


@intrinsic
def local_matrix(typingctx, rows, cols, dtype):
    """A C-contiguous ``rows`` × ``cols`` array (literals) of ``dtype`` on the calling
    kernel's stack: a small weight copied row-major before a product
    (``blas.COPIED_MAX_ENTRIES``)."""
    extents = (rows, cols)
    if not all(isinstance(x, types.IntegerLiteral) for x in extents) or not isinstance(
        dtype, types.NumberClass
    ):
        return None
    shape = tuple(x.literal_value for x in extents)
    matrix, codegen = _stack_array(shape, dtype.instance_type)
    return matrix(rows, cols, dtype), codegen


@numba.njit(cache=True)
def shuffle_epoch(perm, nrows, base, epoch):
    """The sample order of ``epoch``: shuffle_rows with the seed (base + epoch) mod 2⁶³."""
    shuffle_rows(perm, nrows, (np.uint64(base) + np.uint64(epoch)) & _SEED_MASK)


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


# The helpers below are the same for every network, so Numba compiles them once
# per machine (cache=True) and a network's kernels only call them: each loop
# printed into a training kernel costs ~60 ms of Numba compile time, a call
# costs almost nothing. They allocate nothing (hence no reference counting).
_LIGHT = {"cache": True, "error_model": "numpy", "_nrt": False}


@numba.njit(**_LIGHT, fastmath={"reassoc"})
def sum_squares(a):
    """Σ a² over a 2-d array, as a float64. Each row sums in the array's own type,
    in any order (``reassoc``: LLVM vectorises the loop; 256×784 float32 55 → 9 µs
    here, float64 43 → 18, against four scalar partial sums); if that overflows
    (or an entry is inf or NaN) the whole sum is taken again in float64, so the
    result is non-finite only when Σ a² is. A column keeps four partial sums in
    float64 (one running sum waits ~4 cycles per entry; its strided loop does not
    vectorise). Plain loops: ``reshape`` calls into C."""
    rows, cols = a.shape
    if cols == 1:
        s0 = s1 = s2 = s3 = 0.0
        body = rows - rows % 4
        for k in range(0, body, 4):
            x0, x1 = np.float64(a[k, 0]), np.float64(a[k + 1, 0])
            x2, x3 = np.float64(a[k + 2, 0]), np.float64(a[k + 3, 0])
            s0 += x0 * x0
            s1 += x1 * x1
            s2 += x2 * x2
            s3 += x3 * x3
        for k in range(body, rows):
            x0 = np.float64(a[k, 0])
            s0 += x0 * x0
        return (s0 + s1) + (s2 + s3)
    total = 0.0
    for r in range(rows):
        row = a.dtype.type(0.0)
        for k in range(cols):
            row += a[r, k] * a[r, k]
        total += row
    if total < math.inf:
        return total
    return _squares_float64(a)


@numba.njit(**_LIGHT, fastmath={"reassoc"})
def _squares_float64(a):
    """Σ a² with every entry widened to float64 first (sum_squares' slow path)."""
    total = 0.0
    for r in range(a.shape[0]):
        for k in range(a.shape[1]):
            x = np.float64(a[r, k])
            total += x * x
    return total


@numba.njit(**_LIGHT)
def max_abs(a):
    """max |a| over a 2-d array; +inf when an entry is inf or NaN."""
    m = 0.0
    for r in range(a.shape[0]):
        for c in range(a.shape[1]):
            v = abs(a[r, c])
            if v > m:
                m = v
            elif v != v:  # NaN: no comparison is true
                return math.inf
    return m


@numba.njit(**_LIGHT)
def abs_bound(a):
    """A bound on max |a| over a 2-d array: its norm √Σa² (the faster pass), or
    max |a| itself when the sum of squares overflows; inf exactly when an entry is
    inf or NaN."""
    sq = sum_squares(a)
    if sq < math.inf:
        return math.sqrt(sq)
    return max_abs(a)


@numba.njit(**_LIGHT)
def fill_zero(a):
    """a[...] = 0 for a 2-d array (slice assignment compiles slowly)."""
    for r in range(a.shape[0]):
        for c in range(a.shape[1]):
            a[r, c] = 0


@numba.njit(**_LIGHT)
def copy_into(dst, src):
    """dst[...] = src for 2-d arrays of one shape (slice assignment compiles slowly)."""
    for r in range(src.shape[0]):
        for c in range(src.shape[1]):
            dst[r, c] = src[r, c]


@numba.njit(**_LIGHT, fastmath={"reassoc"})
def rows_finite(a):
    """Whether every entry of a 2-d array is finite: Σ (x − x) is 0, or NaN when an
    entry is inf or NaN. Zeros add up to exactly 0 in any order, so ``reassoc``
    (which lets LLVM vectorise the sum) changes nothing; no ``nnan``/``ninf``,
    which would fold x − x to 0."""
    acc = a.dtype.type(0.0)
    for r in range(a.shape[0]):
        for c in range(a.shape[1]):
            acc += a[r, c] - a[r, c]
    return acc == 0.0


@numba.njit(**_LIGHT)
def step_failure(loss, total):
    """A training step's status once its one finiteness test failed (the loss,
    the gradients' squared norms and the new parameter values, summed): 1 the
    loss, else 2 a gradient norm, else 3 a new parameter value is not finite."""
    if not math.isfinite(loss):
        return 1
    if not math.isfinite(total):
        return 2
    return 3


@numba.njit(**_LIGHT, fastmath={"reassoc"})
def entries_finite(a):
    """Whether every entry of a C-contiguous array is finite: rows_finite over its
    entries as one row (a view made here, not in Python: ~0.15 µs less a call)."""
    return rows_finite(a.reshape((1, a.size)))


@numba.njit(**_LIGHT, fastmath={"reassoc"})
def pair_finite(a, b):
    """Whether every entry of two C-contiguous arrays is finite (fit's X and Y in
    one call: ~0.3 µs less than two)."""
    return entries_finite(a) and entries_finite(b)


@numba.njit(**_LIGHT)
def gather_rows(dst, src, perm, lo, n):
    """dst[i] = src[perm[lo + i]] for i < n: one shuffled mini-batch."""
    for i in range(n):
        row = perm[lo + i]
        for j in range(src.shape[1]):
            dst[i, j] = src[row, j]


# ‖aᵀ·b‖² of a weight gradient Σₙ δₙxₙᵀ that is never formed (folded into its
# update) from the batch's Gram matrices, Σᵢⱼ (aᵢ·aⱼ)(bᵢ·bⱼ), in 4×4 blocks of
# row pairs: each step of a block's loop loads 8 entries for 16 multiply-adds,
# which LLVM vectorises along the row (``reassoc``). Against the two upper
# triangles by OpenBLAS's syrk (µs, δ n×256 and x n×784, one thread): float32
# n = 32: 38 → 16, n = 64: 96 → 53; float64 n = 32: 57 → 24, n = 64: 152 → 86.
_GRAM = {**_LIGHT, "fastmath": {"reassoc", "contract"}}


@numba.njit(**_GRAM)
def _gram_block(a, i, j):
    """The 16 dot products aᵢ₊ₚ·aⱼ₊q (p, q < 4), in the array's own type."""
    zero = a.dtype.type(0.0)
    s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = zero
    s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = zero
    for k in range(a.shape[1]):
        x0, x1, x2, x3 = a[i, k], a[i + 1, k], a[i + 2, k], a[i + 3, k]
        y0, y1, y2, y3 = a[j, k], a[j + 1, k], a[j + 2, k], a[j + 3, k]
        s00 += x0 * y0
        s01 += x0 * y1
        s02 += x0 * y2
        s03 += x0 * y3
        s10 += x1 * y0
        s11 += x1 * y1
        s12 += x1 * y2
        s13 += x1 * y3
        s20 += x2 * y0
        s21 += x2 * y1
        s22 += x2 * y2
        s23 += x2 * y3
        s30 += x3 * y0
        s31 += x3 * y1
        s32 += x3 * y2
        s33 += x3 * y3
    return (s00, s01, s02, s03, s10, s11, s12, s13, s20, s21, s22, s23, s30, s31, s32, s33)


@numba.njit(**_GRAM)
def _row_dot(a, i, j):
    """aᵢ·aⱼ in the array's own type."""
    s = a.dtype.type(0.0)
    for k in range(a.shape[1]):
        s += a[i, k] * a[j, k]
    return s


@numba.njit(**_GRAM)
def gram_sq(a, b):
    """‖aᵀ·b‖² (squared Frobenius norm) for a (n×r), b (n×c), without forming aᵀ·b:
    Σᵢⱼ (aᵢ·aⱼ)(bᵢ·bⱼ) over row pairs, n²·(r + c)/2 multiply-adds instead of
    r·c·n. Dot products in the arrays' type, their products summed in float64;
    if that overflows (or an entry is inf or NaN) it is taken again from float64
    entries, so the result is non-finite only when the norm is. Never below 0
    (the sum of a positive semidefinite Hadamard product, whatever rounding says).
    """
    n = a.shape[0]
    body = n - n % 4
    total = 0.0
    for i in range(0, body, 4):
        for j in range(i, body, 4):  # blocks on or above the diagonal
            pa = _gram_block(a, i, j)
            pb = _gram_block(b, i, j)
            s = 0.0
            for q in range(16):
                s += float(pa[q]) * float(pb[q])
            # a block above the diagonal stands for its mirror image too; a
            # diagonal block holds both entries of each of its pairs already
            total += s if i == j else 2.0 * s
    for i in range(body, n):  # the last n mod 4 rows, each pair once
        for j in range(i + 1):
            s = float(_row_dot(a, i, j)) * float(_row_dot(b, i, j))
            total += s if i == j else 2.0 * s
    if total < math.inf:
        return max(total, 0.0)
    return _gram_sq_float64(a, b)


@numba.njit(**_LIGHT, fastmath={"reassoc"})
def _gram_sq_float64(a, b):
    """``gram_sq`` with every entry widened to float64 first (its slow path)."""
    total = 0.0
    for i in range(a.shape[0]):
        for j in range(i + 1):
            sa = sb = 0.0
            for k in range(a.shape[1]):
                sa += np.float64(a[i, k]) * np.float64(a[j, k])
            for k in range(b.shape[1]):
                sb += np.float64(b[i, k]) * np.float64(b[j, k])
            total += sa * sb if i == j else 2.0 * sa * sb
    return max(total, 0.0)


@numba.njit(**_LIGHT)
def gather_columns(dst, src, perm, lo, n, shuffle):
    """dst[:, i] = src[row] for i < n, row = perm[lo + i] (or lo + i unshuffled): one
    mini-batch with the sample index innermost, for the batch-innermost kernels."""
    for i in range(n):
        row = perm[lo + i] if shuffle else lo + i
        for j in range(src.shape[1]):
            dst[j, i] = src[row, j]


@numba.njit(**_LIGHT)
def sum_squares_into(out, cols, arrays):
    """out[cols[k]] = Σ arrays[k]² for a tuple of 2-d arrays; returns the sum of them.

    One call for all of a network's gradients: at the size of a tiny network's
    step, each call (~10 ns, Numba does not inline across modules) counts.
    """
    total = 0.0
    for k in range(len(arrays)):
        sq = sum_squares(arrays[k])
        out[cols[k]] = sq
        total += sq
    return total


@numba.njit(**_LIGHT)
def fill_zero_each(arrays):
    """fill_zero on every array of a tuple."""
    for k in range(len(arrays)):
        fill_zero(arrays[k])


# --------------------------------------------------------------------------- vexp
# exp as straight-line LLVM IR at each call site. Numba's math.exp calls libm
# once per element (~10 ns, never vectorised; no SVML here); this form has no
# call and no branch, so LLVM vectorises a sigmoid loop 4 doubles at a time
# (measured ~3× faster per element). Accuracy: at most 1 ulp against numpy.exp
# over the whole double range (tests/test_kernels.py checks it), denormal
# results included; inf, -inf and NaN behave as exp does.
_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # trailing zeros: k·LN2_HI is exact
_LN2_LO = 1.90821492927058770002e-10
_EXP_OVERFLOW = 709.782712893384  # above: inf
_EXP_UNDERFLOW = -745.1332191019412  # below: 0
_TAYLOR = [1.0 / math.factorial(n) for n in range(14)]  # |r| ≤ ln2/2: error < 1e-17


@dataclass(frozen=True)
class _Format:
    """What exp's IR needs to know of a float type."""

    float_type: ir.Type
    int_type: ir.IntType
    clamp: tuple[float, float]  # inputs beyond give 0 or inf anyway
    ln2: tuple[float, float]  # ln2 in two parts, the first with trailing zero bits
    degree: int  # of the Taylor polynomial on |r| ≤ ln2/2
    estrin: bool  # evaluate it by Estrin's scheme (else Horner's)
    bias: int  # exponent bias
    mantissa: int  # mantissa bits
    overflow: float  # above: inf
    underflow: float  # below: 0

    def const(self, v: float) -> ir.Constant:
        single = isinstance(self.float_type, ir.FloatType)
        return ir.Constant(self.float_type, float(np.float32(v)) if single else v)


_FLOAT64 = _Format(
    float_type=ir.DoubleType(),
    int_type=ir.IntType(64),
    clamp=(-746.0, 710.0),
    ln2=(_LN2_HI, _LN2_LO),
    degree=13,  # error < 1e-17
    estrin=True,
    bias=1023,
    mantissa=52,
    overflow=_EXP_OVERFLOW,
    underflow=_EXP_UNDERFLOW,
)
# float32: the same scheme in single precision, so 8 lanes fit an AVX register
# (widening to double halved that and doubled the polynomial): 2.5× faster per
# element; at most 1 ulp from the exact exp.
_FLOAT32 = _Format(
    float_type=ir.FloatType(),
    int_type=ir.IntType(32),
    clamp=(-104.0, 89.0),
    ln2=(0.693359375, -2.12194440e-4),  # 9 significant bits: k·ln2[0] exact for |k| ≤ 150
    degree=7,  # error < 1e-8
    estrin=False,
    bias=127,
    mantissa=23,
    overflow=88.72283935546875,
    underflow=-103.97208,
)


def _estrin(builder: ir.IRBuilder, x: ir.Value, x2: ir.Value, coeffs: list) -> ir.Value:
    """Σₖ coeffs[k]·xᵏ: neighbours pair up as a + b·x, then pairs of those with x²,
    x⁴, …; every level's FMAs are independent of each other."""
    fused = ("contract",)
    terms, power = coeffs, x
    while len(terms) > 1:
        paired = [
            builder.fadd(builder.fmul(terms[k + 1], power, flags=fused), terms[k], flags=fused)
            for k in range(0, len(terms) - 1, 2)
        ]
        if len(terms) % 2:
            paired.append(terms[-1])
        terms = paired
        power = x2 if power is x else builder.fmul(power, power)
    return terms[0]


def _exp_ir(builder: ir.IRBuilder, x: ir.Value, fmt: _Format) -> ir.Value:
    """exp(x) = 2ᵏ·exp(r), k = rint(x/ln2), r = x − k·ln2 (two-part ln2), exp(r) by a
    Taylor polynomial (FMA-contracted; Estrin's scheme in float64), 2ᵏ built in
    the exponent bits in two halves so that results down to the denormals stay
    exact."""
    c, ity, fty = fmt.const, fmt.int_type, fmt.float_type
    fused = ("contract",)
    rint = builder.module.declare_intrinsic("llvm.rint", [fty])
    isnan = builder.fcmp_unordered("uno", x, x)
    low, high = fmt.clamp
    xc = builder.select(builder.fcmp_ordered("<", x, c(low)), c(low), x)
    xc = builder.select(builder.fcmp_ordered(">", xc, c(high)), c(high), xc)
    xc = builder.select(isnan, c(0.0), xc)
    kf = builder.call(rint, [builder.fmul(xc, c(_LOG2E))])
    r = builder.fsub(xc, builder.fmul(kf, c(fmt.ln2[0])))
    r = builder.fsub(r, builder.fmul(kf, c(fmt.ln2[1])))
    if fmt.estrin:
        # exp(r) = 1 + (r + r²·q(r)), q by Estrin's scheme: its terms pair up in
        # a tree of depth log₂(degree) instead of Horner's chain of `degree`
        # dependent FMAs, whose latency bounded the vector loop (float64: 2.5 →
        # 2.1 ns per entry here). float32 keeps Horner's order: with Estrin's
        # its degree-7 polynomial was 1.07 ulp off.
        r2 = builder.fmul(r, r)
        q = _estrin(builder, r, r2, [c(a) for a in _TAYLOR[2 : fmt.degree + 1]])
        p = builder.fadd(c(1.0), builder.fadd(builder.fmul(r2, q, flags=fused), r, flags=fused))
    else:
        p = c(_TAYLOR[fmt.degree])
        for coeff in reversed(_TAYLOR[: fmt.degree]):
            p = builder.fadd(builder.fmul(p, r, flags=fused), c(coeff), flags=fused)
    k = builder.fptosi(kf, ir.IntType(32))  # i32: AVX2 converts 4 doubles at once
    if ity.width != 32:
        k = builder.sext(k, ity)
    k1 = builder.ashr(k, ir.Constant(ity, 1))
    bias, shift = ir.Constant(ity, fmt.bias), ir.Constant(ity, fmt.mantissa)
    s1 = builder.bitcast(builder.shl(builder.add(k1, bias), shift), fty)
    s2 = builder.bitcast(builder.shl(builder.add(builder.sub(k, k1), bias), shift), fty)
    y = builder.fmul(builder.fmul(p, s1), s2)
    y = builder.select(builder.fcmp_ordered(">", x, c(fmt.overflow)), c(math.inf), y)
    y = builder.select(builder.fcmp_ordered("<", x, c(fmt.underflow)), c(0.0), y)
    return builder.select(isnan, x, y)


@intrinsic
def vexp(typingctx, x):
    """``exp(x)`` for a float32 or float64 scalar, inlined as IR (see ``_exp_ir``)."""
    if not isinstance(x, types.Float):
        return None

    def codegen(context, builder, signature, args):
        return _exp_ir(builder, args[0], _FLOAT32 if x == types.float32 else _FLOAT64)

    return x(x), codegen
