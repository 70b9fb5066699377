"""``gradc bench``: the naive strategy against shared δ, measured with gradc's own compiler.

Two sweeps of sigmoid networks with an mse loss, starting from the seed's 3-4-2:
in width (3-h-2) and in depth (3-4-…-4-2). For each network and each strategy
it measures, in one run:

- the parameter count;
- the backward operation count per sample, from
  :func:`gradc.derivation.counting.count_derivation` on the very derivation the
  kernels are printed from; for the small networks also the naive gradients'
  count after one joint ``sympy.cse`` (:func:`gradc.program.report.naive_comparison`);
- the derivation time, the kernel printing time and the Numba compile time
  (first call of the backward kernel, from ``prog.timings``; in full mode Numba's
  on-disk cache points at a fresh temporary folder, so this is a cold compile);
- the gradient time per batch: the backward kernel called directly, and the
  public ``prog.grad(params, X, Y)`` (medians), and the largest relative
  difference between the two strategies' gradients, which must stay below 1e-10.

The naive side runs under a budget of CPU seconds per network (all its stages
together; CPU rather than wall time, so other processes on a shared machine do
not move the stopping point) and gradc's own size guard (``naive_limit``).
Where it stops, the tables say at which stage and why, and any network with a
larger expansion skips that stage.

A third sweep times the shared strategy's backward kernel against its forward
kernel, both called directly (no Python-side checks), from tiny networks to
784-512-512-10, with relu beside sigmoid on the mid-sized ones. Log–log slopes
of backward operations against parameter count are fitted per strategy
(``numpy.polyfit``).

Results go to ``<out>/naive_vs_shared.md`` (and ``.json``) with PNG plots
beside it. ``quick=True`` runs a small sweep (well under a minute, kernels from
gradc's usual cache when present) and writes the same files with a ``_quick``
suffix, so it never overwrites the full results.
"""

from __future__ import annotations

import contextlib
import datetime
import gc as _pygc
import itertools
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["FULL", "QUICK", "BenchConfig", "Results", "main", "run", "write_results"]

AGREEMENT_TOL = 1e-10


# -- configuration -------------------------------------------------------------------------
@dataclass(frozen=True)
class BenchConfig:
    """What one run sweeps and how hard it tries."""

    mode: str
    widths: tuple[int, ...]  # hidden widths h of 3-h-2
    depths: tuple[int, ...]  # numbers of hidden layers of width 4: 3-4-…-4-2
    ratio_nets: tuple[tuple[int, ...], ...]  # shared backward ÷ forward sweep
    ratio_activations: tuple[str, ...] = ("sigmoid", "relu")  # sigmoid is judged; relu shows why
    batch: int = 32
    ratio_batch: int = 64
    repeats: int = 25  # gradient-time repeats (median)
    time_per_measure: float = 1.0  # cap on seconds spent timing one gradient / ratio network
    # CPU seconds per network for the naive side, all stages (3-8-2's naive kernels
    # compile in 55-60 s: 60 made whether it finishes a matter of noise)
    naive_budget: float = 90.0
    naive_limit: int = 60_000  # gradc's size guard (parameter entries × expanded-loss ops)
    naive_kernel_limit: int = 60_000  # above this size the naive side is derived, not compiled
    cse_max_ops: int = 30_000  # joint-CSE column only where the naive gradients are this small
    cse_budget: float = 60.0
    mid_ratio: tuple[int, int] = (1_000, 500_000)  # "mid-sized": parameter counts in this range
    cold_cache: bool = True  # point the kernel cache at an empty folder (cold compile times)


FULL = BenchConfig(
    mode="full",
    widths=(2, 4, 8, 16, 32, 64),
    depths=(1, 2, 3, 4),
    ratio_nets=(
        (3, 4, 2),
        (16, 16, 4),
        (64, 32, 10),
        (64, 32, 32, 10),
        (256, 128, 10),
        (256, 128, 128, 10),
        (784, 128, 10),
        (784, 256, 10),
        (784, 256, 256, 10),
        (784, 512, 512, 10),
    ),
)

QUICK = BenchConfig(
    mode="quick",
    widths=(1, 2, 4),
    depths=(1, 2),
    ratio_nets=((3, 4, 2), (64, 32, 32, 10)),
    repeats=9,
    time_per_measure=0.2,
    naive_budget=15.0,
    naive_limit=3_000,
    naive_kernel_limit=500,
    cse_max_ops=1_000,
    cse_budget=10.0,
    cold_cache=False,
    ratio_activations=("sigmoid",),
)


def _label(sizes) -> str:
    return "-".join(str(s) for s in sizes)


# -- results -------------------------------------------------------------------------------
@dataclass
class StrategyRun:
    strategy: str
    reached: str = "not run"  # last stage completed: derivation, kernels, gradient, timing
    status: str = ""  # "ok" or why it stopped
    backward_ops: int | None = None
    forward_ops: int | None = None
    cse_ops: int | None = None  # naive only: after one joint sympy.cse
    cse_seconds: float | None = None
    cse_note: str = ""
    derive_s: float | None = None
    print_s: float | None = None
    compile_s: float | None = None  # first call of the backward kernel
    grad_s: float | None = None  # median seconds per prog.grad call
    backward_kernel_s: float | None = None  # median seconds per backward-kernel call
    size: int | None = None  # naive only: parameter entries × expanded-loss operations

    @property
    def finished(self) -> bool:
        return self.grad_s is not None


@dataclass
class NetRun:
    sweep: str
    sizes: tuple[int, ...]
    params: int
    shared: StrategyRun
    naive: StrategyRun
    rel_diff: float | None = None  # largest relative gradient difference, where naive finished

    @property
    def label(self) -> str:
        return _label(self.sizes)


@dataclass
class RatioRun:
    sizes: tuple[int, ...]
    activation: str
    params: int
    batch: int
    forward_s: float
    backward_s: float
    forward_ops: int
    backward_ops: int
    api_loss_s: float
    api_grad_s: float
    # the backward pass carried on to the data (``prog.input_grad``'s kernels): the
    # seed's backward, two products per layer (∂L/∂W and ∂L/∂x, seed 000 §3.3)
    backward_in_s: float = float("nan")
    backward_in_ops: int = 0

    @property
    def ratio(self) -> float:
        return self.backward_s / self.forward_s

    @property
    def ratio_in(self) -> float:
        return self.backward_in_s / self.forward_s

    @property
    def label(self) -> str:
        return _label(self.sizes)


@dataclass
class Results:
    config: BenchConfig
    width: list[NetRun] = field(default_factory=list)
    depth: list[NetRun] = field(default_factory=list)
    ratio: list[RatioRun] = field(default_factory=list)
    slopes: dict[str, float | None] = field(default_factory=dict)
    machine: dict[str, str] = field(default_factory=dict)
    command: str = ""
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def agreement_ok(self) -> bool:
        return not self.failures


# -- small helpers ---------------------------------------------------------------------------
class BudgetExceeded(BaseException):
    """Raised by the alarm when a time budget runs out (a BaseException, so
    library code with ``except Exception`` cannot swallow it)."""


@contextlib.contextmanager
def _deadline(seconds: float | None):
    """Interrupt the enclosed code after ``seconds`` of this process's CPU time.

    CPU time (``ITIMER_PROF``), not wall time: on a shared machine other processes
    would otherwise decide where the naive side stops. Main thread on POSIX only;
    elsewhere there is no hard stop.
    """
    usable = (
        seconds is not None
        and seconds > 0
        and hasattr(signal, "setitimer")
        and hasattr(signal, "SIGPROF")
        and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        yield
        return

    def on_alarm(signum, frame):
        raise BudgetExceeded

    old = signal.signal(signal.SIGPROF, on_alarm)
    signal.setitimer(signal.ITIMER_PROF, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, old)


def _median_time(fn, repeats: int, max_seconds: float) -> float:
    """Median wall time of ``fn()`` over up to ``repeats`` calls (fewer if slow)."""
    times = []
    spent = 0.0
    was = _pygc.isenabled()
    _pygc.disable()
    try:
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            times.append(dt)
            spent += dt
            if spent > max_seconds and len(times) >= 3:
                break
    finally:
        if was:
            _pygc.enable()
    return float(statistics.median(times))


def _interleaved(*fns, max_seconds: float, max_repeats: int = 2001) -> list[float]:
    """Median seconds of each of ``fns``, called in turn (a, b, a, b, …) so that a
    slow moment of a shared machine hits them alike."""
    t0 = time.perf_counter()
    for fn in fns:
        fn()
    one = time.perf_counter() - t0
    reps = int(min(max_repeats, max(7, max_seconds / max(one, 1e-7))))
    times: list[list[float]] = [[] for _ in fns]
    was = _pygc.isenabled()
    _pygc.disable()
    try:
        for _ in range(reps):
            for fn, spent in zip(fns, times):
                t0 = time.perf_counter()
                fn()
                spent.append(time.perf_counter() - t0)
    finally:
        if was:
            _pygc.enable()
    return [float(statistics.median(t)) for t in times]


def _kernel_calls(prog, params, X, Y):
    """The program's forward and backward kernels as no-argument callables, with the
    arguments ``value_and_grad`` gives them (so no Python-side checks are timed).

    Reads ``Program`` internals (``_params``, ``_data``, ``_namespace``, ``_workspace``).
    Call the forward one first: the shared backward reads the values it leaves.
    """
    import numpy as np

    p = prog._params(params)
    data, n = prog._data(X, Y)
    ns = prog._namespace(n, p, data, prog._workspace(n))
    ns.update(
        {
            f"g{k}": np.zeros(leaf.shape, dtype=prog.dtype)
            for k, leaf in enumerate(prog.graph.params)
        }
    )
    fwd, bwd = prog.module.forward, prog.module.backward
    fargs = [ns[a] for a in prog.kernels.forward_args]
    bargs = [ns[a] for a in prog.kernels.backward_args]
    return (lambda: fwd(*fargs)), (lambda: bwd(*bargs))


def _network(sizes, activation: str = "sigmoid"):
    import gradc as gc

    act = getattr(gc, activation)
    return gc.Sequential(*[gc.Dense(a, b, act) for a, b in itertools.pairwise(sizes)])


def _param_count(sizes) -> int:
    return sum(b * a + b for a, b in itertools.pairwise(sizes))


def _rel_diff(ga: dict, gb: dict) -> float:
    """Largest, over parameters, of max|a − b| / max|a|."""
    import numpy as np

    worst = 0.0
    for k, a in ga.items():
        a = np.asarray(a, dtype=float)
        b = np.asarray(gb[k], dtype=float).reshape(a.shape)
        scale = max(float(np.max(np.abs(a))), 1e-300)
        worst = max(worst, float(np.max(np.abs(a - b))) / scale)
    return worst


def _slope(xs, ys) -> float | None:
    import numpy as np

    pts = [(x, y) for x, y in zip(xs, ys) if x and y]
    if len(pts) < 2:
        return None
    lx = np.log([p[0] for p in pts])
    ly = np.log([p[1] for p in pts])
    return float(np.polyfit(lx, ly, 1)[0])


def _say(verbose: bool, text: str) -> None:
    if verbose:
        print(text, flush=True)


@contextlib.contextmanager
def _fresh_cache(enabled: bool = True):
    """Point gradc's kernel cache at an empty folder: compile times are cold compiles."""
    if not enabled:
        yield None
        return
    old = os.environ.get("GRADC_CACHE_DIR")
    folder = tempfile.mkdtemp(prefix="gradc_bench_cache_")
    os.environ["GRADC_CACHE_DIR"] = folder
    try:
        yield folder
    finally:
        if old is None:
            os.environ.pop("GRADC_CACHE_DIR", None)
        else:
            os.environ["GRADC_CACHE_DIR"] = old
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _one_blas_thread():
    from .kernels.blas import set_threads

    previous = set_threads(1)  # the kernels' own instance (threadpoolctl does not see it)
    try:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            yield
            return
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        set_threads(previous)


# -- one network, both strategies -----------------------------------------------------------
class _NaiveStops:
    """Where the naive side ran out, as expansion sizes (parameter entries × expanded-loss
    operations): a network at least as large as one that stopped skips that stage."""

    def __init__(self):
        self.derive_size: int | None = None
        self.derive_reason = ""
        self.kernel_size: int | None = None
        self.kernel_reason = ""

    def stop(self, stage: str, size: int, reason: str) -> None:
        if stage == "derivation":
            if self.derive_size is None or size < self.derive_size:
                self.derive_size, self.derive_reason = size, reason
        elif self.kernel_size is None or size < self.kernel_size:
            self.kernel_size, self.kernel_reason = size, reason


def _measure_shared(sizes, cfg: BenchConfig, X, Y, verbose: bool):
    import gradc as gc
    from gradc.derivation.counting import count_derivation

    run = StrategyRun("shared")
    net = _network(sizes)
    t0 = time.perf_counter()
    prog = gc.compile(net, loss=gc.mse)
    wall = time.perf_counter() - t0
    counts = count_derivation(prog.derivation)
    run.backward_ops = counts["backward"].total
    run.forward_ops = counts["forward"].total
    run.derive_s = prog.timings["derive"]
    run.print_s = wall - run.derive_s
    run.reached = "derivation"
    params = prog.init(seed=0)
    grads = prog.grad(params, X, Y)
    run.compile_s = prog.timings.get("backward")
    run.reached = "gradient"
    run.grad_s = _median_time(lambda: prog.grad(params, X, Y), cfg.repeats, cfg.time_per_measure)
    fwd, bwd = _kernel_calls(prog, params, X, Y)
    fwd()
    run.backward_kernel_s = _median_time(bwd, 50 * cfg.repeats, cfg.time_per_measure / 2)
    run.reached = "timing"
    run.status = "ok"
    return run, prog, params, grads


def _measure_naive(sizes, cfg: BenchConfig, params, X, Y, stops: _NaiveStops):
    """The naive side, stage by stage, under one time budget.

    The stages are those of ``gc.compile(..., strategy="naive")`` for the CPU
    target (lower → derive_naive → print_cpu → Program), run one at a time so
    that the op count survives when a later stage runs out of time.
    """
    import sympy as sp

    import gradc as gc
    from gradc.derivation.counting import count_derivation
    from gradc.derivation.naive import derive_naive, expand_loss
    from gradc.errors import GradcError
    from gradc.graph.lower import lower
    from gradc.kernels.cpu import print_cpu
    from gradc.program.program import Program
    from gradc.spec.model import Spec

    run = StrategyRun("naive")
    spec = Spec(_network(sizes), loss=gc.mse)
    graph = lower(spec)
    entries = sum(p.size for p in graph.params)
    run.size = entries * int(sp.count_ops(expand_loss(graph)))
    if stops.derive_size is not None and run.size >= stops.derive_size:
        run.status = f"skipped: {stops.derive_reason}"
        return run, None
    stage = "derivation"
    grads = None
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        with _deadline(cfg.naive_budget):
            t0 = time.perf_counter()
            graph = lower(spec)
            deriv = derive_naive(graph, limit=cfg.naive_limit)
            run.derive_s = time.perf_counter() - t0
            counts = count_derivation(deriv)
            run.backward_ops = counts["backward"].total
            run.forward_ops = counts["forward"].total
            run.reached = "derivation"
            if stops.kernel_size is not None and run.size >= stops.kernel_size:
                run.status = f"derived only; kernels skipped: {stops.kernel_reason}"
                return run, None
            if run.size > cfg.naive_kernel_limit:
                run.status = (
                    f"derived only; kernels not built: expansion size {run.size:,} "
                    f"> {cfg.naive_kernel_limit:,} (bench's kernel guard)"
                )
                return run, None
            stage = "kernel printing"
            t0 = time.perf_counter()
            kernels = print_cpu(deriv, "float64")
            run.print_s = time.perf_counter() - t0
            prog = Program(
                spec,
                graph,
                deriv,
                kernels,
                target="cpu",
                dtype="float64",
                optimizer=None,
                derive_seconds=run.derive_s,
            )
            run.reached = "kernels"
            stage = "Numba compile"
            grads = prog.grad(params, X, Y)
            run.compile_s = prog.timings.get("backward")
            run.reached = "gradient"
            stage = "gradient timing"
            left = cfg.naive_budget - (time.process_time() - cpu_start)
            run.grad_s = _median_time(
                lambda: prog.grad(params, X, Y), cfg.repeats, min(cfg.time_per_measure, left / 4)
            )
            fwd, bwd = _kernel_calls(prog, params, X, Y)
            fwd()
            run.backward_kernel_s = _median_time(
                bwd, 50 * cfg.repeats, min(cfg.time_per_measure / 2, left / 4)
            )
            run.reached = "timing"
            run.status = "ok"
    except BudgetExceeded:
        wall = time.perf_counter() - start
        run.status = (
            f"stopped: its {cfg.naive_budget:g} CPU-second budget ran out during {stage} "
            f"({wall:.0f} s wall)"
        )
        stops.stop(
            stage,
            run.size,
            f"a smaller expansion ({_label(sizes)}, size {run.size:,}) ran out of budget in {stage}",
        )
    except GradcError as exc:
        run.status = (
            f"refused by gradc's size guard (naive_limit={cfg.naive_limit:,}): "
            + str(exc).split(";")[0]
        )
        stops.stop(
            "derivation",
            run.size,
            f"{_label(sizes)} (size {run.size:,}) was refused by the size guard",
        )
    return run, grads


def _measure_cse(graph, run: StrategyRun, shared_run: StrategyRun, cfg: BenchConfig):
    from gradc.errors import GradcError
    from gradc.program.report import naive_comparison

    if run.backward_ops is None:
        run.cse_note = "not measured (naive not derived)"
        return
    if run.backward_ops > cfg.cse_max_ops:
        run.cse_note = f"not measured (naive gradients above {cfg.cse_max_ops:,} operations)"
        return
    try:
        with _deadline(cfg.cse_budget):
            cmp = naive_comparison(
                graph, shared_run.backward_ops, shared_run.derive_s, limit=cfg.naive_limit
            )
            run.cse_seconds = cmp.cse_seconds  # the joint cse alone, not the re-derivation
            run.cse_ops = cmp.naive_cse_ops
            run.cse_note = f"joint cse {cmp.cse_seconds:.2f} s"
    except BudgetExceeded:
        run.cse_note = f"stopped: its {cfg.cse_budget:g} CPU-second budget ran out"
    except GradcError:
        run.cse_note = "refused by the size guard"


def _measure_network(sweep_name, sizes, cfg, stops: _NaiveStops, rng, verbose, done: dict):
    if sizes in done:
        old = done[sizes]
        return NetRun(sweep_name, sizes, old.params, old.shared, old.naive, old.rel_diff)
    X = rng.normal(size=(cfg.batch, sizes[0]))
    Y = rng.uniform(size=(cfg.batch, sizes[-1]))
    shared, sprog, params, sgrads = _measure_shared(sizes, cfg, X, Y, verbose)
    naive, ngrads = _measure_naive(sizes, cfg, params, X, Y, stops)
    rel = _rel_diff(sgrads, ngrads) if ngrads is not None else None
    _measure_cse(sprog.graph, naive, shared, cfg)
    run = NetRun(sweep_name, sizes, _param_count(sizes), shared, naive, rel)
    done[sizes] = run
    _say(verbose, _progress_line(run))
    _pygc.collect()
    return run


def _progress_line(r: NetRun) -> str:
    s, n = r.shared, r.naive
    parts = [
        f"  {r.label:<14} {r.params:>6} params",
        f"backward ops shared {s.backward_ops:>8,}",
        f"naive {n.backward_ops:>10,}" if n.backward_ops is not None else "naive          —",
    ]
    if n.cse_ops is not None:
        parts.append(f"naive+cse {n.cse_ops:,}")
    if r.rel_diff is not None:
        parts.append(f"gradients agree to {r.rel_diff:.1e}")
    if n.status != "ok":
        parts.append(f"naive: {n.status}")
    return "; ".join(parts)


# -- backward ÷ forward, shared ----------------------------------------------------------------
def _measure_ratio(sizes, cfg: BenchConfig, rng, activation: str = "sigmoid") -> RatioRun:
    import gradc as gc
    from gradc.derivation.counting import count_derivation

    prog = gc.compile(_network(sizes, activation), loss=gc.mse)
    counts = count_derivation(prog.derivation)
    params = prog.init(seed=0)
    n = cfg.ratio_batch
    X = rng.normal(size=(n, sizes[0]))
    Y = rng.uniform(size=(n, sizes[-1]))
    prog.value_and_grad(params, X, Y)  # compiles both kernels
    prog.input_grad(params, X, Y)  # and those carried on to ∂L/∂x
    with_inputs = prog._input_program()
    fwd, bwd = _kernel_calls(prog, params, X, Y)
    fwd_in, bwd_in = _kernel_calls(with_inputs, params, X, Y)
    fwd()
    fwd_in()  # leaves the values its backward reads
    t_f, t_b, t_bi = _interleaved(fwd, bwd, bwd_in, max_seconds=cfg.time_per_measure)
    api_loss, api_grad = _interleaved(
        lambda: prog.loss(params, X, Y),
        lambda: prog.grad(params, X, Y),
        max_seconds=cfg.time_per_measure / 2,
    )
    return RatioRun(
        sizes,
        activation,
        _param_count(sizes),
        n,
        t_f,
        t_b,
        counts["forward"].total,
        counts["backward"].total,
        api_loss,
        api_grad,
        t_bi,
        count_derivation(with_inputs.derivation)["backward"].total,
    )


# -- the run ---------------------------------------------------------------------------------
def _machine() -> dict[str, str]:
    import numba
    import numpy
    import scipy
    import sympy

    import gradc

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": cpu,
        "cores (os.cpu_count)": str(os.cpu_count()),
        "python": sys.version.split()[0],
        "gradc": gradc.__version__,
        "sympy": sympy.__version__,
        "numba": numba.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "(unset)"),
    }
    try:
        info["load average at start (1, 5, 15 min)"] = ", ".join(
            f"{x:.2f}" for x in os.getloadavg()
        )
    except OSError:
        pass
    return info


def run(cfg: BenchConfig = FULL, verbose: bool = True) -> Results:
    """Run the sweeps of ``cfg`` and return the measurements (writes nothing)."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import numpy

    with contextlib.suppress(ImportError):
        import scipy.linalg  # noqa: F401  (load the BLAS Numba's np.dot uses, so it gets limited)

    res = Results(cfg)
    res.machine = _machine()
    start = time.perf_counter()
    rng = numpy.random.default_rng(0)
    done: dict[tuple, NetRun] = {}
    with _fresh_cache(cfg.cold_cache), _one_blas_thread():
        _say(verbose, f"gradc bench ({cfg.mode}): width sweep 3-h-2, h in {list(cfg.widths)}")
        stops = _NaiveStops()
        for h in cfg.widths:
            res.width.append(_measure_network("width", (3, h, 2), cfg, stops, rng, verbose, done))
        _say(verbose, f"depth sweep 3-4-…-4-2, {list(cfg.depths)} hidden layers")
        for d in cfg.depths:
            sizes = (3, *([4] * d), 2)
            res.depth.append(_measure_network("depth", sizes, cfg, stops, rng, verbose, done))
        _say(verbose, f"shared backward ÷ forward kernel time, batch {cfg.ratio_batch}")
        lo, hi = cfg.mid_ratio
        for act in cfg.ratio_activations:
            for sizes in cfg.ratio_nets:
                if act != "sigmoid" and not lo <= _param_count(sizes) <= hi:
                    continue  # the other activations only diagnose the judged, mid-sized rows
                r = _measure_ratio(sizes, cfg, rng, act)
                res.ratio.append(r)
                _say(
                    verbose,
                    f"  {r.label:<16} {act:<8} {r.params:>8,} params  forward "
                    f"{r.forward_s * 1e6:10.1f} µs  backward {r.backward_s * 1e6:10.1f} µs  "
                    f"ratio {r.ratio:.2f} (to the data: {r.ratio_in:.2f})",
                )
    for r in res.width + res.depth:
        if r.rel_diff is not None and not r.rel_diff <= AGREEMENT_TOL:
            res.failures.append(
                f"{r.label}: naive and shared gradients differ by {r.rel_diff:.2e} relative "
                f"(> {AGREEMENT_TOL:g})"
            )
    w = res.width
    res.slopes = {
        "shared, width sweep": _slope([r.params for r in w], [r.shared.backward_ops for r in w]),
        "naive, width sweep": _slope([r.params for r in w], [r.naive.backward_ops for r in w]),
        "naive + joint CSE, width sweep": _slope(
            [r.params for r in w], [r.naive.cse_ops for r in w]
        ),
        "shared, depth sweep": _slope(
            [r.params for r in res.depth], [r.shared.backward_ops for r in res.depth]
        ),
        "naive, depth sweep": _slope(
            [r.params for r in res.depth], [r.naive.backward_ops for r in res.depth]
        ),
        "shared backward kernel time, width sweep": _slope(
            [r.params for r in w], [r.shared.backward_kernel_s for r in w]
        ),
        "naive backward kernel time, width sweep": _slope(
            [r.params for r in w], [r.naive.backward_kernel_s for r in w]
        ),
    }
    res.seconds = time.perf_counter() - start
    return res


# -- writing -------------------------------------------------------------------------------------
def _fmt_int(v) -> str:
    return "—" if v is None else f"{v:,}"


def _fmt_s(v, digits: int = 2) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _fmt_us(v) -> str:
    if v is None:
        return "—"
    us = v * 1e6
    return f"{us:,.0f}" if us >= 100 else f"{us:.1f}"


def _range(values, fmt: str = ".2f") -> str:
    lo, hi = min(values), max(values)
    return f"{lo:{fmt}}" if f"{lo:{fmt}}" == f"{hi:{fmt}}" else f"{lo:{fmt}}–{hi:{fmt}}"


def _table(headers, rows, align=None) -> str:
    align = align or ("l" + "r" * (len(headers) - 1))
    marks = {"l": ":---", "r": "---:", "c": ":---:"}
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(marks[a] for a in align) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def _ops_table(runs: list[NetRun]) -> str:
    rows = []
    for r in runs:
        s, n = r.shared, r.naive
        ratio = f"{n.backward_ops / s.backward_ops:,.0f}×" if n.backward_ops else "—"
        cse = _fmt_int(n.cse_ops)
        if n.cse_ops is not None and n.cse_seconds is not None:
            cse += f" ({n.cse_seconds:.1f} s)"
        rows.append(
            [
                r.label,
                f"{r.params:,}",
                _fmt_int(s.forward_ops),
                _fmt_int(s.backward_ops),
                _fmt_int(n.backward_ops),
                cse,
                ratio,
            ]
        )
    return _table(
        [
            "network",
            "params",
            "forward ops",
            "shared backward ops",
            "naive backward ops",
            "naive + joint CSE (cse s)",
            "naive ÷ shared",
        ],
        rows,
    )


def _time_table(runs: list[NetRun], batch: int) -> str:
    rows = []
    for r in runs:
        s, n = r.shared, r.naive
        rows.append(
            [
                r.label,
                f"{_fmt_s(s.derive_s, 3)} / {_fmt_s(n.derive_s)}",
                f"{_fmt_s(s.print_s, 3)} / {_fmt_s(n.print_s)}",
                f"{_fmt_s(s.compile_s)} / {_fmt_s(n.compile_s)}",
                f"{_fmt_us(s.backward_kernel_s)} / {_fmt_us(n.backward_kernel_s)}",
                f"{_fmt_us(s.grad_s)} / {_fmt_us(n.grad_s)}",
                "—" if r.rel_diff is None else f"{r.rel_diff:.1e}",
                n.status or "—",
            ]
        )
    return _table(
        [
            "network",
            "derivation s (shared / naive)",
            "kernel printing s",
            "Numba compile s (backward kernel)",
            f"backward kernel µs, batch of {batch}",
            "prog.grad µs",
            "max relative difference",
            "naive side",
        ],
        rows,
        "l" + "r" * 6 + "l",
    )


def _ratio_table(rows: list[RatioRun]) -> str:
    out = []
    for r in rows:
        out.append(
            [
                r.label,
                r.activation,
                f"{r.params:,}",
                _fmt_us(r.forward_s),
                _fmt_us(r.backward_s),
                f"**{r.ratio:.2f}**",
                f"{r.backward_ops / max(r.forward_ops, 1):.2f}",
                _fmt_us(r.backward_in_s),
                f"**{r.ratio_in:.2f}**",
                f"{r.backward_in_ops / max(r.forward_ops, 1):.2f}",
                f"{1 + r.ratio:.2f}",
                f"{r.api_grad_s / r.api_loss_s:.2f}",
            ]
        )
    return _table(
        [
            "network",
            "activation",
            "params",
            "forward kernel µs",
            "backward kernel µs",
            "backward ÷ forward time",
            "backward ÷ forward ops",
            "backward to the data µs",
            "backward to the data ÷ forward time",
            "backward to the data ÷ forward ops",
            "(forward + backward) ÷ forward time",
            "prog.grad ÷ prog.loss time",
        ],
        out,
        "ll" + "r" * 10,
    )


def _judged(res: Results) -> list[RatioRun]:
    """The mid-sized sigmoid rows the criterion is checked on."""
    lo, hi = res.config.mid_ratio
    return [r for r in res.ratio if r.activation == "sigmoid" and lo <= r.params <= hi]


def _where_naive_stopped(res: Results) -> list[str]:
    out = []
    for name, runs in (("width", res.width), ("depth", res.depth)):
        done = [r for r in runs if r.naive.finished]
        derived = [r for r in runs if r.naive.backward_ops is not None]
        first_stop = next((r for r in runs if r.naive.status != "ok"), None)
        line = f"- {name} sweep: naive gradients computed up to "
        line += f"**{done[-1].label}** ({done[-1].params} params)" if done else "**none**"
        if derived and (not done or derived[-1] is not done[-1]):
            line += (
                f"; derived and counted up to **{derived[-1].label}** ({derived[-1].params} params)"
            )
        if first_stop is not None:
            line += f"; first stop at {first_stop.label}: {first_stop.naive.status}"
        out.append(line + ".")
    return out


def _criteria(res: Results) -> list[tuple[str, bool | None, str]]:
    cfg = res.config
    out = []
    sn = res.slopes.get("naive, width sweep")
    ss = res.slopes.get("shared, width sweep")
    out.append(
        (
            "naive backward ops grow faster than linearly (width-sweep slope ≥ 1.5)",
            None if sn is None else sn >= 1.5,
            "—" if sn is None else f"slope {sn:.2f}",
        )
    )
    out.append(
        (
            "shared backward ops grow linearly (width-sweep slope ≤ 1.1)",
            None if ss is None else ss <= 1.1,
            "—" if ss is None else f"slope {ss:.2f}",
        )
    )
    lo, hi = cfg.mid_ratio
    mid = _judged(res)
    if mid:
        ok = all(1.0 <= r.ratio <= 3.0 for r in mid)
        text = ", ".join(f"{r.label}: {r.ratio:.2f}" for r in mid)
    else:
        ok, text = None, "no mid-sized network in this run"
    out.append(
        (
            f"shared backward ÷ forward time in [1, 3] for mid-sized sigmoid networks "
            f"({lo:,}–{hi:,} params)",
            ok,
            text,
        )
    )
    if mid:
        ok = all(1.0 <= r.ratio_in <= 3.0 for r in mid)
        text = ", ".join(f"{r.label}: {r.ratio_in:.2f}" for r in mid)
        out.append(
            (
                "the same, for the seed's backward pass (carried on to ∂L/∂x, seed 000 §3.3)",
                ok,
                text,
            )
        )
    checked = [r for r in res.width + res.depth if r.rel_diff is not None]
    seen = {}
    for r in checked:
        seen[r.label] = r.rel_diff
    worst = max(seen.values()) if seen else None
    out.append(
        (
            f"naive and shared gradients agree to {AGREEMENT_TOL:g} relative wherever naive finishes",
            None if worst is None else worst <= AGREEMENT_TOL,
            "—" if worst is None else f"{len(seen)} networks, worst {worst:.1e}",
        )
    )
    return out


def _reading(res: Results) -> str:
    """One paragraph, written from the numbers of this run."""
    w = res.width
    sn = res.slopes.get("naive, width sweep")
    ss = res.slopes.get("shared, width sweep")
    counted = [r for r in w if r.naive.backward_ops is not None]
    last = counted[-1] if counted else None
    mid = _judged(res)
    parts = []
    if sn is not None and ss is not None and last is not None:
        parts.append(
            "Differentiating the loss once per parameter entry makes the backward operation "
            f"count grow like the parameter count to the power {sn:.2f} (width sweep), while "
            f"shared δ grows with power {ss:.2f}: at {last.label} ({last.params} parameters) the "
            f"naive gradients take {last.naive.backward_ops:,} operations per sample against "
            f"{last.shared.backward_ops:,} for backpropagation, "
            f"{last.naive.backward_ops / last.shared.backward_ops:,.0f}× more."
        )
    cse = [r for r in w + res.depth if r.naive.cse_ops is not None]
    if cse:
        r = max(cse, key=lambda r: r.params)
        parts.append(
            f"One joint `sympy.cse` over all naive gradients brings {r.label} back from "
            f"{r.naive.backward_ops:,} to {r.naive.cse_ops:,} operations (shared δ: "
            f"{r.shared.backward_ops:,}), but that takes {r.naive.cse_seconds:.1f} s where the "
            f"whole shared derivation takes {r.shared.derive_s * 1e3:.0f} ms: CSE rediscovers "
            "the δ after the fact, backpropagation never creates the swell."
        )
    runs = sorted({r.sizes: r for r in w + res.depth}.values(), key=lambda r: r.params)
    done = [r for r in runs if r.naive.finished]
    if done:
        r = done[-1]
        n, sh = r.naive, r.shared
        parts.append(
            f"Building the naive kernels swells too: for {r.label}, deriving, printing and "
            f"compiling them took {n.derive_s + n.print_s + n.compile_s:.0f} s (shared: "
            f"{sh.derive_s + sh.print_s + sh.compile_s:.1f} s), and its naive backward kernel "
            f"takes {_fmt_us(n.backward_kernel_s)} µs per batch of {res.config.batch} against "
            f"{_fmt_us(sh.backward_kernel_s)} µs for shared δ."
        )
    budget = [r for r in runs if r.naive.status.startswith("stopped")]
    guard = [r for r in runs if r.naive.status.startswith("refused")]
    if budget:
        r = budget[0]
        parts.append(
            f"At {r.label} the naive side stopped: {r.naive.status.split(':', 1)[1].strip()}."
        )
    if guard:
        parts.append(
            "gradc's size guard refused even to expand the loss for "
            + " and ".join(f"{r.label} ({r.params} parameters)" for r in guard)
            + ", while shared δ derives and compiles every network of both sweeps in seconds."
        )
    if mid:
        text = (
            f"Timed on the kernels, the shared backward pass costs {_range([r.ratio for r in mid])}× "
            f"the forward pass on mid-sized sigmoid networks (batch {res.config.ratio_batch})"
        )
        below = [r for r in mid if r.ratio < 1.0]
        if below:
            text += "; below 1 on " + ", ".join(f"{r.label} ({r.ratio:.2f})" for r in below)
            text += (
                ". Two things make it so: gradc computes no ∂L/∂x for the data input, so the "
                "backward pass has only "
                f"{_range([r.backward_ops / r.forward_ops for r in mid])}× the forward "
                "operations (not 2×), and every forward sigmoid evaluates an exp (about "
                "as dear as tens of multiply-adds) while backward reuses the forward value "
                "(σ′ = σ(1−σ)) and calls none"
            )
            relu = [
                r for r in res.ratio if r.activation == "relu" and r.sizes in {m.sizes for m in mid}
            ]
            if relu:
                text += (
                    "; with relu in place of sigmoid (no exp) the same networks give "
                    f"{_range([r.ratio for r in relu])}"
                )
        text += (
            ". Carried on to the data as the seed's backward pass is (∂L/∂x as well, "
            f"{_range([r.backward_in_ops / r.forward_ops for r in mid])}× the forward "
            f"operations), it costs {_range([r.ratio_in for r in mid])}× the forward pass"
        )
        text += (
            f". A whole gradient (forward + backward) costs {_range([1 + r.ratio for r in mid])}× "
            'a forward pass: a small constant, not "parameters × forward".'
        )
        parts.append(text)
    return " ".join(parts)


def _markdown(res: Results, files: dict[str, str], command: str) -> str:
    cfg = res.config
    lines = [
        "# Naive per-parameter derivatives vs shared δ (backpropagation), measured",
        "",
        f"Written by `gradc bench` ({cfg.mode} mode) in {res.seconds:.0f} s. Sigmoid networks "
        f"with an mse loss; gradients on a batch of {cfg.batch} random samples "
        "(`prog.grad`, median of repeats). Operation counts are per sample, from "
        "`gradc.derivation.counting.count_derivation` on the derivation the kernels are "
        "printed from. "
        + (
            "Numba compile times are cold (the kernel cache points at an empty folder). "
            if cfg.cold_cache
            else "Quick mode uses gradc's usual kernel cache, so compile times may be cache loads. "
        )
        + "The naive side has "
        f"{cfg.naive_budget:g} CPU seconds per network for all its stages (a larger "
        "expansion skips a stage that ran out on a smaller one) and gradc's size guard "
        f"`naive_limit={cfg.naive_limit:,}` (parameter entries × operations of the expanded "
        "loss); kernels are built only up to an expansion size of "
        f'{cfg.naive_kernel_limit:,}. "backward kernel µs" calls the generated backward '
        'kernel directly; "prog.grad µs" is the public call (argument checks, forward '
        'pass, allocation included). "cse s" is the joint `sympy.cse` alone. Note: the '
        "naive kernel printer runs `sympy.cse` inside each gradient entry (never across "
        "entries), so the naive kernels execute fewer operations than the derivation's "
        "count shown here.",
        "",
        "## Machine",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in res.machine.items()]
    lines += ["", "## Command", "", "```", command, "```", ""]
    lines += ["## Criteria", ""]
    for text, ok, value in _criteria(res):
        mark = "n/a" if ok is None else ("met" if ok else "**NOT met**")
        lines.append(f"- {text}: {mark} ({value})")
    lines += ["", "## Reading", "", _reading(res), ""]
    lines += ["## Fitted log–log slopes (`numpy.polyfit` of log cost on log parameter count)", ""]
    lines.append(
        _table(
            ["series", "slope", "points"],
            [[k, "—" if v is None else f"{v:.2f}", _points(res, k)] for k, v in res.slopes.items()],
        )
    )
    lines += ["", "## Width sweep: 3-h-2", "", "Backward operations per sample:", ""]
    lines.append(_ops_table(res.width))
    lines += ["", "Times (shared / naive):", "", _time_table(res.width, cfg.batch), ""]
    lines += ["## Depth sweep: 3-4-…-4-2", "", "Backward operations per sample:", ""]
    lines.append(_ops_table(res.depth))
    lines += ["", "Times (shared / naive):", "", _time_table(res.depth, cfg.batch), ""]
    lines += ["## Where the naive side stopped", ""]
    lines += _where_naive_stopped(res)
    lines += [
        "",
        f"## Shared strategy: backward ÷ forward time (batch {cfg.ratio_batch})",
        "",
        "The module's forward and backward kernels called directly with the arguments "
        "`value_and_grad` gives them (median over interleaved repeats, one BLAS thread). "
        "The last column times the public `prog.grad` against `prog.loss` instead, "
        "Python-side checks included. Only sigmoid rows are judged; relu rows (no exp in "
        "the forward pass) show where the time goes. *Backward to the data* is the same "
        "backward pass carried on to ∂L/∂x (the kernels of `prog.input_grad`): the seed's "
        "backward pass, two products per layer, one to the weights and one to the input "
        "(seed 000 §3.3). A program's own gradients leave the last of those out: data "
        "needs no gradient.",
        "",
        _ratio_table(res.ratio),
        "",
    ]
    if files:
        lines += ["## Plots", ""]
        for title, name in files.items():
            lines.append(f"![{title}]({name})")
            lines.append("")
    else:
        lines += ["Plots: not drawn (matplotlib is not installed).", ""]
    if res.failures:
        lines += ["## Failures", ""] + [f"- {f}" for f in res.failures] + [""]
    return "\n".join(lines)


def _points(res: Results, key: str) -> str:
    runs = res.depth if "depth" in key else res.width
    if key.startswith("naive + joint"):
        vals = [r.naive.cse_ops for r in runs]
    elif "kernel time" in key:
        vals = [(r.naive if key.startswith("naive") else r.shared).backward_kernel_s for r in runs]
    else:
        vals = [(r.naive if key.startswith("naive") else r.shared).backward_ops for r in runs]
    used = [r.label for r, v in zip(runs, vals) if v]
    return ", ".join(used) if used else "—"


def _plots(res: Results, out: Path, suffix: str, verbose: bool) -> dict[str, str]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import NullFormatter, ScalarFormatter
    except ImportError:
        _say(verbose, "matplotlib is not installed: plots skipped")
        return {}
    files = {}

    naive_c, cse_c, shared_c = "tab:red", "tab:orange", "tab:blue"

    def series(runs, get):
        pts = [(r.params, get(r)) for r in runs if get(r)]
        return [p[0] for p in pts], [p[1] for p in pts]

    def line(ax, runs, get, label, style, color, fit=True):
        xs, ys = series(runs, get)
        if not xs:
            return
        s = _slope(xs, ys) if fit else None
        text = label if s is None else f"{label} (slope {s:.2f})"
        ax.loglog(xs, ys, style, color=color, label=text)

    def finish(ax, xlabel, ylabel, title):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)

    # 1. backward operations against parameters
    fig = Figure(figsize=(7.5, 5.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    line(ax, res.width, lambda r: r.naive.backward_ops, "naive, width", "o-", naive_c)
    line(ax, res.width, lambda r: r.naive.cse_ops, "naive + joint CSE, width", "s-", cse_c)
    line(ax, res.width, lambda r: r.shared.backward_ops, "shared δ, width", "o-", shared_c)
    line(ax, res.depth, lambda r: r.naive.backward_ops, "naive, depth", "^--", naive_c)
    line(ax, res.depth, lambda r: r.shared.backward_ops, "shared δ, depth", "^--", shared_c)
    finish(
        ax,
        "parameters",
        "backward operations per sample",
        "Backward cost against parameter count (log–log)",
    )
    name = f"naive_vs_shared_ops{suffix}.png"
    fig.savefig(out / name, dpi=110, bbox_inches="tight")
    files["backward operations against parameters"] = name

    # 2. times against parameters (width sweep solid and fitted, depth sweep dashed)
    fig = Figure(figsize=(12, 4.8))
    FigureCanvasAgg(fig)

    def build(s):
        parts = [s.derive_s, s.print_s, s.compile_s]
        return sum(parts) if all(p is not None for p in parts) else None

    def us(v):
        return None if v is None else v * 1e6

    ax1 = fig.add_subplot(1, 2, 1)
    line(ax1, res.width, lambda r: r.naive.derive_s, "naive: derivation", "o-", naive_c)
    line(ax1, res.width, lambda r: build(r.naive), "naive: derive+print+compile", "s-", cse_c)
    line(ax1, res.width, lambda r: r.shared.derive_s, "shared: derivation", "o-", shared_c)
    line(
        ax1, res.width, lambda r: build(r.shared), "shared: derive+print+compile", "s-", "tab:cyan"
    )
    line(
        ax1,
        res.depth,
        lambda r: r.naive.derive_s,
        "naive: derivation, depth",
        "^--",
        naive_c,
        False,
    )
    line(
        ax1,
        res.depth,
        lambda r: r.shared.derive_s,
        "shared: derivation, depth",
        "^--",
        shared_c,
        False,
    )
    finish(ax1, "parameters", "seconds", "Derivation and kernel build time")
    ax2 = fig.add_subplot(1, 2, 2)
    line(
        ax2,
        res.width,
        lambda r: us(r.naive.backward_kernel_s),
        "naive: backward kernel",
        "o-",
        naive_c,
    )
    line(
        ax2,
        res.width,
        lambda r: us(r.shared.backward_kernel_s),
        "shared δ: backward kernel",
        "o-",
        shared_c,
    )
    line(ax2, res.width, lambda r: us(r.naive.grad_s), "naive: prog.grad", "s:", naive_c, False)
    line(
        ax2, res.width, lambda r: us(r.shared.grad_s), "shared δ: prog.grad", "s:", shared_c, False
    )
    finish(
        ax2,
        "parameters (width sweep)",
        f"µs per call, batch {res.config.batch}",
        "Gradient time per batch",
    )
    name = f"naive_vs_shared_time{suffix}.png"
    fig.savefig(out / name, dpi=110, bbox_inches="tight")
    files["derivation, compile and gradient time against parameters"] = name

    # 3. backward ÷ forward
    if res.ratio:
        fig = Figure(figsize=(7.5, 4.5))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        colors = {"sigmoid": "tab:blue", "relu": "tab:orange"}
        depths = sorted({len(r.sizes) - 2 for r in res.ratio})
        markers = {d: m for d, m in zip(depths, "o^sD")}
        first = res.ratio[0].activation
        for act in dict.fromkeys(r.activation for r in res.ratio):
            for d in depths:
                rows = sorted(
                    (r for r in res.ratio if r.activation == act and len(r.sizes) - 2 == d),
                    key=lambda r: r.params,
                )
                if not rows:
                    continue
                hidden = f"{d} hidden layer{'s' if d > 1 else ''}"
                ax.semilogx(
                    [r.params for r in rows],
                    [r.ratio for r in rows],
                    "-",
                    marker=markers[d],
                    color=colors.get(act),
                    label=f"time, {act}, {hidden}",
                )
                if act != first:
                    continue
                extra = (
                    ([r.backward_ops / max(r.forward_ops, 1) for r in rows], ":", "grey", 1.0,
                     f"operations, {hidden}"),
                    ([r.ratio_in for r in rows], "--", colors.get(act), 0.6,
                     f"time, backward to the data, {act}, {hidden}"),
                )  # fmt: skip
                for values, style, color, alpha, label in extra:
                    ax.semilogx(
                        [r.params for r in rows],
                        values,
                        style,
                        marker=markers[d],
                        color=color,
                        alpha=alpha,
                        label=label,
                    )
        ax.axhspan(1, 3, color="green", alpha=0.08, label="1 to 3")
        ax.set_xlabel("parameters")
        ax.set_ylabel("backward ÷ forward")
        ax.set_title(f"Shared δ: backward ÷ forward (batch {res.config.ratio_batch})")
        ax.set_ylim(0, max(4.0, max(r.ratio for r in res.ratio) * 1.1))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        name = f"backward_forward_ratio{suffix}.png"
        fig.savefig(out / name, dpi=110, bbox_inches="tight")
        files["shared backward ÷ forward time"] = name
    return files


def _jsonable(res: Results) -> dict:
    def net(r: NetRun):
        return {
            "sweep": r.sweep,
            "network": r.label,
            "params": r.params,
            "shared": asdict(r.shared),
            "naive": asdict(r.naive),
            "max_relative_difference": r.rel_diff,
        }

    return {
        "mode": res.config.mode,
        "config": asdict(res.config),
        "machine": res.machine,
        "seconds": res.seconds,
        "slopes": res.slopes,
        "width": [net(r) for r in res.width],
        "depth": [net(r) for r in res.depth],
        "ratio": [
            {**asdict(r), "network": r.label, "ratio": r.ratio, "ratio_to_data": r.ratio_in}
            for r in res.ratio
        ],
        "criteria": [{"criterion": t, "met": ok, "value": v} for t, ok, v in _criteria(res)],
        "gradients_agree": res.agreement_ok,
        "failures": res.failures,
    }


def write_results(res: Results, out_dir, command: str, verbose: bool = True) -> Path:
    """Write the Markdown table, the JSON data and the plots; returns the Markdown path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if res.config.mode == "quick" else ""
    files = _plots(res, out, suffix, verbose)
    md = out / f"naive_vs_shared{suffix}.md"
    md.write_text(_markdown(res, files, command), encoding="utf-8")
    (out / f"naive_vs_shared{suffix}.json").write_text(
        json.dumps(_jsonable(res), indent=1, default=str), encoding="utf-8"
    )
    return md


def _command_line() -> str:
    argv = sys.argv
    if argv and Path(argv[0]).name == "gradc":
        return " ".join(["gradc", *argv[1:]])
    return " ".join(["python", *argv]) if argv else "gradc bench"


def main(
    quick: bool = False, out_dir=None, *, command: str | None = None, verbose: bool = True
) -> int:
    """Run the benchmark and write its results; 0 when all gradients agreed, else 1.

    ``out_dir`` defaults to ``benchmarks/results`` under the current folder; a
    quick run writes ``naive_vs_shared_quick.*`` there, a full run
    ``naive_vs_shared.*``.
    """
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    cfg = QUICK if quick else FULL
    out = Path(out_dir) if out_dir is not None else Path("benchmarks") / "results"
    res = run(cfg, verbose=verbose)
    md = write_results(res, out, command or _command_line(), verbose)
    _say(verbose, "")
    for k, v in res.slopes.items():
        if v is not None:
            _say(verbose, f"slope {k}: {v:.2f}")
    for text, ok, value in _criteria(res):
        mark = "n/a" if ok is None else ("met" if ok else "NOT MET")
        _say(verbose, f"{mark:>7}: {text} ({value})")
    _say(verbose, f"results written to {md} ({res.seconds:.0f} s)")
    if res.failures:
        for f in res.failures:
            print(f"gradc bench: {f}", file=sys.stderr)
        return 1
    return 0
