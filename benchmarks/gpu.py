"""gradc's CUDA target against PyTorch on the same GPU (issue 4).

One training step (forward, backward, SGD update) of a float32 MLP with
sigmoid hidden layers, a linear output and softmax cross-entropy averaged over
the batch, for networks from 784-256-10 to 4096-4096-4096-10 and batch sizes
256 to 8192. Columns, µs per step:

- gradc CUDA: ``prog.fit`` on a data set of four batches (kept on the device,
  in order, no shuffling). Per-step time is the difference between a long and
  a short ``fit`` divided by the extra steps, so the one-off copies of data and
  parameters are not counted; the first ``fit`` (kernel compilation) is
  reported separately.
- PyTorch eager and ``torch.compile`` (where it works): the usual loop,
  ``zero_grad``/forward/``backward``/``step`` over the same batches already on
  the GPU, synchronised at the end.
- gradc CPU: the same ``fit`` on the CPU target (one BLAS thread), for the
  configurations small enough to finish in the time budget.

Before timing, one step of gradc and of PyTorch from the same parameters and
batch are compared (the loss and W1 after the step, relative error).

Without a GPU the script prints why and exits 0.

    .venv/bin/python benchmarks/gpu.py            # full run, writes results/gpu.md
    .venv/bin/python benchmarks/gpu.py --quick    # two configurations, writes nothing unless --out
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import pin_threads

THREAD_ENV = pin_threads(1)  # BEFORE numpy is imported (the gradc CPU column)

import argparse  # noqa: E402
import itertools  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from _common import (  # noqa: E402
    add_repo_to_path,
    command_line,
    fmt_us,
    info_markdown,
    machine_info,
    markdown_table,
)

add_repo_to_path()

RESULTS = Path(__file__).resolve().parent / "results" / "gpu.md"
LR = 0.1
BATCHES_PER_SET = 4  # the data set of each configuration holds this many batches

NETWORKS = [
    (784, 256, 10),
    (784, 1024, 10),
    (784, 1024, 1024, 10),
    (4096, 4096, 4096, 10),
]
BATCH_SIZES = [256, 1024, 8192]
QUICK = [((784, 256, 10), 256), ((784, 1024, 1024, 10), 1024)]
# the CPU target runs only where one step is below this many multiply-adds
CPU_MAX_MACS = 3e9


def gpu_status(simulate: bool) -> str | None:
    """None if a real GPU can run numba-cuda kernels, else the reason."""
    if simulate:
        return None
    try:
        import numba

        if numba.config.ENABLE_CUDASIM:
            return "NUMBA_ENABLE_CUDASIM is set: the simulator cannot be benchmarked"
        from numba import cuda
    except Exception as exc:  # numba-cuda missing or broken
        return f"numba.cuda cannot be imported ({exc})"
    try:
        if not cuda.is_available():
            return "numba.cuda.is_available() is False (no NVIDIA GPU or driver)"
    except Exception as exc:
        return f"numba.cuda.is_available() failed ({exc})"
    return None


# --------------------------------------------------------------------------
# model and data
# --------------------------------------------------------------------------


def build(sizes):
    import gradc as gc

    layers = [gc.Dense(a, b, gc.sigmoid) for a, b in itertools.pairwise(sizes[:-1])]
    layers.append(gc.Dense(sizes[-2], sizes[-1]))  # linear output: logits
    return gc.Sequential(*layers)


def make_data(sizes, n, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(0.0, 1.0, (n, sizes[0])).astype(np.float32)
    labels = rng.integers(0, sizes[-1], n)
    Y = np.zeros((n, sizes[-1]), dtype=np.float32)
    Y[np.arange(n), labels] = 1.0
    return X, Y, labels


def layer_params(net, params):
    """[(W, b), ...] as float32 arrays, in layer order (W is (out, in), b is (out, 1))."""
    syms = [s.name for s in net.params]
    return [(params[syms[2 * k]], params[syms[2 * k + 1]]) for k in range(len(syms) // 2)]


def macs_per_step(sizes, batch):
    """Multiply-adds of one step: forward, δ products and weight gradients."""
    layers = list(itertools.pairwise(sizes))
    fwd = sum(a * b for a, b in layers)
    bwd = fwd + sum(a * b for a, b in layers[1:])  # no δ for the input layer
    return batch * (fwd + bwd)


# --------------------------------------------------------------------------
# timings
# --------------------------------------------------------------------------


def time_gradc(prog, params0, X, Y, batch, budget):
    """(compile seconds, µs per step) of ``prog.fit``; marginal over extra steps."""
    import gradc as gc

    def run(steps):
        params = {k: v.copy() for k, v in params0.items()}
        start = time.perf_counter()
        prog.fit(
            params, X, Y, optimizer=gc.SGD(lr=LR), steps=steps, batch_size=batch, shuffle=False
        )
        return time.perf_counter() - start

    first = run(1)  # compiles every kernel
    short = run(BATCHES_PER_SET)
    per_step_guess = max(short / BATCHES_PER_SET, 1e-6)
    extra = int(min(200, max(BATCHES_PER_SET, budget / per_step_guess)))
    extra -= extra % BATCHES_PER_SET
    long = min(run(BATCHES_PER_SET + extra) for _ in range(2))
    short = min(short, run(BATCHES_PER_SET))
    return first, max(long - short, 0.0) / extra * 1e6


def torch_step_fn(layers, device, compiled):
    import torch

    mods = []
    for k, (W, b) in enumerate(layers):
        lin = torch.nn.Linear(W.shape[1], W.shape[0])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W))
            lin.bias.copy_(torch.from_numpy(b.reshape(-1)))
        mods.append(lin)
        if k < len(layers) - 1:
            mods.append(torch.nn.Sigmoid())
    model = torch.nn.Sequential(*mods).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(xb, yb):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
        return loss

    if compiled:
        step = torch.compile(step)
    return model, step


def time_torch(layers, X, labels, batch, device, compiled, budget):
    """(first-step seconds, µs per step), or a string saying why not."""
    try:
        import torch
    except ImportError:
        return "torch not installed"
    try:
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 products, as gradc
        torch.backends.cudnn.allow_tf32 = False
        _, step = torch_step_fn(layers, device, compiled)
        xs = torch.from_numpy(X).to(device)
        ys = torch.from_numpy(labels).to(device)
        batches = [(xs[i : i + batch], ys[i : i + batch]) for i in range(0, len(X), batch)]

        def sync():
            if device != "cpu":
                torch.cuda.synchronize()

        start = time.perf_counter()
        step(*batches[0])
        sync()
        first = time.perf_counter() - start
        for xb, yb in batches:  # warm up (torch.compile may recompile once)
            step(xb, yb)
        sync()
        start = time.perf_counter()
        step(*batches[0])
        sync()
        guess = max(time.perf_counter() - start, 1e-6)
        reps = int(min(200, max(BATCHES_PER_SET, budget / guess)))
        start = time.perf_counter()
        for r in range(reps):
            step(*batches[r % len(batches)])
        sync()
        return first, (time.perf_counter() - start) / reps * 1e6
    except Exception as exc:  # torch.compile without a working toolchain, out of memory…
        return f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"


def agreement(prog, params0, net, X, Y, labels, batch, device):
    """Relative differences of gradc vs PyTorch after one SGD step from the same start."""
    try:
        import torch
    except ImportError:
        return "torch not installed"
    import gradc as gc

    params = {k: v.copy() for k, v in params0.items()}
    hist = prog.fit(params, X[:batch], Y[:batch], optimizer=gc.SGD(lr=LR), steps=1)
    model, step = torch_step_fn(layer_params(net, params0), device, compiled=False)
    xb = torch.from_numpy(X[:batch]).to(device)
    yb = torch.from_numpy(labels[:batch]).to(device)
    loss = float(step(xb, yb))
    W1 = model[0].weight.detach().cpu().numpy()
    mine = layer_params(net, params)[0][0]
    dloss = abs(hist.loss[0] - loss) / abs(loss)
    dW = float(np.max(np.abs(mine - W1)) / np.max(np.abs(W1)))
    return f"loss {dloss:.1e}, W1 {dW:.1e}"


def run_config(sizes, batch, args, torch_device, log):
    import gradc as gc

    name = "-".join(map(str, sizes))
    net = build(sizes)
    n = batch * BATCHES_PER_SET
    X, Y, labels = make_data(sizes, n)
    row = {"network": name, "batch": batch, "MACs/step": macs_per_step(sizes, batch)}
    cuda_prog = gc.compile(net, loss=gc.softmax_cross_entropy, target="cuda", dtype="float32")
    params0 = cuda_prog.init(seed=0)
    log(f"{name} × {batch}: gradc CUDA …")
    row["compile"], row["gradc CUDA"] = time_gradc(cuda_prog, params0, X, Y, batch, args.budget)
    row["check"] = agreement(cuda_prog, params0, net, X, Y, labels, batch, torch_device)
    layers = layer_params(net, params0)
    for label, compiled in (("torch eager", False), ("torch.compile", True)):
        log(f"{name} × {batch}: {label} …")
        row[label] = time_torch(layers, X, labels, batch, torch_device, compiled, args.budget)
    if row["MACs/step"] <= args.cpu_max_macs:
        log(f"{name} × {batch}: gradc CPU …")
        cpu_prog = gc.compile(net, loss=gc.softmax_cross_entropy, dtype="float32")
        row["gradc CPU"] = time_gradc(cpu_prog, params0, X, Y, batch, args.budget)[1]
    else:
        row["gradc CPU"] = "skipped (too slow)"
    return row


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------


def _cell(value):
    if isinstance(value, tuple):  # (first seconds, µs per step)
        value = value[1]
    if isinstance(value, str):
        return value
    return fmt_us(value / 1e6)


def render(rows, info, total_s, device_name):
    headers = [
        "network",
        "batch",
        "gradc CUDA µs",
        "torch eager µs",
        "torch.compile µs",
        "gradc CPU µs",
        "eager / gradc",
        "gradc compile s",
        "gradc vs torch, one step",
    ]
    table = []
    for r in rows:
        eager = r["torch eager"]
        ratio = f"{eager[1] / max(r['gradc CUDA'], 1e-9):.2f}×" if isinstance(eager, tuple) else "—"
        table.append(
            [
                r["network"],
                r["batch"],
                _cell(r["gradc CUDA"]),
                _cell(eager),
                _cell(r["torch.compile"]),
                _cell(r["gradc CPU"]),
                ratio,
                f"{r['compile']:.1f}",
                r["check"],
            ]
        )
    return "\n".join(
        [
            "# gradc CUDA target vs PyTorch (training step, float32)",
            "",
            f"Device: {device_name}. Command: `{command_line()}`; {total_s:.0f} s in all.",
            "",
            "µs per SGD step (forward, backward, update) of a sigmoid MLP with softmax",
            "cross-entropy; eager / gradc > 1 means gradc is faster. gradc's time is the",
            "marginal cost of extra steps inside one `fit` (data and parameters stay on",
            "the device); its first `fit` (compiling the kernels) is the compile column.",
            "",
            markdown_table(headers, table),
            "",
            "## Machine",
            "",
            info_markdown(info),
            "",
        ]
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="two configurations only")
    ap.add_argument("--out", type=Path, default=None, help="markdown file to write")
    ap.add_argument("--budget", type=float, default=2.0, help="seconds of timing per column")
    ap.add_argument("--cpu-max-macs", type=float, default=CPU_MAX_MACS)
    ap.add_argument("--only", default=None, help="one configuration, e.g. 784-256-10x256")
    ap.add_argument(
        "--simulate",
        action="store_true",
        help="smoke-test this script on numba's CUDA simulator (tiny model, "
        "PyTorch on the CPU); the numbers mean nothing",
    )
    args = ap.parse_args(argv)
    if args.simulate:
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"  # before numba is imported
    why = gpu_status(args.simulate)
    if why is not None:
        print(f"benchmarks/gpu.py: no GPU to benchmark on: {why}. Nothing to do.")
        return 0

    if args.simulate:
        configs = [((4, 3, 2), 4)]
        torch_device, device_name = "cpu", "numba CUDA simulator (smoke test, not a benchmark)"
    else:
        from numba import cuda

        torch_device = "cuda"
        device_name = cuda.get_current_device().name
        if isinstance(device_name, bytes):
            device_name = device_name.decode()
        if args.only:
            net, batch = args.only.split("x")
            configs = [(tuple(int(s) for s in net.split("-")), int(batch))]
        elif args.quick:
            configs = QUICK
        else:
            configs = [(net, b) for net in NETWORKS for b in BATCH_SIZES]
    start = time.perf_counter()
    rows = []
    for sizes, batch in configs:
        rows.append(run_config(sizes, batch, args, torch_device, log=print))
        r = rows[-1]
        print(
            f"  gradc CUDA {_cell(r['gradc CUDA'])} µs, torch eager {_cell(r['torch eager'])}, "
            f"torch.compile {_cell(r['torch.compile'])}, gradc CPU {_cell(r['gradc CPU'])}; "
            f"{r['check']}"
        )
    info = machine_info(extra_modules=("numba_cuda", "torch"))
    text = render(rows, info, time.perf_counter() - start, device_name)
    print(text)
    out = args.out if args.out is not None else (None if args.quick or args.simulate else RESULTS)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
