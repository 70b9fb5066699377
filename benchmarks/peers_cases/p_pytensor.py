"""PyTensor: ``pytensor.function([x, y], loss, updates=SGD, mode="NUMBA")``,
called once per batch from Python.

Shared variables with static shapes for the weights (b of shape (out, 1)),
inputs typed with their static batch shape, typed constants (float32 stays
float32). The log-sum-exp of the cross-entropy subtracts the row maximum
under ``disconnected_grad`` (the gradient is unchanged: softmax − y).
"""

from __future__ import annotations

import numpy as np

from . import Case


def check_available(peer: str) -> None:
    import pytensor
    import pytensor.tensor  # noqa: F401


def versions(peer: str) -> dict[str, str]:
    import numba
    import pytensor

    return {
        "pytensor": pytensor.__version__,
        "numba": numba.__version__,
        "compiledir": str(pytensor.config.compiledir),
    }


class Runner:
    def __init__(self, case: Case, P0, X, Y):
        import pytensor
        import pytensor.tensor as pt
        from pytensor.gradient import disconnected_grad

        dt = case.dtype
        self.case, self.X, self.Y = case, X, Y
        self.order = [k for pair in case.param_names() for k in pair]
        self.shared = {
            k: pytensor.shared(P0[k].copy(), name=k, shape=P0[k].shape) for k in self.order
        }
        B, n0, nL = case.batch, case.sizes[0], case.sizes[-1]
        x = pt.matrix("x", dtype=dt, shape=(B, n0))
        y = pt.matrix("y", dtype=dt, shape=(B, nL))
        c = lambda v: pt.constant(np.asarray(v, dtype=dt))  # noqa: E731
        L = case.layers
        sig = case.kind == "sigmoid_mse"
        a = x
        for i in range(1, L + 1):
            a = a @ self.shared[f"W{i}"].T + self.shared[f"b{i}"].T
            if sig:
                a = pt.sigmoid(a)
            elif i < L:
                a = pt.maximum(a, c(0.0))
        inv_m = c(1.0 / B)
        if sig:
            loss = c(0.5) * pt.sum((a - y) ** 2) * inv_m
        else:
            mx = disconnected_grad(pt.max(a, axis=1, keepdims=True))
            lse = mx[:, 0] + pt.log(pt.sum(pt.exp(a - mx), axis=1))
            loss = pt.sum(lse - pt.sum(y * a, axis=1)) * inv_m
        params = [self.shared[k] for k in self.order]
        grads = pytensor.grad(loss, params)
        lr = c(case.lr)
        self.f = pytensor.function(
            [x, y], loss, updates=[(p, p - lr * g) for p, g in zip(params, grads)], mode="NUMBA"
        )
        self.info = {}

    def load(self, P):
        for k in self.order:
            self.shared[k].set_value(P[k].copy(), borrow=True)

    def epoch(self):
        f, X, Y, B = self.f, self.X, self.Y, self.case.batch
        for s in range(X.shape[0] // B):
            f(X[s * B : (s + 1) * B], Y[s * B : (s + 1) * B])

    def params(self):
        return {k: np.asarray(self.shared[k].get_value()) for k in self.order}


def make(peer: str, case: Case, P0, X, Y, ctx):
    return Runner(case, P0, X, Y)
