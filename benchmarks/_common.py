"""Small helpers shared by gradc's benchmark scripts.

- :func:`pin_threads` sets the BLAS/OpenMP thread variables; call it before
  NumPy (or anything that loads a BLAS) is imported.
- :func:`machine_info` collects platform, CPU, core count, library versions
  and thread settings.
- :func:`median_time` / :func:`interleaved_medians` time callables.
- :func:`markdown_table` renders a list of rows as a GitHub markdown table.

Only the standard library is imported at module level, so importing this
module never loads a BLAS before the thread variables are set.
"""

from __future__ import annotations

import gc as _pygc
import os
import platform
import shlex
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

THREAD_VARS = (
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def pin_threads(n: int = 1) -> dict[str, str]:
    """Set every BLAS/OpenMP thread variable to ``n`` (must run before
    ``import numpy``). Returns the values now in ``os.environ``."""
    if "numpy" in sys.modules:
        raise RuntimeError("pin_threads() must be called before numpy is imported")
    for var in THREAD_VARS:
        os.environ[var] = str(n)
    return {var: os.environ[var] for var in THREAD_VARS}


def add_repo_to_path() -> None:
    """Make ``import gradc`` work from a source checkout that is not installed."""
    root = str(REPO_ROOT)
    if root not in sys.path:
        sys.path.insert(0, root)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _version(mod_name: str) -> str:
    try:
        mod = __import__(mod_name)
        return str(getattr(mod, "__version__", "?"))
    except Exception:
        return "not installed"


def blas_threads() -> list[str]:
    """One line per thread pool that is loaded now (needs threadpoolctl).

    Call it late (after the kernels compiled): SciPy's OpenBLAS, which Numba's
    ``@`` uses, is loaded lazily on the first compile of a matrix product."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return ["threadpoolctl not installed"]
    out = []
    for pool in threadpool_info():
        name = os.path.basename(pool.get("filepath", "?"))
        extra = pool.get("internal_api", "")
        if pool.get("architecture"):
            extra += f" {pool['architecture']}"
        out.append(
            f"{name} ({extra.strip()}, version {pool.get('version')}): "
            f"{pool.get('num_threads')} thread(s)"
        )
    return out


def machine_info(extra_modules: tuple[str, ...] = ()) -> dict[str, object]:
    """Machine, versions and thread settings, as an ordered dict of strings."""
    info: dict[str, object] = {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores (os.cpu_count)": str(os.cpu_count()),
        "python": sys.version.split()[0],
    }
    try:
        info["cores usable (sched_getaffinity)"] = str(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        pass
    for mod in ("numpy", "scipy", "numba", "llvmlite", "sympy", *extra_modules):
        info[mod] = _version(mod)
    try:
        info["load average (1, 5, 15 min) at report time"] = ", ".join(
            f"{x:.2f}" for x in os.getloadavg()
        )
    except OSError:
        pass
    info["thread env"] = ", ".join(f"{v}={os.environ.get(v, '(unset)')}" for v in THREAD_VARS)
    if "numba" in sys.modules:
        try:
            import numba

            info["numba threading layer / NUMBA_NUM_THREADS"] = (
                f"{numba.config.THREADING_LAYER} / {numba.config.NUMBA_NUM_THREADS}"
            )
        except Exception:
            pass
    info["BLAS thread pools loaded"] = blas_threads()
    try:  # (threadpoolctl does not see a second OpenBLAS instance of gradc's)
        from gradc.kernels.blas import BLAS

        info["gradc's kernels call"] = BLAS
    except Exception:
        pass
    return info


def command_line() -> str:
    """The command that ran this script, relative to the repository root."""
    try:
        script = os.path.relpath(os.path.abspath(sys.argv[0]), REPO_ROOT)
    except ValueError:
        script = sys.argv[0]
    exe = sys.executable
    try:
        rel = os.path.relpath(exe, REPO_ROOT)
        if not rel.startswith(".."):
            exe = rel
    except ValueError:
        pass
    return " ".join(shlex.quote(a) for a in (exe, script, *sys.argv[1:]))


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def median_time(fn, repeats: int, setup=None, disable_gc: bool = True) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` calls.

    ``setup()`` (optional) runs before each call and is not timed. Python's
    cyclic garbage collector is paused while timing (as ``timeit`` does)."""
    times = []
    was_enabled = _pygc.isenabled()
    try:
        for _ in range(max(1, repeats)):
            if setup is not None:
                setup()
            if disable_gc:
                _pygc.disable()
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
            if was_enabled:
                _pygc.enable()
    finally:
        if was_enabled:
            _pygc.enable()
    return _median(times)


def interleaved_medians(
    fns: dict[str, object], repeats: int, disable_gc: bool = True
) -> dict[str, float]:
    """Median seconds per callable, calling them in turn (a, b, a, b, ...) so
    that a slow phase of the machine hits all of them alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    was_enabled = _pygc.isenabled()
    try:
        for _ in range(max(1, repeats)):
            for name, fn in fns.items():
                if disable_gc:
                    _pygc.disable()
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
                if was_enabled:
                    _pygc.enable()
    finally:
        if was_enabled:
            _pygc.enable()
    return {k: _median(v) for k, v in times.items()}


def markdown_table(headers: list[str], rows: list[list[object]], align: str | None = None) -> str:
    """GitHub markdown table. ``align``: one of 'l', 'r', 'c' per column
    (default: first column left, the rest right)."""
    if align is None:
        align = "l" + "r" * (len(headers) - 1)
    marks = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = [
        "| " + " | ".join(str(h) for h in headers) + " |",
        "|" + "|".join(marks[a] for a in align) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def info_markdown(info: dict[str, object]) -> str:
    """Render :func:`machine_info` as a markdown bullet list."""
    lines = []
    for key, val in info.items():
        if isinstance(val, (list, tuple)):
            lines.append(f"- {key}:")
            lines.extend(f"  - {v}" for v in val or ["(none)"])
        else:
            lines.append(f"- {key}: {val}")
    return "\n".join(lines)


def fmt_us(seconds: float) -> str:
    """Seconds -> a µs string with sensible digits."""
    us = seconds * 1e6
    if us >= 1000:
        return f"{us:,.0f}"
    if us >= 10:
        return f"{us:.1f}"
    return f"{us:.2f}"
