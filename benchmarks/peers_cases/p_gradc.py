"""gradc peers: the fused epoch (``fit``) and per-step ``value_and_grad`` from Python.

Also the start-up probe (``startup``): import, ``gc.compile`` and the first
``fit`` in a process, for the cold (empty ``GRADC_CACHE_DIR``) and warm (same
directory, new process) measurements.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from . import Case


def _gc():
    from _common import add_repo_to_path

    add_repo_to_path()
    import gradc as gc

    return gc


def check_available(peer: str) -> None:
    _gc()


def versions(peer: str) -> dict[str, str]:
    import subprocess

    import numba
    from _common import REPO_ROOT

    gc = _gc()
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "gradc"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        rev += " + uncommitted changes in gradc/" if dirty else ""
    except Exception:
        rev = "?"
    return {"gradc": f"{getattr(gc, '__version__', '?')} ({rev})", "numba": numba.__version__}


def build_program(gc, case: Case):
    """``gc.compile`` of the case's network, as the brief writes it."""
    act = gc.sigmoid if case.kind == "sigmoid_mse" else gc.relu
    layers = []
    for i, (a, b) in enumerate(zip(case.sizes[:-1], case.sizes[1:])):
        last = i == case.layers - 1
        f = gc.identity if (last and case.kind == "relu_ce") else act
        layers.append(gc.Dense(a, b, f))
    net = gc.Sequential(*layers)
    loss = gc.mse if case.kind == "sigmoid_mse" else gc.softmax_cross_entropy
    return gc.compile(net, loss=loss, dtype=case.dtype), net


class _Base:
    def __init__(self, case: Case, P0, X, Y):
        self.gc = _gc()
        warnings.filterwarnings("ignore")  # GradientHealthWarning etc.: not measured here
        self.case = case
        t0 = time.perf_counter()
        self.prog, self.net = build_program(self.gc, case)
        self.info = {"gc.compile_s": time.perf_counter() - t0}
        got = {s.name for s in self.net.params}
        want = {n for pair in case.param_names() for n in pair}
        if got != want:
            raise RuntimeError(f"gradc names the parameters {sorted(got)}, expected {sorted(want)}")
        self.P = {k: v.copy() for k, v in P0.items()}
        self.X, self.Y = X, Y

    def load(self, P):
        for k, v in P.items():
            self.P[k][...] = v

    def params(self):
        return {k: np.asarray(v) for k, v in self.P.items()}


class Fit(_Base):
    """``prog.fit(params, X, Y, optimizer=opt, epochs=1, batch_size=B, shuffle=False)``,
    ``opt = gc.SGD(lr)`` made once (as torch.optim.SGD is for the PyTorch peers)."""

    def __init__(self, case: Case, P0, X, Y):
        super().__init__(case, P0, X, Y)
        self.opt = self.gc.SGD(case.lr)

    def epoch(self):
        c = self.case
        self.prog.fit(
            self.P,
            self.X,
            self.Y,
            optimizer=self.opt,
            epochs=1,
            batch_size=c.batch,
            shuffle=False,
        )

    def extra(self):
        """Fixed cost of one ``fit`` call: a data set of a single batch (1 step)."""
        from _common import median_time

        c = self.case
        X1, Y1 = self.X[: c.batch].copy(), self.Y[: c.batch].copy()
        P = {k: v.copy() for k, v in self.P.items()}
        opt = self.gc.SGD(c.lr)
        t = median_time(
            lambda: self.prog.fit(
                P, X1, Y1, optimizer=opt, epochs=1, batch_size=c.batch, shuffle=False
            ),
            21,
        )
        self.info["fit_one_step_us"] = t * 1e6
        self.info["timings"] = {k: float(v) for k, v in self.prog.timings.items()}
        self._products_same_process()

    def _products_same_process(self, rounds: int = 7) -> None:
        """The epoch against its matrix products alone (``matmul_only``'s epoch), in
        this process, interleaved: medians of ``rounds`` epochs each. Two processes
        running the same code differed by up to 15 % here, so a ratio across
        processes (the ``matmul_only`` column) is a rougher estimate."""
        from . import p_numba

        c = self.case
        floor = p_numba.make("matmul_only", c, self.P, self.X, self.Y, self.ctx)
        floor.epoch()  # compile (or load from the run's cache)
        P0 = {k: v.copy() for k, v in self.P.items()}
        fit_t, floor_t = [], []
        for _ in range(rounds):
            self.load(P0)
            t0 = time.perf_counter()
            self.epoch()
            fit_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            floor.epoch()
            floor_t.append(time.perf_counter() - t0)
        self.load(P0)
        fit_us = float(np.median(fit_t)) / c.steps * 1e6
        floor_us = float(np.median(floor_t)) / c.steps * 1e6
        self.info["same_process"] = {"fit_us": fit_us, "products_us": floor_us}


class ValueAndGrad(_Base):
    """Per step from Python: ``loss, g = prog.value_and_grad(P, Xb, Yb)``; ``P[k] -= lr*g[k]``."""

    def epoch(self):
        c, P, X, Y = self.case, self.P, self.X, self.Y
        lr = X.dtype.type(c.lr)
        B = c.batch
        vag = self.prog.value_and_grad
        for s in range(X.shape[0] // B):
            _, g = vag(P, X[s * B : (s + 1) * B], Y[s * B : (s + 1) * B])
            for k, gk in g.items():
                P[k] -= lr * gk


def make(peer: str, case: Case, P0, X, Y, ctx):
    if peer == "gradc_fit":
        r = Fit(case, P0, X, Y)
        r.ctx = ctx
        r.after_timing = r.extra
        return r
    if peer == "gradc_vag":
        return ValueAndGrad(case, P0, X, Y)
    raise KeyError(peer)


def startup(case: Case, X, Y, P0) -> dict:
    """Time import, compile and first ``fit`` (one step of the case's batch)."""
    out = {}
    t0 = time.perf_counter()
    gc = _gc()
    out["import_s"] = time.perf_counter() - t0
    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    prog, _ = build_program(gc, case)
    out["compile_s"] = time.perf_counter() - t0
    P = {k: v.copy() for k, v in P0.items()}
    B = case.batch
    t0 = time.perf_counter()
    prog.fit(P, X[:B], Y[:B], optimizer=gc.SGD(case.lr), epochs=1, batch_size=B, shuffle=False)
    out["first_fit_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    prog.fit(P, X[:B], Y[:B], optimizer=gc.SGD(case.lr), epochs=1, batch_size=B, shuffle=False)
    out["second_fit_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    prog.value_and_grad(P, X[:B], Y[:B])
    out["first_value_and_grad_s"] = time.perf_counter() - t0
    out["timings"] = {k: float(v) for k, v in prog.timings.items()}
    return out
