"""Contract tests: every error path API.md names, hostile names, target="cuda"."""

import math
import re

import numpy as np
import pytest
import sympy as sp
from reference import assert_dicts_close, copy_params, mlp_grad_dict

import gradc as gc


def _msg(excinfo):
    return str(excinfo.value)


def test_gradc_error_is_value_error():
    assert issubclass(gc.GradcError, ValueError)


# ======================================================================
# bad specs fail in compile
# ======================================================================


def test_free_symbol_not_declared():
    w1 = sp.Symbol("w1")
    zeta = sp.Symbol("zeta_free")
    with pytest.raises(gc.GradcError) as ei:
        gc.compile(w1**2 + zeta * w1, params=[w1])
    assert "zeta_free" in _msg(ei)


def test_free_data_symbol_not_declared():
    w, b, xin = sp.symbols("w b xin")
    ytgt = sp.Symbol("ytgt")
    with pytest.raises(gc.GradcError) as ei:
        gc.compile(gc.mse(w * xin + b, ytgt), params=[w, b], inputs=[xin])
    assert "ytgt" in _msg(ei)


def test_free_matrix_symbol_not_declared():
    xm = sp.MatrixSymbol("xm", 3, 1)
    ym = sp.MatrixSymbol("ym", 2, 1)
    Wm = sp.MatrixSymbol("Wm", 2, 3)
    cfree = sp.MatrixSymbol("cfree", 2, 1)
    with pytest.raises(gc.GradcError) as ei:
        gc.compile(gc.mse(gc.sigmoid(Wm * xm + cfree), ym), params=[Wm], inputs=[xm], targets=[ym])
    assert "cfree" in _msg(ei)


def test_function_without_derivative():
    w1 = sp.Symbol("w1")
    mystery = sp.Function("mystery")
    with pytest.raises(gc.GradcError) as ei:
        gc.compile(mystery(w1) ** 2 + w1, params=[w1])
    assert "mystery" in _msg(ei)


def test_mismatched_layer_shapes():
    with pytest.raises(gc.GradcError) as ei:
        net = gc.Sequential(gc.Dense(3, 4, gc.sigmoid), gc.Dense(5, 2, gc.sigmoid))
        gc.compile(net, loss=gc.mse)
    m = _msg(ei)
    assert ("4" in m) or ("5" in m), m


@pytest.mark.parametrize("dtype", [np.float32, np.dtype("float64"), "f4", float])
def test_dtype_given_the_numpy_way(dtype):
    w, x, y = sp.symbols("w x y")
    prog = gc.compile(gc.mse(w * x, y), params=[w], inputs=[x], targets=[y], dtype=dtype)
    assert prog.dtype == np.dtype(dtype).name


@pytest.mark.parametrize("dtype", ["float16", np.int64, "complex", None, "fp32"])
def test_dtype_other_than_float64_or_float32_refused(dtype):
    w, x, y = sp.symbols("w x y")
    with pytest.raises(gc.GradcError, match="dtype must be 'float64' or 'float32'"):
        gc.compile(gc.mse(w * x, y), params=[w], inputs=[x], targets=[y], dtype=dtype)


def test_mismatched_output_target_shapes():
    xv = sp.MatrixSymbol("xv", 3, 1)
    yv3 = sp.MatrixSymbol("yv3", 3, 1)
    Wv = sp.MatrixSymbol("Wv", 2, 3)
    with pytest.raises(gc.GradcError) as ei:
        out = gc.sigmoid(Wv * xv)
        gc.compile(gc.mse(out, yv3), params=[Wv], inputs=[xv], targets=[yv3], output=out)
    m = _msg(ei)
    assert ("yv3" in m) or ("(3, 1)" in m) or ("(2, 1)" in m) or ("3" in m and "2" in m), m


# ======================================================================
# runtime data / params errors
# ======================================================================

xq = sp.MatrixSymbol("xq", 3, 1)
yq = sp.MatrixSymbol("yq", 2, 1)
Wq1 = sp.MatrixSymbol("Wq1", 2, 3)
bq1 = sp.MatrixSymbol("bq1", 2, 1)


@pytest.fixture(scope="module")
def progq():
    out = gc.sigmoid(Wq1 * xq + bq1)
    return gc.compile(gc.mse(out, yq), params=[Wq1, bq1], inputs=[xq], targets=[yq], output=out)


@pytest.fixture()
def qdata():
    rng = np.random.default_rng(0)
    return rng.standard_normal((5, 3)), rng.uniform(size=(5, 2))


@pytest.fixture()
def qparams(progq):
    rng = np.random.default_rng(1)
    return progq.init({"Wq1": rng.standard_normal((2, 3)), "bq1": rng.standard_normal((2, 1))})


CALLS = {
    "loss": lambda p, prm, X, Y: p.loss(prm, X, Y),
    "value_and_grad": lambda p, prm, X, Y: p.value_and_grad(prm, X, Y),
    "grad": lambda p, prm, X, Y: p.grad(prm, X, Y),
    "fit": lambda p, prm, X, Y: p.fit(prm, X, Y, optimizer=gc.SGD(lr=0.1), epochs=1),
}


@pytest.mark.parametrize("call", list(CALLS))
def test_wrong_X_shape_names_input(progq, qparams, qdata, call):
    _X, Y = qdata
    before = copy_params(qparams)
    with pytest.raises(gc.GradcError) as ei:
        CALLS[call](progq, qparams, np.ones((5, 4)), Y)
    assert "xq" in _msg(ei)
    assert_dicts_close(qparams, before, rtol=0, atol=0)


@pytest.mark.parametrize("call", list(CALLS))
def test_wrong_Y_shape_names_target(progq, qparams, qdata, call):
    X, _Y = qdata
    before = copy_params(qparams)
    with pytest.raises(gc.GradcError) as ei:
        CALLS[call](progq, qparams, X, np.ones((5, 3)))
    assert "yq" in _msg(ei)
    assert_dicts_close(qparams, before, rtol=0, atol=0)


def test_data_arrays_pass_ready_arrays_through_and_check_the_rest():
    """program/data.py's shortcut (one input and one target as C-contiguous arrays of
    the program's dtype) gives back the caller's own arrays; every other form takes
    the general path, which converts or names the fault."""
    from gradc.program.data import data_arrays

    x, y = sp.MatrixSymbol("xd", 3, 1), sp.MatrixSymbol("yd", 2, 1)
    W = sp.MatrixSymbol("Wd", 2, 3)
    prog = gc.compile(gc.mse(W * x, y), params=[W], inputs=[x], targets=[y])
    ins, tgs, dt = prog.graph.inputs, prog.graph.targets, prog.dtype
    X, Y = np.ones((4, 3)), np.ones((4, 2))
    arrays, n = data_arrays(ins, tgs, X, Y, dt)
    assert arrays[0] is X and arrays[1] is Y and n == 4
    for other in (X.astype(np.float32), np.asfortranarray(X)):  # converted, a copy
        arrays, n = data_arrays(ins, tgs, other, Y, dt)
        assert arrays[0].dtype == np.float64 and arrays[0].flags.c_contiguous and n == 4
    bad = X.copy()
    bad[2, 1] = np.nan
    with pytest.raises(gc.GradcError, match=r"'xd' contains NaN or inf \(first in row 2\)"):
        data_arrays(ins, tgs, bad, Y, dt)
    assert data_arrays(ins, tgs, bad, Y, dt, check=False)[0][0] is bad  # fit checks later
    for bad_X, bad_Y, fault in (
        (np.ones((0, 3)), np.ones((0, 2)), "empty"),
        (np.ones((4, 2)), Y, "'xd'"),
        (X, np.ones((4, 3)), "'yd'"),
        (X, np.ones((5, 2)), "different numbers of samples"),
    ):
        with pytest.raises(gc.GradcError, match=fault):
            data_arrays(ins, tgs, bad_X, bad_Y, dt)


def test_wrong_X_shape_predict(progq, qparams):
    with pytest.raises(gc.GradcError) as ei:
        progq.predict(qparams, np.ones((5, 2)))
    assert "xq" in _msg(ei)


@pytest.mark.parametrize("call", list(CALLS))
def test_missing_param_key(progq, qparams, qdata, call):
    X, Y = qdata
    partial = {"bq1": qparams["bq1"].copy()}
    with pytest.raises(gc.GradcError) as ei:
        CALLS[call](progq, partial, X, Y)
    assert "Wq1" in _msg(ei)


def test_missing_param_key_no_data():
    a, bb = sp.symbols("alpha_p beta_p")
    prog = gc.compile(a**2 + bb**2, params=[a, bb])
    with pytest.raises(gc.GradcError) as ei:
        prog.value_and_grad({"alpha_p": np.array(1.0)})
    assert "beta_p" in _msg(ei)


# ---------------------------------------------------------------- NaN / inf parameters


@pytest.mark.parametrize(
    "widths, batch, optimizer",
    [
        ([3, 4, 2], 1, "sgd"),  # tiny: update loops printed in the kernel
        ([3, 4, 2], 8, "adam"),  # the batch-innermost kernel
        ([10, 20, 5], 3, "sgd"),  # one runtime call over the parameters
        ([24, 48, 3], 1, "sgd"),  # W1's batch-of-one sweep checked through the next W·x
    ],
)
@pytest.mark.parametrize("where", ["W1_nan", "b2_inf", "W2_neginf"])
def test_nonfinite_parameters_refused_by_name(widths, batch, optimizer, where):
    """fit does not scan the parameters before it starts (for a big weight that
    costs more than a step): a non-finite entry makes the first step fail, and the
    error names the parameter; every value is as the caller passed it."""
    net = gc.Sequential(
        gc.Dense(widths[0], widths[1], gc.tanh), gc.Dense(widths[1], widths[2], gc.sigmoid)
    )
    prog = gc.compile(net, loss=gc.mse)
    names = {"W1": "W1", "b2": "b2", "W2": "W2"}  # Sequential names its layers 1, 2
    which, kind = where.split("_")
    params = prog.init(seed=3)
    params[names[which]].flat[1] = {"nan": np.nan, "inf": np.inf, "neginf": -np.inf}[kind]
    before = copy_params(params)
    rng = np.random.default_rng(5)
    X, Y = rng.standard_normal((16, widths[0])), rng.random((16, widths[2]))
    opt = gc.SGD(lr=0.1) if optimizer == "sgd" else gc.Adam(0.01)
    with pytest.raises(gc.GradcError, match=f"parameter '{names[which]}' contains NaN or inf"):
        prog.fit(params, X, Y, optimizer=opt, epochs=2, batch_size=batch)
    for k in params:
        np.testing.assert_array_equal(params[k], before[k])
    with pytest.raises(gc.GradcError, match=f"parameter '{names[which]}'"):
        prog.fit(params, X, Y, steps=0)


# ---------------------------------------------------------------- NaN / inf data

w, b, x, y = sp.symbols("w b x y")


@pytest.fixture(scope="module")
def linreg():
    return gc.compile(gc.mse(w * x + b, y), params=[w, b], inputs=[x], targets=[y])


@pytest.mark.parametrize("where", ["X_nan", "X_inf", "Y_nan", "Y_neginf"])
def test_nonfinite_data_refused(linreg, where):
    rng = np.random.default_rng(4)
    X, Y = rng.standard_normal(10), rng.standard_normal(10)
    bad = {"X_nan": np.nan, "X_inf": np.inf, "Y_nan": np.nan, "Y_neginf": -np.inf}[where]
    if where.startswith("X"):
        X[7] = bad
    else:
        Y[3] = bad
    params = linreg.init({w: 0.5, b: -0.5})
    before = copy_params(params)
    with pytest.raises(gc.GradcError):
        linreg.fit(params, X, Y, optimizer=gc.SGD(lr=0.1), epochs=3, batch_size=2)
    assert float(params["w"]) == 0.5 and float(params["b"]) == -0.5
    assert_dicts_close(params, before, rtol=0, atol=0)


def test_nonfinite_data_refused_matrix(progq, qparams, qdata):
    X, Y = qdata
    X = X.copy()
    X[4, 2] = np.nan
    before = copy_params(qparams)
    with pytest.raises(gc.GradcError):
        progq.fit(qparams, X, Y, optimizer=gc.SGD(lr=0.1), epochs=2, batch_size=1)
    assert_dicts_close(qparams, before, rtol=0, atol=0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, None])
def test_large_data_checked_entrywise(linreg, bad):
    """Data is checked in one compiled pass per array (Σ x − x, runtime.rows_finite):
    a NaN or inf anywhere in 3,000 entries is refused (naming the row), and huge
    finite values (whose sum or squares would overflow) are accepted."""
    X = np.full(3000, 1e200)
    Y = np.zeros(3000)
    if bad is not None:
        X[2345] = bad
    params = linreg.init({w: 0.0, b: 0.0})
    if bad is None:  # accepted: every entry is finite (and w = 0)
        assert linreg.loss(params, X, Y) == 0.0
    else:
        with pytest.raises(gc.GradcError, match="row 2345"):
            linreg.fit(params, X, Y, optimizer=gc.SGD(lr=0.1), batch_size=100)
        assert float(params["w"]) == 0.0


@pytest.fixture(scope="module")
def prog_rows():
    """64-32-10: fit runs the row kernel, which checks large batches itself."""
    net = gc.Sequential(gc.Dense(64, 32, gc.sigmoid), gc.Dense(32, 10, gc.sigmoid))
    return gc.compile(net, loss=gc.mse)


@pytest.mark.parametrize("leaf, shuffle", [("x", False), ("x", True), ("y", True)])
def test_nonfinite_data_found_in_the_kernel_undoes_the_call(prog_rows, monkeypatch, leaf, shuffle):
    """With batches of ≥ DATA_CHECK_MIN_ENTRIES entries the kernel checks each batch
    of its first epoch as it reaches it: a NaN in the last batch (the other
    batches already updated the weights) is refused naming the leaf and row, the
    parameters are bitwise what they were, and the optimizer's state is as if
    the call had not happened (the next fit matches a fresh optimizer's)."""
    import gradc.program.program as program

    passes = []
    real = program.first_nonfinite
    monkeypatch.setattr(program, "first_nonfinite", lambda a: passes.append(1) or real(a))
    rng = np.random.default_rng(5)
    X, Y = rng.random((512, 64)), rng.random((512, 10))
    params = prog_rows.init(seed=1)
    before = copy_params(params)
    adam = gc.Adam(lr=0.01)
    prog_rows.fit(params, X, Y, optimizer=adam, batch_size=128, shuffle=shuffle)
    assert passes == []  # no pass over the data before the call: the kernel checked
    after_one = copy_params(params)
    bad_X, bad_Y = X.copy(), Y.copy()
    (bad_X if leaf == "x" else bad_Y)[509, 3] = np.nan
    role = "input" if leaf == "x" else "target"
    with pytest.raises(gc.GradcError, match=rf"{role} '{leaf}' contains NaN or inf.*row 509"):
        prog_rows.fit(params, bad_X, bad_Y, optimizer=adam, batch_size=128, shuffle=shuffle)
    assert_dicts_close(params, after_one, rtol=0, atol=0)
    prog_rows.fit(params, X, Y, optimizer=adam, batch_size=128, shuffle=shuffle)
    fresh = copy_params(before)
    twice = gc.Adam(lr=0.01)
    for _ in range(2):
        prog_rows.fit(fresh, X, Y, optimizer=twice, batch_size=128, shuffle=shuffle)
    assert_dicts_close(params, fresh, rtol=0, atol=0)


def test_nan_data_refused_even_when_the_kernel_stops_first():
    """The kernel checks a batch when it reaches it; if a step fails before the
    batch with the NaN (here an overflowing batch 1, after batch 0's update), the
    data is still refused and nothing of the call is kept."""
    net = gc.Sequential(gc.Dense(64, 32, gc.relu), gc.Dense(32, 10, gc.identity))
    prog_rows = gc.compile(net, loss=gc.mse)
    rng = np.random.default_rng(7)
    X, Y = rng.random((512, 64)), rng.random((512, 10))
    X[128:256] = 1e200  # batch 1: finite, but its loss overflows
    X[400, 0] = np.nan  # batch 3
    params = prog_rows.init(seed=2)
    before = copy_params(params)
    with pytest.raises(gc.GradcError, match=r"input 'x' contains NaN or inf.*row 400"):
        prog_rows.fit(params, X, Y, optimizer=gc.SGD(0.1), batch_size=128, shuffle=False)
    assert_dicts_close(params, before, rtol=0, atol=0)
    X[400, 0] = 0.0  # without the NaN: the divergence is reported, batch 0's update kept
    with pytest.raises(gc.GradcError, match="update step 2"):
        prog_rows.fit(params, X, Y, optimizer=gc.SGD(0.1), batch_size=128, shuffle=False)
    assert not np.array_equal(params["W1"], before["W1"])


def test_float32_overflow_found_in_the_kernel_is_named():
    net = gc.Sequential(gc.Dense(64, 32, gc.sigmoid), gc.Dense(32, 10, gc.sigmoid))
    prog = gc.compile(net, loss=gc.mse, dtype="float32")
    rng = np.random.default_rng(6)
    X, Y = rng.random((256, 64)), rng.random((256, 10))
    X[200, 5] = 1e39  # finite in float64, inf in float32
    params = prog.init(seed=0)
    before = copy_params(params)
    with pytest.raises(gc.GradcError, match=r"input 'x' overflows float32.*row 200"):
        prog.fit(params, X, Y, batch_size=128, epochs=2)
    assert_dicts_close(params, before, rtol=0, atol=0)


# ---------------------------------------------------------------- divergence

w1, w2 = sp.symbols("w1 w2")


def _assert_step_message(m):
    assert re.search(r"step", m, re.I), m
    assert re.search(r"\d", m), m


def test_divergence_bowl_huge_lr():
    prog = gc.compile(w1**2 + w2**2 + 2 * w2 + 5, params=[w1, w2])
    params = prog.init({w1: -2.0, w2: 3.0})
    with pytest.raises(gc.GradcError) as ei:
        prog.fit(params, steps=10, optimizer=gc.SGD(lr=1e200))
    _assert_step_message(_msg(ei))
    assert np.isfinite(params["w1"]) and np.isfinite(params["w2"])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_update_overflow_is_caught_and_undone(dtype):
    """J = w², w = 3, lr = 1e38 (float32) / 1e308 (float64): the gradient 6 is
    finite, the new value 3 − 6·lr overflows. The update sweep's non-finite check
    (an OR in float32 kernels, a count in float64) stops fit; w goes back to 3."""
    wo = sp.Symbol("wover")
    prog = gc.compile(wo**2, params=[wo], dtype=dtype)
    params = prog.init({wo: 3.0})
    lr = 1e38 if dtype == "float32" else 1e308
    with pytest.raises(gc.GradcError, match=r"update step 1 .*param") as ei:
        prog.fit(params, steps=3, optimizer=gc.SGD(lr=lr))
    _assert_step_message(_msg(ei))
    assert float(params["wover"]) == 3.0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rows", [30, 31])
def test_update_overflow_in_the_batch_of_one_sweep_is_caught(dtype, rows):
    """W (30×40 or 31×40, over 1,024 entries) trained at batch 1: its update sweep
    (rows in pairs, an odd last row alone) also forms the next sample's W·x and
    checks the new values through that dot product (no per-entry check). x = 5,
    W = 1: the gradient (Wx − y)·xᵀ ≈ 1,000 per entry, finite; the new values
    overflow (with 31 rows only in the last: y fits the others exactly). fit stops
    at step 1 and W goes back."""
    x, y = sp.MatrixSymbol("xs", 40, 1), sp.MatrixSymbol("ys", rows, 1)
    W = sp.MatrixSymbol("Wsweep", rows, 40)
    prog = gc.compile(gc.mse(W * x, y), params=[W], inputs=[x], targets=[y], dtype=dtype)
    assert "step_outer_dot" in prog.source["train"]  # the sweep under test
    params = {"Wsweep": np.ones((rows, 40))}
    X, Y = np.full((4, 40), 5.0), np.zeros((4, rows))
    if rows % 2:
        Y[:, :-1] = 200.0  # = W·x: no gradient but in the last row
    lr = 1e36 if dtype == "float32" else 1e306
    with pytest.raises(gc.GradcError, match=r"update step 1 .*param") as ei:
        prog.fit(params, X, Y, optimizer=gc.SGD(lr=lr), batch_size=1, shuffle=False)
    _assert_step_message(_msg(ei))
    np.testing.assert_array_equal(params["Wsweep"], np.ones((rows, 40)))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_update_overflow_in_a_folded_product_is_caught(dtype, monkeypatch):
    """Plain SGD at batch 8 adds −lr·Σₙ δₙxₙᵀ into W inside the gradient product
    (FOLD_MIN_ENTRIES lowered so that a 30×40 W folds): no new value is read
    back, a running bound on max |W| has to catch the overflow. W is 1 but for a
    zero first column; the first batch is fitted exactly (δ = 0: W unchanged, the
    bound is W's largest entry), in the second one sample has a huge x₀ (its W·x
    misses y by 1): the gradient and the loss are finite, column 0's update
    overflows. fit names update step 2 and W is back to its values."""
    from gradc.kernels import blas, cpu_train

    monkeypatch.setattr(cpu_train, "FOLD_MIN_ENTRIES", 1)
    x, y = sp.MatrixSymbol("xs", 40, 1), sp.MatrixSymbol("ys", 30, 1)
    W = sp.MatrixSymbol("Wfold", 30, 40)
    prog = gc.compile(gc.mse(W * x, y), params=[W], inputs=[x], targets=[y], dtype=dtype)
    assert ("the product adds into it" in prog.source["train"]) == blas.FOLDS
    start = np.ones((30, 40))
    start[:, 0] = 0.0
    params = {"Wfold": start.copy()}
    X = np.ones((16, 40))
    X[:, 0] = 0.0
    Y = np.full((16, 30), 39.0)  # W·x exactly
    big, lr = (1e15, 1e30) if dtype == "float32" else (1e150, 1e160)
    X[11, 0], Y[11] = big, 40.0
    with pytest.raises(gc.GradcError, match=r"update step 2 .*param") as ei:
        prog.fit(params, X, Y, optimizer=gc.SGD(lr=lr), batch_size=8, shuffle=False)
    _assert_step_message(_msg(ei))
    np.testing.assert_array_equal(params["Wfold"], start)


def test_overflow_in_a_later_epoch_is_undone_to_the_step_before():
    """Loss −w·x/100 (x in [0.5, 1]) with lr = 1e308: every step adds lr·mean(x)/100
    to w, finite (and so is the loss) until the update passes ~1.8e308, some
    epochs in. One kernel call runs all epochs, reshuffling at each epoch's start;
    the failed update is undone by replaying the good steps. w must equal the
    documented shuffled replay of the steps before the one the error names."""
    from gradc.kernels.runtime import shuffle_rows

    wv, xv = sp.Symbol("wlin"), sp.Symbol("xlin")
    prog = gc.compile(-wv * xv / 100, params=[wv], inputs=[xv])
    X = np.array([0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    params = {"wlin": np.array(1.0)}
    lr = 1e308
    with pytest.raises(gc.GradcError, match=r"update step \d+ \(epoch \d\d+\): .*param") as ei:
        prog.fit(params, X, optimizer=gc.SGD(lr=lr), epochs=500, batch_size=2, seed=7)
    failed = int(re.search(r"update step (\d+)", _msg(ei)).group(1))
    w, step, epoch = 1.0, 0, 0
    while step < failed - 1:  # the steps before the failed one
        perm = np.arange(6)
        shuffle_rows(perm, 6, np.uint64((7 * 1_000_003 + epoch) % 2**63))
        for b in range(3):
            if step == failed - 1:
                break
            w = w - lr * -(X[perm[2 * b : 2 * b + 2]].mean() / 100)
            step += 1
        epoch += 1
    assert float(params["wlin"]) == pytest.approx(w, rel=1e-12)
    assert w > 1.7e308  # the next update (≥ lr·0.005) overflows


def test_gradient_too_large_to_measure_is_undone_with_its_update():
    """∂(w·x)/∂w = x: at x = 1e200 the gradient is finite but its squared norm
    overflows, so fit stops (status 2). A small network's training kernel forms
    that norm in its update sweep, after updating w (to −5e199, finite): fit must
    undo the step. w is what the two steps before it made: 0.25 − 2·0.5."""
    wv, xv = sp.symbols("wbig xbig")
    prog = gc.compile(wv * xv, params=[wv], inputs=[xv])
    params = {"wbig": np.array(0.25)}
    X = np.array([1.0, 1.0, 1e200])
    with pytest.raises(gc.GradcError, match=r"update step 3 .*gradient"):
        prog.fit(params, X, optimizer=gc.SGD(lr=0.5), epochs=1, batch_size=1, shuffle=False)
    assert float(params["wbig"]) == -0.75


def test_nonfinite_loss_with_a_finite_gradient_is_undone_with_its_update():
    """J = x³ + w: ∂J/∂w = 1 at every sample, but at x = 1e103 the loss x³
    overflows. The training kernel tests a step once, after its update (w − lr,
    finite): fit must name the loss, undo that step and keep the two before it."""
    wv, xv = sp.symbols("wcube xcube")
    prog = gc.compile(xv**3 + wv, params=[wv], inputs=[xv])
    params = {"wcube": np.array(0.25)}
    X = np.array([1.0, 2.0, 1e103, 3.0])
    with pytest.raises(gc.GradcError, match=r"update step 3 .*loss became non-finite"):
        prog.fit(params, X, optimizer=gc.SGD(lr=0.5), epochs=1, batch_size=1, shuffle=False)
    assert float(params["wcube"]) == 0.25 - 2 * 0.5


def test_divergence_exp_objective():
    """J = exp(w^2) from w = 2, lr = 1: step 1 lands at w = 2 - 4e^4 (finite);
    the loss there, exp(~46800), overflows."""
    wv = sp.Symbol("wexp")
    prog = gc.compile(sp.exp(wv**2), params=[wv])
    params = prog.init({wv: 2.0})
    with pytest.raises(gc.GradcError) as ei:
        prog.fit(params, steps=5, optimizer=gc.SGD(lr=1.0))
    _assert_step_message(_msg(ei))
    val = float(params["wexp"])
    assert math.isfinite(val)
    # the last finite values: the start or the point after step 1
    assert val == pytest.approx(2.0 - 4.0 * math.exp(4.0), rel=1e-12) or val == 2.0


def test_divergence_with_data(linreg):
    rng = np.random.default_rng(9)
    X, Y = rng.standard_normal(8) * 10, rng.standard_normal(8)
    params = linreg.init({w: 0.5, b: 0.5})
    with pytest.raises(gc.GradcError) as ei:
        linreg.fit(params, X, Y, optimizer=gc.SGD(lr=1e150), epochs=20)
    _assert_step_message(_msg(ei))
    assert np.isfinite(params["w"]) and np.isfinite(params["b"])


# ======================================================================
# hostile symbol names
# ======================================================================

HOSTILE = ["lambda", "np", "x y", "W-1", "_t0", "__import__('os')", "math", "def"]


def test_hostile_scalar_param_names():
    s = [sp.Symbol(n) for n in HOSTILE]
    J = sum((i + 1) * si**2 for i, si in enumerate(s)) + s[0] * s[1] + 3 * s[5] * s[7] + s[2]
    prog = gc.compile(J, params=s)
    vals = {n: 0.1 * (i + 1) - 0.35 for i, n in enumerate(HOSTILE)}
    params = prog.init(vals)
    assert set(params) == set(HOSTILE)
    loss, grads = prog.value_and_grad(params)
    v = [vals[n] for n in HOSTILE]
    Jv = sum((i + 1) * vi**2 for i, vi in enumerate(v)) + v[0] * v[1] + 3 * v[5] * v[7] + v[2]
    g = [2 * (i + 1) * vi for i, vi in enumerate(v)]
    g[0] += v[1]
    g[1] += v[0]
    g[5] += 3 * v[7]
    g[7] += 3 * v[5]
    g[2] += 1.0
    assert float(loss) == pytest.approx(Jv, rel=1e-13)
    for i, n in enumerate(HOSTILE):
        assert float(grads[n]) == pytest.approx(g[i], rel=1e-12, abs=1e-15), n
    # one SGD step works too
    prog.fit(params, steps=1, optimizer=gc.SGD(lr=0.1))
    for i, n in enumerate(HOSTILE):
        assert float(params[n]) == pytest.approx(v[i] - 0.1 * g[i], rel=1e-12, abs=1e-15), n


def test_hostile_data_names():
    wp, bp = sp.Symbol("np"), sp.Symbol("x y")
    xd, yd = sp.Symbol("lambda"), sp.Symbol("def")
    prog = gc.compile(gc.mse(wp * xd + bp, yd), params=[wp, bp], inputs=[xd], targets=[yd])
    rng = np.random.default_rng(2)
    X, Y = rng.standard_normal(7), rng.standard_normal(7)
    params = prog.init({"np": 1.5, "x y": -0.25})
    loss, grads = prog.value_and_grad(params, X, Y)
    r = 1.5 * X - 0.25 - Y
    assert float(loss) == pytest.approx(0.5 * np.mean(r * r), rel=1e-12)
    assert float(grads["np"]) == pytest.approx(np.mean(r * X), rel=1e-12)
    assert float(grads["x y"]) == pytest.approx(np.mean(r), rel=1e-12)


def test_hostile_matrix_names():
    xh = sp.MatrixSymbol("x y", 2, 1)
    yh = sp.MatrixSymbol("math", 1, 1)
    Wh1 = sp.MatrixSymbol("W-1", 3, 2)
    bh1 = sp.MatrixSymbol("lambda", 3, 1)
    Wh2 = sp.MatrixSymbol("__import__('os')", 1, 3)
    bh2 = sp.MatrixSymbol("_t0", 1, 1)
    out = Wh2 * gc.tanh(Wh1 * xh + bh1) + bh2
    prog = gc.compile(
        gc.mse(out, yh), params=[Wh1, bh1, Wh2, bh2], inputs=[xh], targets=[yh], output=out
    )
    rng = np.random.default_rng(17)
    vals = {
        "W-1": rng.standard_normal((3, 2)),
        "lambda": rng.standard_normal((3, 1)),
        "__import__('os')": rng.standard_normal((1, 3)),
        "_t0": rng.standard_normal((1, 1)),
    }
    params = prog.init(vals)
    X, Y = rng.standard_normal((4, 2)), rng.standard_normal((4, 1))
    loss, grads = prog.value_and_grad(params, X, Y)
    ref_loss, ref_grads = mlp_grad_dict(
        params, [("W-1", "lambda"), ("__import__('os')", "_t0")], ["tanh", "identity"], X, Y, "mse"
    )
    assert float(loss) == pytest.approx(ref_loss, rel=1e-12)
    assert_dicts_close(grads, ref_grads, rtol=1e-10, atol=1e-14, what="hostile matrix names")


# ======================================================================
# target="cuda": works (simulator) or raises GradcError, nothing else
# ======================================================================


def test_cuda_bowl_works_or_gradc_error():
    try:
        prog = gc.compile(w1**2 + w2**2 + 2 * w2 + 5, params=[w1, w2], target="cuda")
        params = prog.init({w1: -2.0, w2: 3.0})
        loss, grads = prog.value_and_grad(params)
        hist = prog.fit(params, steps=3, optimizer=gc.SGD(lr=0.1))
    except gc.GradcError:
        return
    assert float(loss) == pytest.approx(24.0, rel=1e-12)
    assert float(grads["w1"]) == pytest.approx(-4.0, rel=1e-12)
    assert float(grads["w2"]) == pytest.approx(8.0, rel=1e-12)
    assert np.asarray(hist.loss).shape == (3,)
    assert float(params["w1"]) == pytest.approx(-2.0 * 0.8**3, rel=1e-12)
    assert float(params["w2"]) == pytest.approx(-1.0 + 4.0 * 0.8**3, rel=1e-12)


def test_cuda_network_works_or_gradc_error():
    xc = sp.MatrixSymbol("xc", 2, 1)
    yc = sp.MatrixSymbol("yc", 1, 1)
    Wc1 = sp.MatrixSymbol("Wc1", 2, 2)
    bc1 = sp.MatrixSymbol("bc1", 2, 1)
    Wc2 = sp.MatrixSymbol("Wc2", 1, 2)
    bc2 = sp.MatrixSymbol("bc2", 1, 1)
    out = gc.sigmoid(Wc2 * gc.sigmoid(Wc1 * xc + bc1) + bc2)
    rng = np.random.default_rng(3)
    vals = {
        "Wc1": rng.standard_normal((2, 2)),
        "bc1": rng.standard_normal((2, 1)),
        "Wc2": rng.standard_normal((1, 2)),
        "bc2": rng.standard_normal((1, 1)),
    }
    X, Y = rng.standard_normal((3, 2)), rng.uniform(size=(3, 1))
    names = [("Wc1", "bc1"), ("Wc2", "bc2")]
    try:
        prog = gc.compile(
            gc.mse(out, yc),
            params=[Wc1, bc1, Wc2, bc2],
            inputs=[xc],
            targets=[yc],
            output=out,
            target="cuda",
        )
        params = prog.init(vals)
        loss, grads = prog.value_and_grad(params, X, Y)
        yhat = prog.predict(params, X)
        prog.fit(params, X, Y, optimizer=gc.SGD(lr=0.5), epochs=1, shuffle=False)
    except gc.GradcError:
        return
    ref_loss, ref_grads = mlp_grad_dict(vals, names, ["sigmoid", "sigmoid"], X, Y, "mse")
    assert float(loss) == pytest.approx(ref_loss, rel=1e-10)
    assert_dicts_close(grads, ref_grads, rtol=1e-9, atol=1e-13, what="cuda grads")
    assert yhat.shape == (3, 1)
    want = {k: vals[k] - 0.5 * ref_grads[k] for k in vals}
    assert_dicts_close(params, want, rtol=1e-9, atol=1e-13, what="cuda fit")


def test_float32_overflow_after_many_steps_is_caught_by_the_running_bound():
    """J = −w in float32 with lr = 1e37: each step adds 1e37 to w (the gradient is
    −1, finite, and so is the loss) until w passes float32's largest value. Plain
    SGD shows the new values finite by a running bound, looked at only past a
    quarter of the largest float: the overflow must still be named at its step,
    and w be the float32 value of the step before."""
    wv = sp.Symbol("wbound")
    prog = gc.compile(-wv, params=[wv], dtype="float32")
    params = prog.init({wv: 0.0})
    with pytest.raises(gc.GradcError, match=r"update step (\d+) .*param") as ei:
        prog.fit(params, steps=100, optimizer=gc.SGD(lr=1e37))
    failed = int(re.search(r"update step (\d+)", _msg(ei)).group(1))
    w, lr = np.float32(0.0), np.float32(1e37)
    for _ in range(failed - 1):
        w = np.float32(w + lr)
    assert np.isfinite(w) and float(w) + 1e37 > float(np.finfo(np.float32).max)  # it overflows
    assert params["wbound"].item() == w
