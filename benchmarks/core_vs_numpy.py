"""gradc's fused `fit` against a hand-written NumPy δ recursion (issue 2).

Networks (sigmoid layers, MSE loss ½·Σ(ŷ−y)² averaged over the batch, float64,
plain SGD lr=0.1, one epoch, mini-batches taken in order, no shuffling):

    3-4-2       batch   1   (1024 samples -> 1024 steps per epoch)
    3-4-2       batch  32   (1024 samples ->   32 steps per epoch)
    784-256-10  batch 256   (2048 samples ->    8 steps per epoch)

Both sides run in this one process with every BLAS/OpenMP pool pinned to one
thread (set in os.environ before NumPy is imported). First one epoch of each
runs from the same initial parameters and the final weights are compared
(this first gradc call also includes the JIT compile, reported separately);
then one epoch of each is timed, alternately, and the median is reported as
µs per update step.

Targets (issue 2): gradc ≥ 5× faster than NumPy at 3-4-2 × 1, and no more
than 1.2× slower than NumPy at 784-256-10 × 256.

    .venv/bin/python benchmarks/core_vs_numpy.py            # full run, writes results/core_vs_numpy.md
    .venv/bin/python benchmarks/core_vs_numpy.py --quick    # smoke run, writes nothing unless --out
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import pin_threads  # stdlib only: loads no BLAS

THREAD_ENV = pin_threads(1)  # BEFORE numpy is imported

import argparse  # noqa: E402
import copy  # noqa: E402
import itertools  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from _common import (  # noqa: E402
    add_repo_to_path,
    command_line,
    fmt_us,
    info_markdown,
    interleaved_medians,
    machine_info,
    markdown_table,
    median_time,
)

add_repo_to_path()
import gradc as gc  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "core_vs_numpy.md"
LR = 0.1

# name, layer sizes, batch size, samples, repeats (full, quick), target
CONFIGS = [
    ("3-4-2", (3, 4, 2), 1, 1024, (51, 5), ("min_ratio", 5.0)),
    ("3-4-2", (3, 4, 2), 32, 1024, (51, 5), None),
    ("784-256-10", (784, 256, 10), 256, 2048, (21, 3), ("min_ratio", 1 / 1.2)),
]


# --------------------------------------------------------------------------
# data and model
# --------------------------------------------------------------------------


def make_data(sizes, n, seed=0):
    rng = np.random.default_rng(seed)
    n_in, n_out = sizes[0], sizes[-1]
    if n_in <= 16:
        X = rng.standard_normal((n, n_in))
        Y = rng.uniform(0.05, 0.95, (n, n_out))
    else:  # MNIST-like: pixels in [0, 1), one-hot labels
        X = rng.uniform(0.0, 1.0, (n, n_in))
        Y = np.zeros((n, n_out))
        Y[np.arange(n), rng.integers(0, n_out, n)] = 1.0
    return np.ascontiguousarray(X), np.ascontiguousarray(Y)


def build(sizes):
    layers = [gc.Dense(a, b, gc.sigmoid) for a, b in itertools.pairwise(sizes)]
    return gc.Sequential(*layers)


def layer_keys(net, sizes):
    """[(W name, b name), ...] per layer, found by shape among net.params
    (W is (n_out, n_in), b is (n_out, 1))."""
    syms = list(net.params)
    keys = []
    for n_in, n_out in itertools.pairwise(sizes):
        W = next(s for s in syms if tuple(int(d) for d in s.shape) == (n_out, n_in))
        syms.remove(W)
        b = next(s for s in syms if tuple(int(d) for d in s.shape) == (n_out, 1))
        syms.remove(b)
        keys.append((W.name, b.name))
    if syms:
        raise RuntimeError(f"unexpected extra parameters in net.params: {syms}")
    return keys


# --------------------------------------------------------------------------
# the NumPy reference: hand-written δ recursion, one SGD epoch, in-order batches
# --------------------------------------------------------------------------


def numpy_epoch(P, keys, X, Y, B, lr):
    """One epoch of mini-batch SGD on params dict P (updated in place).

    Rows are samples: a_l = σ(a_{l-1} Wᵀ + bᵀ). Loss per batch
    (1/m)·Σ ½‖ŷ−y‖², δᴸ = (ŷ−y)⊙σ′/m, δˡ = (δˡ⁺¹ Wˡ⁺¹)⊙σ′(zˡ),
    ∂W = δᵀ a_prev, ∂b = Σ_rows δ. Returns the per-step (pre-update) losses."""
    Ws = [P[w] for w, _ in keys]
    bs = [P[b] for _, b in keys]
    L = len(Ws)
    n = X.shape[0]
    steps = (n + B - 1) // B
    losses = np.empty(steps)
    for s in range(steps):
        a = X[s * B : (s + 1) * B]
        y = Y[s * B : (s + 1) * B]
        m = a.shape[0]
        acts = [a]
        for W, b in zip(Ws, bs):
            a = 1.0 / (1.0 + np.exp(-(a @ W.T + b.T)))
            acts.append(a)
        err = a - y
        losses[s] = 0.5 * np.vdot(err, err) / m
        delta = err * (a * (1.0 - a)) * (1.0 / m)
        for li in range(L - 1, -1, -1):
            a_prev = acts[li]
            gW = delta.T @ a_prev
            gb = delta.sum(axis=0)[:, None]
            if li > 0:
                delta = (delta @ Ws[li]) * (a_prev * (1.0 - a_prev))
            Ws[li] -= lr * gW
            bs[li] -= lr * gb
    return losses


def _cache_files():
    """Numba cache index files in gradc's kernel cache (None if unknown)."""
    try:
        from gradc.kernels.cache import cache_dir  # internal; only for the report

        return {
            f"{f.name}@{f.stat().st_mtime_ns}" for f in (cache_dir() / "__pycache__").glob("*.nbi")
        }
    except Exception:
        return None


# --------------------------------------------------------------------------
# one configuration
# --------------------------------------------------------------------------


def run_config(name, sizes, B, n, repeats, target, log):
    X, Y = make_data(sizes, n)
    steps = (n + B - 1) // B
    label = f"{name} × {B}"
    log(f"\n== {label}: {n} samples, {steps} steps/epoch, {repeats} repeats")

    net = build(sizes)
    t0 = time.perf_counter()
    prog = gc.compile(net, loss=gc.mse)
    t_compile = time.perf_counter() - t0
    keys = layer_keys(net, sizes)

    params0 = prog.init(seed=0)
    P_g = copy.deepcopy(params0)
    P_n = copy.deepcopy(params0)
    opt = gc.SGD(lr=LR)

    # --- first epoch of each from the same start: correctness + JIT time
    before = _cache_files()
    t0 = time.perf_counter()
    hist = prog.fit(P_g, X, Y, optimizer=opt, epochs=1, batch_size=B, shuffle=False)
    t_first = time.perf_counter() - t0
    after = _cache_files()
    if before is None or after is None:
        cache_state = "?"
    else:
        cache_state = "compiled" if after - before else "cached"
    loss_n = numpy_epoch(P_n, keys, X, Y, B, LR)

    dw = max(float(np.max(np.abs(np.asarray(P_g[k]) - P_n[k]))) for k in params0)
    moved = max(float(np.max(np.abs(P_n[k] - params0[k]))) for k in params0)
    loss_g = np.asarray(getattr(hist, "loss", []), dtype=float).ravel()
    if loss_g.shape == loss_n.shape:
        dloss = float(np.max(np.abs(loss_g - loss_n)))
    else:
        dloss = float("nan")
        log(f"   !! gradc History.loss has {loss_g.size} entries, expected {steps}")
    log(
        f"   gc.compile {t_compile:.3f} s, first fit (JIT + 1 epoch) {t_first:.3f} s "
        f"[{cache_state}]"
    )
    log(
        f"   max |W_gradc - W_numpy| = {dw:.3e} (weights moved by up to {moved:.3e}); "
        f"max |loss diff| = {dloss:.3e}"
    )

    # --- warm-up (a second call of each; kernels already compiled)
    prog.fit(P_g, X, Y, optimizer=opt, epochs=1, batch_size=B, shuffle=False)
    numpy_epoch(P_n, keys, X, Y, B, LR)

    med = interleaved_medians(
        {
            "gradc": lambda: prog.fit(
                P_g, X, Y, optimizer=opt, epochs=1, batch_size=B, shuffle=False
            ),
            "numpy": lambda: numpy_epoch(P_n, keys, X, Y, B, LR),
        },
        repeats,
    )
    t_g, t_n = med["gradc"], med["numpy"]

    # --- fixed cost of one fit call: one epoch of a single batch
    X1, Y1 = X[:B].copy(), Y[:B].copy()
    P_1 = copy.deepcopy(params0)
    t_one = median_time(
        lambda: prog.fit(P_1, X1, Y1, optimizer=opt, epochs=1, batch_size=B, shuffle=False),
        max(3, repeats),
    )
    # --- the brief's literal call: a fresh optimizer object per fit call
    t_fresh = median_time(
        lambda: prog.fit(P_1, X, Y, optimizer=gc.SGD(lr=LR), epochs=1, batch_size=B, shuffle=False),
        max(3, repeats // 4),
    )

    ratio = t_n / t_g
    if target is None:
        verdict = "—"
    else:
        need = target[1]
        verdict = ("PASS" if ratio >= need else "FAIL") + f" (need ≥ {need:.2f}×)"
    log(
        f"   gradc {fmt_us(t_g / steps)} µs/step, numpy {fmt_us(t_n / steps)} µs/step, "
        f"numpy/gradc = {ratio:.2f}×  {verdict}"
    )
    log(
        f"   fit() with one step: {fmt_us(t_one)} µs/call; epoch with a fresh gc.SGD per call: "
        f"{fmt_us(t_fresh / steps)} µs/step"
    )
    return dict(
        label=label,
        steps=steps,
        n=n,
        B=B,
        t_compile=t_compile,
        t_first=t_first,
        cache_state=cache_state,
        dw=dw,
        moved=moved,
        dloss=dloss,
        t_g=t_g,
        t_n=t_n,
        ratio=ratio,
        verdict=verdict,
        t_one=t_one,
        t_fresh=t_fresh,
        repeats=repeats,
    )


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------


def render(results, info, quick, total_s, load_start=None):
    main = markdown_table(
        [
            "network × batch",
            "steps/epoch",
            "gradc µs/step",
            "NumPy µs/step",
            "NumPy / gradc",
            "target",
        ],
        [
            [
                r["label"],
                r["steps"],
                fmt_us(r["t_g"] / r["steps"]),
                fmt_us(r["t_n"] / r["steps"]),
                f"{r['ratio']:.2f}×",
                r["verdict"],
            ]
            for r in results
        ],
    )
    check = markdown_table(
        [
            "network × batch",
            "max abs Δ final weights",
            "max weight change in the epoch",
            "max abs Δ per-step loss",
        ],
        [[r["label"], f"{r['dw']:.1e}", f"{r['moved']:.1e}", f"{r['dloss']:.1e}"] for r in results],
    )
    extra = markdown_table(
        [
            "network × batch",
            "gc.compile s",
            "first fit s (JIT + 1 epoch)",
            "kernels",
            "gradc ms/epoch",
            "NumPy ms/epoch",
            "fit() with 1 step, µs/call",
            "gradc µs/step, new gc.SGD per call",
            "repeats",
        ],
        [
            [
                r["label"],
                f"{r['t_compile']:.3f}",
                f"{r['t_first']:.3f}",
                r["cache_state"],
                f"{r['t_g'] * 1e3:.3f}",
                f"{r['t_n'] * 1e3:.3f}",
                fmt_us(r["t_one"]),
                fmt_us(r["t_fresh"] / r["steps"]),
                r["repeats"],
            ]
            for r in results
        ],
    )
    thread_env = ", ".join(f"`{k}={v}`" for k, v in THREAD_ENV.items())
    busy = ""
    ncpu = os.cpu_count() or 1
    if load_start is not None and load_start[0] > 0.5 * ncpu:
        busy = (
            f"\n**The machine was shared during this run** (1-minute load average "
            f"{load_start[0]:.1f} at the start on {ncpu} cores): the absolute µs are "
            "inflated by other processes; gradc and NumPy were timed alternately, so the "
            "ratios are fairer than the absolute numbers. Re-run on a quiet machine for "
            "absolute timings.\n"
        )
    return f"""# gradc `fit` vs a hand-written NumPy δ recursion

Produced by `{command_line()}` (run from the repository root){" — **quick smoke run, few repeats**" if quick else ""}; total {total_s:.0f} s.

One SGD epoch (lr = {LR}, mini-batches in order, `shuffle=False`), sigmoid layers,
MSE loss ½·Σ(ŷ−y)² averaged over the batch, float64. gradc:
`prog.fit(params, X, Y, optimizer=gc.SGD(lr={LR}), epochs=1, batch_size=B, shuffle=False)`
on `gc.compile(gc.Sequential(gc.Dense(..., gc.sigmoid), ...), loss=gc.mse)`.
NumPy: the δ recursion written by hand (`numpy_epoch` in the script), same
process, same initial parameters (`prog.init(seed=0)`), same data.
Time = median over the repeats of one whole epoch (gradc and NumPy called
alternately), divided by the number of steps; compile time excluded (shown
below). Thread settings, set in `os.environ` before NumPy was imported:
{thread_env}.
{busy}
## Speed

{main}

## Same result

One epoch of each from the same start:

{check}

## Compile time and call overhead

"kernels": "compiled" if the first `fit` wrote new Numba cache files, "cached"
if its kernels came from gradc's disk cache (an earlier run) or were already
loaded in this process (same generated source as an earlier row). "fit() with 1 step" is one `fit` call on a data set of one batch: the fixed
cost of a call (validation, dispatch) plus one step. The last column is the
brief's literal call, constructing a new `gc.SGD(lr={LR})` for every `fit`.

{extra}

## Machine

{info_markdown(info)}
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="few repeats (smoke run); writes no results file unless --out",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"markdown results file (default: {RESULTS} for a full run)",
    )
    ap.add_argument(
        "--strict", action="store_true", help="exit with status 1 when a target is missed"
    )
    args = ap.parse_args(argv)
    out = args.out if args.out is not None else (None if args.quick else RESULTS)

    log = lambda s="": print(s, flush=True)  # noqa: E731
    log(f"thread env: {THREAD_ENV}")
    load_start = os.getloadavg()
    log(f"load average at start: {load_start}")
    t_start = time.perf_counter()
    results = []
    for name, sizes, B, n, reps, target in CONFIGS:
        repeats = reps[1] if args.quick else reps[0]
        results.append(run_config(name, sizes, B, n, repeats, target, log))
    total = time.perf_counter() - t_start

    info = machine_info()
    info["load average (1, 5, 15 min) at start"] = ", ".join(f"{x:.2f}" for x in load_start)
    text = render(results, info, args.quick, total, load_start)
    log("\n" + text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        log(f"wrote {out}")
    failed = [r["label"] for r in results if r["verdict"].startswith("FAIL")]
    if failed:
        log(f"targets missed: {', '.join(failed)}")
    return 1 if (failed and args.strict) else 0


if __name__ == "__main__":
    sys.exit(main())
