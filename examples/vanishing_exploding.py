"""Vanishing and exploding gradients in an 8-layer network.

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

import numpy as np

import gradc as gc
from _common import SMALL, pyplot, save

WIDTHS = [16] + [32] * 7 + [1]  # 8 dense layers


def deep_net(act):
    """8 dense layers: 7 hidden layers with `act`, a linear output."""
    n_layers = len(WIDTHS) - 1
    return gc.Sequential(*(
        gc.Dense(a, b, act if i < n_layers - 1 else gc.identity)
        for i, (a, b) in enumerate(zip(WIDTHS[:-1], WIDTHS[1:]))
    ))


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
    print("‖∂L/∂Wˡ‖ at initialisation, layer 1 (input side) to 8 (output):")
    print(f"{'layer':>5}{'sigmoid':>12}{'relu':>12}")
    for l, (s, r) in enumerate(zip(norms["sigmoid"], norms["relu"]), start=1):
        print(f"{l:>5}{s:>12.3e}{r:>12.3e}")
    for name, v in norms.items():
        print(f"{name}: last layer / first layer = {v[-1] / v[0]:.3g}")

    # --- exploding: a large learning rate, without and with clipping ------
    steps, lr = (60 if SMALL else 200), 0.3
    net = deep_net(gc.relu)
    prog = gc.compile(net, loss=gc.mse)
    curves = {}
    for clip in (None, 1.0):
        params = prog.init(seed=0)
        label = "no clipping" if clip is None else f"clip_norm={clip}"
        try:
            hist = prog.fit(params, X, Y, optimizer=gc.SGD(lr=lr), steps=steps, clip_norm=clip)
            curves[label] = hist.loss
            print(f"SGD lr={lr}, {label}: loss {hist.loss[0]:.4f} -> "
                  f"{prog.loss(params, X, Y):.4g} after {steps} full-batch steps")
        except gc.GradcError as e:
            print(f"SGD lr={lr}, {label}: diverged -> gc.GradcError: {e}")
            # params now hold the last finite values; record the run up to there
            curves[label] = None

    plt = pyplot()
    if plt is None:
        return
    fig, (ax_v, ax_e) = plt.subplots(1, 2, figsize=(11, 4))
    layers = np.arange(1, len(WIDTHS))
    for name, v in norms.items():
        ax_v.semilogy(layers, v, marker="o", label=f"{name}")
    ax_v.set_xlabel("layer (1 = input side)")
    ax_v.set_ylabel(r"$\|\partial L/\partial W^l\|_F$ at initialisation")
    ax_v.set_title("vanishing gradients: 8-layer sigmoid vs ReLU")
    ax_v.legend()
    for label, loss in curves.items():
        if loss is not None:
            ax_e.semilogy(np.arange(len(loss)), loss, label=label)
    ax_e.set_xlabel("update")
    ax_e.set_ylabel("training loss")
    ax_e.set_title(f"exploding: SGD lr={lr}, ReLU net")
    ax_e.legend()
    save(fig, "vanishing_exploding")


if __name__ == "__main__":
    main()
