"""Gradient-descent variants on one problem: BGD, SGD, mini-batch, Momentum, Adam.

The seed's three basic variants differ only in how many samples feed each
update: all of them (BGD), one (SGD), or a shuffled mini-batch of 32. Momentum
(v ← βv + (1−β)g, θ ← θ − ηv, β = 0.9) and Adam change the update rule
instead. Every run starts from the same weights and sees the data the same
number of times (same epochs); the figure shows the loss against the number
of updates and against wall time.

The model is a small 2-16-1 tanh regression network fitting a smooth surface.

    python examples/gd_variants.py
"""

import numpy as np
from _common import SMALL, pyplot, save

import gradc as gc

# (label, optimizer class, its hyperparameters, batch_size); None is the full batch.
VARIANTS = [
    ("BGD", gc.SGD, {"lr": 0.5}, None),
    ("SGD (batch 1)", gc.SGD, {"lr": 0.02}, 1),
    ("mini-batch 32", gc.SGD, {"lr": 0.2}, 32),
    ("Momentum 32", gc.Momentum, {"lr": 0.5, "beta": 0.9}, 32),
    ("Adam 32", gc.Adam, {"lr": 0.01}, 32),
]


def make_data(n, rng):
    X = rng.uniform(-2.0, 2.0, size=(n, 2))
    y = np.sin(X[:, 0]) * np.cos(X[:, 1]) + 0.05 * rng.normal(size=n)
    return X, y[:, None]


def main():
    n, epochs = (256, 8) if SMALL else (1000, 40)
    X, Y = make_data(n, np.random.default_rng(0))

    net = gc.Sequential(gc.Dense(2, 16, gc.tanh), gc.Dense(16, 1))
    prog = gc.compile(net, loss=gc.mse)
    start = prog.init(seed=0)
    print(f"{n} samples, {epochs} epochs each, starting loss {prog.loss(start, X, Y):.4f}\n")

    print(f"{'variant':<15}{'updates':>9}{'wall ms':>10}{'final loss':>12}")
    runs = {}
    for label, opt_class, hyper, bs in VARIANTS:
        # One warm-up epoch on a copy, so the timing below excludes JIT compilation.
        # An optimizer object keeps its state (Momentum's v, Adam's m, v and t) so
        # that a second fit continues; the real run gets a fresh one.
        warm = {k: v.copy() for k, v in start.items()}
        prog.fit(warm, X, Y, optimizer=opt_class(**hyper), epochs=1, batch_size=bs)

        params = {k: v.copy() for k, v in start.items()}
        hist = prog.fit(
            params, X, Y, optimizer=opt_class(**hyper), epochs=epochs, batch_size=bs, seed=0
        )
        wall = hist.seconds  # the training loop's wall time
        final = prog.loss(params, X, Y)
        runs[label] = (hist, wall)
        print(f"{label:<15}{len(hist.loss):>9}{1e3 * wall:>10.2f}{final:>12.5f}")

    plt = pyplot()
    if plt is None:
        return
    fig, (ax_u, ax_t) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for label, (hist, wall) in runs.items():
        # Epoch-mean loss, placed at the update / the time at which each epoch ended
        # (updates within one run cost the same, so time grows linearly with them).
        ends = np.arange(1, epochs + 1) * (len(hist.loss) // epochs)
        ax_u.plot(ends, hist.epoch_loss, marker=".", label=label)
        ax_t.plot(1e3 * wall * ends / len(hist.loss), hist.epoch_loss, marker=".", label=label)
    ax_u.set_xscale("log")
    ax_u.set_yscale("log")
    ax_u.set_xlabel("updates")
    ax_u.set_ylabel("epoch-mean training loss")
    ax_u.set_title("loss against updates")
    ax_t.set_xlabel("wall time (ms, after JIT warm-up)")
    ax_t.set_title("loss against wall time")
    ax_u.legend()
    save(fig, "gd_variants")


if __name__ == "__main__":
    main()
