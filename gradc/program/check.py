"""program stage: ``gc.check_grad`` — the program's gradient against central differences."""

from __future__ import annotations

import numpy as np

from .compile import cpu_program

__all__ = ["check_grad"]


def check_grad(
    prog, params, X=None, Y=None, eps: float = 1e-6, max_entries: int = 64, seed: int = 0
) -> float:
    """Largest relative error between ``prog.grad`` and central finite differences.

    Differences are taken in float64 on up to ``max_entries`` entries per
    parameter (all of them for small parameters); the error of an entry is
    |g − fd| / max(|g|, |fd|, 1e-6). For a float32 program the differenced loss
    is a float64 CPU twin's, printed from the same derivation (float32 rounding
    would swamp a difference over ``eps``), so the number measures the float32
    gradient itself: ~1e-6 where it is right.

    >>> import sympy as sp, gradc as gc
    >>> w = sp.Symbol("w")
    >>> prog = gc.compile(sp.exp(w) * w**2, params=[w])
    >>> gc.check_grad(prog, prog.init({w: 0.7})) < 1e-7
    True
    """
    rng = np.random.default_rng(seed)
    base = {k: np.array(v, dtype=np.float64, copy=True) for k, v in params.items()}
    grads = prog.grad(base, X, Y)
    loss = _float64_loss(prog)
    worst = 0.0
    for key, value in base.items():
        g = np.asarray(grads[key if isinstance(key, str) else key.name], dtype=np.float64).reshape(
            -1
        )
        flat = value.reshape(-1)
        idx = np.arange(flat.size)
        if flat.size > max_entries:
            idx = rng.choice(flat.size, size=max_entries, replace=False)
        for i in idx:
            old = flat[i]
            flat[i] = old + eps
            up = loss(base, X, Y)
            flat[i] = old - eps
            down = loss(base, X, Y)
            flat[i] = old
            fd = (up - down) / (2 * eps)
            err = abs(g[i] - fd) / max(abs(g[i]), abs(fd), 1e-6)
            worst = max(worst, err)
    return float(worst)


def _float64_loss(prog):
    """``prog.loss``, or for a float32 program the loss of a float64 CPU program
    printed from the same derivation (made once, kept on ``prog``)."""
    if prog.dtype == np.float64:
        return prog.loss
    twin = getattr(prog, "_float64_twin", None)
    if twin is None:
        twin = cpu_program(prog.spec, prog.graph, prog.derivation, "float64", prog.optimizer, 0.0)
        prog._float64_twin = twin
    return twin.loss
