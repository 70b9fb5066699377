"""program stage: ``gc.compile`` runs the pipeline spec → graph → derivation → kernels → Program."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from ..derivation.reverse import derive_shared
from ..errors import GradcError
from ..graph.lower import lower
from ..spec.layers import Sequential
from ..spec.model import Spec
from ..spec.optimizers import Optimizer
from .program import Program, cpu_program

__all__ = ["STRATEGIES", "TARGETS", "compile", "cpu_program"]

STRATEGIES = ("shared", "naive")
TARGETS = ("cpu", "cuda")


def compile(
    objective,
    params=None,
    inputs=(),
    targets=(),
    *,
    output=None,
    loss: Callable | None = None,
    strategy: str = "shared",
    target: str = "cpu",
    dtype: str | type | np.dtype = "float64",
    optimizer: Optimizer | None = None,
    naive_limit: int | None = None,
) -> Program:
    """Compile a per-sample loss into a :class:`Program`.

    ``objective`` is a scalar SymPy expression, a model output with ``loss=``,
    a :class:`gradc.Sequential` with ``loss=``, a :class:`gradc.Spec`, or a
    dict of ``Spec``'s arguments.

    >>> import sympy as sp, gradc as gc
    >>> w, b, x, y = sp.symbols("w b x y")
    >>> prog = gc.compile(gc.mse(w*x + b, y), params=[w, b], inputs=[x], targets=[y])
    >>> prog.strategy, prog.target
    ('shared', 'cpu')
    """
    if isinstance(objective, dict):
        spec = Spec(**objective)
    elif isinstance(objective, Spec):
        spec = objective
    else:
        if isinstance(objective, Sequential) and loss is None:
            raise GradcError("compiling a Sequential needs loss= (e.g. gc.mse)")
        spec = Spec(objective, params, inputs, targets, output=output, loss=loss)
    if strategy not in STRATEGIES:
        raise GradcError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if target not in TARGETS:
        raise GradcError(f"target must be one of {TARGETS}, got {target!r}")
    dtype = _dtype_name(dtype)
    if optimizer is not None and not isinstance(optimizer, Optimizer):
        raise GradcError(
            f"optimizer must be a gc.Optimizer (gc.SGD, gc.Adam, …), got {optimizer!r}"
        )

    start = time.perf_counter()
    graph = lower(spec)
    if strategy == "shared":
        derivation = derive_shared(graph)
    else:
        from ..derivation.naive import derive_naive

        derivation = derive_naive(graph, limit=naive_limit)
    derive_seconds = time.perf_counter() - start
    if target == "cuda":
        from ..kernels.cuda import print_cuda
        from .cuda_program import CudaProgram

        kernels = print_cuda(derivation, dtype)
        return CudaProgram(
            spec,
            graph,
            derivation,
            kernels,
            target=target,
            dtype=dtype,
            optimizer=optimizer,
            derive_seconds=derive_seconds,
        )
    return cpu_program(spec, graph, derivation, dtype, optimizer, derive_seconds)


def _dtype_name(dtype) -> str:
    """``"float64"`` or ``"float32"`` from that name, ``np.float32``, ``np.dtype("f8")``…"""
    try:
        name = np.dtype(dtype).name if dtype is not None else None
    except TypeError:
        name = None
    if name not in ("float64", "float32"):
        raise GradcError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
    return name
