"""Independent NumPy references for the gradc contract tests.

Nothing here imports gradc: every number a contract test asserts is computed
by these hand-written routines (or by closed forms in the tests themselves).

Conventions (the ones API.md fixes):
  * a layer is ``(W, b, act)`` with ``W`` of shape (out, in), ``b`` of shape
    (out, 1), ``act`` an activation name (see ``ACTIVATIONS``), a
    ``("leaky_relu", alpha)`` tuple, or an ``(f, fprime)`` pair of callables;
  * data ``X`` has one sample per ROW, shape (n, k); internally a batch is
    carried as columns, shape (k, n) (one column vector per sample);
  * the loss is per sample and AVERAGED over the samples; gradients are the
    mean over the batch.
"""

from __future__ import annotations

import math

import numpy as np

# ---------------------------------------------------------------- activations


def _sigmoid(z):
    # numerically stable logistic
    out = np.empty_like(z, dtype=np.float64)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def _softplus(z):
    return np.logaddexp(0.0, z)


ACTIVATIONS = {
    "sigmoid": (_sigmoid, lambda z: _sigmoid(z) * (1.0 - _sigmoid(z))),
    "tanh": (np.tanh, lambda z: 1.0 - np.tanh(z) ** 2),
    "relu": (lambda z: np.maximum(z, 0.0), lambda z: (z > 0).astype(np.float64)),
    "softplus": (_softplus, _sigmoid),
    "identity": (lambda z: z.copy(), lambda z: np.ones_like(z)),
    "swish": (
        lambda z: z * _sigmoid(z),
        lambda z: _sigmoid(z) + z * _sigmoid(z) * (1.0 - _sigmoid(z)),
    ),
}


def activation(act):
    """Return ``(f, fprime)`` for an activation spec."""
    if isinstance(act, str):
        return ACTIVATIONS[act]
    if isinstance(act, tuple) and len(act) == 2 and act[0] == "leaky_relu":
        alpha = float(act[1])
        return (
            lambda z: np.where(z > 0, z, alpha * z),
            lambda z: np.where(z > 0, 1.0, alpha),
        )
    if isinstance(act, tuple) and len(act) == 2 and callable(act[0]):
        return act
    raise ValueError(f"unknown activation {act!r}")


# ---------------------------------------------------------------- losses


def _logsumexp_cols(Z):
    m = Z.max(axis=0, keepdims=True)
    return (m + np.log(np.exp(Z - m).sum(axis=0, keepdims=True)))[0]


def loss_per_sample(name, A, Yc):
    """Per-sample loss values (n,) for outputs ``A`` and targets ``Yc``, both (k, n)."""
    if name == "mse":
        return 0.5 * ((A - Yc) ** 2).sum(axis=0)
    if name == "softmax_cross_entropy":
        return _logsumexp_cols(A) - (Yc * A).sum(axis=0)
    if name == "binary_cross_entropy":
        return -(Yc * np.log(A) + (1.0 - Yc) * np.log(1.0 - A)).sum(axis=0)
    raise ValueError(name)


def loss_grad_output(name, A, Yc):
    """d(per-sample loss)/dA, (k, n)."""
    if name == "mse":
        return A - Yc
    if name == "softmax_cross_entropy":
        m = A.max(axis=0, keepdims=True)
        e = np.exp(A - m)
        p = e / e.sum(axis=0, keepdims=True)
        # d/dA [lse(A) - sum(y*A)] = softmax(A) - y   (y need not sum to 1)
        return p - Yc
    if name == "binary_cross_entropy":
        return -(Yc / A) + (1.0 - Yc) / (1.0 - A)
    raise ValueError(name)


# ---------------------------------------------------------------- MLP


def _as_2d_rows(X):
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    return X


def mlp_forward(layers, X):
    """Forward pass. Returns (list of pre-activations Z, list of activations A).

    ``A[0]`` is the input as columns (k, n); ``A[-1]`` the network output.
    """
    A = [_as_2d_rows(X).T]
    Zs = []
    for W, b, act in layers:
        f, _ = activation(act)
        Z = np.asarray(W, np.float64) @ A[-1] + np.asarray(b, np.float64).reshape(-1, 1)
        Zs.append(Z)
        A.append(f(Z))
    return Zs, A


def mlp_predict(layers, X):
    """Network output, one sample per ROW: shape (n, k_out)."""
    return mlp_forward(layers, X)[1][-1].T


def mlp_loss(layers, X, Y, loss="mse"):
    """Mean over samples of the per-sample loss."""
    _, A = mlp_forward(layers, X)
    Yc = _as_2d_rows(Y).T
    return float(loss_per_sample(loss, A[-1], Yc).mean())


def mlp_value_and_grad(layers, X, Y, loss="mse"):
    """Hand-written delta recursion.

    delta^L = dJ/da^L * f'(z^L);  delta^l = (W^{l+1})^T delta^{l+1} * f'(z^l);
    dJ/dW^l = delta^l (a^{l-1})^T / n;  dJ/db^l = mean_columns(delta^l).

    Returns (loss, [(dW, db), ...]) with db of shape (out, 1).
    """
    value, grads, _ = mlp_backprop(layers, X, Y, loss)
    return value, grads


def mlp_backprop(layers, X, Y, loss="mse"):
    """The recursion of ``mlp_value_and_grad`` carried one step further, to the data:
    returns (loss, grads, dJ/dX) with dJ/dX = (W^1)^T delta^1, one row per sample."""
    Zs, A = mlp_forward(layers, X)
    Yc = _as_2d_rows(Y).T
    n = Yc.shape[1]
    value = float(loss_per_sample(loss, A[-1], Yc).mean())
    grads = [None] * len(layers)
    g_a = loss_grad_output(loss, A[-1], Yc) / n  # dJ/da^L, mean over batch
    for k in range(len(layers) - 1, -1, -1):
        W, _b, act = layers[k]
        _, fp = activation(act)
        delta = g_a * fp(Zs[k])
        dW = delta @ A[k].T
        db = delta.sum(axis=1, keepdims=True)
        grads[k] = (dW, db)
        g_a = np.asarray(W, np.float64).T @ delta
    return value, grads, g_a.T


def layers_from_params(params, names, acts):
    """Build reference layers from a params dict.

    ``names`` is a list of (W_name, b_name) per layer, ``acts`` the activations.
    """
    return [
        (np.asarray(params[wn], np.float64), np.asarray(params[bn], np.float64), a)
        for (wn, bn), a in zip(names, acts)
    ]


def mlp_grad_dict(params, names, acts, X, Y, loss="mse"):
    """Reference (loss, grads dict keyed like params)."""
    layers = layers_from_params(params, names, acts)
    value, grads = mlp_value_and_grad(layers, X, Y, loss)
    out = {}
    for (wn, bn), (dW, db) in zip(names, grads):
        out[wn] = dW
        out[bn] = db.reshape(np.shape(params[bn]))
    return value, out


def mlp_loss_dict(params, names, acts, X, Y, loss="mse"):
    return mlp_loss(layers_from_params(params, names, acts), X, Y, loss)


# ---------------------------------------------------------------- finite differences


def finite_diff(f, params, eps=1e-6):
    """Central finite differences of ``f(params) -> float`` for every entry.

    ``params`` is a dict name -> array (0-d allowed); it is not modified.
    Returns a dict of float64 arrays shaped like the params.
    """
    base = {k: np.array(v, dtype=np.float64, copy=True) for k, v in params.items()}
    out = {}
    for k, v in base.items():
        g = np.zeros_like(v)
        flat = v.reshape(-1)
        gflat = g.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            h = eps * max(1.0, abs(old))
            flat[i] = old + h
            fp = f(base)
            flat[i] = old - h
            fm = f(base)
            flat[i] = old
            gflat[i] = (fp - fm) / (2.0 * h)
        out[k] = g
    return out


# ---------------------------------------------------------------- optimizers


def global_norm(grads):
    return math.sqrt(sum(float(np.sum(np.asarray(g, np.float64) ** 2)) for g in grads.values()))


def clip_grads(grads, clip_norm):
    """Rescale the whole gradient to global L2 norm ``clip_norm`` when larger."""
    if clip_norm is None:
        return grads
    nrm = global_norm(grads)
    if nrm > clip_norm:
        s = clip_norm / nrm
        return {k: np.asarray(g, np.float64) * s for k, g in grads.items()}
    return grads


class RefSGD:
    def __init__(self, lr):
        self.lr = lr

    def step(self, params, grads):
        return {
            k: np.asarray(params[k], np.float64) - self.lr * np.asarray(grads[k], np.float64)
            for k in params
        }


class RefMomentum:
    """v <- beta v + (1 - beta) g;  theta <- theta - lr v   (v starts at 0)."""

    def __init__(self, lr, beta=0.9):
        self.lr, self.beta = lr, beta
        self.v = None

    def step(self, params, grads):
        if self.v is None:
            self.v = {k: np.zeros(np.shape(params[k])) for k in params}
        out = {}
        for k in params:
            self.v[k] = self.beta * self.v[k] + (1.0 - self.beta) * np.asarray(grads[k], np.float64)
            out[k] = np.asarray(params[k], np.float64) - self.lr * self.v[k]
        return out


class RefAdam:
    """torch.optim.Adam (no weight decay, no amsgrad), written the way torch does it:

    m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;
    theta <- theta - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    """

    def __init__(self, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
        self.lr, self.b1, self.b2, self.eps = lr, beta1, beta2, eps
        self.m = self.v = None
        self.t = 0

    def step(self, params, grads):
        if self.m is None:
            self.m = {k: np.zeros(np.shape(params[k])) for k in params}
            self.v = {k: np.zeros(np.shape(params[k])) for k in params}
        self.t += 1
        bc1 = 1.0 - self.b1**self.t
        bc2 = 1.0 - self.b2**self.t
        out = {}
        for k in params:
            g = np.asarray(grads[k], np.float64)
            self.m[k] = self.b1 * self.m[k] + (1.0 - self.b1) * g
            self.v[k] = self.b2 * self.v[k] + (1.0 - self.b2) * g * g
            denom = np.sqrt(self.v[k]) / math.sqrt(bc2) + self.eps
            out[k] = np.asarray(params[k], np.float64) - (self.lr / bc1) * self.m[k] / denom
        return out


# ---------------------------------------------------------------- comparisons


def max_rel_err(a, b, floor=1e-300):
    """max |a - b| / max(|b|_max, floor) over arrays (scale-relative error)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    scale = max(float(np.max(np.abs(b))) if b.size else 0.0, floor)
    return float(np.max(np.abs(a - b))) / scale if a.size else 0.0


def assert_dicts_close(got, want, rtol, atol=0.0, what=""):
    """Every key of ``want`` is in ``got`` with the same shape and close values."""
    for k, w in want.items():
        assert k in got, f"{what}: missing key {k!r}; got keys {sorted(got)}"
        g = np.asarray(got[k])
        w = np.asarray(w)
        assert g.shape == w.shape, f"{what}: {k!r} shape {g.shape} != {w.shape}"
        np.testing.assert_allclose(
            g.astype(np.float64),
            w.astype(np.float64),
            rtol=rtol,
            atol=atol,
            err_msg=f"{what}: {k!r}",
        )


def copy_params(params):
    return {k: np.array(v, copy=True) for k, v in params.items()}
