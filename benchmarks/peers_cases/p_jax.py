"""JAX on the CPU: ``jax.jit`` of one step called per batch, and ``jax.jit`` of
the whole epoch with ``lax.scan`` over the batches.

float64 via ``jax_enable_x64``. ``XLA_FLAGS`` (one intra-op thread, no
multi-threaded Eigen) comes from the parent's environment. The parameters
are a list ``[W1, b1, W2, b2, ...]`` in gradc's layout (b of shape (out, 1));
the step's parameter buffers are donated. Batches are device arrays made
before timing (per step: a list of batches; scan: one (steps, B, k) array).
"""

from __future__ import annotations

import numpy as np

from . import Case


def check_available(peer: str) -> None:
    import jax

    jax.config.update("jax_enable_x64", True)


def versions(peer: str) -> dict[str, str]:
    import jax
    import jaxlib

    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "devices": str(jax.devices())}


def _fns(case: Case):
    import jax
    import jax.numpy as jnp

    L = case.layers
    sig = case.kind == "sigmoid_mse"
    lr = case.lr

    def loss_fn(p, x, y):
        a = x
        for i in range(L):
            a = a @ p[2 * i].T + p[2 * i + 1].T
            if sig:
                a = jax.nn.sigmoid(a)
            elif i < L - 1:
                a = jax.nn.relu(a)
        if sig:
            return 0.5 * jnp.sum((a - y) ** 2) / x.shape[0]
        lse = jax.nn.logsumexp(a, axis=1)
        return jnp.sum(lse - jnp.sum(y * a, axis=1)) / x.shape[0]

    def step(p, xy):
        loss, g = jax.value_and_grad(loss_fn)(p, *xy)
        return [a - lr * b for a, b in zip(p, g)], loss

    return step


class _Base:
    def __init__(self, case: Case, P0, X, Y):
        import jax
        import jax.numpy as jnp

        self.jax, self.jnp = jax, jnp
        self.case = case
        self.order = [k for pair in case.param_names() for k in pair]
        self.step = _fns(case)
        self.p = None
        self.info = {}

    def load(self, P):
        self.p = [self.jnp.asarray(np.array(P[k])) for k in self.order]
        self.jax.block_until_ready(self.p)

    def params(self):
        return {k: np.asarray(v) for k, v in zip(self.order, self.p)}


class Step(_Base):
    def __init__(self, case, P0, X, Y):
        super().__init__(case, P0, X, Y)
        B = case.batch
        jnp = self.jnp
        self.batches = [
            (jnp.asarray(X[s * B : (s + 1) * B]), jnp.asarray(Y[s * B : (s + 1) * B]))
            for s in range(case.steps)
        ]
        self.jax.block_until_ready(self.batches)
        step = self.step
        self.jstep = self.jax.jit(lambda p, x, y: step(p, (x, y)), donate_argnums=0)

    def epoch(self):
        p, jstep = self.p, self.jstep
        for x, y in self.batches:
            p, _ = jstep(p, x, y)
        self.p = self.jax.block_until_ready(p)


class Scan(_Base):
    def __init__(self, case, P0, X, Y):
        super().__init__(case, P0, X, Y)
        B, S = case.batch, case.steps
        jax, jnp = self.jax, self.jnp
        self.Xb = jnp.asarray(X.reshape(S, B, X.shape[1]))
        self.Yb = jnp.asarray(Y.reshape(S, B, Y.shape[1]))
        step = self.step
        self.jepoch = jax.jit(lambda p, Xb, Yb: jax.lax.scan(step, p, (Xb, Yb)), donate_argnums=0)

    def epoch(self):
        p, losses = self.jepoch(self.p, self.Xb, self.Yb)
        self.p = self.jax.block_until_ready(p)
        self.jax.block_until_ready(losses)


def make(peer: str, case: Case, P0, X, Y, ctx):
    if peer == "jax_step":
        return Step(case, P0, X, Y)
    if peer == "jax_scan":
        return Scan(case, P0, X, Y)
    raise KeyError(peer)
