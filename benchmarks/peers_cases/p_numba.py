"""Hand-written Numba ``@njit`` epochs, in the two forms of ``NUMBA_FACTS.md`` §4.

- ``numba_array``: array expressions and ``@`` (BLAS), shapes read at run
  time; the natural way to port the NumPy δ recursion.
- ``numba_loops``: scalar loops with every layer width printed as a literal
  constant, source generated per network (the batch size is an argument);
  one pass per sample, gradients accumulated over the batch, then the update.
- ``matmul_only`` (a floor, not a peer): only the matrix products of a step
  (forward ``a @ Wᵀ`` per layer, ``δᵀ @ a`` per layer, ``δ @ W`` for every
  layer but the first) into preallocated buffers, nothing else, through the
  same BLAS entry as gradc's kernels (``gradc.kernels.blas.matmul``: NumPy's
  OpenBLAS by CBLAS where it is found, its x·Wᵀ products on Zen 4 a second
  instance with its Haswell kernels), so the floor is the faster BLAS.

Each source is written to a file under the run directory and imported with
``@njit(cache=True)`` (the recipe of ``NUMBA_FACTS.md`` §3), so only the first
process that needs a source compiles it: the loops once per network, kind
and dtype; the array form and ``matmul_only``, whose sources do not depend on
the widths, once per depth, kind and dtype (later networks load them from the
cache). Typed constants throughout (float32 stays float32).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys

import numpy as np

from . import Case

# --------------------------------------------------------------------------
# source generation
# --------------------------------------------------------------------------

_HEADER = """import math
import numba
import numpy as np

DT = np.{dtype}
# {what}: {case}
"""


def _softmax_helper() -> str:
    return '''

@numba.njit(cache=True)
def softmax_ce(z, y, p):
    """p = softmax of each row of z; returns Σ_rows (logsumexp(z) − y·z)."""
    one = DT(1.0)
    loss = DT(0.0)
    for r in range(z.shape[0]):
        mx = z[r, 0]
        for j in range(1, z.shape[1]):
            if z[r, j] > mx:
                mx = z[r, j]
        s = DT(0.0)
        for j in range(z.shape[1]):
            e = math.exp(z[r, j] - mx)
            p[r, j] = e
            s += e
        inv = one / s
        loss += mx + math.log(s)
        for j in range(z.shape[1]):
            p[r, j] *= inv
            loss -= y[r, j] * z[r, j]
    return loss
'''


def array_source(case: Case) -> str:
    L = case.layers
    sig = case.kind == "sigmoid_mse"
    src = _HEADER.format(
        dtype=case.dtype,
        what="array form",
        case=f"{L} layers, {case.kind} (shapes read at run time)",
    )
    if not sig:
        src += _softmax_helper()
    args = ", ".join(f"W{i}, b{i}" for i in range(1, L + 1))
    body = [
        "",
        "",
        "@numba.njit(cache=True)",
        f"def epoch(X, Y, {args}, lr, bs, losses):",
        "    one = DT(1.0)",
        "    zero = DT(0.0)",
        "    half = DT(0.5)",
        "    lr = DT(lr)",
        "    inv_m = one / DT(bs)",
        "    for s in range(X.shape[0] // bs):",
        "        a0 = X[s * bs:(s + 1) * bs]",
        "        y = Y[s * bs:(s + 1) * bs]",
    ]
    for i in range(1, L + 1):
        body.append(f"        z{i} = a{i - 1} @ W{i}.T + b{i}[:, 0]")
        if sig:
            body.append(f"        a{i} = one / (one + np.exp(-z{i}))")
        elif i < L:
            body.append(f"        a{i} = np.maximum(z{i}, zero)")
        else:
            body.append(f"        a{i} = z{i}")
    if sig:
        body += [
            f"        e = a{L} - y",
            "        losses[s] = half * np.sum(e * e) * inv_m",
            f"        d = e * a{L} * (one - a{L}) * inv_m",
        ]
    else:
        body += [
            f"        p = np.empty_like(a{L})",
            f"        losses[s] = softmax_ce(a{L}, y, p) * inv_m",
            "        d = (p - y) * inv_m",
        ]
    for i in range(L, 0, -1):
        body.append(f"        gW = d.T @ a{i - 1}")
        body.append("        gb = d.sum(axis=0)")
        if i > 1:
            if sig:
                body.append(f"        d = (d @ W{i}) * (a{i - 1} * (one - a{i - 1}))")
            else:
                body.append(f"        d = (d @ W{i}) * (a{i - 1} > zero)")
        body.append(f"        W{i} -= lr * gW")
        body.append(f"        b{i}[:, 0] -= lr * gb")
    return src + "\n".join(body) + "\n"


def loops_source(case: Case) -> str:
    """Scalar loops, every layer width a literal (source per network); one sample
    at a time; the batch size ``bs`` is an argument."""
    n = case.sizes
    L = case.layers
    B = "bs"
    sig = case.kind == "sigmoid_mse"
    src = _HEADER.format(
        dtype=case.dtype, what="scalar loops, literal layer widths", case=f"{case.net} {case.kind}"
    )
    args = ", ".join(f"W{i}, b{i}" for i in range(1, L + 1))
    o = [
        "",
        "",
        "@numba.njit(cache=True)",
        f"def epoch(X, Y, {args}, lr, bs, losses):",
        "    one = DT(1.0)",
        "    zero = DT(0.0)",
        "    half = DT(0.5)",
        "    lr = DT(lr)",
        f"    inv_m = one / DT({B})",
    ]
    for i in range(1, L + 1):
        o.append(f"    a{i} = np.empty({n[i]}, DT)")
        o.append(f"    d{i} = np.empty({n[i]}, DT)")
        o.append(f"    gW{i} = np.empty(({n[i]}, {n[i - 1]}), DT)")
        o.append(f"    gb{i} = np.empty({n[i]}, DT)")
    o.append(f"    for s in range(X.shape[0] // {B}):")
    for i in range(1, L + 1):
        o += [
            f"        for j in range({n[i]}):",
            f"            gb{i}[j] = zero",
            f"            for k in range({n[i - 1]}):",
            f"                gW{i}[j, k] = zero",
        ]
    o += ["        loss = zero", f"        for r in range(s * {B}, s * {B} + {B}):"]

    def inp(i, k):
        return f"X[r, {k}]" if i == 1 else f"a{i - 1}[{k}]"

    for i in range(1, L + 1):
        o += [
            f"            for j in range({n[i]}):",
            f"                acc = b{i}[j, 0]",
            f"                for k in range({n[i - 1]}):",
            f"                    acc += W{i}[j, k] * {inp(i, 'k')}",
        ]
        if sig:
            o.append(f"                a{i}[j] = one / (one + math.exp(-acc))")
        elif i < L:
            o.append(f"                a{i}[j] = acc if acc > zero else zero")
        else:
            o.append(f"                a{i}[j] = acc")
    nL = n[L]
    if sig:
        o += [
            f"            for j in range({nL}):",
            f"                e = a{L}[j] - Y[r, j]",
            "                loss += half * e * e",
            f"                d{L}[j] = e * a{L}[j] * (one - a{L}[j]) * inv_m",
        ]
    else:
        o += [
            f"            mx = a{L}[0]",
            f"            for j in range(1, {nL}):",
            f"                if a{L}[j] > mx:",
            f"                    mx = a{L}[j]",
            "            se = zero",
            f"            for j in range({nL}):",
            f"                e = math.exp(a{L}[j] - mx)",
            f"                d{L}[j] = e",
            "                se += e",
            "            loss += mx + math.log(se)",
            "            inv = one / se",
            f"            for j in range({nL}):",
            f"                loss -= Y[r, j] * a{L}[j]",
            f"                d{L}[j] = (d{L}[j] * inv - Y[r, j]) * inv_m",
        ]
    for i in range(L, 0, -1):
        o += [
            f"            for j in range({n[i]}):",
            f"                dj = d{i}[j]",
            f"                gb{i}[j] += dj",
            f"                for k in range({n[i - 1]}):",
            f"                    gW{i}[j, k] += dj * {inp(i, 'k')}",
        ]
        if i > 1:
            p = i - 1
            o += [
                f"            for k in range({n[p]}):",
                f"                d{p}[k] = zero",
                f"            for j in range({n[i]}):",
                f"                dj = d{i}[j]",
                f"                for k in range({n[p]}):",
                f"                    d{p}[k] += W{i}[j, k] * dj",
                f"            for k in range({n[p]}):",
            ]
            if sig:
                o.append(f"                d{p}[k] *= a{p}[k] * (one - a{p}[k])")
            else:
                o.append(f"                if a{p}[k] <= zero:")
                o.append(f"                    d{p}[k] = zero")
    o.append("        losses[s] = loss * inv_m")
    for i in range(1, L + 1):
        o += [
            f"        for j in range({n[i]}):",
            f"            b{i}[j, 0] -= lr * gb{i}[j]",
            f"            for k in range({n[i - 1]}):",
            f"                W{i}[j, k] -= lr * gW{i}[j, k]",
        ]
    return src + "\n".join(o) + "\n"


def matmul_source(case: Case) -> str:
    L = case.layers
    B = "bs"
    src = _HEADER.format(dtype=case.dtype, what="matrix products only", case=f"{L} layers")
    src += "from gradc.kernels.blas import matmul  # the BLAS entry gradc's kernels call\n"
    args = ", ".join(f"W{i}, b{i}" for i in range(1, L + 1))
    o = ["", "", "@numba.njit(cache=True)", f"def epoch(X, Y, {args}, lr, bs, losses):"]
    for i in range(1, L + 1):
        o.append(f"    a{i} = np.zeros(({B}, W{i}.shape[0]), DT)")
        o.append(f"    d{i} = np.zeros(({B}, W{i}.shape[0]), DT)")
        o.append(f"    gW{i} = np.zeros(W{i}.shape, DT)")
    o.append(f"    for s in range(X.shape[0] // {B}):")
    o.append(f"        a0 = X[s * {B}:(s + 1) * {B}]")
    for i in range(1, L + 1):
        o.append(f"        matmul(a{i - 1}, W{i}.T, a{i})")
    for i in range(L, 0, -1):
        o.append(f"        matmul(d{i}.T, a{i - 1}, gW{i})")
        if i > 1:
            o.append(f"        matmul(d{i}, W{i}, d{i - 1})")
    o.append("    return 0")
    return src + "\n".join(o) + "\n"


# --------------------------------------------------------------------------
# loading (file + importlib + cache=True) and the runner
# --------------------------------------------------------------------------


def load_source(src: str, folder: str):
    digest = hashlib.sha256(src.encode()).hexdigest()[:16]
    name = f"peers_numba_{digest}"
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name + ".py")
    if not os.path.exists(path):
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(src)
        os.replace(tmp, path)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def check_available(peer: str) -> None:
    import numba  # noqa: F401


def versions(peer: str) -> dict[str, str]:
    import llvmlite
    import numba

    return {"numba": numba.__version__, "llvmlite": llvmlite.__version__}


class Runner:
    def __init__(self, peer: str, case: Case, P0, X, Y, folder: str):
        gen = {
            "numba_array": array_source,
            "numba_loops": loops_source,
            "matmul_only": matmul_source,
        }[peer]
        self.src = gen(case)
        self.mod = load_source(self.src, folder)
        self.case, self.X, self.Y = case, X, Y
        self.P = {k: v.copy() for k, v in P0.items()}
        self.order = [k for pair in case.param_names() for k in pair]
        self.losses = np.zeros(case.steps)
        self.info = {}

    def load(self, P):
        for k, v in P.items():
            self.P[k][...] = v

    def epoch(self):
        self.mod.epoch(
            self.X,
            self.Y,
            *[self.P[k] for k in self.order],
            self.case.lr,
            self.case.batch,
            self.losses,
        )
        if "cache" not in self.info:
            st = self.mod.epoch.stats
            self.info["cache"] = (
                f"hits {sum(st.cache_hits.values())}, misses {sum(st.cache_misses.values())}"
            )

    def params(self):
        return self.P


def make(peer: str, case: Case, P0, X, Y, ctx):
    return Runner(peer, case, P0, X, Y, os.path.join(ctx["run_dir"], "numba_peers"))
