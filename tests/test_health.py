"""program stage: gradient-health warnings (the seeds' vanishing and exploding gradients)."""

import warnings

import numpy as np
import pytest

import gradc as gc
from gradc.program.health import GradientHealthWarning, diagnose


def _small_tanh_fit(samples: int):
    """A healthy 3-4-2 tanh network, its parameters and ``samples`` rows of data."""
    net = gc.Sequential(gc.Dense(3, 4, gc.tanh), gc.Dense(4, 2))
    prog = gc.compile(net, loss=gc.mse)
    rng = np.random.default_rng(2)
    X, Y = rng.normal(size=(samples, 3)), rng.normal(size=(samples, 2))
    return prog, prog.init(seed=1), X, Y


def test_deep_sigmoid_network_warns_about_vanishing_gradients():
    layers = [gc.Dense(3, 4, gc.sigmoid)] + [gc.Dense(4, 4, gc.sigmoid) for _ in range(5)]
    net = gc.Sequential(*layers, gc.Dense(4, 1, gc.sigmoid))
    prog = gc.compile(net, loss=gc.mse)
    params = prog.init(seed=0)
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(32, 3)), rng.uniform(size=(32, 1))
    with pytest.warns(GradientHealthWarning, match="vanishing"):
        hist = prog.fit(params, X, Y, epochs=1, batch_size=8)
    norms = hist.layer_norms()
    assert list(norms) == [f"W{k}" for k in range(1, 8)]
    # the seeds' claim, measured: each sigmoid layer shrinks the gradient
    assert norms["W1"] < norms["W7"] * 1e-3


def test_exploding_norms_are_named_with_remedies():
    steps = 40
    grow = np.geomspace(1.0, 1e6, steps)
    found = diagnose(np.stack([grow, grow], axis=1), ["W1", "W2"], ["W1", "W2"])
    assert len(found) == 1 and "exploding" in found[0] and "clip_norm" in found[0]


def test_healthy_training_is_quiet():
    prog, params, X, Y = _small_tanh_fit(16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradientHealthWarning)
        prog.fit(params, X, Y, epochs=3, batch_size=4)


def test_progress_line_without_tqdm(capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tqdm(name, *args, **kwargs):
        if name.startswith("tqdm"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    prog, params, X, Y = _small_tanh_fit(16)
    hist = prog.fit(params, X, Y, epochs=2, batch_size=4, progress=True)
    err = capsys.readouterr().err
    assert f"step {hist.steps}/{hist.steps}" in err and "epoch 2" in err and "samples/s" in err


def test_diagnose_reads_squared_norms_as_the_norms():
    """fit hands the health check the kernels' squared norms (no roots taken):
    the same findings, with the norms themselves in the text."""
    steps = 200
    grow = np.geomspace(1.0, 1e6, steps)
    small = np.full(steps, 1e-7)
    norms = np.stack([small, grow, grow], axis=1)
    names = ["W1", "b1", "W2"]
    plain = diagnose(norms, names, ["W1", "W2"])
    squared = diagnose(norms**2, names, ["W1", "W2"], squared=True)
    assert [f.split(":")[0] for f in plain] == ["vanishing gradients", "exploding gradients"]
    assert squared == plain  # the numbers printed too: norms, not their squares


def test_history_grad_norms_are_the_roots_of_what_the_kernel_recorded():
    prog, params, X, Y = _small_tanh_fit(8)
    start = {k: v.copy() for k, v in params.items()}
    hist = prog.fit(params, X, Y, optimizer=gc.SGD(0.1), epochs=1, batch_size=8)
    grads = prog.grad(start, X, Y)  # the one step's gradient, at the starting point
    for k, g in grads.items():
        assert hist.grad_norms[k][0] == pytest.approx(np.linalg.norm(g), rel=1e-12)
    assert hist.norm_matrix.shape == (1, len(grads))


@pytest.mark.parametrize("steps", [1, 2, 7, 64, 65, 2048, 5000])
def test_statistics_are_numpy_medians_of_evenly_spaced_steps(steps):
    # diagnose's compiled statistics against np.sort on the same spaced rows
    from gradc.program.health import SAMPLES, _statistics

    rng = np.random.default_rng(steps)
    norms = rng.random((steps, 4)) ** 3
    upper_middle = lambda v: np.sort(v)[len(v) // 2]  # noqa: E731
    for tenth in (0, steps // 10):
        picked = norms[:: max(1, steps // SAMPLES)]
        k = max(1, tenth)
        stride = max(1, k // SAMPLES)
        totals = np.sqrt((norms**2).sum(axis=1))
        want = (
            upper_middle(picked[:, 0]),
            upper_middle(picked[:, 3]),
            upper_middle(totals[:k:stride]),
            upper_middle(totals[steps - k :: stride]),
        )
        for squared, given in ((False, norms), (True, norms**2)):
            got = _statistics(np.ascontiguousarray(given), 0, 3, tenth, SAMPLES, squared)
            np.testing.assert_allclose(got, want, rtol=1e-12)


def test_upper_middle_is_the_sorted_middle_entry():
    """The quickselect behind the medians against np.sort, on random, sorted,
    few-valued and constant arrays of 1…80 entries."""
    from gradc.program.health import _upper_middle

    rng = np.random.default_rng(1)
    for trial in range(2000):
        n = int(rng.integers(1, 81))
        kind = trial % 4
        if kind == 0:
            v = rng.standard_normal(n)
        elif kind == 1:
            v = rng.integers(0, 4, n).astype(np.float64)
        elif kind == 2:
            v = np.sort(rng.standard_normal(n))[:: 1 if trial % 8 < 4 else -1].copy()
        else:
            v = np.full(n, 2.0)
        assert _upper_middle(v.copy()) == np.sort(v)[n // 2], (n, kind)
