"""Your own activation, loss and optimizer, all written in SymPy.

- activation: swish/SiLU, z ↦ z·σ(z), through gc.elementwise(sp.Lambda(...));
  gradc derives its derivative with SymPy.
- loss: log-cosh, Σ log(cosh(ŷ − y)), which behaves like ½r² for small
  residuals and like |r| for large ones, so a few outliers pull less.
- optimizer: RMSProp as a gc.Optimizer subclass: hyper-parameters with
  defaults, a state slot per parameter, and a `rule` returning the new values
  as SymPy expressions of the old ones; gradc compiles it into the update
  kernel like its own SGD, Momentum and Adam.

Each piece is checked against NumPy, then a 1-16-2 network fits a noisy
curve (sin 1.5x, cos 1.5x) with outliers.

    python examples/custom.py
"""

from typing import ClassVar

import numpy as np
import sympy as sp
from _common import SMALL, pyplot, save

import gradc as gc

z = sp.Symbol("z")
swish = gc.elementwise(sp.Lambda(z, z / (1 + sp.exp(-z))))
logcosh = gc.elementwise(sp.Lambda(z, sp.log(sp.cosh(z))))
LR = 0.03  # RMSProp's learning rate in this example


class RMSProp(gc.Optimizer):
    """s ← ρ·s + (1 − ρ)·g²,  θ ← θ − η·g / (√s + ε)."""

    hyper: ClassVar[dict[str, float]] = {"lr": 0.01, "rho": 0.9, "eps": 1e-8}
    state = ("s",)  # one running mean of g² per parameter entry, starting at 0

    def rule(self, theta, g, s, h, t):
        # Right-hand sides read the OLD values, so the new s is spelled out in θ's update.
        s_new = h.rho * s.s + (1 - h.rho) * g**2
        return {theta: theta - h.lr * g / (sp.sqrt(s_new) + h.eps), s.s: s_new}


def curve(X):
    """The noise-free targets: (sin 1.5x, cos 1.5x) for each row of X."""
    return np.hstack([np.sin(1.5 * X), np.cos(1.5 * X)])


def numpy_forward(p, X):
    """The same network in NumPy, samples in rows."""
    zh = X @ p["W1"].T + p["b1"].T
    return (zh / (1 + np.exp(-zh))) @ p["W2"].T + p["b2"].T


def main():
    hidden, n_out = 16, 2
    x = sp.MatrixSymbol("x", 1, 1)
    y = sp.MatrixSymbol("y", n_out, 1)
    W1, b1 = sp.MatrixSymbol("W1", hidden, 1), sp.MatrixSymbol("b1", hidden, 1)
    W2, b2 = sp.MatrixSymbol("W2", n_out, hidden), sp.MatrixSymbol("b2", n_out, 1)
    yhat = W2 * swish(W1 * x + b1) + b2
    loss = gc.sum(logcosh(yhat - y))
    prog = gc.compile(loss, params=[W1, b1, W2, b2], inputs=[x], targets=[y], output=yhat)

    n = 100 if SMALL else 300
    rng = np.random.default_rng(0)
    X = rng.uniform(-2.0, 2.0, (n, 1))
    Y = curve(X) + 0.1 * rng.normal(size=(n, n_out))
    outliers = rng.choice(n, n // 20, replace=False)  # 5% of the samples, off by ±3
    Y[outliers] += rng.choice([-3.0, 3.0], (len(outliers), n_out))

    # Independent references: forward pass, loss and one RMSProp step in NumPy.
    params = prog.init(seed=0)
    pred = numpy_forward(params, X)
    print(
        f"swish forward vs NumPy: largest difference "
        f"{np.abs(prog.predict(params, X) - pred).max():.3g}"
    )
    ref_loss = np.mean(np.log(np.cosh(pred - Y)).sum(axis=1))
    print(f"log-cosh loss: gradc {prog.loss(params, X, Y):.10f}, NumPy {ref_loss:.10f}")
    print(
        f"gradient vs finite differences (gc.check_grad): {gc.check_grad(prog, params, X, Y):.3g}"
    )

    g = prog.grad(params, X, Y)
    expect = {}
    for k, v in params.items():  # first step from s = 0
        s1 = 0.1 * g[k] ** 2
        expect[k] = v - LR * g[k] / (np.sqrt(s1) + 1e-8)
    one = {k: v.copy() for k, v in params.items()}
    prog.fit(one, X, Y, optimizer=RMSProp(lr=LR), epochs=1)  # full batch: one update
    step_err = max(np.abs(one[k] - expect[k]).max() for k in params)
    print(f"one RMSProp step vs NumPy: largest difference {step_err:.3g}")

    epochs = 200
    hist = prog.fit(params, X, Y, optimizer=RMSProp(lr=LR), epochs=epochs, batch_size=32, seed=0)
    inliers = np.setdiff1d(np.arange(n), outliers)
    rmse = np.sqrt(np.mean((prog.predict(params, X[inliers]) - curve(X[inliers])) ** 2))
    print(
        f"RMSProp, {epochs} epochs: log-cosh loss {hist.epoch_loss[0]:.4f} -> "
        f"{hist.epoch_loss[-1]:.4f}; RMS distance to the curve on the inliers {rmse:.4f}"
    )

    plt = pyplot()
    if plt is None:
        return
    fig, (ax_f, ax_l) = plt.subplots(1, 2, figsize=(11, 4))
    xs = np.linspace(-2.0, 2.0, 200)[:, None]
    fit = prog.predict(params, xs)
    for j, name in enumerate(("sin 1.5x", "cos 1.5x")):
        ax_f.scatter(X[inliers], Y[inliers, j], s=8, alpha=0.4, color=f"C{j}")
        ax_f.plot(xs, fit[:, j], color=f"C{j}", lw=2.5, label=f"net output {j + 1} ({name})")
    ax_f.scatter(
        X[outliers].repeat(n_out),
        Y[outliers].ravel(),
        s=20,
        marker="x",
        color="C3",
        label="outliers",
    )
    ax_f.plot(xs, curve(xs), "k--", lw=1)
    ax_f.set_xlabel("x")
    ax_f.set_ylabel("y")
    ax_f.set_title("custom activation and loss")
    ax_f.legend(fontsize=8, framealpha=0.9)
    ax_l.plot(np.arange(1, epochs + 1), hist.epoch_loss)
    ax_l.set_yscale("log")
    ax_l.set_xlabel("epoch")
    ax_l.set_ylabel("epoch-mean log-cosh loss")
    ax_l.set_title("custom optimizer: RMSProp")
    save(fig, "custom")


if __name__ == "__main__":
    main()
