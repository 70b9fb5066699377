"""derivation stage: shared δ against naive diff and finite differences; explain and report."""

import numpy as np
import pytest

import gradc as gc
from gradc.derivation.counting import count_derivation
from gradc.derivation.naive import derive_naive
from gradc.derivation.reverse import derive_shared
from gradc.graph.lower import lower
from gradc.graph.nodes import MatMul


def _fd_grad(prog, params, X, Y, h=1e-6):
    out = {}
    for k, v in params.items():
        g = np.zeros_like(v, dtype=float)
        flat, gflat = v.reshape(-1), g.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + h
            up = prog.loss(params, X, Y)
            flat[i] = old - h
            down = prog.loss(params, X, Y)
            flat[i] = old
            gflat[i] = (up - down) / (2 * h)
        out[k] = g
    return out


SPECS = {
    "tanh-sigmoid-mse": lambda: (
        gc.Sequential(gc.Dense(2, 3, gc.tanh), gc.Dense(3, 2, gc.sigmoid)),
        gc.mse,
    ),
    "softplus-ce": lambda: (
        gc.Sequential(gc.Dense(2, 2, gc.softplus), gc.Dense(2, 3)),
        gc.softmax_cross_entropy,
    ),
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_naive_and_shared_agree_and_match_finite_differences(name):
    net, loss = SPECS[name]()
    shared = gc.compile(net, loss=loss)
    naive = gc.compile(net, loss=loss, strategy="naive")
    params = shared.init(seed=3)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4, net.sizes[0]))
    Y = np.eye(net.sizes[-1])[rng.integers(0, net.sizes[-1], size=4)]
    gs, gn, fd = shared.grad(params, X, Y), naive.grad(params, X, Y), _fd_grad(shared, params, X, Y)
    for k in params:
        scale = max(np.abs(gs[k]).max(), 1e-12)
        assert np.abs(gs[k] - gn[k]).max() / scale < 1e-10, k
        assert np.abs(gs[k] - fd[k]).max() < 1e-6 * max(1.0, scale), k


def test_dense_layer_gradient_is_an_outer_product_summed_over_the_batch():
    net = gc.Sequential(gc.Dense(3, 4, gc.sigmoid), gc.Dense(4, 2, gc.sigmoid))
    d = derive_shared(lower(gc.Spec(net, loss=gc.mse)))
    for g in (d.grads[0], d.grads[2]):  # W1, W2
        assert isinstance(g, MatMul) and g.contract
    # "pass the message on": the second layer's δ reaches the first through W2ᵀ·δ
    assert any(isinstance(n, MatMul) and not n.contract for n in d.backward)
    # no ∂L/∂x for the data input: exactly one non-contracting product in backward
    assert sum(isinstance(n, MatMul) and not n.contract for n in d.backward) == 1


def test_shared_counts_grow_linearly_naive_counts_do_not():
    def counts(width):
        net = gc.Sequential(gc.Dense(3, width, gc.sigmoid), gc.Dense(width, 2, gc.sigmoid))
        g = lower(gc.Spec(net, loss=gc.mse))
        return (
            count_derivation(derive_shared(g))["backward"].total,
            count_derivation(derive_naive(g))["backward"].total,
        )

    s2, n2 = counts(2)
    s6, n6 = counts(6)
    assert s6 / s2 < 3.5  # parameters grow ~3x
    assert n6 / n2 > 5


def test_naive_size_guard_names_the_size():
    net = gc.Sequential(gc.Dense(8, 8, gc.sigmoid), gc.Dense(8, 8, gc.sigmoid), gc.Dense(8, 2))
    with pytest.raises(gc.GradcError, match="naive_limit"):
        gc.compile(net, loss=gc.mse, strategy="naive", naive_limit=10_000)


def test_explain_names_the_deltas_and_outer_products():
    net = gc.Sequential(gc.Dense(3, 4, gc.sigmoid), gc.Dense(4, 2, gc.sigmoid))
    text = gc.compile(net, loss=gc.mse).explain()
    for piece in ("δz2", "δz1", "W2ᵀ·δz2", "∂L/∂W1 = Σₙ δz1·xᵀ", "∂L/∂b2 = Σₙ δz2"):
        assert piece in text, piece
    assert "\\delta" in gc.compile(net, loss=gc.mse).explain(latex=True)


def test_report_shows_three_ways_and_the_sentence():
    net = gc.Sequential(gc.Dense(2, 2, gc.sigmoid), gc.Dense(2, 1, gc.sigmoid))
    prog = gc.compile(net, loss=gc.mse)
    text = str(prog.report())
    assert "naive: one sympy.diff" in text and "joint sympy.cse" in text and "shared δ" in text
    assert "never creates the swell" in text
    # the seeds' backward pass also forms ∂L/∂x = W1ᵀ·δz1: W1 is 2×2, so 4 more
    # multiply-adds a sample (a multiply and an add each, as products are counted)
    rep = prog.report()
    assert rep.backward_to_data == rep.counts["backward"].total + 2 * (2 * 2)
    assert "carried on to the data" in text
