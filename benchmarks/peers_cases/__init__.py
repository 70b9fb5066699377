"""Cases, data, the NumPy reference and the worker loop of ``benchmarks/peers.py``.

One module per peer sits beside this one (``p_gradc``, ``p_numpy``,
``p_numba``, ``p_torch``, ``p_jax``, ``p_pytensor``); a worker process imports
only the module of the peer it runs, so no other library (and no other thread
pool) is ever loaded into it.

A peer module has ``make(name, case, P0, X, Y, ctx) -> runner``. A runner has

- ``load(P)``: set its weights to the dict ``P`` (gradc layout, untimed),
- ``epoch()``: one SGD epoch over ``X, Y`` in order, in mini-batches of
  ``case.batch`` (returns when the work is done: JAX results are blocked on),
- ``params()``: the weights now, as a dict of NumPy arrays in gradc's layout
  (``W`` of shape (out, in), ``b`` of shape (out, 1)),
- ``info``: a dict of extra facts for the report (may be empty).

Only the standard library and NumPy are imported here.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from itertools import pairwise

import numpy as np

# --------------------------------------------------------------------------
# cases
# --------------------------------------------------------------------------

KINDS = {
    "sigmoid_mse": "sigmoid layers, MSE ½·Σ(ŷ−y)² per sample",
    "relu_ce": "ReLU hidden layers, identity output, softmax cross-entropy, one-hot y",
}
NETWORKS = ((3, 4, 2), (64, 32, 10), (784, 256, 10), (512, 512, 512, 10))
BATCHES = (1, 32, 256)
FLOAT32_NETWORKS = ((64, 32, 10), (784, 256, 10))
LR = 0.05

# Work per timed epoch: about this many multiply-adds of the forward pass, so
# that the fixed cost of one call (a few µs to ~1 ms, peer dependent) stays
# small beside the epoch; between MIN_STEPS and MAX_STEPS steps.
EPOCH_MACS = 2e7
MIN_STEPS = 8
MAX_STEPS = 2048
MAX_ROWS = 65536  # samples per epoch at most (3-4-2 at batch 256: 256 steps)


def net_name(sizes) -> str:
    return "-".join(str(s) for s in sizes)


def macs_per_sample(sizes) -> int:
    return sum(a * b for a, b in pairwise(sizes))


def n_params(sizes) -> int:
    return sum(a * b + b for a, b in pairwise(sizes))


def steps_for(sizes, batch) -> int:
    raw = EPOCH_MACS / (batch * macs_per_sample(sizes))
    steps = 2 ** max(0, math.floor(math.log2(max(raw, 1.0))))
    return int(min(MAX_STEPS, MAX_ROWS // batch, max(MIN_STEPS, steps)))


@dataclass(frozen=True)
class Case:
    kind: str
    sizes: tuple
    batch: int
    dtype: str

    @property
    def name(self) -> str:
        return f"{self.kind}/{net_name(self.sizes)}/b{self.batch}/{self.dtype}"

    @property
    def net(self) -> str:
        return net_name(self.sizes)

    @property
    def steps(self) -> int:
        return steps_for(self.sizes, self.batch)

    @property
    def n(self) -> int:
        return self.steps * self.batch

    @property
    def lr(self) -> float:
        return LR

    @property
    def layers(self) -> int:
        return len(self.sizes) - 1

    def param_names(self) -> list[tuple[str, str]]:
        """(W name, b name) per layer, as gradc's Sequential names them."""
        return [(f"W{i + 1}", f"b{i + 1}") for i in range(self.layers)]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sizes"] = list(self.sizes)
        d.update(name=self.name, steps=self.steps, n=self.n, lr=self.lr)
        return d

    @staticmethod
    def from_dict(d: dict) -> Case:
        return Case(d["kind"], tuple(d["sizes"]), int(d["batch"]), d["dtype"])


def all_cases() -> list[Case]:
    """Every case, network-major, batch 1 first (its process is the first
    call of each peer on that network, used for the start-up table)."""
    out = []
    for sizes in NETWORKS:
        dtypes = ["float64"] + (["float32"] if sizes in FLOAT32_NETWORKS else [])
        for dtype in dtypes:
            for kind in KINDS:
                for batch in BATCHES:
                    out.append(Case(kind, sizes, batch, dtype))
    return out


# --------------------------------------------------------------------------
# data and the NumPy reference
# --------------------------------------------------------------------------


def make_data(case: Case, seed: int = 0):
    rng = np.random.default_rng(seed)
    n, n_in, n_out = case.n, case.sizes[0], case.sizes[-1]
    if n_in <= 16:
        X = rng.standard_normal((n, n_in))
    else:  # MNIST-like pixels
        X = rng.uniform(0.0, 1.0, (n, n_in))
    if case.kind == "sigmoid_mse" and n_out <= 4:
        Y = rng.uniform(0.05, 0.95, (n, n_out))
    else:
        Y = np.zeros((n, n_out))
        Y[np.arange(n), rng.integers(0, n_out, n)] = 1.0
    dt = np.dtype(case.dtype)
    return np.ascontiguousarray(X, dtype=dt), np.ascontiguousarray(Y, dtype=dt)


def numpy_epoch(P: dict, case: Case, X, Y, losses=None):
    """One epoch of SGD on ``P`` (updated in place), the δ recursion by hand.

    Rows are samples: zˡ = aˡ⁻¹Wᵀ + bᵀ, aˡ = f(zˡ). Per batch of m rows,
    sigmoid/MSE: L = (1/m)Σ½‖aᴸ−y‖², δᴸ = (aᴸ−y)⊙σ′(zᴸ)/m;
    ReLU/CE: L = (1/m)Σ(logsumexp(zᴸ) − y·zᴸ), δᴸ = (softmax(zᴸ)−y)/m.
    δˡ = (δˡ⁺¹Wˡ⁺¹)⊙f′(zˡ); ∂W = δᵀaˡ⁻¹, ∂b = Σ_rows δ."""
    keys = case.param_names()
    Ws = [P[w] for w, _ in keys]
    bs = [P[b] for _, b in keys]
    L = len(Ws)
    B = case.batch
    dt = X.dtype.type
    one, half, lr = dt(1.0), dt(0.5), dt(case.lr)
    sigmoid = case.kind == "sigmoid_mse"
    for s in range(X.shape[0] // B):
        a = X[s * B : (s + 1) * B]
        y = Y[s * B : (s + 1) * B]
        inv_m = one / dt(a.shape[0])
        acts = [a]
        for i, (W, b) in enumerate(zip(Ws, bs)):
            z = a @ W.T + b.T
            if sigmoid:
                a = one / (one + np.exp(-z))
            elif i < L - 1:
                a = np.maximum(z, dt(0.0))
            else:
                a = z
            acts.append(a)
        if sigmoid:
            err = a - y
            loss = half * np.vdot(err, err) * inv_m
            delta = err * (a * (one - a)) * inv_m
        else:
            mx = a.max(axis=1, keepdims=True)
            e = np.exp(a - mx)
            se = e.sum(axis=1, keepdims=True)
            lse = mx + np.log(se)
            loss = np.sum(lse[:, 0] - np.sum(y * a, axis=1)) * inv_m
            delta = (e / se - y) * inv_m
        if losses is not None:
            losses[s] = loss
        for i in range(L - 1, -1, -1):
            a_prev = acts[i]
            gW = delta.T @ a_prev
            gb = delta.sum(axis=0)[:, None]
            if i > 0:
                back = delta @ Ws[i]
                delta = back * (a_prev * (one - a_prev)) if sigmoid else back * (a_prev > 0)
            Ws[i] -= lr * gW
            bs[i] -= lr * gb
    return P


# --------------------------------------------------------------------------
# case files: what the parent hands every worker of a case
# --------------------------------------------------------------------------


def write_case_file(path, case: Case, X, Y, P0: dict, Pref: dict, ref_losses) -> None:
    arrays = {"X": X, "Y": Y, "ref_losses": ref_losses}
    arrays.update({f"P0__{k}": v for k, v in P0.items()})
    arrays.update({f"PR__{k}": v for k, v in Pref.items()})
    np.savez(path, meta=np.array(json.dumps(case.to_dict())), **arrays)


def read_case_file(path):
    with np.load(path) as f:
        case = Case.from_dict(json.loads(str(f["meta"])))
        P0 = {k[4:]: f[k].copy() for k in f.files if k.startswith("P0__")}
        Pref = {k[4:]: f[k].copy() for k in f.files if k.startswith("PR__")}
        return case, f["X"].copy(), f["Y"].copy(), P0, Pref, f["ref_losses"].copy()


# --------------------------------------------------------------------------
# the worker: one peer, one case, one process
# --------------------------------------------------------------------------

PEER_MODULES = {
    "gradc_fit": "p_gradc",
    "gradc_vag": "p_gradc",
    "numpy": "p_numpy",
    "numba_array": "p_numba",
    "numba_loops": "p_numba",
    "matmul_only": "p_numba",
    "torch_eager": "p_torch",
    "torch_compile": "p_torch",
    "jax_step": "p_jax",
    "jax_scan": "p_jax",
    "pytensor": "p_pytensor",
}


class PeerUnavailable(Exception):
    """The peer's library is not installed (or cannot run here): skip it."""


def _agreement(runner_params: dict, Pref: dict, P0: dict) -> dict:
    diff = 0.0
    moved = 0.0
    for k, ref in Pref.items():
        got = np.asarray(runner_params[k], dtype=np.float64).reshape(ref.shape)
        diff = max(diff, float(np.max(np.abs(got - ref))))
        moved = max(moved, float(np.max(np.abs(ref.astype(np.float64) - P0[k]))))
    return {"max_abs_diff": diff, "max_weight_change": moved}


def run_worker(peer: str, case_files: list[str], result_files: list[str], timing: dict) -> int:
    """Run ``peer`` on each case in turn (one process) and write one JSON result per case."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import importlib

    t0 = time.perf_counter()
    try:
        mod = importlib.import_module(f"peers_cases.{PEER_MODULES[peer]}")
        mod.check_available(peer)
        import_s = time.perf_counter() - t0
        versions = mod.versions(peer)
    except (ImportError, PeerUnavailable) as exc:
        for rf in result_files:
            _write(
                rf,
                {
                    "peer": peer,
                    "status": "skipped",
                    "pid": os.getpid(),
                    "reason": f"{type(exc).__name__}: {exc}",
                },
                0,
            )
        return 0
    code = 0
    for k, (cf, rf) in enumerate(zip(case_files, result_files)):
        result = {
            "peer": peer,
            "status": "error",
            "pid": os.getpid(),
            "case_in_process": k,
            "import_s": import_s if k == 0 else 0.0,
            "versions": versions,
        }
        code |= _run_case(mod, peer, cf, rf, timing, result)
    return code


def _run_case(mod, peer: str, case_file: str, result_file: str, timing: dict, result: dict) -> int:
    from _common import median_time  # the benchmarks' helper, stdlib only

    try:
        case, X, Y, P0, Pref, _ = read_case_file(case_file)
        result.update(case=case.name, steps=case.steps, batch=case.batch)
        ctx = {"run_dir": os.environ.get("PEERS_RUN_DIR", os.path.dirname(case_file))}

        t0 = time.perf_counter()
        runner = mod.make(peer, case, P0, X, Y, ctx)
        result["setup_s"] = time.perf_counter() - t0

        runner.load(P0)
        t0 = time.perf_counter()
        runner.epoch()
        result["first_epoch_s"] = time.perf_counter() - t0
        if peer != "matmul_only":
            result.update(_agreement(runner.params(), Pref, P0))

        # warm-up (unless the first epoch was long: then it warmed up enough),
        # then timed epochs, each from the same initial weights
        if result["first_epoch_s"] < 1.0:
            runner.load(P0)
            runner.epoch()
        times: list[float] = []
        spent = 0.0
        while len(times) < timing["max_repeats"]:
            t = median_time(runner.epoch, 1, setup=lambda: runner.load(P0))
            times.append(t)
            spent += t
            if len(times) >= timing["min_repeats"] and spent >= timing["min_time"]:
                break
            if len(times) >= 2 and spent >= timing.get("max_time", float("inf")):
                break  # slow epochs (e.g. PyTorch eager at batch 1): two are enough
        times.sort()
        hook = getattr(runner, "after_timing", None)
        if hook is not None:  # extra measurements of the peer (e.g. gradc's fit overhead)
            hook()
        steps = case.steps
        q = lambda f: times[min(len(times) - 1, int(f * len(times)))]  # noqa: E731
        med = statistics.median(times)
        result.update(
            status="ok",
            repeats=len(times),
            us_per_step=med / steps * 1e6,
            us_min=times[0] / steps * 1e6,
            us_p25=q(0.25) / steps * 1e6,
            us_p75=q(0.75) / steps * 1e6,
            info=getattr(runner, "info", {}),
        )
        return _write(result_file, result, 0)
    except Exception as exc:
        result.update(
            status="error",
            reason=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc()[-4000:],
        )
        return _write(result_file, result, 1)


def run_startup(case_file: str, result_file: str) -> int:
    """gradc's start-up probe: import, compile, first fit (see ``p_gradc.startup``)."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result: dict = {"peer": "gradc_startup", "status": "error", "pid": os.getpid()}
    try:
        case, X, Y, P0, _, _ = read_case_file(case_file)
        result["case"] = case.name
        from peers_cases import p_gradc

        result.update(p_gradc.startup(case, X, Y, P0))
        result["status"] = "ok"
        return _write(result_file, result, 0)
    except Exception as exc:
        result.update(
            reason=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-4000:]
        )
        return _write(result_file, result, 1)


def _write(path: str, result: dict, code: int) -> int:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=1, default=str)
    return code


def dist_versions(*names: str) -> dict[str, str]:
    """Installed distribution versions, read from metadata (imports nothing)."""
    from importlib import metadata

    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
