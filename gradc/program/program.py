"""program stage: the runtime object users hold.

A ``Program`` owns arrays, compiled kernels and caches — not mathematics. Each
public method converts data layout, calls a kernel and returns the result.
"""

from __future__ import annotations

import functools
import math
import sys
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..derivation.program import Derivation
from ..derivation.reverse import derive_shared
from ..errors import GradcError
from ..graph.lower import Graph
from ..kernels.cache import load_module
from ..kernels.cpu import CpuKernels, print_cpu
from ..kernels.cpu_lanes import LANES_MIN_BATCH
from ..kernels.runtime import entries_finite, pair_finite, seed_base
from ..spec.model import Spec
from ..spec.optimizers import SGD, Optimizer
from .data import data_arrays, first_nonfinite, key_name, param_array
from .health import warn_if_unhealthy
from .history import History
from .init import initial_values
from .memory import zeroed_arrays

__all__ = ["Program", "cpu_program"]

_STATUS = {
    1: "the loss became non-finite",
    2: "a gradient became non-finite or too large to measure (its squared norm overflowed)",
    3: "the update made a parameter non-finite",
}


@dataclass
class FitPlan:
    """What ``fit``'s arguments came to: sizes, step count and switches."""

    nrows: int
    bs: int
    nbatches: int
    total_steps: int
    has_data: bool
    shuffle: bool
    seed: int
    clip: float


# the training kernel's arguments that change from one fit call (or chunk) to the next
_FIT_SLOTS = frozenset(
    {"hp", "clip", "seed", "start", "stop", "opt_step", "losses", "gnorms", "check_upto"}
)
# From this many data entries per batch the row kernel checks each batch for NaN
# and inf as it reaches it (status 4 undoes the call), instead of a pass over the
# whole data set before the call: the batch is then in cache for its product.
# Below, the pass costs little and a check per step would cost a tiny step.
# Measured: 784-256-10 float64 batch 256, 2,048 samples, the pass ~860 µs per
# call of 8 steps (1.7 % of them).
DATA_CHECK_MIN_ENTRIES = 4096


@dataclass
class FitCall:
    """A training kernel and its argument list for one set of parameter arrays and
    batch size (``Program._fit_call``); ``slots`` and ``data_slots`` index the
    arguments set at each call."""

    name: str
    train: object
    kernels: object  # the optimizer's kernels (held: the key names them by id)
    args: list
    slots: dict[str, int]
    data_slots: list[int]  # where each data leaf's whole array goes
    saved: list  # parameters and optimizer state: what undoing a failed step restores
    backup: list  # their copies
    layout: tuple  # (batch size, rows, shuffled)
    hyper_names: tuple  # the optimizer's, in the order of the kernel's ``hp``
    step_slots: tuple  # where start, stop, opt_step, losses and gnorms go
    _hyper: tuple = ((), None)  # the last hyperparameter values and their array

    def hyper_array(self, opt: Optimizer, dtype) -> np.ndarray:
        """``opt``'s hyperparameter values as the kernel's ``hp`` array (the last
        one again while they are unchanged: ~0.4 µs less a call)."""
        values = tuple([opt.values[k] for k in self.hyper_names])
        if values != self._hyper[0]:
            self._hyper = (values, np.array(values, dtype=dtype))
        return self._hyper[1]


_PLAIN = (int, float, bool, type(None))  # fit options a call can be found again by


def _no_data() -> None:
    """The missing data of a spec without inputs, as a weak reference reads it."""
    return None


@dataclass
class FitRun:
    """One ``fit`` call's training-kernel call, prepared (``Program._prepare_fit``):
    everything but the data and the values ``_run_fit`` sets at each call (hp,
    steps, output arrays). ``fit`` keeps the last one; the same call again
    (``matches``) skips the checks and preparation, ~5 µs of a ~13 µs call (as
    much as 100 steps of a tiny network). It holds no data set alive: the data
    come with each call, into a copy of ``args``."""

    opt: Optimizer
    p: list  # the kernels' parameter arrays
    plan: FitPlan
    call: FitCall | None  # None: the target prepares nothing (CUDA)
    args: list
    in_kernel: bool  # the kernel checks the data for NaN and inf
    stateless: bool  # the optimizer keeps no state arrays and reads no step count
    # what the call was made from (``remember``): the optimizer argument, the
    # options, weak references to X and Y, and their layouts; empty: not to be
    # found again
    given: tuple = ()
    layouts: tuple = ()

    def remember(self, prog: Program, optimizer, options: tuple, X, Y, data: list) -> None:
        """Keep what this run was prepared from, when ``matches`` can recognise it:
        the dict holds the kernels' own arrays (``_params_as_given``), the data were
        taken as given (not converted copies, which would not see the caller's
        later writes) and the options are plain numbers."""
        if self.call is None or self.p is not prog._as_given:
            return
        if not all(type(v) in _PLAIN for v in options):
            return
        if data and not (len(data) == 2 and data[0] is X and data[1] is Y):
            return
        refs = (weakref.ref(X), weakref.ref(Y)) if data else (_no_data, _no_data)
        self.given = (optimizer, options, *refs)
        self.layouts = tuple((a.shape, a.strides, a.dtype) for a in data)

    def matches(self, prog: Program, params, X, Y, optimizer, options: tuple) -> bool:
        """Whether ``fit(params, X, Y, optimizer=optimizer, ...options)`` is this
        run's call again: the same objects (identity), the data arrays not
        reshaped, restrided or retyped in place, the dict holding the same arrays,
        and the optimizer's state arrays those the kernel call holds. The values
        may all have changed: parameters, data and hyperparameters are read anew."""
        given = self.given
        if not given or optimizer is not given[0] or X is not given[2]() or Y is not given[3]():
            return False
        if optimizer is None and prog.optimizer is not self.opt:
            return False
        try:
            if options != given[1]:
                return False
        except (TypeError, ValueError):  # e.g. an array among the options
            return False
        for arr, (shape, strides, dtype) in zip((X, Y), self.layouts):
            if arr.shape != shape or arr.strides != strides or arr.dtype is not dtype:
                return False
        if prog._params_as_given(params) is not self.p:
            return False
        if self.stateless:
            return True
        states = prog._optimizer_state(self.opt, self.p)
        return _same_arrays(self.call.saved, self.p, states)


class Program:
    """A compiled spec: ``init``, ``loss``, ``predict``, ``value_and_grad``, ``grad``, ``fit``.

    >>> import sympy as sp, gradc as gc
    >>> w1, w2 = sp.symbols("w1 w2")
    >>> prog = gc.compile(w1**2 + w2**2 + 2*w2 + 5, params=[w1, w2])
    >>> params = prog.init({w1: -2.0, w2: 3.0})
    >>> round(prog.loss(params), 6)
    24.0
    """

    def __init__(
        self,
        spec: Spec,
        graph: Graph,
        derivation: Derivation,
        kernels: CpuKernels,
        *,
        target: str,
        dtype: str,
        optimizer: Optimizer | None,
        derive_seconds: float,
    ):
        self.spec = spec
        self.graph = graph
        self.derivation = derivation
        self.kernels = kernels
        self.target = target
        self.dtype = np.dtype(dtype)
        self.optimizer = optimizer if optimizer is not None else SGD(lr=0.01)
        if not isinstance(self.optimizer, Optimizer):
            raise GradcError(f"optimizer must be a gc.Optimizer, got {self.optimizer!r}")
        self.strategy = derivation.strategy
        self.timings: dict[str, float] = {"derive": derive_seconds}
        self._module = None
        self._opt_modules: dict[tuple, tuple] = {}
        self._workspaces: dict[int, dict[str, np.ndarray]] = {}
        self._recipes: dict[str, list[tuple]] = {}  # _kernel_args's, by kernel
        self._fit_arrays: dict[tuple, list[np.ndarray]] = {}
        self._fit_calls: dict[tuple, FitCall] = {}
        self._last_call: FitCall | None = None
        self._last_run: FitRun | None = None  # fit's last call, prepared (FitRun.matches)
        self._plans: dict[tuple, FitPlan] = {}
        # the parameter arrays of the last dict taken as it was (_params_as_given)
        self._as_given: list[np.ndarray] | None = None
        self._param_names = [p.label for p in graph.params]
        self._param_shapes = tuple(p.shape for p in graph.params)
        # the kernels' argument names (compiler-chosen: p<k>, g<k>, x<k>, y<k>)
        nparams = len(graph.params)
        self._p_args = [f"p{k}" for k in range(nparams)]
        self._g_args = [f"g{k}" for k in range(nparams)]
        self._data_args = [f"x{k}" for k in range(len(graph.inputs))]
        self._data_args += [f"y{k}" for k in range(len(graph.targets))]
        self._data_width = sum(leaf.size for leaf in graph.data)  # entries per sample
        # this program's optimizer state on an optimizer object (see _optimizer_state)
        self._state_key = (id(self), self._param_shapes, self.dtype.str)
        self._no_state: list[list] = [[] for _ in graph.params]  # a stateless rule's
        self._with_inputs: Program | None = None  # derived with ∂L/∂x (_input_program)

    # -- kernels ---------------------------------------------------------------
    @property
    def module(self):
        if self._module is None:
            start = time.perf_counter()
            self._module = load_module(self.kernels.module_source)
            self.timings["load"] = time.perf_counter() - start
        return self._module

    def _optimizer_module(self, opt: Optimizer):
        key = opt.key()
        found = self._opt_modules.get(key)
        if found is None:
            okern = self.kernels.optimizer(opt.update_rule)
            if okern.step_source:  # the module below imports from it
                load_module(okern.step_source)
            found = (okern, load_module(okern.module_source))
            self._opt_modules[key] = found
        return found

    @property
    def source(self) -> dict[str, str]:
        """Generated kernel sources: ``forward``, ``backward``, ``update``, ``train``."""
        out = dict(self.kernels.source)
        okern, _ = self._optimizer_module(self.optimizer)
        out.update(okern.source)
        return out

    def _timed_call(self, name: str, fn, args):
        if name in self.timings:
            return fn(*args)
        start = time.perf_counter()
        # the first call compiles: Numba's passes recurse along long kernels and can
        # exceed Python's default limit of 1000 frames
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, 20_000))
        try:
            result = fn(*args)
        finally:
            sys.setrecursionlimit(limit)
        self.timings[name] = time.perf_counter() - start
        return result

    def _fit_buffers(
        self, role: str, shapes: list[tuple[int, ...]], dtype=None
    ) -> list[np.ndarray]:
        """Arrays of these shapes kept for fit's next call (gradients, the backup
        that undoes a failed step, the kernels' per-batch buffers); their values
        are not kept. A fresh 784×256 array costs more than a step (page faults on
        first touch), and each allocation a µs or two at the size of a tiny fit."""
        key = (role, tuple(map(tuple, shapes)), dtype)
        found = self._fit_arrays.get(key)
        if found is None:
            if len(self._fit_arrays) > 16:
                self._fit_arrays.clear()
            found = zeroed_arrays(shapes, dtype or self.dtype)
            self._fit_arrays[key] = found
        return found

    def _workspace(self, capacity: int) -> dict[str, np.ndarray]:
        ws = self._workspaces.get(capacity)
        if ws is None:
            if len(self._workspaces) > 4:
                self._workspaces.clear()
            buffers = self.kernels.buffers
            shapes = [
                (capacity, b.shape[0] * b.shape[1]) if b.batched else b.shape for b in buffers
            ]
            ws = dict(zip([b.name for b in buffers], zeroed_arrays(shapes, self.dtype)))
            self._workspaces[capacity] = ws
        return ws

    # -- parameters and data ------------------------------------------------------
    def init(self, values: Mapping | None = None, *, seed: int = 0) -> dict[str, np.ndarray]:
        """Parameters with their shapes filled: seeded defaults, overridden by ``values``.

        Keys of ``values`` may be symbols, MatrixSymbols or names.

        >>> import sympy as sp, gradc as gc
        >>> w = sp.Symbol("w")
        >>> gc.compile(w**2, params=[w]).init({w: 3.0})["w"]
        array(3.)
        """
        if isinstance(values, int) and not isinstance(values, bool):
            values, seed = None, values
        params = initial_values(self.graph, seed, self.dtype)
        for key, value in (values or {}).items():
            name = key_name(key)
            leaf = self._leaf(name)
            arr = param_array(leaf, value, self.dtype)
            params[name] = arr.reshape(params[name].shape)
        # large parameters share one mapping on huge pages (memory.py)
        homes = zeroed_arrays([arr.shape for arr in params.values()], self.dtype)
        for home, name in zip(homes, list(params)):
            home[...] = params[name]
            params[name] = home
        return params

    def _leaf(self, name: str):
        for p in self.graph.params:
            if p.label == name:
                return p
        raise GradcError(
            f"{name!r} is not a parameter of this program ({', '.join(self._param_names)})"
        )

    def _params(self, params: Mapping, *, check: bool = True) -> list[np.ndarray]:
        """The kernels' (rows, cols) arrays for ``params`` (views where possible);
        ``check``: GradcError naming a parameter with a NaN or inf entry."""
        out = self._params_as_given(params)
        if out is None:
            if not isinstance(params, Mapping):
                raise GradcError(f"params must be a dict of arrays, got {type(params).__name__}")
            names = {key_name(k): k for k in params}
            out = []
            for leaf in self.graph.params:
                if leaf.label not in names:
                    raise GradcError(f"missing parameter {leaf.label!r} in params")
                out.append(param_array(leaf, params[names[leaf.label]], self.dtype))
        if check and (error := self._nonfinite_param(out)):
            raise error
        return out

    def _params_as_given(self, params) -> list[np.ndarray] | None:
        """The common case, checked in ~1 µs (fit checks at every call): a dict with
        exactly the parameter names as keys, each holding an array the kernels take
        as it is (what ``init`` returns). None otherwise."""
        names = self._param_names
        if type(params) is not dict or len(params) != len(names):
            return None
        last = self._as_given
        if last is not None:  # the arrays of the last call (held there: no id reuse),
            # unless reshaped in place since (the kernels index with literal shapes)
            for name, old, shape in zip(names, last, self._param_shapes):
                if params.get(name) is not old or old.shape != shape:
                    break
            else:
                return last
        out = [params.get(name) for name in names]
        dtype = self.dtype
        for arr, shape in zip(out, self._param_shapes):
            if not (
                type(arr) is np.ndarray
                and arr.shape == shape
                and (arr.dtype is dtype or arr.dtype == dtype)
                and arr.flags.c_contiguous
            ):
                return None
        self._as_given = out
        return out

    def _nonfinite_param(self, p: list[np.ndarray]) -> GradcError | None:
        """The error naming the first parameter with a NaN or inf entry, if any."""
        if p is self._as_given:  # C-contiguous arrays of our dtype: one call each
            bad = next((k for k, arr in enumerate(p) if not entries_finite(arr)), -1)
        else:
            bad = first_nonfinite(p)
        if bad < 0:
            return None
        return GradcError(f"parameter {self.graph.params[bad].label!r} contains NaN or inf")

    def _data(self, X, Y, *, need_targets=True, check=True):
        return data_arrays(
            self.graph.inputs,
            self.graph.targets,
            X,
            Y,
            self.dtype,
            need_targets=need_targets,
            check=check,
        )

    def _namespace(self, n: int, params, data, ws) -> dict:
        ns = {"n": n, "inv_n": self.dtype.type(1.0 / n)}
        ns.update(zip(self._p_args, params))
        ns.update(zip(self._data_args, data))
        ns.update(ws)
        return ns

    def _kernel_args(self, kernel: str, n: int, params, data, grads=()) -> list:
        """The arguments of the ``"forward"`` or ``"backward"`` kernel for a batch of
        ``n``: what ``_namespace`` holds, looked up by a recipe made once per kernel
        (building the namespace and reading it back cost ~3 µs a call, a fifth of
        ``value_and_grad`` on a tiny network)."""
        recipe = self._recipes.get(kernel)
        if recipe is None:
            names = getattr(self.kernels, f"{kernel}_args")
            where = {"n": (0, 0), "inv_n": (0, 1)}
            where.update({a: (1, k) for k, a in enumerate(self._p_args)})
            where.update({a: (2, k) for k, a in enumerate(self._data_args)})
            where.update({a: (4, k) for k, a in enumerate(self._g_args)})
            recipe = [where.get(a, (3, a)) for a in names]  # else a workspace buffer
            self._recipes[kernel] = recipe
        sources = ((n, self.dtype.type(1.0 / n)), params, data, self._workspace(n), grads)
        return [sources[s][k] for s, k in recipe]

    # -- evaluation ---------------------------------------------------------------
    def loss(self, params: Mapping, X=None, Y=None) -> float:
        """Mean per-sample loss over the data (or the objective's value without data)."""
        p = self._params(params)
        data, n = self._data(X, Y)
        args = self._kernel_args("forward", n, p, data)
        return self._check_result(float(self._timed_call("forward", self.module.forward, args)))

    def predict(self, params: Mapping, X=None) -> np.ndarray:
        """The output for each sample, shape (n, k): one row per sample."""
        if self.kernels.output_view is None:
            raise GradcError(
                "this program has no output: pass output= (or a Sequential) to compile"
            )
        p = self._params(params)
        data, n = self._data(X, None, need_targets=False)
        args = self._kernel_args("forward", n, p, data)
        self._timed_call("forward", self.module.forward, args)
        name, _ = self.kernels.output_view
        out = self.graph.output
        value = self._workspace(n)[name]
        if out.batched:
            result = np.array(value[:n], copy=True)
        else:
            result = np.repeat(np.asarray(value).reshape(1, -1), n, axis=0)
        return result

    def value_and_grad(self, params: Mapping, X=None, Y=None):
        """Mean loss and its gradient (a dict shaped like ``params``)."""
        p = self._params(params)
        data, n = self._data(X, Y)
        grads = [np.zeros(shape, dtype=self.dtype) for shape in self._param_shapes]
        args = self._kernel_args("forward", n, p, data)
        loss = self._timed_call("forward", self.module.forward, args)
        args = self._kernel_args("backward", n, p, data, grads)
        self._timed_call("backward", self.module.backward, args)
        self._check_result(float(loss), grads)
        if p is self._as_given:  # a dict of the kernels' own arrays: the same layout
            return float(loss), dict(zip(self._param_names, grads))
        return float(loss), self._as_user_dict(grads, params)

    def _check_result(self, loss: float, grads=()) -> float:
        """A non-finite loss or gradient from finite data is an error, not a number."""
        _finite(loss, "loss")
        for leaf, g in zip(self.graph.params, grads):
            if not entries_finite(g):  # (our own C-contiguous float arrays)
                raise GradcError(
                    f"the gradient for {leaf.label!r} is not finite at these parameters"
                )
        return loss

    def grad(self, params: Mapping, X=None, Y=None) -> dict[str, np.ndarray]:
        """The gradient of the mean loss, a dict shaped like ``params``."""
        return self.value_and_grad(params, X, Y)[1]

    def input_grad(self, params: Mapping, X, Y=None):
        """∂(mean loss)/∂X: the gradient with respect to the data, shaped like ``X``
        (one row per sample; a tuple in the order of ``inputs`` for several).

        The δ recursion carried one step further, to the input (δ⁰ = W¹ᵀδ¹ for a
        dense layer): the sweep a program's own gradients leave out, since data
        needs no update. Saliency maps, adversarial examples and inverse problems
        use it. Its kernels are derived (shared δ, whatever the program's strategy)
        and compiled on the first call, on the CPU for every target.

        >>> import numpy as np, sympy as sp, gradc as gc
        >>> w, b, x, y = sp.symbols("w b x y")
        >>> prog = gc.compile(gc.mse(w*x + b, y), params=[w, b], inputs=[x], targets=[y])
        >>> params = prog.init({w: 2.0, b: 0.0})
        >>> prog.input_grad(params, np.array([1.0, 2.0]), np.array([0.0, 0.0]))  # w(wx+b−y)/n
        array([2., 4.])
        """
        if not self.graph.inputs:
            raise GradcError("input_grad needs a spec with inputs: this one has none")
        prog = self._input_program()
        p = prog._params(params)
        data, n = prog._data(X, Y)
        grads = [np.zeros(shape, dtype=self.dtype) for shape in self._param_shapes]
        args = prog._kernel_args("forward", n, p, data)
        _finite(float(prog._timed_call("forward", prog.module.forward, args)), "loss")
        args = prog._kernel_args("backward", n, p, data, grads)
        prog._timed_call("backward", prog.module.backward, args)
        given = X if len(self.graph.inputs) > 1 else (X,)
        out = []
        for leaf, name, like in zip(self.graph.inputs, prog.kernels.input_grad_buffers, given):
            if name is None:  # the loss does not depend on this input
                value = np.zeros((n, leaf.size), dtype=self.dtype)
            else:
                value = np.array(prog._workspace(n)[name][:n], copy=True)
            if not entries_finite(value):
                raise GradcError(
                    f"the gradient for input {leaf.label!r} is not finite at these parameters"
                )
            shape = np.shape(like)
            out.append(value.reshape(shape) if math.prod(shape) == value.size else value)
        return out[0] if len(out) == 1 else tuple(out)

    def _input_program(self) -> Program:
        """The CPU program of this spec derived with ∂L/∂x (made on first use)."""
        found = self._with_inputs
        if found is None:
            start = time.perf_counter()
            derivation = derive_shared(self.graph, inputs=True)
            seconds = time.perf_counter() - start
            found = cpu_program(
                self.spec, self.graph, derivation, self.dtype.name, self.optimizer, seconds
            )
            self._with_inputs = found
        return found

    def _as_user_dict(self, arrays, like: Mapping) -> dict[str, np.ndarray]:
        names = {key_name(k): k for k in like}
        out = {}
        for leaf, arr in zip(self.graph.params, arrays):
            value = like[names[leaf.label]]
            # (math.prod, not np.prod: ~3 µs a call, most of value_and_grad's
            # Python time on a tiny network)
            shape = value.shape if isinstance(value, np.ndarray) else np.shape(value)
            out[leaf.label] = arr.reshape(shape) if math.prod(shape) == arr.size else arr
        return out

    # -- training ---------------------------------------------------------------
    def fit(
        self,
        params: dict,
        X=None,
        Y=None,
        *,
        optimizer: Optimizer | None = None,
        epochs: int = 1,
        steps: int | None = None,
        batch_size: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        clip_norm: float | None = None,
        progress: bool = False,
        record_path: bool = False,
        warn_health: bool = True,
    ) -> History:
        """Train ``params`` in place with the fused epoch kernel; returns a :class:`History`.

        ``batch_size=None`` is full batch, ``1`` is SGD, other values mini-batch
        (reshuffled each epoch when ``shuffle``). ``steps`` (total update steps)
        overrides ``epochs``. On a non-finite loss, gradient or parameter the run
        stops, ``params`` go back to their last finite values, and ``GradcError``
        says at which step. ``warn_health`` warns once (``GradientHealthWarning``)
        about vanishing or exploding gradients, naming the remedies.

        All epochs run in one call of the compiled kernel, which reshuffles at
        each epoch's start (epoch e with the seed (seed·1,000,003 + e) mod 2⁶³, so
        a run can be replayed); ``progress`` splits the run per epoch and
        ``record_path`` per step.

        >>> import numpy as np, sympy as sp, gradc as gc
        >>> w, x, y = sp.symbols("w x y")
        >>> prog = gc.compile(gc.mse(w * x, y), params=[w], inputs=[x], targets=[y])
        >>> params = prog.init({w: 0.0})
        >>> X = np.array([1.0, 2.0, 3.0])
        >>> hist = prog.fit(params, X, 2 * X, optimizer=gc.SGD(0.1), epochs=50, batch_size=1)
        >>> round(float(params["w"]), 6), hist.steps, len(hist.epoch_loss)
        (2.0, 150, 50)
        """
        options = (epochs, steps, batch_size, shuffle, seed, clip_norm, record_path)

        def refuse_data() -> None:  # the data check's GradcError, naming leaf and row
            self._data(X, Y)
            raise GradcError("the data contain NaN or inf")  # (the line above raises)

        run = self._last_run
        if run is not None and run.matches(self, params, X, Y, optimizer, options):
            data = [X, Y] if run.layouts else []
        else:
            opt = self._fit_optimizer(optimizer)
            # a NaN or inf parameter makes the first step fail (its update cannot be
            # finite): checked then, not before every call (for a 784×256 weight the
            # check costs more than a step)
            p = self._params(params, check=False)
            # the data's NaN/inf check comes in _run_fit: before the kernel, or in it
            data, plan = self._fit_plan(X, Y, epochs, steps, batch_size, shuffle, seed, clip_norm)
            run = self._prepare_fit(opt, p, plan, record_path)
            run.remember(self, optimizer, options, X, Y, data)
            self._last_run = run
        try:
            history = self._run_fit(run, data, params, progress, record_path, refuse_data)
        except GradcError:
            # the parameters are back at their last finite values, or the caller's
            if error := self._nonfinite_param(run.p):
                raise error from None
            raise
        if warn_health:
            warn_if_unhealthy(history.health())
        return history

    def _prepare_fit(self, opt, p, plan: FitPlan, record_path) -> FitRun:
        """The training kernel's call for ``fit``'s checked arguments: everything but
        the data and the values that change from one call to the next (``_run_fit``
        sets those)."""
        total_steps, nbatches = plan.total_steps, plan.nbatches
        states = self._optimizer_state(opt, p)
        call = self._fit_call(opt, p, plan, states)
        args = list(call.args)
        slot = call.slots
        # Data with NaN or inf is refused before any update: checked by _run_fit, or
        # by the row kernel batch by batch in its first epoch when the first call
        # runs a whole epoch (every row) from a backup that undoes it (status 4).
        in_kernel = (
            "check_upto" in slot
            and not record_path
            and total_steps >= nbatches
            and plan.bs * self._data_width >= DATA_CHECK_MIN_ENTRIES
        )
        if "check_upto" in slot:
            args[slot["check_upto"]] = nbatches if in_kernel else 0
        args[slot["clip"]] = plan.clip
        args[slot["seed"]] = seed_base(plan.seed)
        return FitRun(opt, p, plan, call, args, in_kernel, opt.update_rule.stateless)

    def _run_fit(self, run: FitRun, data, params, progress, record_path, refuse_data) -> History:
        """The steps of ``fit`` (after its argument checks), in the fused epoch kernel."""
        opt, p, plan, call = run.opt, run.p, run.plan, run.call
        # this call's own copy (~0.1 µs): the kept run holds no data set alive, and
        # no other thread's fit on this program sees this one's slots
        args = list(run.args)
        total_steps, has_data = plan.total_steps, plan.has_data
        bs, nbatches = plan.bs, plan.nbatches
        slot = call.slots
        self._check_before_steps(p, data, plan, refuse_data, data_later=run.in_kernel)
        args[slot["hp"]] = call.hyper_array(opt, self.dtype)
        i_start, i_stop, i_step, i_losses, i_gnorms = call.step_slots
        # the first call compiles or loads the kernel: timed (Program.timings)
        train = call.train
        if call.name not in self.timings:
            train = lambda *a: self._timed_call(call.name, call.train, a)  # noqa: E731

        path = [self._snapshot(p, params)] if record_path else []
        bar = _progress(progress, total_steps, bs if has_data else 0, nbatches)
        # one kernel call runs every epoch (it reshuffles at each epoch's start);
        # Python sees each step only to record the path, each epoch only to draw
        # the progress bar
        if record_path:
            chunk = 1
        elif bar is not None and has_data:
            chunk = nbatches
        else:
            chunk = max(total_steps, 1)
        # written by the kernel at every step it runs (History shows those only)
        losses = np.empty(total_steps)
        sq_norms = np.empty((total_steps, len(p)))
        done = 0
        start_time = time.perf_counter()
        for k, arr in zip(call.data_slots, data):
            args[k] = arr
        try:
            for start in range(0, total_steps, chunk):
                stop = min(start + chunk, total_steps)
                args[i_start], args[i_stop] = start, stop
                args[i_step] = 0 if run.stateless else self._opt_steps(opt)
                whole = stop - start == total_steps  # (a slice costs ~0.15 µs)
                args[i_losses] = losses if whole else losses[start:stop]
                args[i_gnorms] = sq_norms if whole else sq_norms[start:stop]
                status, at = train(*args)
                if status:
                    self._stopped(status, at, run, args, data, refuse_data)
                ran = (at if status else stop) - start
                if not run.stateless:
                    self._advance_opt(opt, ran)
                done = start + ran
                if status:
                    self._write_back(p, params)
                    epoch = at // nbatches if has_data else 0
                    raise GradcError(
                        f"fit stopped at update step {at + 1} (epoch {epoch + 1}): "
                        f"{_STATUS[status]} (loss {losses[at]:.6g}); the {at} "
                        "updates before it were kept and the parameters are their last "
                        "finite values. Try a smaller learning rate or clip_norm."
                    )
                if record_path:
                    path.append(self._snapshot(p, params))
                if bar is not None:
                    bar(stop - start, float(losses[stop - 1]))
        finally:
            if bar is not None:
                bar.close()
        history = History(
            loss=losses if done == total_steps else losses[:done],
            path=path,
            seconds=time.perf_counter() - start_time,
            weights=list(self._weight_names),
            batches=(plan.nrows, bs, nbatches) if has_data else None,
        )
        history.set_squared_norms(
            sq_norms if done == total_steps else sq_norms[:done], self._param_names
        )
        self._write_back(p, params)
        return history

    def _stopped(self, status, at, run: FitRun, args, data, refuse_data) -> None:
        """After the training kernel stopped at step ``at``: a batch with NaN or inf
        (4), or a stop before the kernel had checked every batch while the data
        holds one, undoes the call and refuses the data; a failed step (1, 2, 3:
        the kernel tests a step once, after its update) is undone by replaying the
        good ones from the backup."""
        call = run.call
        for dst, src in zip(call.saved, call.backup):
            np.copyto(dst, src)
        if status == 4 or (run.in_kernel and at < run.plan.nbatches and first_nonfinite(data) >= 0):
            refuse_data()  # (raises)
        args[call.slots["stop"]] = at
        call.train(*args)

    def _check_before_steps(self, p, data, plan: FitPlan, refuse_data, data_later=False):
        """fit's checks before its first step: the data for NaN and inf (unless the
        kernel checks it, ``data_later``), then, when no step will show them, the
        parameters."""
        if not data_later and not _data_finite(data):
            refuse_data()
        if plan.total_steps == 0 and (error := self._nonfinite_param(p)):
            raise error

    def _fit_call(self, opt: Optimizer, p, plan: FitPlan, states) -> FitCall:
        """The training kernel and its arguments for these parameter and state
        arrays and this batch size, kept for the next call with the same ones
        (found by identity: the call holds them, so their ids stay theirs).
        Building it (the namespace, an argument per buffer, parameter and state
        array) costs ~40 µs, as much as 300 steps of a tiny network. The data and the
        per-call values (hp, clip, seed, steps) go into its slots at each call:
        a kept call holds no data set alive."""
        okern, omod = self._optimizer_module(opt)
        bs, nrows = plan.bs, plan.nrows
        last = self._last_call  # the common case: fit called again as before (~0.4 µs)
        if (
            last is not None
            and last.kernels is okern
            and last.layout == (bs, nrows, plan.shuffle)
            and _same_arrays(last.saved, p, states)
        ):
            return last
        key = (
            id(okern),
            bs,
            nrows,
            plan.shuffle,
            *map(id, p),
            *(id(s) for st in states for s in st),
        )
        call = self._fit_calls.get(key)
        if call is not None:
            self._last_call = call
            return call
        ws = self._workspace(bs)
        # every buffer below is written before it is read (the gradients in full
        # at every step, or not read in a batch-of-one sweep; the permutation at
        # each epoch's start): kept between calls, as the workspace is
        grads = self._fit_buffers("grad", self._param_shapes)
        ns = self._namespace(bs, p, [], ws)
        names = self._data_args
        gather = self._fit_buffers("gather", [(bs, leaf.size) for leaf in self.graph.data])
        ns.update(zip([f"{name}buf" for name in names], gather))
        ns.update(zip(self._g_args, grads))
        for k, st in enumerate(states):
            ns.update({f"s{k}_{j}": s for j, s in enumerate(st)})
        (perm,) = self._fit_buffers("perm", [(nrows,)], np.int64)
        ns.update(perm=perm, nrows=nrows, bs=bs, shuffle=plan.shuffle)
        name, arg_names = "train", okern.train_args
        if okern.batched_min is not None and bs >= okern.batched_min:
            name = "train_batched"  # every product by BLAS: no loop fallbacks to compile
        elif okern.one_sample and bs == 1:
            name = "train_one"  # every branch on the batch size resolved when printed
        if okern.lanes_args is not None and bs >= LANES_MIN_BATCH:
            # a narrow network at a batch of several: the batch-innermost kernel
            # (kernels/cpu_lanes.py) on transposed (entries, batch) buffers
            name, arg_names = "train_lanes", okern.lanes_args
            lanes = okern.lanes_buffers
            arrays = self._fit_buffers("lanes", [(size, bs) for size in lanes.values()])
            ns.update(zip(lanes, arrays))
        # what a failed step's undo restores: parameters and optimizer state, which
        # the kernel copies into ``keep_<name>`` at each call's start
        saved = p + [s for st in states for s in st]
        backup = self._fit_buffers("backup", [a.shape for a in saved])
        saved_names = self._p_args + [
            f"s{k}_{j}" for k, st in enumerate(states) for j in range(len(st))
        ]
        ns.update((f"keep_{name}", arr) for name, arr in zip(saved_names, backup))
        whole = [name.upper() for name in names]  # the whole data, one per leaf
        call = FitCall(
            name=name,
            train=getattr(omod, name),
            kernels=okern,
            args=[None if a in _FIT_SLOTS or a in whole else ns[a] for a in arg_names],
            slots={a: k for k, a in enumerate(arg_names) if a in _FIT_SLOTS},
            data_slots=[arg_names.index(a) for a in whole],
            saved=saved,
            backup=backup,
            layout=(bs, nrows, plan.shuffle),
            hyper_names=tuple(opt.update_rule.hyper_names),
            step_slots=tuple(
                arg_names.index(a) for a in ("start", "stop", "opt_step", "losses", "gnorms")
            ),
        )
        if len(self._fit_calls) >= 2:
            self._fit_calls.clear()
        self._fit_calls[key] = self._last_call = call
        return call

    def _fit_optimizer(self, optimizer: Optimizer | None) -> Optimizer:
        opt = optimizer if optimizer is not None else self.optimizer
        if not isinstance(opt, Optimizer):
            raise GradcError(f"optimizer must be a gc.Optimizer, got {opt!r}")
        return opt

    def _fit_plan(self, X, Y, epochs, steps, batch_size, shuffle, seed, clip_norm):
        """Check ``fit``'s arguments and the data's shapes (NaN and inf are left to
        ``_run_fit``); returns (data arrays, :class:`FitPlan`)."""
        has_data = self._data_width > 0
        if has_data:
            data, nrows = self._data(X, Y, check=False)
        else:
            if X is not None or Y is not None:
                raise GradcError("this spec has no inputs or targets; call fit(params, steps=...)")
            data, nrows = [], 1
        # the same arguments give the same plan: kept (its checks cost ~1 µs a call)
        key = (nrows, epochs, steps, batch_size, shuffle, seed, clip_norm)
        try:
            plan = self._plans.get(key)
        except TypeError:  # an argument that cannot be a key: checked below
            key, plan = None, None
        if plan is None:
            plan = self._new_plan(
                nrows, has_data, epochs, steps, batch_size, shuffle, seed, clip_norm
            )
            if key is not None:
                if len(self._plans) >= 16:
                    self._plans.clear()
                self._plans[key] = plan
        return data, plan

    def _new_plan(
        self, nrows, has_data, epochs, steps, batch_size, shuffle, seed, clip_norm
    ) -> FitPlan:
        """``_fit_plan``'s checks and sizes for ``nrows`` samples."""
        bs = nrows if batch_size is None else int(batch_size)
        if bs < 1:
            raise GradcError(f"batch_size must be at least 1, got {batch_size}")
        bs = min(bs, nrows)
        nbatches = -(-nrows // bs)
        if steps is not None:
            total_steps = int(steps)
        elif has_data:
            total_steps = int(epochs) * nbatches
        else:
            total_steps = int(epochs)
        if total_steps < 0:
            raise GradcError("steps and epochs must not be negative")
        clip = 0.0 if clip_norm is None else float(clip_norm)
        if clip < 0 or not math.isfinite(clip):
            raise GradcError(f"clip_norm must be a positive number, got {clip_norm}")
        return FitPlan(
            nrows=nrows,
            bs=bs,
            nbatches=nbatches,
            total_steps=total_steps,
            has_data=has_data,
            # one full batch needs no shuffle: the mean over all samples ignores order
            shuffle=bool(shuffle and has_data and nbatches > 1),
            seed=int(seed),
            clip=clip,
        )

    @functools.cached_property
    def _weight_names(self) -> list[str]:
        """Parameters multiplied in a matrix product (layer weights), in parameter order."""
        from ..graph.nodes import MatMul, Transpose

        used = set()
        for node in self.graph.order:
            if isinstance(node, MatMul):
                for a in node.args:
                    a = a.args[0] if isinstance(a, Transpose) else a
                    used.add(a.id)
        return [p.label for p in self.graph.params if p.id in used and not p.is_scalar]

    def _optimizer_state(self, opt: Optimizer, p) -> list[list[np.ndarray]]:
        """Per-parameter state arrays, kept on the optimizer so a second fit continues."""
        if opt.update_rule.stateless:  # (a fresh optimizer per fit call: ~1 µs less)
            return self._no_state
        key = self._state_key
        store = opt.__dict__.setdefault("_gradc_state", {})
        if key not in store:
            nstate = len(opt.update_rule.state_names)
            flat = iter(zeroed_arrays([a.shape for a in p for _ in range(nstate)], self.dtype))
            store[key] = {"t": 0, "arrays": [[next(flat) for _ in range(nstate)] for _ in p]}
        return store[key]["arrays"]

    def _opt_steps(self, opt: Optimizer) -> int:
        """Steps ``opt`` has taken on this program (0 for a stateless rule: unread)."""
        record = opt.__dict__.get("_gradc_state", {}).get(self._state_key)
        return record["t"] if record is not None else 0

    def _advance_opt(self, opt: Optimizer, steps: int) -> None:
        record = opt.__dict__.get("_gradc_state", {}).get(self._state_key)
        if record is not None:
            record["t"] += int(steps)

    def _snapshot(self, p, like) -> dict[str, np.ndarray]:
        return self._as_user_dict([a.copy() for a in p], like)

    def _write_back(self, p, params: dict) -> None:
        """Copy kernel arrays back into the user's dict where they were not views."""
        if p is self._as_given:
            return  # the user's own arrays: the kernels wrote into them
        names = {key_name(k): k for k in params}
        for leaf, arr in zip(self.graph.params, p):
            key = names[leaf.label]
            user = params[key]
            if arr is user or arr.base is user:  # a view: the kernels wrote into it
                continue
            if (
                isinstance(user, np.ndarray)
                and user.dtype == arr.dtype
                and np.shares_memory(user, arr)
            ):
                continue
            if isinstance(user, np.ndarray) and user.size == arr.size and user.dtype.kind == "f":
                user[...] = arr.reshape(user.shape)
            else:
                params[key] = arr.reshape(np.shape(user)) if np.size(user) == arr.size else arr

    # -- description ---------------------------------------------------------------
    def report(self):
        """Derivation and kernel statistics (operation counts, timings, naive vs shared)."""
        from .report import build_report

        return build_report(self)

    def explain(self, latex: bool = False, *, inputs: bool = False) -> str:
        """The derived equations: each layer's δ and each gradient in terms of δ;
        with ``inputs=True`` also the δ of the data (``input_grad``'s derivation)."""
        from ..derivation.explain import explain

        derivation = self._input_program().derivation if inputs else self.derivation
        return explain(derivation, latex=latex)

    def __repr__(self) -> str:
        net = self.spec.network
        what = repr(net) if net is not None else f"{len(self.graph.params)} parameters"
        loss = getattr(self.spec.loss_fn, "__name__", None)
        return f"Program({what}{', ' + loss if loss else ''}, {self.strategy}, {self.target}, {self.dtype.name})"


def cpu_program(spec, graph, derivation, dtype: str, optimizer, derive_seconds: float) -> Program:
    """The CPU :class:`Program` of a derivation: its kernels printed in ``dtype``."""
    return Program(
        spec,
        graph,
        derivation,
        print_cpu(derivation, dtype),
        target="cpu",
        dtype=dtype,
        optimizer=optimizer,
        derive_seconds=derive_seconds,
    )


def _finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise GradcError(
            f"the {what} is {value} at these parameters and data (overflow or a value "
            "outside a function's domain)"
        )
    return value


def _data_finite(data: list) -> bool:
    """Whether fit's data arrays (C-contiguous, in the program's dtype) hold no NaN
    or inf; an input and a target (the common case) in one compiled call."""
    if len(data) == 2:
        return pair_finite(data[0], data[1])
    return first_nonfinite(data) < 0


def _same_arrays(saved: list, p: list, states: list) -> bool:
    """Whether ``saved`` holds exactly the arrays ``p`` and then those of ``states``."""
    k = 0
    for arr in p:
        if saved[k] is not arr:
            return False
        k += 1
    for st in states:
        for arr in st:
            if saved[k] is not arr:
                return False
            k += 1
    return k == len(saved)


def _progress(enabled: bool, total: int, batch_size: int, per_epoch: int):
    if not enabled:
        return None
    from .progress import ProgressBar

    return ProgressBar(total, batch_size, per_epoch)
