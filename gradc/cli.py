"""The ``gradc`` command line: demo, compile, explain, fit, bench.

Errors are one clear line and exit code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

__all__ = ["main"]


def _load_spec(path: str):
    import gradc as gc

    file = Path(path)
    if not file.is_file():
        raise gc.GradcError(f"spec file {path!r} not found")
    spec_obj = importlib.util.spec_from_file_location(f"gradc_user_spec_{file.stem}", file)
    module = importlib.util.module_from_spec(spec_obj)
    spec_obj.loader.exec_module(module)
    if not hasattr(module, "spec"):
        raise gc.GradcError(f"{path} defines no variable named 'spec'")
    return module.spec


def _compile(path: str, args) -> object:
    import gradc as gc

    spec = _load_spec(path)
    options = {"strategy": args.strategy, "target": args.target, "dtype": args.dtype}
    if isinstance(spec, dict):
        spec = gc.Spec(**spec)
    return gc.compile(spec, **options)


def cmd_demo(args) -> int:
    """The main job: the seeds' 3-4-2 sigmoid network, derived both ways, explained, trained."""
    import numpy as np

    import gradc as gc

    print("gradc demo: the 3-4-2 sigmoid network of the backpropagation seed\n")
    net = gc.Sequential(gc.Dense(3, 4, gc.sigmoid), gc.Dense(4, 2, gc.sigmoid))
    start = time.perf_counter()
    prog = gc.compile(net, loss=gc.mse)
    print(f"compiled (shared δ) in {time.perf_counter() - start:.2f} s\n")
    print(prog.explain())
    print()
    print(prog.report())
    print()
    rng = np.random.default_rng(0)
    n = 256
    X = rng.normal(size=(n, 3))
    # a smooth target the network can learn: two squashed linear read-outs
    Y = 1 / (1 + np.exp(-np.stack([X[:, 0] - X[:, 1], X[:, 1] * 0.5 + X[:, 2]], axis=1)))
    params = prog.init(seed=0)
    print(f"training on {n} samples, mini-batches of 16, SGD(lr=2.0):")
    start = time.perf_counter()
    hist = prog.fit(
        params, X, Y, optimizer=gc.SGD(lr=2.0), epochs=args.epochs, batch_size=16, seed=0
    )
    seconds = time.perf_counter() - start
    for e in range(0, len(hist.epoch_loss), max(1, len(hist.epoch_loss) // 10)):
        print(f"  epoch {e + 1:4d}   loss {hist.epoch_loss[e]:.6f}")
    print(f"  epoch {len(hist.epoch_loss):4d}   loss {hist.epoch_loss[-1]:.6f}")
    again = prog.fit(params, X, Y, optimizer=gc.SGD(lr=2.0), epochs=20, batch_size=16, seed=1)
    print(
        f"{hist.steps} steps in {seconds:.2f} s, compiling the training kernel included; "
        f"warm: {again.seconds * 1e6 / max(again.steps, 1):.2f} µs per step"
    )
    naive = gc.compile(net, loss=gc.mse, strategy="naive")
    g_shared = prog.grad(params, X, Y)
    g_naive = naive.grad(params, X, Y)
    worst = max(
        float(np.max(np.abs(g_shared[k] - g_naive[k])) / max(np.max(np.abs(g_shared[k])), 1e-300))
        for k in g_shared
    )
    print(f"naive and shared gradients agree to {worst:.1e} (relative)")
    return 0


def cmd_compile(args) -> int:
    prog = _compile(args.spec, args)
    print(prog.report())
    if args.emit:
        out = Path(args.emit)
        out.mkdir(parents=True, exist_ok=True)
        for name, text in prog.source.items():
            (out / f"{name}.py").write_text(text)
        print(f"kernel sources written to {out}/")
    return 0


def cmd_explain(args) -> int:
    prog = _compile(args.spec, args)
    print(prog.explain(latex=args.latex, inputs=args.inputs))
    return 0


def cmd_fit(args) -> int:
    import numpy as np

    import gradc as gc

    prog = _compile(args.spec, args)
    try:
        data = np.load(args.data)
    except (OSError, ValueError) as exc:
        raise gc.GradcError(f"cannot read data file {args.data!r}: {exc}") from None
    for key in ("X", "Y"):
        if key not in data:
            raise gc.GradcError(f"data file {args.data!r} has no array named {key!r}")
    params = prog.init(seed=args.seed)
    opt = prog.optimizer
    if args.lr is not None:
        opt = type(opt)(**{**opt.values, "lr": args.lr})
    hist = prog.fit(
        params,
        data["X"],
        data["Y"],
        optimizer=opt,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=args.progress,
    )
    np.savez(args.out, **{k: np.asarray(v) for k, v in params.items()})
    last = hist.epoch_loss[-1] if hist.epoch_loss.size else float("nan")
    print(
        f"trained {hist.steps} steps; final epoch loss {last:.6g}; parameters saved to {args.out}"
    )
    return 0


def cmd_bench(args) -> int:
    from . import bench

    return bench.main(quick=args.quick, out_dir=args.out)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gradc",
        description="SymPy spec → shared-δ backpropagation → Numba kernels.",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser(
        "demo", help="the main job: 3-4-2 network derived, explained, compared, trained"
    )
    d.add_argument("--epochs", type=int, default=200)
    d.set_defaults(fn=cmd_demo)

    def spec_cmd(name, help_text, fn):
        s = sub.add_parser(name, help=help_text)
        s.add_argument("spec", help="a Python file defining a variable 'spec'")
        s.add_argument("--strategy", choices=("shared", "naive"), default="shared")
        s.add_argument("--target", choices=("cpu", "cuda"), default="cpu")
        s.add_argument("--dtype", choices=("float64", "float32"), default="float64")
        s.set_defaults(fn=fn)
        return s

    c = spec_cmd("compile", "compile SPEC.py and print the report", cmd_compile)
    c.add_argument("--emit", metavar="DIR", help="write the generated kernel sources here")
    e = spec_cmd("explain", "print the derived equations of SPEC.py", cmd_explain)
    e.add_argument("--latex", action="store_true")
    e.add_argument(
        "--inputs", action="store_true", help="carry δ on to the data inputs (∂L/∂x) too"
    )
    f = spec_cmd("fit", "train SPEC.py on X, Y from an .npz file", cmd_fit)
    f.add_argument("--data", required=True, metavar="FILE.npz")
    f.add_argument("--epochs", type=int, default=10)
    f.add_argument("--batch-size", type=int, default=None)
    f.add_argument("--lr", type=float, default=None)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--progress", action="store_true")
    f.add_argument("--out", required=True, metavar="PARAMS.npz")

    b = sub.add_parser("bench", help="naive vs shared benchmark (tables and plots)")
    b.add_argument("--quick", action="store_true", help="a small sweep, under a minute")
    b.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    b.set_defaults(fn=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    args = _parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.debug:
            raise
        from .errors import GradcError

        kind = "error" if isinstance(exc, GradcError) else f"error ({type(exc).__name__})"
        print(f"gradc: {kind}: {exc}".splitlines()[0], file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
