"""Vanishing and exploding gradients in an 8-layer network (5 at reduced size).

Vanishing: backprop multiplies one factor (Wˡ)ᵀ·σ′(zˡ) per layer, and σ′ ≤ ¼
for the sigmoid, so the gradient shrinks layer by layer on its way back to
the input. The same network with ReLU (derivative 0 or 1, and He
initialisation, which gradc uses for relu layers) keeps the per-layer
gradient norms of one order of magnitude.

Exploding: with too large a learning rate the updates feed on themselves
until the loss overflows; gradc's fit stops, restores the last finite
parameters and raises gc.GradcError. Clipping the global gradient norm
(clip_norm) bounds every step and the same learning rate trains.

    python examples/vanishing_exploding.py
"""

import itertools

import numpy as np
from _common import SMALL, pyplot, save

import gradc as gc

DEPTH = 5 if SMALL else 8  # dense layers (fewer at reduced size: compiling is the slow part)
WIDTHS = [16] + [32] * (DEPTH - 1) + [1]


def deep_net(act):
    """DEPTH dense layers: hidden layers with `act`, a linear output."""
    n_layers = len(WIDTHS) - 1
    return gc.Sequential(
        *(
            gc.Dense(a, b, act if i < n_layers - 1 else gc.identity)
            for i, (a, b) in enumerate(itertools.pairwise(WIDTHS))
        )
    )


def replay_sgd(prog, X, Y, lr, steps):
    """Plain SGD by hand with prog.value_and_grad: the loss before each step, up to overflow."""
    params, losses = prog.init(seed=0), []
    with np.errstate(all="ignore"):  # the point is to watch it overflow
        for _ in range(steps):
            try:
                loss, grads = prog.value_and_grad(params, X, Y)
            except gc.GradcError:  # the loss or a gradient overflowed: stop here
                losses.append(np.inf)
                break
            losses.append(loss)
            for k in params:
                params[k] -= lr * grads[k]
    return np.array(losses)


def main():
    n = 64 if SMALL else 256
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, WIDTHS[0]))
    Y = np.sin(X[:, :1]) + 0.5 * X[:, 1:2] * X[:, 2:3]

    # --- vanishing: per-layer gradient norms at initialisation -------------
    norms = {}
    for name, act in (("sigmoid", gc.sigmoid), ("relu", gc.relu)):
        net = deep_net(act)
        prog = gc.compile(net, loss=gc.mse)
        params = prog.init(seed=0)
        grads = prog.grad(params, X, Y)
        weights = net.params[0::2]  # (W, b) per layer, input side first
        norms[name] = np.array([np.linalg.norm(grads[W.name]) for W in weights])
    print(f"‖∂L/∂Wˡ‖ at initialisation, layer 1 (input side) to {DEPTH} (output):")
    print(f"{'layer':>5}{'sigmoid':>12}{'relu':>12}")
    for layer, (s, r) in enumerate(zip(norms["sigmoid"], norms["relu"]), start=1):
        print(f"{layer:>5}{s:>12.3e}{r:>12.3e}")
    for name, v in norms.items():
        print(f"{name}: last layer / first layer = {v[-1] / v[0]:.3g}")

    # --- exploding: a large learning rate, without and with clipping ------
    steps, lr = (60 if SMALL else 200), 0.5
    prog = gc.compile(deep_net(gc.relu), loss=gc.mse)
    curves = {}
    for clip in (None, 1.0):
        label = "no clipping" if clip is None else f"clip_norm={clip}"
        params = prog.init(seed=0)
        try:
            hist = prog.fit(params, X, Y, optimizer=gc.SGD(lr=lr), steps=steps, clip_norm=clip)
            curves[label] = hist.loss
            print(
                f"SGD lr={lr}, {label}: loss {hist.loss[0]:.4f} -> "
                f"{prog.loss(params, X, Y):.4g} after {steps} full-batch steps"
            )
        except gc.GradcError as e:
            print(f"SGD lr={lr}, {label}: diverged -> gc.GradcError: {e}")
            curves[label] = replay_sgd(prog, X, Y, lr, steps)
            print(
                "  the same steps by hand (prog.value_and_grad): loss "
                + ", ".join(f"{v:.3g}" for v in curves[label])
            )

    plt = pyplot()
    if plt is None:
        return
    fig, (ax_v, ax_e) = plt.subplots(1, 2, figsize=(11, 4))
    layers = np.arange(1, len(WIDTHS))
    for name, v in norms.items():
        ax_v.semilogy(layers, v, marker="o", label=f"{name}")
    ax_v.set_xlabel("layer (1 = input side)")
    ax_v.set_ylabel(r"$\|\partial L/\partial W^l\|_F$ at initialisation")
    ax_v.set_title(f"vanishing gradients: {DEPTH}-layer sigmoid vs ReLU")
    ax_v.legend()
    for label, loss in curves.items():
        ax_e.semilogy(
            np.arange(len(loss)), loss, marker="." if len(loss) < 20 else None, label=label
        )
        if not np.isfinite(loss[-1]):  # fit raised gc.GradcError here
            ax_e.annotate(
                "overflow: fit raises gc.GradcError",
                xy=(len(loss) - 2, 1e7),
                xytext=(len(loss) + 8, 1e5),
                color="C0",
                arrowprops={"arrowstyle": "->", "color": "C0"},
            )
    lowest = min(np.nanmin(v[np.isfinite(v)]) for v in curves.values())
    ax_e.set_ylim(lowest / 3, 1e8)  # the diverging run reaches ~1e62 before it turns NaN
    ax_e.set_xlabel("update")
    ax_e.set_ylabel("training loss")
    ax_e.set_title(f"exploding: SGD lr={lr}, ReLU net")
    ax_e.legend()
    save(fig, "vanishing_exploding")


if __name__ == "__main__":
    main()
