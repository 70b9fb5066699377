"""The seed's bowl: gradient descent on J(w1, w2) = w1² + w2² + 2·w2 + 5.

From A = (−2, 3) with η = 0.1, twenty jumps towards the bottom at (0, −1).
Prints the points P1 … P20 the way the seed tutorial does, checks them
against the closed form (each step multiplies the distance to the minimum
by 1 − 2η = 0.8), and draws the 3-D surface with the jump points on it.

    python examples/bowl.py
"""

import numpy as np
import sympy as sp
from _common import SMALL, pyplot, save

import gradc as gc

ETA, STEPS, START = 0.1, 20, (-2.0, 3.0)


def main():
    # Form (a) of the API: a plain objective with no data.
    w1, w2 = sp.symbols("w1 w2")
    J = w1**2 + w2**2 + 2 * w2 + 5
    prog = gc.compile(J, params=[w1, w2])

    params = prog.init({w1: START[0], w2: START[1]})
    hist = prog.fit(params, steps=STEPS, optimizer=gc.SGD(lr=ETA), record_path=True)

    # hist.path holds the starting point first, then the point after each step.
    points = np.array([[float(p["w1"]), float(p["w2"])] for p in hist.path])
    costs = np.array([prog.loss(p) for p in hist.path])

    # The seed prints P:(-2,3) P1:(-1.6,2.2) ... rounded to three places.
    print("P:({:g},{:g})".format(*points[0]), end=" ")
    for i, (a, b) in enumerate(points[1:], start=1):
        print(f"P{i}:({round(a, 3)},{round(b, 3)})", end=" ")
    print()

    # Independent reference: ∂J/∂w = (2·w1, 2·w2 + 2), so w1 ← 0.8·w1 and
    # (w2 + 1) ← 0.8·(w2 + 1); after k steps w1 = −2·0.8^k, w2 = −1 + 4·0.8^k.
    k = np.arange(STEPS + 1)
    closed = np.stack([START[0] * (1 - 2 * ETA) ** k, -1 + (START[1] + 1) * (1 - 2 * ETA) ** k], 1)
    err = np.abs(points - closed).max()
    print(
        f"P{STEPS} at full precision: w1 = {float(points[-1, 0])!r}, w2 = {float(points[-1, 1])!r}"
    )
    print(f"closed form:          w1 = {float(closed[-1, 0])!r}, w2 = {float(closed[-1, 1])!r}")
    print(f"largest difference from the closed form over the path: {err:.3g}")
    print(f"J at P0 = {costs[0]:.4f}, J at P{STEPS} = {costs[-1]:.6f} (minimum J(0, -1) = 4)")

    plt = pyplot()
    if plt is None:
        return
    grid = np.arange(-4, 4, 0.5 if SMALL else 0.25)  # the seed's grid
    g1, g2 = np.meshgrid(grid, grid)
    fig = plt.figure(figsize=(7, 5.5))
    ax = fig.add_subplot(projection="3d")
    ax.plot_surface(
        g1, g2, g1**2 + g2**2 + 2 * g2 + 5, rstride=1, cstride=1, alpha=0.3, cmap="rainbow"
    )
    ax.plot(points[:, 0], points[:, 1], costs, color="black", lw=1)
    ax.scatter3D(points[:, 0], points[:, 1], costs, c="black", s=30, depthshade=False)
    ax.set_xlabel(r"$w_1$")
    ax.set_ylabel(r"$w_2$")
    ax.set_zlabel(r"$J(w_1,w_2)$")
    ax.set_title(rf"gradient descent on the bowl, $\eta$ = {ETA}, {STEPS} steps")
    ax.view_init(elev=35, azim=-60)
    save(fig, "bowl")


if __name__ == "__main__":
    main()
