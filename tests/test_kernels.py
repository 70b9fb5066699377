"""kernels stage: generated source, identifiers, dtypes, caching, unusual graph shapes."""

import numpy as np
import pytest
import sympy as sp

import gradc as gc
from gradc.kernels.cache import load_module


def _fd(prog, params, X=None, Y=None, h=1e-6):
    out = {}
    for k, v in params.items():
        v = np.asarray(v, dtype=float)
        params[k] = v
        g = np.zeros(v.shape)
        flat, gf = v.reshape(-1), g.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + h
            up = prog.loss(params, X, Y)
            flat[i] = old - h
            down = prog.loss(params, X, Y)
            flat[i] = old
            gf[i] = (up - down) / (2 * h)
        out[k] = g
    return out


def test_generated_source_uses_compiler_names_only():
    hostile = ["lambda", "np", "x y", "W-1", "_t0", "__import__('os')", "math\nimport os"]
    syms = [sp.Symbol(n) for n in hostile]
    objective = sum((k + 1) * s**2 for k, s in enumerate(syms)) + syms[0] * syms[1]
    prog = gc.compile(objective, params=syms)
    src = "\n".join(prog.source.values())
    code = [line.split("#")[0] for line in src.splitlines()]
    for name in ("lambda", "x y", "W-1", "__import__", "import os"):
        assert not any(name in line for line in code), name
    params = prog.init({s: 0.5 + 0.1 * k for k, s in enumerate(syms)})
    g = prog.grad(params)
    fd = _fd(prog, dict(params))
    for k in g:
        assert abs(float(g[k]) - float(fd[k])) < 1e-6


def test_source_reads_like_the_derivation():
    net = gc.Sequential(gc.Dense(3, 4, gc.sigmoid), gc.Dense(4, 2, gc.sigmoid))
    src = gc.compile(net, loss=gc.mse).source
    assert set(src) >= {"forward", "backward", "update", "train"}
    assert "# δz1" in src["backward"] and "# ∂L/∂W1 = Σₙ δz1·xᵀ" in src["backward"]
    assert "in range(4):" in src["forward"]  # literal shapes


def test_same_spec_twice_reuses_the_module():
    w = sp.Symbol("w")
    a = gc.compile(sp.cos(w) + w**2, params=[w])
    b = gc.compile(sp.cos(w) + w**2, params=[w])
    assert load_module(a.kernels.module_source) is load_module(b.kernels.module_source)


def test_kernel_source_names_the_helpers_it_links():
    """A kernel links runtime.py's and blas.py's compiled helpers into its own code, and
    Numba's disk cache checks only the kernel's file: the source carries a digest of
    theirs, so a kernel cached before they changed is never loaded after."""
    import hashlib
    from pathlib import Path

    import gradc.kernels.runtime as runtime

    here = Path(runtime.__file__).parent
    digest = hashlib.sha256(
        (here / "runtime.py").read_bytes() + (here / "blas.py").read_bytes()
    ).hexdigest()[:12]
    w, x, y = sp.symbols("w x y")
    prog = gc.compile(gc.mse(w * x, y), params=[w], inputs=[x], targets=[y])
    assert f"helpers {digest}" in prog.kernels.module_source


def test_float32_kernels_stay_float32():
    net = gc.Sequential(gc.Dense(3, 3, gc.tanh), gc.Dense(3, 2))
    prog = gc.compile(net, loss=gc.mse, dtype="float32")
    params = prog.init(seed=0)
    assert all(v.dtype == np.float32 for v in params.values())
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(5, 3)), rng.normal(size=(5, 2))
    loss, g = prog.value_and_grad(params, X, Y)
    assert isinstance(loss, float)
    assert all(v.dtype == np.float32 for v in g.values())
    sigs = prog.module.backward.nopython_signatures
    assert all(str(a) != "float64" for s in sigs for a in s.args if "array" not in str(a))
    ref = gc.compile(net, loss=gc.mse)
    g64 = ref.grad({k: v.astype(np.float64) for k, v in params.items()}, X, Y)
    for k in g:
        assert np.allclose(g[k], g64[k], rtol=1e-4, atol=1e-6)


def test_unused_parameter_gets_zero_gradient():
    w, u, x, y = sp.symbols("w u x y")
    prog = gc.compile(gc.mse(w * x, y), params=[w, u], inputs=[x], targets=[y])
    g = prog.grad(prog.init({w: 1.0, u: 2.0}), np.array([1.0, 2.0]), np.array([0.0, 1.0]))
    assert float(g["u"]) == 0.0
    assert float(g["w"]) == pytest.approx(((1 - 0) * 1 + (2 - 1) * 2) / 2)


def test_row_vector_input_scalar_param_and_weight_decay():
    # loss = (s · xᵀW − yᵀ)² summed + λ‖W‖² : a scalar parameter, a transposed input,
    # and a parameter-only term that is not averaged per sample
    x = sp.MatrixSymbol("x", 3, 1)
    y = sp.MatrixSymbol("y", 2, 1)
    W = sp.MatrixSymbol("W", 3, 2)
    s = sp.Symbol("s")
    out = s * (x.T * W)
    loss = gc.sum(sp.HadamardPower(out - y.T, 2)) + sp.Rational(1, 10) * gc.sum(
        sp.HadamardPower(W, 2)
    )
    prog = gc.compile(loss, params=[W, s], inputs=[x], targets=[y])
    rng = np.random.default_rng(1)
    params = {"W": rng.normal(size=(3, 2)), "s": np.array(0.7)}
    X, Y = rng.normal(size=(6, 3)), rng.normal(size=(6, 2))
    expect = np.mean(((0.7 * X @ params["W"] - Y) ** 2).sum(1)) + 0.1 * (params["W"] ** 2).sum()
    assert prog.loss(params, X, Y) == pytest.approx(expect)
    g, fd = prog.grad(params, X, Y), _fd(prog, dict(params), X, Y)
    for k in g:
        assert np.allclose(g[k], fd[k], atol=1e-6)


def test_penalty_term_in_the_batch_innermost_kernel():
    """A parameter-only term (λ‖W‖²) has buffers that are not per sample: the
    batch-innermost training kernel (batch ≥ 8) takes them as they are. One
    full-batch SGD step against the closed-form gradient."""
    x = sp.MatrixSymbol("x", 3, 1)
    y = sp.MatrixSymbol("y", 2, 1)
    W = sp.MatrixSymbol("W", 3, 2)
    s = sp.Symbol("s")
    loss = gc.sum(sp.HadamardPower(s * (x.T * W) - y.T, 2)) + sp.Rational(1, 10) * gc.sum(
        sp.HadamardPower(W, 2)
    )
    prog = gc.compile(loss, params=[W, s], inputs=[x], targets=[y])
    rng = np.random.default_rng(1)
    W0, s0 = rng.normal(size=(3, 2)), 0.7
    X, Y = rng.normal(size=(12, 3)), rng.normal(size=(12, 2))
    params = {"W": W0.copy(), "s": np.array(s0)}
    prog.fit(params, X, Y, optimizer=gc.SGD(0.1), epochs=1, shuffle=False)
    assert "train_lanes" in prog.timings
    resid = s0 * X @ W0 - Y
    grad_W = 2 * s0 * X.T @ resid / 12 + 0.2 * W0
    grad_s = 2 * np.sum(resid * (X @ W0)) / 12
    np.testing.assert_allclose(params["W"], W0 - 0.1 * grad_W, rtol=1e-12, atol=1e-14)
    assert float(params["s"]) == pytest.approx(s0 - 0.1 * grad_s, rel=1e-12)


def test_several_inputs_and_predict():
    a, b, w1, w2, y = sp.symbols("a b w1 w2 y")
    yhat = w1 * a + w2 * sp.sin(b)
    prog = gc.compile(gc.mse(yhat, y), params=[w1, w2], inputs=[a, b], targets=[y], output=yhat)
    A, B = np.linspace(0, 1, 5), np.linspace(1, 2, 5)
    params = prog.init({w1: 2.0, w2: -1.0})
    assert np.allclose(prog.predict(params, (A, B)), (2 * A - np.sin(B))[:, None])
    with pytest.raises(gc.GradcError, match="tuple"):
        prog.loss(params, A, A)


def test_one_output_networks_with_piecewise_and_user_activations():
    # SymPy's ElementwiseApplyFunction constructor calls the function on a 1×1 matrix
    z = sp.Symbol("z")
    logcosh = gc.elementwise(sp.Lambda(z, sp.log(sp.cosh(z))), name="logcosh")
    for act in (gc.relu, gc.softplus, gc.leaky_relu(0.1), logcosh):
        net = gc.Sequential(gc.Dense(3, 2, gc.tanh), gc.Dense(2, 1, act))
        prog = gc.compile(net, loss=gc.mse)
        params = prog.init(seed=2)
        rng = np.random.default_rng(3)
        X, Y = rng.normal(size=(4, 3)), rng.normal(size=(4, 1))
        assert gc.check_grad(prog, params, X, Y) < 1e-5, act.name


def test_adam_in_the_fused_kernel_with_cse_temporaries():
    # swish's derivative repeats exp(-z): the kernel names CSE temporaries, which once
    # clashed with the optimizer's step counter inside the fused training kernel
    z = sp.Symbol("z")
    swish = gc.elementwise(sp.Lambda(z, z / (1 + sp.exp(-z))), name="swish")
    net = gc.Sequential(gc.Dense(2, 3, swish), gc.Dense(3, 1, gc.softplus))
    prog = gc.compile(net, loss=gc.mse)
    rng = np.random.default_rng(4)
    X, Y = rng.normal(size=(6, 2)), rng.normal(size=(6, 1))
    params = prog.init(seed=4)
    ref = {k: v.copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in ref.items()}
    v2 = {k: np.zeros_like(v) for k, v in ref.items()}
    lr, b1, b2, eps = 0.05, 0.9, 0.999, 1e-8
    for t in range(1, 4):  # Adam as torch.optim.Adam writes it
        g = prog.grad(ref, X, Y)
        for k in ref:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v2[k] = b2 * v2[k] + (1 - b2) * g[k] ** 2
            step = lr / (1 - b1**t)
            ref[k] = ref[k] - step * m[k] / (np.sqrt(v2[k]) / np.sqrt(1 - b2**t) + eps)
    prog.fit(params, X, Y, optimizer=gc.Adam(lr=lr), steps=3, shuffle=False)
    for k in ref:
        assert np.allclose(params[k], ref[k], rtol=1e-10, atol=1e-12), k


def test_vexp_matches_numpy_exp_to_one_ulp():
    """The CPU kernels' inlined exp (runtime.vexp) against numpy.exp: at most 1 ulp
    over the whole double range, denormal results to one denormal step, and the
    special values exactly."""
    import numba

    from gradc.kernels.runtime import vexp

    @numba.njit
    def apply(x, y):
        for i in range(x.shape[0]):
            y[i] = vexp(x[i])

    rng = np.random.default_rng(7)
    x = np.concatenate([rng.uniform(-745.2, 709.8, 200_000), rng.standard_normal(100_000) * 3])
    y = np.empty_like(x)
    apply(x, y)
    with np.errstate(over="ignore"):
        want = np.exp(x)
    normal = np.isfinite(want) & (want > np.finfo(float).tiny)
    ulps = np.abs(y[normal] - want[normal]) / np.spacing(want[normal])
    assert ulps.max() <= 1.0
    tiny = want <= np.finfo(float).tiny
    assert np.all(np.abs(y[tiny] - want[tiny]) <= 5e-324)
    np.testing.assert_array_equal(y[np.isinf(want)], want[np.isinf(want)])
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 709.79, -745.14, 1e308, -1e308])
    out = np.empty_like(special)
    apply(special, out)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(out, np.exp(special))
    # float32 (its own single-precision code): against the exact exp, in float32 ulps
    x32 = np.concatenate([rng.uniform(-110, 90, 200_000), rng.standard_normal(100_000) * 3])
    x32 = x32.astype(np.float32)
    y32 = np.empty_like(x32)
    apply(x32, y32)
    assert y32.dtype == np.float32
    with np.errstate(over="ignore"):
        exact = np.exp(x32.astype(float))
    want32 = exact.astype(np.float32)
    normal = np.isfinite(want32) & (want32 > np.finfo(np.float32).tiny)
    ulps = np.abs(y32[normal] - exact[normal]) / np.spacing(want32[normal])
    assert ulps.max() <= 1.0
    tiny = want32 <= np.finfo(np.float32).tiny
    assert np.all(np.abs(y32[tiny] - exact[tiny]) <= 1.5e-45)
    np.testing.assert_array_equal(np.isinf(y32), np.isinf(want32))
    special = special.astype(np.float32)
    out = np.empty_like(special)
    apply(special, out)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(out, np.exp(special))


# strided operands compile np.dot's fallback, where Numba hints at contiguity
@pytest.mark.filterwarnings("ignore::numba.core.errors.NumbaPerformanceWarning")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_every_operand_layout_against_numpy(dtype):
    """kernels/blas.py: out = a·b for row-major and transposed operands (passed to
    CBLAS as flags), single rows and columns, row slices of a larger buffer, a
    strided view it hands to np.dot, and the short, wide float32 products it takes
    as their transpose, against the float64 NumPy product."""
    from gradc.kernels.blas import matmul

    rng = np.random.default_rng(5)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    # (17, 50, 130) and (64, 9, 128): float32 x·Wᵀ as W·xᵀ (blas._gemm_transposed)
    for m, k, n in (
        (9, 40, 7),
        (1, 5, 3),
        (6, 1, 4),
        (5, 3, 1),
        (1, 1, 1),
        (17, 50, 130),
        (64, 9, 128),
        (65, 9, 128),
        (40, 64, 32),  # float64 x·Wᵀ of a small W: W copied first (blas._gemm_b_copied)
        (32, 16, 10),
    ):
        A = rng.standard_normal((m, k)).astype(dtype)
        B = rng.standard_normal((k, n)).astype(dtype)
        for a in (A, np.asfortranarray(A)):
            for b in (B, np.asfortranarray(B)):
                out = np.full((m, n), np.nan, dtype)
                matmul(a, b, out)
                want = a.astype(np.float64) @ b.astype(np.float64)
                np.testing.assert_allclose(out, want, rtol=tol, atol=tol * np.abs(want).max())
    # no rows: nothing to compute, and no error from BLAS's argument checks
    matmul(
        np.zeros((0, 9), dtype),
        rng.standard_normal((130, 9)).astype(dtype).T,
        np.zeros((0, 130), dtype),
    )
    # row slices of wider buffers (leading dimensions 60 and 70), Wᵀ a view
    a = rng.standard_normal((20, 60)).astype(dtype)[:16, :50]
    b = rng.standard_normal((140, 70)).astype(dtype)[:, :50].T
    out = np.full((16, 140), np.nan, dtype)
    matmul(a, b, out)
    want = a.astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_allclose(out, want, rtol=tol, atol=tol * np.abs(want).max())
    # the same with a small W (copied in float64): leading dimensions 60 and 70
    a = rng.standard_normal((40, 60)).astype(dtype)[:, :50]
    b = rng.standard_normal((30, 70)).astype(dtype)[:, :50].T
    out = np.full((40, 30), np.nan, dtype)
    matmul(a, b, out)
    want = a.astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_allclose(out, want, rtol=tol, atol=tol * np.abs(want).max())
    big = rng.standard_normal((30, 20)).astype(dtype)
    W = rng.standard_normal((20, 6)).astype(dtype)
    for a, b in ((big[:11], W), (big[::2, ::2], W[:10])):  # a row slice; a strided view
        out = np.full((a.shape[0], 6), np.nan, dtype)
        matmul(a, b, out)
        want = a.astype(np.float64) @ b.astype(np.float64)
        np.testing.assert_allclose(out, want, rtol=tol, atol=tol * np.abs(want).max())


def test_blas_core_rule(monkeypatch):
    """kernels/blas.py: a second OpenBLAS instance only where NumPy's chose AVX-512
    kernels on AMD's family 25 (Zen 4), unless the caller says otherwise."""
    from gradc.kernels import blas

    cpu = {"vendor_id": "AuthenticAMD", "cpu family": "25"}
    monkeypatch.setattr(blas, "_cpu_field", lambda name: cpu.get(name, ""))
    monkeypatch.delenv("GRADC_BLAS_CORE", raising=False)
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    assert blas._core_wanted("SkylakeX") == "Haswell"
    assert blas._core_wanted("Cooperlake") == "Haswell"
    monkeypatch.setenv("GRADC_BLAS_CORE", "auto")  # the default, said
    assert blas._core_wanted("SkylakeX") == "Haswell"
    monkeypatch.delenv("GRADC_BLAS_CORE")
    assert blas._core_wanted("Haswell") is None  # already the AVX2 kernels
    cpu["cpu family"] = "26"  # Zen 5: full-width AVX-512, not measured
    assert blas._core_wanted("SkylakeX") is None
    cpu.update({"vendor_id": "GenuineIntel", "cpu family": "6"})
    assert blas._core_wanted("SkylakeX") is None
    monkeypatch.setenv("GRADC_BLAS_CORE", "Sandybridge")  # asked for by name
    assert blas._core_wanted("SkylakeX") == "Sandybridge"
    assert blas._core_wanted("sandybridge") is None  # what NumPy's has already
    cpu.update({"vendor_id": "AuthenticAMD", "cpu family": "25"})
    monkeypatch.setenv("GRADC_BLAS_CORE", "numpy")
    assert blas._core_wanted("SkylakeX") is None
    monkeypatch.delenv("GRADC_BLAS_CORE")
    monkeypatch.setenv("OPENBLAS_CORETYPE", "SkylakeX")  # the caller's own choice
    assert blas._core_wanted("SkylakeX") is None


def test_blas_second_instance_against_numpy():
    """kernels/blas.py: a second instance of NumPy's OpenBLAS, loaded with another
    core type and one thread, is its own (NumPy's keeps its kernels), leaves the
    environment as it was, and its sgemm/dgemm give NumPy's float64 products."""
    import ctypes
    import glob
    import os

    from gradc.kernels import blas

    libs = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    paths = sorted(glob.glob(os.path.join(libs, "*scipy_openblas64_*")))
    if not paths or not hasattr(os, "memfd_create"):
        pytest.skip("no scipy-openblas64 in numpy.libs, or no memfd here")
    numpy_lib = ctypes.CDLL(paths[0])
    corename = numpy_lib.scipy_openblas_get_corename64_
    corename.restype = ctypes.c_char_p
    theirs = corename().decode()
    env = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS")}
    core = "Sandybridge" if theirs.lower() != "sandybridge" else "Nehalem"
    own = blas._private_instance(paths[0], core, 1)
    assert own is not None
    assert {k: os.environ.get(k) for k in env} == env
    own_corename = own.scipy_openblas_get_corename64_
    own_corename.restype = ctypes.c_char_p
    assert own_corename().decode().lower() == core.lower()
    assert corename().decode() == theirs
    assert own.scipy_openblas_get_num_threads64_() == 1
    rng = np.random.default_rng(3)
    for dtype, fn in (
        (np.float32, own.scipy_cblas_sgemm64_),
        (np.float64, own.scipy_cblas_dgemm64_),
    ):
        m, k, n = 7, 33, 5
        a = rng.standard_normal((m, k)).astype(dtype)
        b = rng.standard_normal((k, n)).astype(dtype)
        c = np.full((m, n), np.nan, dtype)
        flt = ctypes.c_float if dtype == np.float32 else ctypes.c_double
        i64, i32 = ctypes.c_int64, ctypes.c_int32
        fn(
            i32(101), i32(111), i32(111), i64(m), i64(n), i64(k), flt(1.0),
            a.ctypes.data_as(ctypes.c_void_p), i64(k),
            b.ctypes.data_as(ctypes.c_void_p), i64(n),
            flt(0.0), c.ctypes.data_as(ctypes.c_void_p), i64(n),
        )  # fmt: skip
        want = a.astype(np.float64) @ b.astype(np.float64)
        tol = 1e-5 if dtype == np.float32 else 1e-13
        np.testing.assert_allclose(c, want, rtol=tol, atol=tol * np.abs(want).max())


def test_blas_transposed_right_operand_takes_its_own_gemm():
    """kernels/blas.py: a·bᵀ products go through the a·bᵀ gemm (a second instance
    where one is loaded), every other layout through NumPy's; both named in BLAS,
    and both giving the float64 NumPy product (float32 and float64, with β = 1)."""
    from gradc.kernels import blas

    assert all(name in blas.BLAS for name in blas._CBLAS.gemm_nt.values())
    rng = np.random.default_rng(9)
    for dtype, tol in ((np.float32, 1e-5), (np.float64, 1e-13)):
        a = rng.standard_normal((70, 40)).astype(dtype)
        w = rng.standard_normal((50, 40)).astype(dtype)
        c0 = rng.standard_normal((70, 50)).astype(dtype)
        c = c0.copy()
        blas.matmul_acc(a, w.T, c, -0.5)  # a·wᵀ: the a·bᵀ gemm, β = 1
        want = c0.astype(np.float64) - 0.5 * (a.astype(np.float64) @ w.T.astype(np.float64))
        np.testing.assert_allclose(c, want, rtol=tol, atol=tol * np.abs(want).max())
        c = c0[:, :10].copy()  # a small w: copied first in float64, β = 1 kept
        blas.matmul_acc(a, w[:10].T, c, -0.5)
        want = c0[:, :10] - 0.5 * (a.astype(np.float64) @ w[:10].T.astype(np.float64))
        np.testing.assert_allclose(c, want, rtol=tol, atol=tol * np.abs(want).max())


def test_blas_set_threads_round_trip():
    """kernels/blas.py: set_threads returns the count it replaces."""
    from gradc.kernels.blas import set_threads

    previous = set_threads(1)
    try:
        assert set_threads(1) in (1, previous) and previous >= 1
    finally:
        set_threads(previous)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sum_squares_against_float64_numpy(dtype):
    """runtime.sum_squares (every gradient norm that is not printed inline): rows
    and columns of several shapes, a strided view; a float32 sum that overflows
    float32 is still the finite float64 sum; inf and NaN entries give inf / NaN."""
    from gradc.kernels.runtime import sum_squares

    rng = np.random.default_rng(5)
    rel = 1e-6 if dtype == np.float32 else 1e-14
    for shape in [(1, 1), (3, 1), (257, 1), (1, 7), (10, 256), (33, 130)]:
        a = rng.standard_normal(shape).astype(dtype)
        want = float(np.sum(a.astype(np.float64) ** 2))
        assert sum_squares(a) == pytest.approx(want, rel=rel)
    wide = rng.standard_normal((12, 40)).astype(dtype)
    view = wide[::2, 3:31]
    assert sum_squares(view) == pytest.approx(float(np.sum(view.astype(float) ** 2)), rel=rel)
    big = np.full((4, 400), 1e18, dtype)  # each square ≤ float32's max, each row sum not
    col = np.full((6, 1), 3e19, dtype)  # each square overflows float32
    for a in (big, col):
        assert sum_squares(a) == pytest.approx(float(np.sum(a.astype(float) ** 2)), rel=1e-12)
    big[2, 5] = np.inf
    assert sum_squares(big) == np.inf
    big[2, 5] = np.nan
    assert np.isnan(sum_squares(big))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_folded_update_helpers_against_numpy(dtype):
    """The helpers of an SGD step folded into a gradient product: ``matmul_acc``
    (out += α·a·b, by gemm with β = 1 for transposed and plain operands) and
    ``gram_sq`` (‖aᵀb‖² from the rows' dot products) against float64 NumPy;
    ``abs_bound`` is at least max |W| and inf exactly when an entry is inf or NaN,
    also when the sum of squares overflows but every entry is finite."""
    from gradc.kernels.runtime import abs_bound, gram_sq, matmul_acc

    rng = np.random.default_rng(8)
    tol = 2e-5 if dtype == np.float32 else 1e-13
    n, rows, cols = 11, 9, 14
    D = rng.standard_normal((n, rows)).astype(dtype)
    X = rng.standard_normal((n, cols)).astype(dtype)
    W0 = rng.standard_normal((rows, cols)).astype(dtype)
    want_g = D.T.astype(np.float64) @ X.astype(np.float64)
    for d in (D, np.asfortranarray(D)):
        W = W0.copy()
        matmul_acc(d.T, X, W, dtype(-0.3))
        want = W0.astype(np.float64) - 0.3 * want_g
        np.testing.assert_allclose(W, want, rtol=tol, atol=tol * np.abs(want).max())
    want_sq = float(np.sum(want_g**2))
    # contiguous rows, rows with a gap between them, rows not contiguous at all
    wide = np.zeros((n, rows + 3), dtype)
    wide[:, :rows] = D
    for d in (D, wide[:, :rows], np.asfortranarray(D)):
        assert gram_sq(d, X) == pytest.approx(want_sq, rel=10 * tol)
    # every batch size around the 4×4 blocks (the last n mod 4 rows apart)
    for m in range(1, n + 1):
        g = D[:m].T.astype(np.float64) @ X[:m].astype(np.float64)
        assert gram_sq(D[:m], X[:m]) == pytest.approx(float(np.sum(g**2)), rel=10 * tol)
    assert gram_sq(D[:5] * 0, X[:5]) == 0.0
    # a dot product that overflows the array's type while the norm does not: taken
    # again in float64 (float32 only: a float64 dot product that overflows means a
    # norm that does too)
    if dtype == np.float32:
        big = X * np.float32(1e19)  # xᵢ·xⱼ ~ 1e40 > float32's 3e38
        tiny = D * np.float32(1e-15)
        g = tiny.T.astype(np.float64) @ big.astype(np.float64)
        b64 = big[0].astype(np.float64)
        assert float(b64 @ b64) > float(np.finfo(np.float32).max)
        assert gram_sq(tiny, big) == pytest.approx(float(np.sum(g**2)), rel=10 * tol)
    for bad in (np.nan, np.inf):
        Xb = X.copy()
        Xb[3, 2] = bad
        assert not np.isfinite(gram_sq(D, Xb))
    assert abs_bound(W0) >= np.abs(W0).max()
    huge = W0.copy()
    huge[2, 3] = np.finfo(dtype).max / 2  # finite, but its square overflows
    assert abs_bound(huge) == pytest.approx(float(np.finfo(dtype).max / 2), rel=1e-6)
    for bad in (np.nan, np.inf, -np.inf):
        W = W0.copy()
        W[4, 5] = bad
        assert abs_bound(W) == np.inf


@pytest.mark.parametrize("b", [[5.0, 5.0, -1.0], [800.0, 0.0, -800.0], [-3.0, 2.0, 2.0]])
def test_log_sum_exp_of_one_sample_with_ties_and_wide_spreads(b):
    """Softmax cross-entropy at batch 1 takes the log-sum-exp per sample with libm's
    exp and skips the largest entry's exp(0) = 1: tied largest logits, a spread
    of 1,600 (no overflow: the max is subtracted first) and a tie after the
    first entry, against the closed form log Σ exp(z) − z_y and δ = softmax − y."""
    net = gc.Sequential(gc.Dense(2, 3, gc.identity))
    prog = gc.compile(net, loss=gc.softmax_cross_entropy)
    assert "top" in prog.source["forward"]  # the skipped call under test
    params = {"W1": np.array([[0.5, -1.0], [0.25, 0.0], [-0.5, 2.0]]), "b1": np.array(b)[:, None]}
    x, y = np.array([[0.0, 0.0]]), np.array([[0.0, 1.0, 0.0]])
    loss, grads = prog.value_and_grad(params, x, y)
    z = np.array(b)  # x = 0: the logits are the biases
    m = z.max()
    want = m + np.log(np.sum(np.exp(z - m))) - z[1]
    soft = np.exp(z - m) / np.sum(np.exp(z - m))
    assert float(loss) == pytest.approx(want, rel=1e-15, abs=1e-15)
    np.testing.assert_allclose(grads["b1"][:, 0], soft - y[0], rtol=1e-15, atol=1e-300)
    np.testing.assert_array_equal(grads["W1"], np.zeros((3, 2)))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_blas_forms_one_row_one_column_and_copied_weights(dtype):
    """The kernels' straight CBLAS calls (cpu.py _print_blas): one sample (gemv), a
    one-output layer (gemv, and a gradient with one row), a small float64 W copied
    first (from 32 samples), plain gemm; gradients and ∂L/∂X against the δ recursion."""
    from reference import layers_from_params, max_rel_err, mlp_backprop

    tol = 1e-10 if dtype == "float64" else 2e-4
    for sizes, acts in (((300, 1), ("identity",)), ((64, 32, 10), ("tanh", "sigmoid"))):
        layers = [gc.Dense(a, b, getattr(gc, f)) for a, b, f in zip(sizes, sizes[1:], acts)]
        prog = gc.compile(gc.Sequential(*layers), loss=gc.mse, dtype=dtype)
        params = prog.init(seed=2)
        names = [(f"W{k}", f"b{k}") for k in range(1, len(sizes))]
        ref = layers_from_params(params, names, acts)
        rng = np.random.default_rng(4)
        for n in (1, 20, 40):
            X = rng.normal(size=(n, sizes[0])).astype(dtype)
            Y = rng.uniform(size=(n, sizes[-1])).astype(dtype)
            loss, grads = prog.value_and_grad(params, X, Y)
            want_loss, want, want_x = mlp_backprop(ref, X, Y)
            assert abs(loss - want_loss) <= tol * abs(want_loss)
            for (wn, bn), (dW, db) in zip(names, want):
                assert max_rel_err(grads[wn], dW) < tol, (sizes, n, wn)
                assert max_rel_err(grads[bn], db) < tol, (sizes, n, bn)
            assert max_rel_err(prog.input_grad(params, X, Y), want_x) < tol, (sizes, n)
