"""The seed's linear regression: ŷ = w·x + b, L(w, b) = 1/(2n)·Σ(ŷᵢ − yᵢ)².

gc.mse(ŷ, y) is the per-sample loss ½(ŷ − y)², and gradc averages a
per-sample loss over the batch, so the compiled loss is exactly the seed's
1/(2n)·Σ. The script prints the derivation gradc made, checks the gradient
against the seed's hand-derived formulas

    ∂L/∂w = 1/n·Σ(w·xᵢ + b − yᵢ)·xᵢ,   ∂L/∂b = 1/n·Σ(w·xᵢ + b − yᵢ),

fits by full-batch gradient descent, and compares the result with the
least-squares solution from numpy.linalg.lstsq.

    python examples/linear_regression.py
"""

import numpy as np
import sympy as sp
from _common import SMALL, pyplot, save

import gradc as gc

TRUE_W, TRUE_B = 3.0, 2.0


def main():
    n = 50 if SMALL else 200
    rng = np.random.default_rng(0)
    X = rng.uniform(0.0, 2.0, n)
    Y = TRUE_W * X + TRUE_B + rng.normal(0.0, 0.5, n)

    # Form (b) of the API: a per-sample loss over scalar data symbols.
    w, b, x, y = sp.symbols("w b x y")
    yhat = w * x + b
    prog = gc.compile(gc.mse(yhat, y), params=[w, b], inputs=[x], targets=[y], output=yhat)
    print(prog.explain())

    # The gradient at the starting point against the seed's formulas.
    params = prog.init({w: 0.0, b: 0.0})
    grads = prog.grad(params, X, Y)
    r = float(params["w"]) * X + float(params["b"]) - Y
    seed_grads = {"w": np.mean(r * X), "b": np.mean(r)}
    gerr = max(abs(float(grads[k]) - seed_grads[k]) for k in ("w", "b"))
    print(
        f"loss at (0, 0): gradc {prog.loss(params, X, Y):.6f}, seed formula {np.mean(r**2) / 2:.6f}"
    )
    print(
        f"gradient at (0, 0): dL/dw = {float(grads['w']):.6f}, dL/db = {float(grads['b']):.6f}; "
        f"largest difference from the seed's formulas: {gerr:.3g}"
    )

    # Batch gradient descent: batch_size=None uses all n samples per update,
    # so one epoch is one update.
    steps = 500
    hist = prog.fit(params, X, Y, optimizer=gc.SGD(lr=0.5), epochs=steps)
    w_gd, b_gd = float(params["w"]), float(params["b"])

    A = np.column_stack([X, np.ones(n)])
    (w_ls, b_ls), *_ = np.linalg.lstsq(A, Y, rcond=None)
    print(f"after {steps} updates: loss {hist.loss[0]:.4f} -> {prog.loss(params, X, Y):.6f}")
    print(f"gradient descent: w = {w_gd:.10f}, b = {b_gd:.10f}")
    print(f"numpy lstsq:      w = {w_ls:.10f}, b = {b_ls:.10f}")
    print(f"largest difference from lstsq: {max(abs(w_gd - w_ls), abs(b_gd - b_ls)):.3g}")
    print(f"(data drawn with w = {TRUE_W}, b = {TRUE_B} and noise of std 0.5)")

    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(X, Y, s=12, alpha=0.6, label="data")
    xs = np.linspace(0.0, 2.0, 50)
    ax.plot(
        xs,
        prog.predict(params, xs).ravel(),
        color="C3",
        lw=2.5,
        label=f"gradc fit: y = {w_gd:.3f}x + {b_gd:.3f}",
    )
    ax.plot(xs, w_ls * xs + b_ls, "k--", lw=1, label="numpy lstsq")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title(r"linear regression, $L = \frac{1}{2n}\sum(\hat y - y)^2$")
    ax.legend()
    save(fig, "linear_regression")


if __name__ == "__main__":
    main()
