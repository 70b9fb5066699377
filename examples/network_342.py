"""The seed's 3-4-2 network: L = 3 layers, S1 = 3, S2 = 4, S3 = K = 2, sigmoid.

Prints the δ recursion gradc derived (δ³ = (a³ − y) ⊙ σ′(z³),
δ² = (W²)ᵀδ³ ⊙ σ′(z²), ∂J/∂Wˡ = δˡ⁺¹·(aˡ)ᵀ), the derivation and kernel
statistics (shared δ against the seed's "traditional way", one sympy.diff per
weight), checks the gradient against a hand-written NumPy backprop and against
finite differences, then trains on a small synthetic data set made by a
"teacher" 3-4-2 network and plots the loss curve.

    python examples/network_342.py
"""

import numpy as np
from _common import SMALL, pyplot, save

import gradc as gc


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def numpy_backprop(W1, b1, W2, b2, X, Y):
    """The seed's δ recursion by hand, samples in rows, averaged over the batch."""
    a2 = sigmoid(X @ W1.T + b1.T)  # hidden layer (4 units)
    a3 = sigmoid(a2 @ W2.T + b2.T)  # output layer (2 units) = ŷ
    d3 = (a3 - Y) * a3 * (1 - a3)  # δ³ = ∂J/∂a³ ⊙ σ′(z³)
    d2 = (d3 @ W2) * a2 * (1 - a2)  # δ² = (W²)ᵀδ³ ⊙ σ′(z²): "pass the message on"
    n = len(X)
    # ∂J/∂W = δ·aᵀ: "assign blame", one outer product per sample
    return [d2.T @ X / n, d2.mean(0)[:, None], d3.T @ a2 / n, d3.mean(0)[:, None]]


def main():
    net = gc.Sequential(gc.Dense(3, 4, gc.sigmoid), gc.Dense(4, 2, gc.sigmoid))
    prog = gc.compile(net, loss=gc.mse)
    print(prog.explain())
    print(prog.report())

    # Synthetic data: inputs ~ N(0, 1), targets from a random teacher network.
    n = 128 if SMALL else 512
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 3))
    teacher = prog.init(seed=1)
    for v in teacher.values():
        v *= 3.0  # a sharper teacher, so the targets spread over (0, 1)
    Y = prog.predict(teacher, X)

    params = prog.init(seed=0)
    names = [p.name for p in net.params]  # W1, b1, W2, b2 in layer order
    ref = numpy_backprop(*(params[k] for k in names), X, Y)
    grads = prog.grad(params, X, Y)
    err = max(np.abs(grads[k] - r).max() / np.abs(r).max() for k, r in zip(names, ref))
    print(f"gradient vs hand-written NumPy backprop: largest relative difference {err:.3g}")
    print(
        f"gradient vs finite differences (gc.check_grad): {gc.check_grad(prog, params, X, Y):.3g}"
    )

    epochs = 30 if SMALL else 150
    hist = prog.fit(params, X, Y, optimizer=gc.Adam(lr=0.05), epochs=epochs, batch_size=32)
    print(f"trained {epochs} epochs ({len(hist.loss)} updates of 32 samples, Adam lr 0.05)")
    print(
        f"loss: first epoch {hist.epoch_loss[0]:.3g}, last epoch {hist.epoch_loss[-1]:.3g}, "
        f"on all data now {prog.loss(params, X, Y):.3g}"
    )

    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(
        np.arange(1, len(hist.loss) + 1),
        hist.loss,
        lw=0.5,
        alpha=0.5,
        label="mini-batch loss (per update)",
    )
    per_epoch = len(hist.loss) / len(hist.epoch_loss)
    ax.plot(
        per_epoch * np.arange(1, len(hist.epoch_loss) + 1),
        hist.epoch_loss,
        lw=2,
        label="epoch mean",
    )
    ax.set_yscale("log")
    ax.set_xlabel("update")
    ax.set_ylabel(r"loss $\frac{1}{2}\|\hat y - y\|^2$ (mean over samples)")
    ax.set_title("3-4-2 sigmoid network learning its teacher")
    ax.legend()
    save(fig, "network_342")


if __name__ == "__main__":
    main()
