"""gradc's fused epoch against its peers on the CPU (issue 9).

One SGD training step (forward, backward, update of every weight and bias),
µs per step, for

    sigmoid_mse: sigmoid layers, MSE ½·Σ(ŷ−y)² per sample, averaged over the batch
    relu_ce:     ReLU hidden layers, identity output, softmax cross-entropy, one-hot y

on networks 3-4-2, 64-32-10, 784-256-10, 512-512-512-10, batch sizes 1, 32,
256, float64 (and float32 for 64-32-10 and 784-256-10). Peers, all fed the
same initial weights (gradc's ``prog.init(seed=0)``) and the same data:

    gradc_fit      prog.fit(params, X, Y, optimizer=opt, epochs=1,
                   batch_size=B, shuffle=False)    (the fused epoch kernel;
                   opt = gc.SGD(lr) made once, as PyTorch's optimizer is)
    gradc_vag      prog.value_and_grad + update, per step from Python
    numpy          the δ recursion by hand (the reference for the weights)
    numba_array    hand-written @njit epoch, array expressions and `@`
    numba_loops    hand-written @njit epoch, scalar loops, literal shapes
    torch_eager    PyTorch eager, CPU, torch.optim.SGD
    torch_compile  torch.compile(fullgraph=True) of one functional step
    jax_step       jax.jit of one step, called per batch
    jax_scan       jax.jit of the whole epoch, lax.scan over the batches
    pytensor       pytensor.function with SGD updates, mode="NUMBA"
    matmul_only    (a floor, not a peer) only the step's matrix products

Fresh processes (``sys.executable``), one after another, never more than one
peer in a process, with the same thread settings (see ``THREAD_ENV``):
``--per case`` one per peer and case; ``--per network`` (default) one per
peer and network-and-dtype (its six cases); ``--per peer`` one per peer. For
each case a process runs one epoch from the initial weights and compares
the final weights with the NumPy reference; then a warm-up epoch (skipped
when the first took over 1 s), then timed epochs (each from the initial
weights, reset untimed) until it has at least ``min_repeats`` and
``min_time`` seconds (or 2 epochs and ``max_time`` seconds); the median and
the best epoch time over the steps are reported.
gradc's start-up cost is measured per network in two more processes: cold
(an empty ``GRADC_CACHE_DIR``) and warm (the same directory, a new process).

    .venv/bin/python benchmarks/peers.py                  # full run -> results/peers.{md,json,png}
    .venv/bin/python benchmarks/peers.py --quick          # smoke run, writes nothing unless --out-dir
    .venv/bin/python benchmarks/peers.py --peers gradc_fit,jax_scan --cases 64-32-10
    .venv/bin/python benchmarks/peers.py --from-json benchmarks/results/peers.json  # re-render
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import pin_threads

# The same for every process: set here (before NumPy) and passed to every worker.
THREAD_ENV = {
    **pin_threads(1),
    "NUMBA_NUM_THREADS": "1",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
    "TORCHINDUCTOR_COMPILE_THREADS": "1",
}
os.environ.update(THREAD_ENV)

import argparse  # noqa: E402
import fnmatch  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import peers_cases as pc  # noqa: E402  (stdlib + NumPy)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PEERS = [
    "gradc_fit",
    "gradc_vag",
    "numpy",
    "numba_array",
    "numba_loops",
    "torch_eager",
    "torch_compile",
    "jax_step",
    "jax_scan",
    "pytensor",
    "matmul_only",
]
QUICK_PEERS = ["gradc_fit", "numpy", "numba_loops", "jax_scan", "torch_eager"]
QUICK_CASES = ["sigmoid_mse/3-4-2/b1/float64", "relu_ce/64-32-10/b32/float64"]
TIMING = {
    "full": {"min_repeats": 5, "min_time": 0.3, "max_time": 2.0, "max_repeats": 41},
    "quick": {"min_repeats": 2, "min_time": 0.05, "max_time": 1.0, "max_repeats": 5},
}
# Without --cases, these peers run only on these cases (their compile takes
# 10-60 s per case on this machine; all of them would not fit the ~20 min budget).
DEFAULT_RESTRICT = {
    "torch_compile": "sigmoid_mse/*/b32/float64",
    "pytensor": "sigmoid_mse/*/b32/float64",
}
DEFAULT_PER = "network"
PEER_LABELS = {
    "gradc_fit": "gradc fit (fused epoch)",
    "gradc_vag": "gradc value_and_grad per step",
    "numpy": "NumPy by hand",
    "numba_array": "Numba, array + @",
    "numba_loops": "Numba, literal loops",
    "torch_eager": "PyTorch eager",
    "torch_compile": "torch.compile",
    "jax_step": "JAX jit per step",
    "jax_scan": "JAX jit, lax.scan epoch",
    "pytensor": "PyTensor NUMBA",
    "matmul_only": "matmul only (floor)",
}
PLOT_STYLE = {  # color, marker, line width, line style
    "gradc_fit": ("black", "o", 2.8, "-"),
    "gradc_vag": ("dimgray", "o", 1.2, "--"),
    "numpy": ("tab:olive", "s", 1.2, "-"),
    "numba_array": ("tab:green", "^", 1.4, "-"),
    "numba_loops": ("tab:green", "v", 1.4, "--"),
    "torch_eager": ("tab:red", "D", 1.4, "-"),
    "torch_compile": ("tab:red", "d", 1.4, "--"),
    "jax_step": ("tab:blue", "P", 1.4, "--"),
    "jax_scan": ("tab:blue", "X", 2.0, "-"),
    "pytensor": ("tab:purple", "*", 1.2, "-"),
    "matmul_only": ("tab:gray", ".", 1.0, ":"),
}
SHORT = {
    "gradc_fit": "gradc fit",
    "gradc_vag": "gradc v&g",
    "numpy": "NumPy",
    "numba_array": "Numba @",
    "numba_loops": "Numba loops",
    "torch_eager": "torch eager",
    "torch_compile": "torch.compile",
    "jax_step": "JAX step",
    "jax_scan": "JAX scan",
    "pytensor": "PyTensor",
    "matmul_only": "matmul only",
}


def log(msg: str = "") -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------
# selection
# --------------------------------------------------------------------------


def select_cases(spec: str | None, quick: bool) -> list[pc.Case]:
    cases = pc.all_cases()
    if spec is None:
        if quick:
            return [c for c in cases if c.name in QUICK_CASES]
        return cases
    pats = [p.strip() for p in spec.split(",") if p.strip()]
    out = [c for c in cases if any(fnmatch.fnmatch(c.name, f"*{p}*") for p in pats)]
    if not out:
        sys.exit(f"--cases {spec!r} matches no case; cases are e.g. {cases[0].name}")
    return out


def select_peers(spec: str | None, quick: bool) -> list[str]:
    if spec is None:
        return list(QUICK_PEERS if quick else PEERS)
    names = [p.strip() for p in spec.split(",") if p.strip()]
    if names == ["all"]:
        return list(PEERS)
    bad = [n for n in names if n not in PEERS]
    if bad:
        sys.exit(f"unknown peer(s) {bad}; peers are {', '.join(PEERS)}")
    return [p for p in PEERS if p in names]


# --------------------------------------------------------------------------
# the parent: case files, processes, results
# --------------------------------------------------------------------------


def prepare_case(case: pc.Case, folder: Path) -> Path:
    """Data, gradc's initial weights and the NumPy reference, into one file."""
    from _common import add_repo_to_path

    add_repo_to_path()
    import numpy as np
    from peers_cases.p_gradc import _gc, build_program

    gc = _gc()
    prog, _ = build_program(gc, case)
    P0 = {k: np.ascontiguousarray(v) for k, v in prog.init(seed=0).items()}
    X, Y = pc.make_data(case)
    Pref = {k: v.copy() for k, v in P0.items()}
    losses = np.zeros(case.steps)
    pc.numpy_epoch(Pref, case, X, Y, losses)
    path = folder / (case.name.replace("/", "__") + ".npz")
    pc.write_case_file(path, case, X, Y, P0, Pref, losses)
    return path


# Every peer process runs on this one CPU (sched_setaffinity): the thread
# variables above do not bind every runtime. Measured: XLA's CPU backend splits
# one (256×784)·(784×256) float64 product over both cores of this machine with
# the XLA_FLAGS above (1.57 ms; 2.31 ms pinned to one core, where OpenBLAS takes
# 2.45), so unpinned, JAX's BLAS-bound steps ran on two cores and the others on one.
# The last CPU: on this machine the kernel's memory monitor (kdamond) and the
# sandbox's own process run on CPU 0, where the same process's median moved far
# more (784-256-10 float32 batch 32, gradc fit, minutes apart: CPU 0 464 and
# 652 µs per step, CPU 1 436 and 455).
PIN_CPU = max(os.sched_getaffinity(0)) if hasattr(os, "sched_setaffinity") else None


def _pin_to_one_cpu() -> None:  # in the child, before it starts Python
    if PIN_CPU is not None:
        os.sched_setaffinity(0, {PIN_CPU})


def run_process(args: list[str], env: dict, timeout: float) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    try:
        proc = subprocess.run(
            cmd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=str(HERE.parent),
            preexec_fn=_pin_to_one_cpu,
        )
        return proc.returncode, (proc.stdout + proc.stderr)[-3000:], time.perf_counter() - t0
    except subprocess.TimeoutExpired:
        return -9, f"no result within {timeout:.0f} s", time.perf_counter() - t0


def read_result(path: Path, code: int, tail: str) -> dict:
    try:
        res = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        status = "timeout" if code == -9 else "error"
        return {
            "status": status,
            "reason": f"exit code {code}, no result: {tail[-500:]}",
            "output_tail": tail,
        }
    if res.get("status") == "error":
        res.setdefault("output_tail", tail)
    return res


def child_env(run_dir: Path, gradc_cache: Path) -> dict:
    env = dict(os.environ)
    env.update(THREAD_ENV)
    env["GRADC_CACHE_DIR"] = str(gradc_cache)
    env["PEERS_RUN_DIR"] = str(run_dir)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parent)])
    return env


def describe(res: dict) -> str:
    st = res.get("status")
    if st == "ok" and "us_per_step" in res:
        s = f"{res['us_per_step']:10.2f} µs/step  (first epoch {res['first_epoch_s']:.2f} s"
        if "max_abs_diff" in res:
            s += f", Δw {res['max_abs_diff']:.1e}"
        return s + f", {res['repeats']} reps)"
    if st == "ok":  # start-up probe
        return (
            f"import {res['import_s']:.2f} s, compile {res['compile_s']:.2f} s, "
            f"first fit {res['first_fit_s']:.2f} s (process {res['process_s']:.1f} s)"
        )
    return f"{st}: {res.get('reason', '')[:300]}"


def group_cases(cases: list[pc.Case], per: str) -> list[list[pc.Case]]:
    if per == "case":
        return [[c] for c in cases]
    if per == "peer":
        return [list(cases)]
    groups: dict[tuple, list[pc.Case]] = {}
    for c in cases:
        groups.setdefault((c.sizes, c.dtype), []).append(c)
    return list(groups.values())


def peer_applies(peer: str, case: pc.Case, restrict: dict[str, str]) -> bool:
    pat = restrict.get(peer)
    return pat is None or fnmatch.fnmatch(case.name, pat)


def startup_probe(
    case: pc.Case,
    path: Path,
    run_dir: Path,
    shared_cache: Path,
    timeout: float,
    first_use: bool = False,
) -> list[dict]:
    """gradc cold (fresh GRADC_CACHE_DIR) then warm (same directory, new process).

    With ``first_use``, first a process in which nothing of gradc's is compiled
    yet (fresh NUMBA_CACHE_DIR too: gradc's shared helpers, which Numba caches
    once per machine beside their source, compile as well), then an unreported
    one that makes sure those helpers' own caches are current, so that *cold*
    measures what every network after the first costs.
    """
    out = []
    if first_use:
        env = child_env(run_dir, run_dir / "gradc_first_use")
        env["NUMBA_CACHE_DIR"] = str(run_dir / "numba_first_use")
        runs = [("first use", env), ("helpers", child_env(run_dir, run_dir / "gradc_helpers"))]
    else:
        runs = []
    probe_cache = run_dir / f"gradc_probe_{case.net}"
    env = child_env(run_dir, probe_cache)
    runs += [("cold", env), ("warm", env)]
    for state, env in runs:
        rf = run_dir / "results" / f"startup_{case.net}_{state.replace(' ', '_')}.json"
        code, tail, wall = run_process(
            ["--startup", "--case-file", str(path), "--result", str(rf)], env, timeout
        )
        res = read_result(rf, code, tail)
        res.update(state=state, net=case.net, case=case.name, process_s=wall)
        log(f"   gradc start-up {state:9s}: {describe(res)}")
        if state != "helpers":
            out.append(res)
    # hand the compiled kernels on to the timing processes (content-hashed files)
    if probe_cache.exists():
        shutil.copytree(probe_cache, shared_cache, dirs_exist_ok=True)
    return out


def run_all(
    cases, peers, timing, timeout, startup: bool, per: str, restrict: dict[str, str]
) -> tuple[list, list]:
    results, startups = [], []
    run_dir = Path(tempfile.mkdtemp(prefix="gradc_peers_"))
    (run_dir / "results").mkdir()
    shared_cache = run_dir / "gradc_cache"
    env = child_env(run_dir, shared_cache)
    log(f"run directory {run_dir}")
    try:
        t0 = time.perf_counter()
        paths = {}
        for case in cases:
            paths[case.name] = prepare_case(case, run_dir)
        log(
            f"case files and NumPy references for {len(cases)} cases: "
            f"{time.perf_counter() - t0:.1f} s"
        )
        probed: set[str] = set()
        groups = group_cases(cases, per)
        for gi, group in enumerate(groups):
            log(
                f"\n== group {gi + 1}/{len(groups)}: {group[0].name}"
                + (f" … {group[-1].name}" if len(group) > 1 else "")
            )
            if startup:
                for case in group:
                    if (
                        case.net not in probed
                        and case.kind == "sigmoid_mse"
                        and case.dtype == "float64"
                    ):
                        log(f"   {case.net}:")
                        startups += startup_probe(
                            case,
                            paths[case.name],
                            run_dir,
                            shared_cache,
                            timeout,
                            first_use=not probed,
                        )
                        probed.add(case.net)
            for peer in peers:
                mine = [c for c in group if peer_applies(peer, c, restrict)]
                if not mine:
                    continue
                rfs = [run_dir / "results" / f"{peer}__{paths[c.name].stem}.json" for c in mine]
                code, tail, wall = run_process(
                    [
                        "--worker",
                        peer,
                        "--case-files",
                        json.dumps([str(paths[c.name]) for c in mine]),
                        "--results",
                        json.dumps([str(r) for r in rfs]),
                        "--timing",
                        json.dumps(timing),
                    ],
                    env,
                    timeout * len(mine),
                )
                for c, rf in zip(mine, rfs):
                    res = read_result(rf, code, tail)
                    res.setdefault("peer", peer)
                    res.setdefault("case", c.name)
                    res["case_info"] = c.to_dict()
                    res["process_s"] = wall
                    res["cases_in_process"] = len(mine)
                    results.append(res)
                    log(f"   {peer:14s} {c.name:36s} {describe(res)}")
                log(f"   {peer:14s} process: {wall:.1f} s for {len(mine)} case(s)")
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return results, startups


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------


def _by(results):
    return {(r["case"], r["peer"]): r for r in results}


def _cell_us(r, key: str = "us_per_step") -> str:
    from _common import fmt_us

    if r is None:
        return "—"
    if r.get("status") == "ok":
        return fmt_us(r[key] * 1e-6)
    return {"skipped": "skipped", "timeout": "timeout"}.get(r.get("status"), "error")


def tolerance(dtype: str) -> float:
    return 1e-10 if dtype == "float64" else 1e-4


def render(data: dict) -> str:
    from _common import fmt_us, info_markdown, markdown_table

    results, startups = data["results"], data["startups"]
    by = _by(results)
    case_names = list(dict.fromkeys(r["case"] for r in results))
    case_info = {r["case"]: r["case_info"] for r in results if "case_info" in r}
    peers = [p for p in PEERS if any(r["peer"] == p for r in results)]
    others = [p for p in peers if p != "gradc_fit"]

    def label(cn):
        ci = case_info[cn]
        return (
            f"{ci['kind']} {'-'.join(map(str, ci['sizes']))} b{ci['batch']} "
            f"{'f64' if ci['dtype'] == 'float64' else 'f32'}"
        )

    # -- µs per step
    rows = []
    for cn in case_names:
        rows.append(
            [label(cn), case_info[cn]["steps"]] + [_cell_us(by.get((cn, p))) for p in peers]
        )
    t_us = markdown_table(["case", "steps/epoch"] + [SHORT[p] for p in peers], rows)
    rows = [[label(cn)] + [_cell_us(by.get((cn, p)), "us_min") for p in peers] for cn in case_names]
    t_min = markdown_table(["case"] + [SHORT[p] for p in peers], rows)

    # -- ratios to gradc's fused epoch (> 1: gradc is faster)
    rows = []
    for cn in case_names:
        g = by.get((cn, "gradc_fit"))
        row = [label(cn)]
        for p in others:
            r = by.get((cn, p))
            if g and g.get("status") == "ok" and r and r.get("status") == "ok":
                row.append(f"{r['us_per_step'] / g['us_per_step']:.2f}")
            else:
                row.append("—")
        rows.append(row)
    t_ratio = markdown_table(["case"] + [SHORT[p] for p in others], rows)

    # -- goals of issue 9
    goal_rows = []
    for cn in case_names:
        g = by.get((cn, "gradc_fit"))
        if not g or g.get("status") != "ok":
            continue
        gu = g["us_per_step"]
        js = by.get((cn, "jax_scan"))
        te = by.get((cn, "torch_eager"))
        nb = [by.get((cn, p)) for p in ("numba_array", "numba_loops")]
        nb = [r["us_per_step"] for r in nb if r and r.get("status") == "ok"]
        mm = by.get((cn, "matmul_only"))

        def ok(r):
            return r is not None and r.get("status") == "ok"

        gm = g["us_min"]
        jr = f"{js['us_per_step'] / gu:.2f} ({js['us_min'] / gm:.2f})" if ok(js) else "—"
        tr = f"{te['us_per_step'] / gu:,.3g}" if ok(te) else "—"
        nbm = [by[(cn, p)]["us_min"] for p in ("numba_array", "numba_loops") if ok(by.get((cn, p)))]
        nr = f"{gu / min(nb):.2f} ({gm / min(nbm):.2f})" if nb else "—"
        mr = f"{gu / mm['us_per_step']:.2f} ({gm / mm['us_min']:.2f})" if ok(mm) else "—"
        verdict = []
        if ok(js):
            verdict.append("beats JAX scan" if js["us_per_step"] >= gu else "slower than JAX scan")
        if nb:
            verdict.append(
                "within 1.1× of best Numba" if gu <= 1.1 * min(nb) else "> 1.1× best Numba"
            )
        goal_rows.append([label(cn), fmt_us(gu * 1e-6), jr, tr, nr, mr, "; ".join(verdict)])
    t_goals = markdown_table(
        [
            "case",
            "gradc µs/step",
            "JAX scan / gradc (goal ≥ 1)",
            "torch eager / gradc",
            "gradc / best hand Numba (goal ≤ 1.1)",
            "gradc / matmul only",
            "verdict (medians)",
        ],
        goal_rows,
    )

    # -- summary counts
    def _count(other: str, within: float = 1.0, key: str = "us_per_step") -> str:
        n = won = 0
        for cn in case_names:
            g, r = by.get((cn, "gradc_fit")), by.get((cn, other))
            if g and r and g.get("status") == "ok" and r.get("status") == "ok":
                n += 1
                won += g[key] <= within * r[key]
        return f"{won} of {n}"

    def _best_numba(cn, key):
        vals = [
            by[(cn, p)][key]
            for p in ("numba_array", "numba_loops")
            if by.get((cn, p), {}).get("status") == "ok"
        ]
        return min(vals) if vals else None

    nb_med = nb_min = nb_n = 0
    for cn in case_names:
        g = by.get((cn, "gradc_fit"))
        if g and g.get("status") == "ok" and _best_numba(cn, "us_per_step"):
            nb_n += 1
            nb_med += g["us_per_step"] <= 1.1 * _best_numba(cn, "us_per_step")
            nb_min += g["us_min"] <= 1.1 * _best_numba(cn, "us_min")
    summary = (
        f"gradc's fused epoch is at least as fast as JAX's `lax.scan` epoch in "
        f"{_count('jax_scan')} cases by medians ({_count('jax_scan', key='us_min')} by best "
        f"epochs); faster than PyTorch eager in {_count('torch_eager')}; within 1.1× of the "
        f"better hand-written Numba epoch in {nb_med} of {nb_n} by medians ({nb_min} of {nb_n} "
        "by best epochs)."
    )

    # -- agreement
    rows = []
    worst_fail = []
    agree_peers = [p for p in peers if p != "matmul_only"]
    for cn in case_names:
        tol = tolerance(case_info[cn]["dtype"])
        row = [label(cn)]
        moved = None
        for p in agree_peers:
            r = by.get((cn, p))
            if r and "max_abs_diff" in r:
                d = r["max_abs_diff"]
                moved = r.get("max_weight_change", moved)
                row.append(f"{d:.1e}" + ("" if d <= tol else " ✗"))
                if d > tol:
                    worst_fail.append(f"{p} on {cn} ({d:.1e})")
            else:
                row.append("—")
        row.insert(1, f"{moved:.1e}" if moved is not None else "—")
        rows.append(row)
    t_agree = markdown_table(
        ["case", "max weight change in the epoch"] + [SHORT[p] for p in agree_peers], rows
    )

    # -- start-up
    st_rows = []
    for s in startups:
        if s.get("status") == "ok":
            total = s["import_s"] + s["compile_s"] + s["first_fit_s"]
            st_rows.append(
                [
                    s["net"],
                    s["state"],
                    f"{s['import_s']:.2f}",
                    f"{s['compile_s']:.2f}",
                    f"{s['first_fit_s']:.2f}",
                    f"{s['second_fit_s'] * 1e3:.1f}",
                    f"{total:.2f}",
                    f"{s['process_s']:.1f}",
                ]
            )
        else:
            st_rows.append(
                [s.get("net", "?"), s.get("state", "?"), s.get("status"), "", "", "", "", ""]
            )
    t_startup = markdown_table(
        [
            "network",
            "state",
            "import gradc s",
            "gc.compile s",
            "first fit s (JIT or cache load + 1 step)",
            "second fit ms",
            "sum s",
            "process wall s",
        ],
        st_rows,
    )
    fc_rows = []
    seen_nets: list[str] = []
    for cn in case_names:
        ci = case_info[cn]
        if ci["kind"] == "sigmoid_mse" and ci["dtype"] == "float64" and cn not in seen_nets:
            net = "-".join(map(str, ci["sizes"]))
            if net not in seen_nets:
                seen_nets.append(net)
    for net in seen_nets:
        row = [f"{net} (sigmoid_mse, f64)"]
        for p in peers:
            # the peer's first case of this network: smallest batch it ran
            mine = [
                by[(cn, p)]
                for cn in case_names
                if (cn, p) in by
                and case_info[cn]["kind"] == "sigmoid_mse"
                and case_info[cn]["dtype"] == "float64"
                and "-".join(map(str, case_info[cn]["sizes"])) == net
            ]
            mine.sort(key=lambda r: r["case_info"]["batch"])
            r = mine[0] if mine else None
            if r and r.get("status") == "ok":
                row.append(
                    f"{r['import_s']:.1f} + {r['setup_s']:.1f} + {r['first_epoch_s']:.2f}"
                    f" (b{r['case_info']['batch']})"
                )
            else:
                row.append(_cell_us(r))
        fc_rows.append(row)
    t_first = markdown_table(["network"] + [SHORT[p] for p in peers], fc_rows)

    # -- gradc's extra facts
    ex_rows = []
    for cn in case_names:
        g = by.get((cn, "gradc_fit"))
        if g and g.get("status") == "ok":
            info = g.get("info", {})
            same = info.get("same_process")
            ex_rows.append(
                [
                    label(cn),
                    f"{info.get('fit_one_step_us', float('nan')):,.0f}",
                    (
                        f"{same['fit_us'] / same['products_us']:.2f} "
                        f"({fmt_us(same['fit_us'] * 1e-6)} / {fmt_us(same['products_us'] * 1e-6)})"
                        if same
                        else "—"
                    ),
                    f"{g['us_per_step'] * g['steps']:,.0f}",
                    f"{g['us_min']:.3g}",
                    f"{g['us_p25']:.3g}–{g['us_p75']:.3g}",
                    g["repeats"],
                ]
            )
    t_extra = markdown_table(
        [
            "case",
            "fit() with one step, µs per call",
            "epoch ÷ its products alone, same process (µs/step)",
            "gradc µs per epoch (median)",
            "min µs/step",
            "p25–p75 µs/step",
            "repeats",
        ],
        ex_rows,
    )

    # -- skipped / failed
    bad = [r for r in results if r.get("status") != "ok"]
    skipped = sorted(
        {
            f"{r['peer']}: {r.get('reason', r.get('status'))}"
            for r in bad
            if r.get("status") == "skipped"
        }
    )
    failed = [
        f"{r['peer']} on {r['case']}: {r.get('status')}: {r.get('reason', '')[:300]}"
        for r in bad
        if r.get("status") != "skipped"
    ]
    not_run = [p for p in PEERS if p not in peers]

    versions: dict[str, str] = {}
    for r in results:
        for k, v in (r.get("versions") or {}).items():
            versions.setdefault(k, v)

    steps_note = (
        f"{pc.EPOCH_MACS:.0e} forward multiply-adds per epoch, as a power of two "
        f"between {pc.MIN_STEPS} and {pc.MAX_STEPS} steps, at most {pc.MAX_ROWS} samples"
    )
    thread_env = ", ".join(f"`{k}={v}`" for k, v in data["thread_env"].items())
    per = data.get("per", "case")
    per_text = {
        "case": "one fresh process per peer and case.",
        "network": "one fresh process per peer and network-and-dtype (its six cases: both "
        "kinds, batch sizes 1, 32, 256, in that order); a process never holds more "
        "than one peer, so never more than one peer's thread pools. "
        "`--per case` gives one process per peer and case (longer: every "
        "process pays its imports and JIT compiles again).",
        "peer": "one fresh process per peer, running all its cases in order.",
    }[per]
    restrict = data.get("restrict") or {}
    if restrict:
        per_text += (
            " To keep the run within ~20 minutes, "
            + "; ".join(
                f"`{p}` ran only on the cases matching `{pat}`" for p, pat in restrict.items()
            )
            + " (their compile takes 10–60 s per case here; `--peers ... --cases ...` runs "
            "them anywhere)."
        )
    peer_list = "\n".join(f"- `{p}`: {PEER_LABELS[p]}" for p in PEERS)
    lines = [
        "# gradc's fused epoch against its peers (CPU)",
        "",
        f"Produced by `{data['command']}` (from the repository root) on {data['date']}"
        f"{' — **quick smoke run**' if data.get('quick') else ''}; "
        f"wall time {data['total_s'] / 60:.1f} min. Load average (1, 5, 15 min) at start "
        f"{data['load_start']}, at the end {data['load_end']} (the benchmark itself keeps "
        "one of the 2 cores busy: ≈ 1). **The machine is a shared virtual machine: the "
        "same code's median moved by up to 2× between runs (3-4-2 at batch 32: 1.7 and "
        "2.8 µs per step in two runs an hour apart on 2026-11-23, nothing else running), so read ratios "
        "near 1 as ties and compare the best-epoch table too.**",
        "",
        "One SGD step = forward, loss, backward, update of every weight and bias, "
        f"lr = {pc.LR}; mini-batches taken in order. Cases: {', '.join(pc.KINDS[k] + f' ({k})' for k in pc.KINDS)}. "
        "Every peer gets the same data and the same initial weights (gradc's "
        "`prog.init(seed=0)`, layout W (out, in), b (out, 1)). gradc is called as "
        "`prog.fit(params, X, Y, optimizer=opt, epochs=1, batch_size=B, shuffle=False)` "
        "(`opt = gc.SGD(lr)` made once, as the PyTorch peers make their optimizer once) "
        "on `gc.compile(gc.Sequential(gc.Dense(a, b, gc.sigmoid | gc.relu), ..., "
        "gc.Dense(.., .., gc.sigmoid | gc.identity)), loss=gc.mse | gc.softmax_cross_entropy, "
        "dtype=...)`.",
        "",
        f"Method: {per_text} Processes run one after another "
        f"(`sys.executable`), every process with {thread_env}, and "
        "`torch.set_num_threads(1)` in the PyTorch processes"
        + (
            f", and every process pinned to CPU {data['pinned_cpu']} (`sched_setaffinity`: "
            "without it XLA split a 784-wide product over both cores despite its flags; "
            "the last CPU, since CPU 0 also runs the kernel's memory monitor here)"
            if data.get("pinned_cpu") is not None
            else " (processes not pinned to a CPU: runs before 2026-11-24 let XLA use both cores)"
        )
        + ". Each process: one epoch "
        "from the initial weights (its time is the *first epoch* below, JIT included) "
        "and the weight check against the NumPy reference; a warm-up epoch (skipped when "
        "the first took over 1 s); then timed "
        f"epochs, each from the initial weights (reset untimed): at least "
        f"{data['timing']['min_repeats']} and until {data['timing']['min_time']} s were timed, "
        f"or 2 once {data['timing'].get('max_time', '∞')} s were timed "
        f"(at most {data['timing']['max_repeats']}). Reported: median epoch time / steps, and "
        "the best epoch / steps (on a shared machine a process loses its core for whole "
        "scheduler slices, several ms, which hits a median of long epochs; the best epoch "
        "is the closer estimate of the code's own cost). "
        f"Epoch length: {steps_note} (column *steps/epoch*).",
        "",
        "Peers:",
        "",
        peer_list,
        "",
        "`matmul_only` is not a peer: it runs only the step's matrix products "
        "(forward, weight gradient, and the δ product of every layer but the first) "
        "into preallocated buffers through the BLAS entry gradc's kernels call "
        "(`gradc.kernels.blas.matmul`: NumPy's OpenBLAS by CBLAS; the x·Wᵀ products on AMD's "
        "Zen 4, as here, a second instance of it with its Haswell kernels: README, *BLAS or "
        "loops*), "
        "a floor for BLAS-bound cases.",
        "",
        "## Summary",
        "",
        summary,
        "",
        "## µs per step (median)",
        "",
        t_us,
        "",
        "## µs per step, best epoch",
        "",
        t_min,
        "",
        "## Ratio: peer time / gradc fused-epoch time (medians; > 1: gradc faster)",
        "",
        t_ratio,
        "",
        "## Goals of issue 9",
        "",
        t_goals,
        "",
        "Ratios of medians; in brackets, of best epochs. "
        "Also: 3-4-2 batch 1 needs ≤ 0.2 µs/step and ≥ 5× JAX scan; 784-256-10 batch 256 "
        "within 1.1× of the matrix products alone; cold compile of 3-4-2 ≤ 2 s, warm ≤ 0.5 s "
        "(start-up table below).",
        "",
        "## Same weights after one epoch",
        "",
        "Largest |w − w_NumPy| over all weights and biases after one epoch "
        "(tolerance: 1e-10 in float64, 1e-4 in float32; ✗ marks a miss).",
        "",
        t_agree,
        "",
        (
            "All peers agree within tolerance."
            if not worst_fail
            else "**Outside tolerance:** " + "; ".join(worst_fail)
        ),
        "",
        "## Start-up cost",
        "",
        "gradc, per network (sigmoid_mse, float64, one `fit` of one step): *cold* = a fresh, "
        "empty `GRADC_CACHE_DIR` (a network new to this machine), *warm* = the same "
        "directory in a new process (Numba's disk cache). *first use* (the first network "
        "only) = nothing of gradc's compiled yet: a fresh `NUMBA_CACHE_DIR` as well, so "
        "gradc's shared helpers (shuffle, gather, finiteness checks, health statistics; "
        "Numba caches them beside their source, once per machine and gradc version) "
        "compile too; before *cold*, an unreported process makes sure those helpers' "
        "caches are current.",
        "",
        t_startup,
        "",
        "Every peer's first call on each network (sigmoid_mse, float64, the smallest batch "
        "it ran, in brackets): `import s + setup s + first epoch s` (import: 0 when the "
        "process had already run an earlier case) "
        "(setup: building the program, e.g. `gc.compile`, `jax.jit`, `pytensor.function`; "
        "first epoch: the first call, JIT compile included). gradc's timing processes "
        "share one `GRADC_CACHE_DIR` per network that the start-up probe filled, so their "
        "first epoch loads kernels from the disk cache when the source is the same. "
        "The hand-written Numba peers cache in the run's temporary directory (compiled "
        "once per network and run); PyTorch's inductor cache and PyTensor's compiledir "
        "are their defaults and persist across runs (warm here, from earlier runs).",
        "",
        t_first,
        "",
        "## gradc details",
        "",
        "*fit() with one step*: one `fit` call on a data set of one batch: the fixed "
        "cost of a call plus one step. *Epoch ÷ its products alone*: after the timed "
        "epochs, the gradc process runs 7 fit epochs interleaved with 7 epochs of "
        "`matmul_only`'s products (the same code as that column, in this process) and "
        "divides the medians; processes running the same code differ by up to ~15 % "
        "here, so this ratio is steadier than the one across processes.",
        "",
        t_extra,
        "",
        "## Skipped, failed, not run",
        "",
        ("- skipped (not installed or cannot run): " + "; ".join(skipped))
        if skipped
        else "- skipped: none",
        ("- failed: " + "; ".join(failed)) if failed else "- failed: none",
        ("- not run (not selected): " + ", ".join(not_run)) if not_run else "- not run: none",
        "",
        "## Plot",
        "",
        "`peers.png` (sigmoid_mse, float64) and `peers_relu_ce.png` (relu_ce, float64): "
        "µs per step against the network's multiply-adds per sample, log-log, one "
        "panel per batch size, one line per peer.",
        "",
        "## Machine and versions",
        "",
        info_markdown(data["machine"]),
        "",
        "Peer versions (as the workers reported them):",
        "",
        "\n".join(f"- {k}: {v}" for k, v in sorted(versions.items())),
        "",
    ]
    return "\n".join(lines)


def plot(data: dict, out_dir: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed: no plot")
        return []
    results = [r for r in data["results"] if r.get("status") == "ok" and "case_info" in r]
    written = []
    for kind, fname in (("sigmoid_mse", "peers.png"), ("relu_ce", "peers_relu_ce.png")):
        rs = [
            r
            for r in results
            if r["case_info"]["kind"] == kind and r["case_info"]["dtype"] == "float64"
        ]
        if not rs:
            continue
        batches = sorted({r["case_info"]["batch"] for r in rs})
        fig, axes = plt.subplots(
            1, len(batches), figsize=(5.2 * len(batches), 5.2), squeeze=False, sharey=True
        )
        nets = sorted({tuple(r["case_info"]["sizes"]) for r in rs}, key=pc.macs_per_sample)
        for ax, B in zip(axes[0], batches):
            for p in PEERS:
                pts = sorted(
                    (pc.macs_per_sample(r["case_info"]["sizes"]), r["us_per_step"])
                    for r in rs
                    if r["peer"] == p and r["case_info"]["batch"] == B
                )
                if not pts:
                    continue
                color, marker, lw, ls = PLOT_STYLE[p]
                ax.plot(
                    [x for x, _ in pts],
                    [y for _, y in pts],
                    marker=marker,
                    ms=4,
                    color=color,
                    lw=lw,
                    ls=ls,
                    label=PEER_LABELS[p],
                )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks([pc.macs_per_sample(n) for n in nets])
            ax.set_xticklabels([pc.net_name(n) for n in nets], rotation=20, fontsize=8)
            ax.minorticks_off()
            ax.set_title(f"batch {B}")
            ax.set_xlabel("network (x: multiply-adds per sample, log)")
            ax.grid(True, which="major", alpha=0.3)
        axes[0][0].set_ylabel("µs per training step (log)")
        handles, labels = axes[0][0].get_legend_handles_labels()
        for ax in axes[0][1:]:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
        fig.legend(handles, labels, loc="lower center", ncol=6, fontsize=8, frameon=False)
        fig.suptitle(f"One SGD step, {kind}, float64, one process per peer (lower is better)")
        fig.tight_layout(rect=(0, 0.1, 1, 1))
        path = out_dir / fname
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def write_outputs(data: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "peers.json").write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")
    (out_dir / "peers.md").write_text(render(data), encoding="utf-8")
    written = plot(data, out_dir)
    log(
        f"wrote {out_dir / 'peers.md'}, {out_dir / 'peers.json'}"
        + "".join(f", {p}" for p in written)
    )


def merge(old: dict, new: dict) -> dict:
    """Replace ``old``'s entries by ``new``'s for the same (peer, case) or network."""
    keys = {(r["case"], r["peer"]) for r in new["results"]}
    new["results"] = [r for r in old["results"] if (r["case"], r["peer"]) not in keys] + new[
        "results"
    ]
    nets = {s["net"] for s in new["startups"]}
    new["startups"] = [s for s in old["startups"] if s["net"] not in nets] + new["startups"]
    order = {c.name: i for i, c in enumerate(pc.all_cases())}
    new["results"].sort(
        key=lambda r: (
            order.get(r["case"], 1e9),
            PEERS.index(r["peer"]) if r["peer"] in PEERS else 99,
        )
    )
    return new


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: cases {QUICK_CASES}, peers {QUICK_PEERS}, few repeats; "
        "writes nothing unless --out-dir",
    )
    ap.add_argument("--peers", help=f"comma-separated subset of: {', '.join(PEERS)} (or 'all')")
    ap.add_argument(
        "--cases",
        help="comma-separated patterns matched against case names "
        "such as 'sigmoid_mse/64-32-10/b32/float64' (substring or "
        "fnmatch glob), e.g. '3-4-2' or 'relu_ce/*/b1/*'",
    )
    ap.add_argument("--list", action="store_true", help="list the selected cases and exit")
    ap.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help=f"where peers.md/.json/.png go (default {RESULTS} for a full run)",
    )
    ap.add_argument(
        "--merge",
        action="store_true",
        help="merge into the existing peers.json of --out-dir instead of replacing",
    )
    ap.add_argument(
        "--per",
        choices=["case", "network", "peer"],
        default=DEFAULT_PER,
        help="one process per peer and: case; network (one network and dtype: "
        "both kinds, all batch sizes); or peer (all its cases) "
        "(default %(default)s)",
    )
    ap.add_argument("--no-startup", action="store_true", help="skip gradc's cold/warm probe")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per process")
    ap.add_argument("--min-repeats", type=int)
    ap.add_argument("--min-time", type=float)
    ap.add_argument(
        "--max-time",
        type=float,
        help="stop timing after 2 epochs once this many seconds were timed",
    )
    ap.add_argument("--from-json", type=Path, help="re-render peers.md/png from a peers.json")
    # internal: worker modes
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--startup", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--case-file", help=argparse.SUPPRESS)
    ap.add_argument("--case-files", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--results", help=argparse.SUPPRESS)
    ap.add_argument("--timing", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        return pc.run_worker(
            args.worker,
            json.loads(args.case_files),
            json.loads(args.results),
            json.loads(args.timing),
        )
    if args.startup:
        return pc.run_startup(args.case_file, args.result)
    if args.from_json:
        data = json.loads(args.from_json.read_text(encoding="utf-8"))
        write_outputs(data, args.out_dir or args.from_json.parent)
        return 0

    cases = select_cases(args.cases, args.quick)
    peers = select_peers(args.peers, args.quick)
    if args.list:
        restrict = {} if (args.cases or args.quick) else DEFAULT_RESTRICT
        for c in cases:
            log(
                f"{c.name:36s} {c.steps:5d} steps  "
                + " ".join(
                    SHORT[p].replace(" ", "_") for p in peers if peer_applies(p, c, restrict)
                )
            )
        return 0
    timing = dict(TIMING["quick" if args.quick else "full"])
    if args.min_repeats is not None:
        timing["min_repeats"] = args.min_repeats
    if args.min_time is not None:
        timing["min_time"] = args.min_time
    if args.max_time is not None:
        timing["max_time"] = args.max_time
    out_dir = args.out_dir if args.out_dir is not None else (None if args.quick else RESULTS)

    from _common import command_line, machine_info

    load_start = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    log(f"{len(cases)} cases × {len(peers)} peers, one process per peer and {args.per}")
    log(f"thread env {THREAD_ENV}")
    t0 = time.perf_counter()
    restrict = {} if (args.cases or args.quick) else dict(DEFAULT_RESTRICT)
    results, startups = run_all(
        cases,
        peers,
        timing,
        args.timeout,
        startup=not args.no_startup and "gradc_fit" in peers,
        per=args.per,
        restrict=restrict,
    )
    total = time.perf_counter() - t0
    data = {
        "command": command_line(),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "quick": args.quick,
        "total_s": total,
        "load_start": load_start,
        "load_end": ", ".join(f"{x:.2f}" for x in os.getloadavg()),
        "thread_env": THREAD_ENV,
        "pinned_cpu": PIN_CPU,
        "timing": timing,
        "per": args.per,
        "restrict": restrict,
        "machine": machine_info(),
        "versions": pc.dist_versions(
            "numpy",
            "scipy",
            "numba",
            "llvmlite",
            "sympy",
            "torch",
            "jax",
            "jaxlib",
            "pytensor",
            "matplotlib",
        ),
        "results": results,
        "startups": startups,
    }
    data["machine"]["installed peer packages"] = [f"{k} {v}" for k, v in data["versions"].items()]
    log(f"\ntotal {total / 60:.1f} min")
    if out_dir is not None:
        jpath = out_dir / "peers.json"
        if args.merge and jpath.exists():
            data = merge(json.loads(jpath.read_text(encoding="utf-8")), data)
        write_outputs(data, out_dir)
    else:
        print(render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
