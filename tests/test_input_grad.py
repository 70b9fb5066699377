"""``prog.input_grad``: ∂(mean loss)/∂X, the δ recursion carried to the data.

Checked against the hand-written recursion of ``reference.py`` (δ⁰ = W¹ᵀδ¹),
closed forms, and central finite differences of the NumPy loss.
"""

import numpy as np
import pytest
import sympy as sp
from reference import layers_from_params, max_rel_err, mlp_backprop, mlp_loss

import gradc as gc


def _dense_case(sizes, acts, loss, n, seed=0, dtype="float64"):
    layers = [gc.Dense(a, b, getattr(gc, act)) for a, b, act in zip(sizes, sizes[1:], acts)]
    prog = gc.compile(gc.Sequential(*layers), loss=getattr(gc, loss), dtype=dtype)
    rng = np.random.default_rng(seed)
    params = prog.init(seed=seed)
    X = rng.normal(size=(n, sizes[0]))
    if loss == "mse":
        Y = rng.uniform(size=(n, sizes[-1]))
    else:
        Y = np.eye(sizes[-1])[rng.integers(0, sizes[-1], size=n)]
    names = [(f"W{k}", f"b{k}") for k in range(1, len(sizes))]
    ref = layers_from_params(params, names, acts)
    return prog, params, X, Y, ref


@pytest.mark.parametrize(
    "sizes, acts, loss, n",
    [
        ((3, 4, 2), ("sigmoid", "sigmoid"), "mse", 5),  # loops, one sample loop
        ((5, 6, 4, 3), ("tanh", "relu", "identity"), "softmax_cross_entropy", 7),
        ((20, 16, 4), ("sigmoid", "identity"), "softmax_cross_entropy", 48),  # BLAS products
    ],
)
def test_input_grad_matches_delta_recursion(sizes, acts, loss, n):
    prog, params, X, Y, ref = _dense_case(sizes, acts, loss, n)
    got = prog.input_grad(params, X, Y)
    _, _, want = mlp_backprop(ref, X, Y, loss)
    assert got.shape == X.shape
    assert max_rel_err(got, want) < 1e-10


def test_input_grad_matches_finite_differences():
    prog, params, X, Y, ref = _dense_case((4, 5, 3), ("softplus", "sigmoid"), "mse", 6, seed=3)
    got = prog.input_grad(params, X, Y)
    eps, fd = 1e-6, np.zeros_like(X)
    for idx in np.ndindex(*X.shape):
        up, down = X.copy(), X.copy()
        up[idx] += eps
        down[idx] -= eps
        fd[idx] = (mlp_loss(ref, up, Y) - mlp_loss(ref, down, Y)) / (2 * eps)
    assert max_rel_err(got, fd) < 1e-7


def test_input_grad_float32():
    prog, params, X, Y, ref = _dense_case(
        (6, 8, 3), ("tanh", "identity"), "softmax_cross_entropy", 9, dtype="float32"
    )
    got = prog.input_grad(params, X, Y)
    _, _, want = mlp_backprop(ref, X.astype(np.float32), Y, "softmax_cross_entropy")
    assert got.dtype == np.float32
    assert max_rel_err(got, want) < 1e-4


def test_input_grad_scalar_form_closed_form():
    w, b, x, y = sp.symbols("w b x y")
    prog = gc.compile(gc.mse(w * x + b, y), params=[w, b], inputs=[x], targets=[y])
    params = prog.init({w: 1.5, b: -0.5})
    X = np.array([0.0, 1.0, 2.0, -1.0])
    Y = np.array([1.0, 0.0, 3.0, 2.0])
    got = prog.input_grad(params, X, Y)
    assert got.shape == (4,)  # shaped like X
    np.testing.assert_allclose(got, 1.5 * (1.5 * X - 0.5 - Y) / 4, rtol=1e-13)
    got2 = prog.input_grad(params, X[:, None], Y)
    assert got2.shape == (4, 1)


def test_input_grad_quadratic_form_reads_x_twice():
    """L = xᵀAx per sample: x is read twice, once transposed; ∂L/∂xₙ = (A + Aᵀ)xₙ / n."""
    x = sp.MatrixSymbol("x", 3, 1)
    A = sp.MatrixSymbol("A", 3, 3)
    prog = gc.compile(gc.sum(x.T * A * x), params=[A], inputs=[x])
    rng = np.random.default_rng(1)
    Av = rng.normal(size=(3, 3))
    params = prog.init({A: Av})
    X = rng.normal(size=(5, 3))
    got = prog.input_grad(params, X)
    np.testing.assert_allclose(got, X @ (Av + Av.T).T / 5, rtol=1e-12)


def test_input_grad_several_inputs_one_unused():
    w, b, x1, x2, y = sp.symbols("w b x1 x2 y")
    prog = gc.compile(gc.mse(w * x1**2 + b, y), params=[w, b], inputs=[x1, x2], targets=[y])
    params = prog.init({w: 2.0, b: 1.0})
    X1, X2, Y = np.array([1.0, -2.0]), np.array([[5.0], [6.0]]), np.array([0.5, 1.0])
    g1, g2 = prog.input_grad(params, (X1, X2), Y)
    np.testing.assert_allclose(g1, (2 * X1**2 + 1 - Y) * 2 * 2 * X1 / 2, rtol=1e-13)
    assert g2.shape == X2.shape and not g2.any()  # the loss does not read x2


def test_input_grad_of_naive_program_and_refusals():
    w, b, x, y = sp.symbols("w b x y")
    prog = gc.compile(
        gc.mse(gc.tanh(w * x + b), y), params=[w, b], inputs=[x], targets=[y], strategy="naive"
    )
    params = prog.init({w: 0.7, b: 0.2})
    X, Y = np.array([0.3, -1.2, 2.0]), np.array([0.1, 0.0, -0.4])
    t = np.tanh(0.7 * X + 0.2)
    np.testing.assert_allclose(
        prog.input_grad(params, X, Y), (t - Y) * (1 - t**2) * 0.7 / 3, rtol=1e-12
    )
    with pytest.raises(gc.GradcError, match="numbers of samples"):
        prog.input_grad(params, X, Y[:2])  # wrong target rows, named
    w1, w2 = sp.symbols("w1 w2")
    bowl = gc.compile(w1**2 + w2**2, params=[w1, w2])
    with pytest.raises(gc.GradcError, match="inputs"):
        bowl.input_grad(bowl.init(seed=0), None)


def test_explain_shows_the_delta_of_the_data():
    net = gc.Sequential(gc.Dense(3, 4, gc.sigmoid), gc.Dense(4, 2, gc.sigmoid))
    prog = gc.compile(net, loss=gc.mse)
    assert "δx" not in prog.explain()  # the program's own gradients leave it out
    assert "δx = W1ᵀ·δz1" in prog.explain(inputs=True)
