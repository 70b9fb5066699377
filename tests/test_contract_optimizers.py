"""Contract tests, section 4 of API.md: optimizers and fit's update steps.

Each run of ``prog.fit`` is replayed with the reference update rules of
``reference.py`` fed with reference gradients (NumPy delta recursion).
"""

import math

import numpy as np
import pytest
import sympy as sp
from reference import (
    RefAdam,
    RefMomentum,
    RefSGD,
    assert_dicts_close,
    clip_grads,
    global_norm,
    mlp_grad_dict,
)

import gradc as gc

xs = sp.MatrixSymbol("xs", 2, 1)
ys = sp.MatrixSymbol("ys", 1, 1)
Wa = sp.MatrixSymbol("Wa", 3, 2)
ba = sp.MatrixSymbol("ba", 3, 1)
Wb = sp.MatrixSymbol("Wb", 1, 3)
bb = sp.MatrixSymbol("bb", 1, 1)
NAMES = [("Wa", "ba"), ("Wb", "bb")]
ACTS = ["tanh", "identity"]


def _out():
    return Wb * gc.tanh(Wa * xs + ba) + bb


@pytest.fixture(scope="module")
def prog():
    out = _out()
    return gc.compile(
        gc.mse(out, ys), params=[Wa, ba, Wb, bb], inputs=[xs], targets=[ys], output=out
    )


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(2024)
    X = rng.standard_normal((6, 2))
    Y = rng.standard_normal((6, 1))
    return X, Y


def _start(seed=5):
    rng = np.random.default_rng(seed)
    return {
        "Wa": rng.normal(0, 0.7, (3, 2)),
        "ba": rng.normal(0, 0.3, (3, 1)),
        "Wb": rng.normal(0, 0.7, (1, 3)),
        "bb": rng.normal(0, 0.3, (1, 1)),
    }


def _replay(ref_opt, start, X, Y, steps, batch_size=None, clip_norm=None):
    """Reference run: sequential batches (no shuffle), reference grads, reference rule."""
    p = {k: np.array(v, np.float64) for k, v in start.items()}
    n = X.shape[0]
    bs = n if batch_size is None else batch_size
    losses = []
    done = 0
    while done < steps:
        for s in range(0, n, bs):
            if done == steps:
                break
            loss, g = mlp_grad_dict(p, NAMES, ACTS, X[s : s + bs], Y[s : s + bs], "mse")
            losses.append(loss)
            p = ref_opt.step(p, clip_grads(g, clip_norm))
            done += 1
    return p, np.array(losses)


CASES = {
    "sgd": (lambda: gc.SGD(lr=0.1), lambda: RefSGD(0.1), 1e-10),
    "sgd_positional": (lambda: gc.SGD(0.05), lambda: RefSGD(0.05), 1e-10),
    "momentum": (lambda: gc.Momentum(lr=0.1, beta=0.9), lambda: RefMomentum(0.1, 0.9), 1e-10),
    "momentum_default_beta": (lambda: gc.Momentum(0.2), lambda: RefMomentum(0.2, 0.9), 1e-10),
    "momentum_beta_half": (
        lambda: gc.Momentum(0.1, beta=0.5),
        lambda: RefMomentum(0.1, 0.5),
        1e-10,
    ),
    "adam": (lambda: gc.Adam(lr=1e-2), lambda: RefAdam(1e-2), 1e-8),
    "adam_custom": (
        lambda: gc.Adam(lr=0.05, beta1=0.8, beta2=0.99, eps=1e-6),
        lambda: RefAdam(0.05, 0.8, 0.99, 1e-6),
        1e-8,
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_three_full_batch_steps(prog, data, name):
    make_gc, make_ref, rtol = CASES[name]
    X, Y = data
    start = _start()
    params = prog.init(start)
    hist = prog.fit(params, X, Y, optimizer=make_gc(), epochs=3, shuffle=False)
    want, losses = _replay(make_ref(), start, X, Y, steps=3)
    np.testing.assert_allclose(np.asarray(hist.loss), losses, rtol=1e-12)
    assert_dicts_close(params, want, rtol=rtol, atol=1e-13, what=name)


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
def test_minibatch_no_shuffle_sequential_batches(prog, data, name):
    """batch_size=4 over n=6, shuffle=False: batches rows [0:4], [4:6] each epoch."""
    make_gc, make_ref, rtol = CASES[name]
    X, Y = data
    start = _start(6)
    params = prog.init(start)
    hist = prog.fit(params, X, Y, optimizer=make_gc(), epochs=2, batch_size=4, shuffle=False)
    steps = 2 * math.ceil(6 / 4)
    want, losses = _replay(make_ref(), start, X, Y, steps=steps, batch_size=4)
    assert np.asarray(hist.loss).shape == (steps,)
    np.testing.assert_allclose(np.asarray(hist.loss), losses, rtol=1e-12)
    assert_dicts_close(params, want, rtol=rtol, atol=1e-13, what=name + " minibatch")
    assert len(np.asarray(hist.epoch_loss)) == 2


def test_clip_norm_tiny(prog, data):
    """With a tiny clip, the step is lr * g * clip / ||g||_global."""
    X, Y = data
    start = _start(7)
    params = prog.init(start)
    lr, clip = 0.1, 1e-3
    _, g = mlp_grad_dict(start, NAMES, ACTS, X, Y, "mse")
    gn = global_norm(g)
    assert gn > 100 * clip
    prog.fit(params, X, Y, optimizer=gc.SGD(lr=lr), epochs=1, shuffle=False, clip_norm=clip)
    want = {k: start[k] - lr * g[k] * (clip / gn) for k in start}
    assert_dicts_close(params, want, rtol=1e-11, atol=1e-15, what="clip")
    # the step taken has global norm lr * clip
    step = math.sqrt(sum(float(np.sum((params[k] - start[k]) ** 2)) for k in start))
    assert step == pytest.approx(lr * clip, rel=1e-9)


def test_clip_norm_large_is_noop(prog, data):
    X, Y = data
    start = _start(8)
    params = prog.init(start)
    prog.fit(params, X, Y, optimizer=gc.SGD(lr=0.1), epochs=2, shuffle=False, clip_norm=1e6)
    want, _ = _replay(RefSGD(0.1), start, X, Y, steps=2)
    assert_dicts_close(params, want, rtol=1e-10, atol=1e-13, what="clip large")


def test_clip_norm_with_momentum(prog, data):
    """Clipping rescales the gradient the optimizer receives."""
    X, Y = data
    start = _start(9)
    params = prog.init(start)
    prog.fit(
        params,
        X,
        Y,
        optimizer=gc.Momentum(lr=0.1, beta=0.9),
        epochs=2,
        shuffle=False,
        clip_norm=0.01,
    )
    want, _ = _replay(RefMomentum(0.1, 0.9), start, X, Y, steps=2, clip_norm=0.01)
    assert_dicts_close(params, want, rtol=1e-10, atol=1e-14, what="clip momentum")


def test_default_optimizer_is_sgd_001(prog, data):
    X, Y = data
    start = _start(10)
    params = prog.init(start)
    prog.fit(params, X, Y, epochs=1, shuffle=False)
    want, _ = _replay(RefSGD(0.01), start, X, Y, steps=1)
    assert_dicts_close(params, want, rtol=1e-10, atol=1e-14, what="default optimizer")


def test_compile_optimizer_is_fit_default(data):
    out = _out()
    p2 = gc.compile(
        gc.mse(out, ys),
        params=[Wa, ba, Wb, bb],
        inputs=[xs],
        targets=[ys],
        output=out,
        optimizer=gc.Momentum(lr=0.05, beta=0.8),
    )
    X, Y = data
    start = _start(11)
    params = p2.init(start)
    p2.fit(params, X, Y, epochs=3, shuffle=False)
    want, _ = _replay(RefMomentum(0.05, 0.8), start, X, Y, steps=3)
    assert_dicts_close(params, want, rtol=1e-10, atol=1e-14, what="compile optimizer")


def test_fit_twice_continues_from_current_params(prog, data):
    """Two SGD fits of 1 epoch equal one fit of 2 epochs (SGD has no state)."""
    X, Y = data
    start = _start(12)
    params = prog.init(start)
    prog.fit(params, X, Y, optimizer=gc.SGD(lr=0.1), epochs=1, shuffle=False)
    prog.fit(params, X, Y, optimizer=gc.SGD(lr=0.1), epochs=1, shuffle=False)
    want, _ = _replay(RefSGD(0.1), start, X, Y, steps=2)
    assert_dicts_close(params, want, rtol=1e-10, atol=1e-14, what="fit twice")


def test_the_same_fit_call_again_with_adam_and_then_a_reshaped_data_array(prog, data):
    """fit keeps its last call prepared and runs the same call again (the same
    dict, arrays, optimizer and options) without preparing it anew: Adam's state
    and step count must carry over as in one longer fit, values written into X
    in place and a new learning rate must be read, and an X reshaped in place must be refused by name,
    not indexed with the old shape."""
    X0, Y0 = data
    X, Y = X0.copy(), Y0.copy()
    start = _start(21)
    params = prog.init(start)
    opt = gc.Adam(lr=0.05)
    for _ in range(3):
        prog.fit(params, X, Y, optimizer=opt, epochs=1, batch_size=2, shuffle=False)
    ref = RefAdam(0.05)
    want, _ = _replay(ref, start, X, Y, steps=9, batch_size=2)
    assert_dicts_close(params, want, rtol=1e-9, atol=1e-13, what="three fits")
    X *= -1.5  # the same array, new values
    opt.values["lr"] = ref.lr = 0.02  # a new hyperparameter value
    prog.fit(params, X, Y, optimizer=opt, epochs=1, batch_size=2, shuffle=False)
    want, _ = _replay(ref, want, X, Y, steps=3, batch_size=2)
    assert_dicts_close(params, want, rtol=1e-9, atol=1e-13, what="fit on new values")
    X.shape = (4, 3)  # 12 entries, no longer 2 per sample
    with pytest.raises(gc.GradcError, match="xs"):
        prog.fit(params, X, Y, optimizer=opt, epochs=1, batch_size=2, shuffle=False)


# ---------------------------------------------------------------- form (a) with optimizers

w1, w2 = sp.symbols("w1 w2")


@pytest.fixture(scope="module")
def bowl():
    return gc.compile(w1**2 + w2**2 + 2 * w2 + 5, params=[w1, w2])


@pytest.mark.parametrize("which", ["momentum", "adam"])
def test_bowl_optimizers_closed_form(bowl, which):
    def grad(p):
        return {"w1": np.array(2 * p["w1"]), "w2": np.array(2 * p["w2"] + 2)}

    ref = RefMomentum(0.1, 0.9) if which == "momentum" else RefAdam(0.1)
    opt = gc.Momentum(lr=0.1, beta=0.9) if which == "momentum" else gc.Adam(lr=0.1)
    params = bowl.init({w1: -2.0, w2: 3.0})
    hist = bowl.fit(params, steps=15, optimizer=opt)
    p = {"w1": np.array(-2.0), "w2": np.array(3.0)}
    losses = []
    for _ in range(15):
        losses.append(float(p["w1"] ** 2 + p["w2"] ** 2 + 2 * p["w2"] + 5))
        p = ref.step(p, grad(p))
    np.testing.assert_allclose(np.asarray(hist.loss), losses, rtol=1e-11)
    assert float(params["w1"]) == pytest.approx(float(p["w1"]), rel=1e-10, abs=1e-14)
    assert float(params["w2"]) == pytest.approx(float(p["w2"]), rel=1e-10, abs=1e-14)


@pytest.mark.parametrize(
    "name, batch_size, clip_norm",
    [("sgd", 1, None), ("momentum", 5, 0.05), ("adam", 1, 0.05), ("sgd", 5, None)],
)
def test_batch_of_one_fused_update(data, monkeypatch, name, batch_size, clip_norm):
    """At batch size 1 the training kernel forms each weight's gradient δ·xᵀ inside
    its update sweep and takes the norm as ‖δ‖·‖x‖ (for weights of at least
    FUSED_MIN_ENTRIES entries; lowered here so the small net uses it). With
    batch_size=5 over 6 rows one epoch runs the stored path (n=5) and the fused
    one (n=1). Parameters, losses and per-parameter gradient norms are replayed
    with reference gradients and rules."""
    from gradc.kernels import cpu_train

    monkeypatch.setattr(cpu_train, "FUSED_MIN_ENTRIES", 1)
    out = _out()
    prog = gc.compile(gc.mse(out, ys), params=[Wa, ba, Wb, bb], inputs=[xs], targets=[ys])
    assert "step_outer(" in prog.source["train"]
    make_gc, make_ref, rtol = CASES[name]
    X, Y = data
    start = _start(10)
    params = prog.init(start)
    hist = prog.fit(
        params,
        X,
        Y,
        optimizer=make_gc(),
        epochs=2,
        batch_size=batch_size,
        shuffle=False,
        clip_norm=clip_norm,
    )
    steps = 2 * math.ceil(6 / batch_size)
    want, losses = _replay(make_ref(), start, X, Y, steps, batch_size, clip_norm)
    np.testing.assert_allclose(np.asarray(hist.loss), losses, rtol=1e-12)
    assert_dicts_close(params, want, rtol=rtol, atol=1e-13, what=f"fused {name}")
    # the first step's gradient norms, per parameter, against the reference gradient
    _, g = mlp_grad_dict(start, NAMES, ACTS, X[:batch_size], Y[:batch_size], "mse")
    for k in start:
        assert hist.grad_norms[k][0] == pytest.approx(np.linalg.norm(g[k]), rel=1e-12)


@pytest.mark.parametrize(
    "make, named",
    [
        (lambda: gc.SGD(-0.1), "lr"),
        (lambda: gc.SGD(float("nan")), "lr"),
        (lambda: gc.Momentum(0.1, beta=1.0), "beta"),
        (lambda: gc.Adam(beta1=-0.1), "beta1"),
        (lambda: gc.Adam(beta2=1.5), "beta2"),
        (lambda: gc.Adam(eps=-1e-8), "eps"),
        (lambda: gc.Adam(lr=float("inf")), "lr"),
    ],
)
def test_hyperparameter_out_of_range_is_refused(make, named):
    with pytest.raises(gc.GradcError, match=rf"\b{named} must be"):
        make()


def test_hyperparameter_edges_are_accepted():
    assert gc.SGD(0.0).values["lr"] == 0.0
    assert gc.Momentum(0.1, beta=0.0).values["beta"] == 0.0


def test_a_stateless_rule_that_reads_t_counts_steps_across_fit_calls():
    """θ ← θ − (lr/t)·g keeps no state but reads the step count t: a second fit
    with the same optimizer goes on at t = 4. J = ½w² (g = w) from w = 1, by hand."""

    class Decaying(gc.Optimizer):
        hyper = {"lr": 0.5}  # noqa: RUF012 (the documented way to declare them)

        def rule(self, theta, g, s, h, t):
            return {theta: theta - h.lr / t * g}

    wd = sp.Symbol("wdecay")
    prog = gc.compile(wd**2 / 2, params=[wd])
    params = prog.init({wd: 1.0})
    opt = Decaying()
    prog.fit(params, steps=3, optimizer=opt)
    prog.fit(params, steps=3, optimizer=opt)
    w = 1.0
    for t in range(1, 7):
        w -= 0.5 / t * w
    assert params["wdecay"].item() == pytest.approx(w, rel=1e-14)
    assert not opt.update_rule.stateless and gc.SGD(0.1).update_rule.stateless
