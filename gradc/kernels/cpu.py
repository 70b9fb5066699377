"""kernels stage: print a :class:`~gradc.derivation.program.Derivation` as a
Python module of Numba ``@njit`` kernels for the CPU.

Every shape is printed as a literal, so LLVM unrolls and vectorises small
layers; a product big enough to pay for it goes to BLAS (``np.dot`` with an
``out=`` buffer, chosen at run time from the batch size). Every buffer is
allocated once by the Program and passed in, so the epoch loop never allocates.

The module holds four kernels::

    forward(n, inv_n, params…, data…, values…) -> mean loss
    backward(n, inv_n, params…, data…, values…, deltas…, grads…)
    update(hp, t, scale, [param, grad, state…] per parameter) -> all finite?
    train(start, stop, …) -> (status, step)   update steps over epochs, shuffles included

and, for networks too narrow for BLAS, ``train_lanes`` (same contract, the
batch innermost; printed by ``cpu_lanes.py``). This module prints the
statements (one ``_print_<Kind>`` per node kind) and assembles the modules;
its parts: ``cpu_train.py`` puts the training kernels and the optimizer's
step together, ``cpu_exps.py`` chooses how exps are taken, ``cpu_flat.py``
prints narrow statements over a whole large batch.

Identifiers are chosen here (``p0``, ``v3``, ``d7``, ``g1``); user symbol names
appear only in comments, sanitised.
"""

from __future__ import annotations

import functools
import re
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixElement

from ..derivation.names import display_names
from ..derivation.program import Derivation
from ..errors import GradcError
from ..graph.nodes import BatchSum, EntrySum, Leaf, LogSumExp, Map, MatMul, Node, SumAll, Transpose
from ..spec.optimizers import UpdateRule
from .blas import (
    BLAS,
    COPIED_MAX_ENTRIES,
    COPIED_MAX_OUT,
    COPIED_MIN_ROWS,
    THIN,
    TRANSPOSED_MIN_COLS,
)
from .cache import module_name
from .common import Lines as _Lines
from .common import comment_text, entry_atoms, is_seed
from .cpu_blas import BlasOperand, gemm_call, gemv_call
from .cpu_exps import ExpForms, _Stored
from .cpu_flat import FlatForms
from .cpu_train import _DECORATOR, TrainPrinter, _small, _tuple
from .runtime import RUNTIME_DIGEST
from .scalar_printer import ScalarPrinter

__all__ = ["BLAS_MIN_MACS", "BLAS_MIN_TOTAL", "CpuKernels", "print_cpu"]

# A product goes to BLAS when one sample costs at least BLAS_MIN_MACS
# multiply-adds and the whole batch at least BLAS_MIN_TOTAL; a weight gradient
# Σₙ δₙ·xₙᵀ from batch BLAS_MIN_CONTRACT. Below that the call overhead of BLAS
# (~1 µs) is more than literal-shape loops cost. Measured on the layer shapes of
# the peers benchmark: benchmarks/blas_threshold.py, results/blas_threshold.md.
BLAS_MIN_MACS = 256
BLAS_MIN_TOTAL = 2048
BLAS_MIN_CONTRACT = 8
# Loop dot products over at least DOT_SPLIT_MIN terms keep DOT_LANES partial sums.
DOT_SPLIT_MIN = 8
DOT_LANES = 4


@dataclass
class Buffer:
    name: str
    node: Node
    batched: bool
    shape: tuple[int, int]  # per-sample (rows, cols); batched buffers are (N, rows*cols)
    role: str  # "value" | "delta"


@dataclass
class CpuKernels:
    """The printed forward/backward module and what the Program needs to call it."""

    printer: CpuPrinter
    module_source: str
    source: dict[str, str]
    buffers: list[Buffer]
    forward_args: list[str]
    backward_args: list[str]
    output_view: tuple[str, bool] | None  # (storage name, transposed) for predict
    float32: bool
    # per input of a derivation with inputs=True: the buffer backward leaves ∂L/∂x in
    input_grad_buffers: list[str | None] = field(default_factory=list)

    def optimizer(self, rule: UpdateRule) -> OptimizerKernels:
        """The update and training kernels for one optimizer rule."""
        return self.printer.optimizer(rule)


@dataclass
class OptimizerKernels:
    module_source: str
    source: dict[str, str]
    update_args: list[str]
    train_args: list[str]
    step_source: str  # load before module_source: it imports step_entries from it
    # ``train_lanes`` (the batch-innermost kernel, cpu_lanes.py), if printed: its
    # arguments, and its (entries, batch) buffers as name → entries per sample
    lanes_args: list[str] | None = None
    lanes_buffers: dict[str, int] = field(default_factory=dict)
    # ``train_batched`` (``train`` with every BLAS branch taken, no loop fallback;
    # same arguments), if printed: the batch size from which it is the one to call
    batched_min: int | None = None
    # whether ``train_one`` (``train`` for batches of one sample; same arguments)
    # is printed
    one_sample: bool = False


class CpuPrinter(TrainPrinter, ExpForms, FlatForms):
    """Prints node statements; one ``_print_<Kind>`` method per node kind."""

    EXP = "vexp"  # runtime.vexp: vectorisable, no libm call per element
    # a log-sum-exp keeps its exps and 1/Σ for the softmax that δ reads
    # (cpu_exps.ExpForms._map_body); the batch-innermost printer has its own
    SHARE_SOFTMAX = True

    def __init__(self, deriv: Derivation, dtype: str):
        self.deriv = deriv
        self.float32 = dtype == "float32"
        self.scalar = ScalarPrinter(float32=self.float32, exp=self.EXP)
        self.names: dict[int, str] = {}
        self.consts: list[tuple[str, np.ndarray]] = []
        self.buffers: list[Buffer] = []
        self.comment_names: dict[int, str] = {}
        self._scopes = 0
        self.flat_views: dict[str, str] = {}  # buffer → its 1-d view (_print_flat)
        self.exp_buffers: dict[int, str] = {}  # LogSumExp id → its exps' buffer
        self.inverse_buffers: dict[int, str] = {}  # LogSumExp id → 1 / Σ exp per sample
        # buffers (name, shape) the sample loop being printed zeroes first
        self._group: list[tuple[str, tuple[int, int]]] | None = None
        # per-sample buffers held as one sample's row on the stack (while the
        # training kernel's single sample loop is printed: TrainPrinter.local_rows)
        self.local_rows: frozenset[str] = frozenset()
        self.always_blas = False  # printing train_batched (see batched_min)
        self.one_sample = False  # printing train_one: every step's batch is one sample
        self._name_everything()
        self._map_bodies = {}  # node id → its body and reads (ExpForms._map_body)

    # -- naming --------------------------------------------------------------
    def _find_inlined(self) -> set[int]:
        """Anonymous Maps read once by another Map of the same kernel are computed
        inside their reader's loop instead of in a loop (and buffer) of their own."""
        deriv = self.deriv
        roots = {
            deriv.graph.loss.id,
            *(g.id for g in deriv.grads + deriv.input_grads if g is not None),
        }
        if deriv.graph.output is not None:
            roots.add(deriv.graph.output.id)
        named = {k for k, v in display_names(deriv).items() if v is not None}
        inlined: set[int] = set()
        for nodes in (deriv.forward, deriv.backward):
            here = {n.id for n in nodes}
            readers: dict[int, list[Node]] = {}
            for n in deriv.forward + deriv.backward:
                for a in n.args:
                    readers.setdefault(a.id, []).append(n)
            for node in nodes:
                if not isinstance(node, Map) or node.id in roots:
                    continue
                users = readers.get(node.id, [])
                if len(users) != 1 or not isinstance(users[0], Map) or users[0].id not in here:
                    continue
                user = users[0]
                if node.is_scalar and not user.is_scalar and node.batched == user.batched:
                    inlined.add(node.id)
                elif node.shape == user.shape and node.batched == user.batched:
                    if node.elementwise is not None and node.id in named:
                        continue  # keep activations a_k materialised: backward may read them
                    inlined.add(node.id)
        return inlined

    def _name_everything(self) -> None:
        g = self.deriv.graph
        self.inlined = self._find_inlined()
        for k, p in enumerate(g.params):
            self.names[p.id] = f"p{k}"
        for k, x in enumerate(g.inputs):
            self.names[x.id] = f"x{k}"
        for k, y in enumerate(g.targets):
            self.names[y.id] = f"y{k}"
        owned: dict[int, int] = {}
        for k, gn in enumerate(self.deriv.grads):
            if gn is not None and self._can_own(gn) and gn.id not in owned:
                owned[gn.id] = k
        softmax = self._softmax_sources()
        counters = {"value": 0, "delta": 0}
        for role, nodes, prefix in (
            ("value", self.deriv.forward, "v"),
            ("delta", self.deriv.backward, "d"),
        ):
            for node in nodes:
                if node.id in self.names or isinstance(node, Transpose) or node.id in self.inlined:
                    continue
                if isinstance(node, Leaf):
                    self._name_leaf(node)
                    continue
                if node.id in owned:
                    self.names[node.id] = f"g{owned[node.id]}"
                    continue
                name = f"{prefix}{counters[role]}"
                counters[role] += 1
                self.names[node.id] = name
                self.buffers.append(Buffer(name, node, node.batched, node.shape, role))
                shared = node.id in softmax
                if self._batch_logsumexp(node) or shared:
                    # the exps it sums (minus the largest), for the whole batch
                    name = f"{prefix}{counters[role]}"
                    counters[role] += 1
                    self.exp_buffers[node.id] = name
                    self.buffers.append(Buffer(name, node, True, node.args[0].shape, role))
                if shared:
                    name = f"{prefix}{counters[role]}"
                    counters[role] += 1
                    self.inverse_buffers[node.id] = name
                    self.buffers.append(Buffer(name, node, True, (1, 1), role))
        shown = display_names(self.deriv)
        self.comment_names = {k: comment_text(v) for k, v in shown.items() if v is not None}

    def _can_own(self, node: Node) -> bool:
        return (
            not node.batched
            and not isinstance(node, (Leaf, Transpose))
            and node in self.deriv.backward
        )

    def _name_leaf(self, node: Leaf) -> None:
        if node.role == "seed":
            self.names[node.id] = "inv_n"
        elif node.role == "const":
            name = f"C{len(self.consts)}"
            self.consts.append((name, np.asarray(node.value, dtype=float)))
            self.names[node.id] = name
        else:
            raise GradcError(f"leaf {node.label!r} ({node.role}) is not part of the spec")

    def cname(self, node: Node) -> str:
        known = self.comment_names.get(node.id)
        if known is not None:
            return known
        inner = node.formula(self.cname)
        return inner if isinstance(node, (Transpose, Leaf)) else f"({inner})"

    def name(self, node: Node) -> str:
        return self.names[node.id]

    # -- element access --------------------------------------------------------
    def elem(self, node: Node, i: str, r, c) -> str:
        if isinstance(node, Transpose):
            return self.elem(node.args[0], i, c, r)
        if is_seed(node):
            return "inv_n" if node.batched else self.scalar._num(1)
        name = self.name(node)
        if node.batched:
            flat = r if node.shape[1] == 1 else c
            return f"{name}[{flat}]" if name in self.local_rows else f"{name}[{i}, {flat}]"
        return f"{name}[{r}, {c}]"

    def blas_operand(self, node: Node) -> str:
        if isinstance(node, Transpose):
            inner = node.args[0]
            if inner.batched:
                return self.blas_operand(inner)
            return self.blas_operand(inner) + ".T"
        name = self.name(node)
        return f"{name}[:n]" if node.batched else name

    @staticmethod
    def _loops(out: _Lines, shape, names=("r", "c"), bounds=None):
        """Open loops over a per-sample shape; returns index strings and depth added.

        ``bounds`` (source text per dimension) replaces the literal extents."""
        idx, depth = [], 0
        for d, (extent, nm) in enumerate(zip(shape, names)):
            if extent == 1:
                idx.append("0")
            else:
                out(f"for {nm} in range({extent if bounds is None else bounds[d]}):")
                out.depth += 1
                depth += 1
                idx.append(nm)
        return idx[0], idx[1], depth

    # -- statements ----------------------------------------------------------
    def statement(self, out: _Lines, node: Node) -> None:
        method = getattr(self, f"_print_{type(node).__name__}", None)
        if method is None:
            raise GradcError(f"no CPU kernel form for node kind {type(node).__name__}")
        if self._ahead is not None and node.id == self._ahead.product.id:
            # at a batch of one, the previous step's update sweep formed it already
            out("if not ahead:")
            with out.indent():
                self.statement_only(out, node, method)
            out("ahead = False")
            return
        self.statement_only(out, node, method)

    def statement_only(self, out: _Lines, node: Node, method) -> None:
        with self.scope(out, keep=("i",) if self._group is not None else ()) as inner:
            method(inner, node)

    # -- per-sample groups -----------------------------------------------------
    def _groupable(self, node: Node) -> bool:
        """Statements that can share one ``for i in range(n)`` loop with their
        neighbours: per-sample work with no BLAS branch, and batch sums (zeroed
        before the loop, accumulated in it). Fewer loops: faster to compile (each
        costs Numba ~60 ms) and one sample's values stay in registers and L1."""
        if isinstance(node, (Transpose, Leaf)) or node.id in self.inlined:
            return True  # prints nothing
        if isinstance(node, (Map, SumAll, LogSumExp)):
            batch_exp = self._batch_exp(node) is not None or self._batch_logsumexp(node)
            return node.batched and not batch_exp and not self._flat_map(node)
        if isinstance(node, MatMul):
            if _has_blas_branch(node):
                return False  # BLAS takes the whole batch at once
            return node.batched or node.contract
        return isinstance(node, BatchSum) and not self._blocked_sum(node)

    def print_nodes(self, out: _Lines, nodes, tail: tuple[Node, str] | None = None) -> bool:
        """Print ``nodes`` in order, runs of groupable ones in one sample loop.

        ``tail`` = (node, line): ``line`` (per sample) is printed in the loop of the
        group holding ``node``; returns whether that happened.
        """
        placed = False
        for part in self.sample_runs(nodes):
            if isinstance(part, list):
                placed |= self._print_group(out, part, tail)
            else:
                self.statement(out, part)
        return placed

    def sample_runs(self, nodes) -> list[list[Node] | Node]:
        """``nodes`` in order as the statements :meth:`print_nodes` prints: runs of
        groupable nodes (each one sample loop; a run ends where a node reads a batch
        sum of its own run) and single nodes."""
        parts: list[list[Node] | Node] = []
        run: list[Node] = []
        reduced: set[int] = set()
        for node in nodes:
            if not self._groupable(node):
                parts += [run, node] if run else [node]
                run, reduced = [], set()
                continue
            if any(a.id in reduced for a in node.args):
                parts.append(run)
                run, reduced = [], set()
            run.append(node)
            if isinstance(node, BatchSum) or (isinstance(node, MatMul) and node.contract):
                reduced.add(node.id)
        return [*parts, run] if run else parts

    def _print_group(self, out: _Lines, run: list[Node], tail) -> bool:
        if not run:
            return False
        self._group = []  # batch sums the loop accumulates, zeroed before it
        body = _Lines()
        body.depth = out.depth + 1
        try:
            for node in run:
                self.statement(body, node)
            placed = tail is not None and any(node.id == tail[0].id for node in run)
            if placed:
                body(tail[1])
        finally:
            zeroed, self._group = self._group, None
        if not body.lines:
            return False
        with self.scope(out) as grp:
            self._zero(grp, zeroed)
            grp("for i in range(n):  # one sample at a time through the statements below")
            grp.lines.extend(body.lines)
        return placed

    def _open_samples(self, out: _Lines, node: Node) -> int:
        """Open the sample loop of a per-sample statement (unless its group did)."""
        if node.batched and self._group is None:
            out("for i in range(n):")
            out.depth += 1
            return 1
        return 0

    def _start_sum(self, out: _Lines, node: Node, summand: Node) -> bool:
        """Whether the first sample starts the batch sum ``node`` (each entry
        ``(s if i else 0) + v``: no zeroing pass before the sample loop); small sums
        of a per-sample ``summand`` only. Otherwise its buffer is zeroed here.
        Measured, fit at batch 1 (one sample per step), ns per step, one process:
        3-4-2 sigmoid 85.7 → 82.8, ReLU-CE 59.0 → 54.5."""
        if summand.batched and _small([node.shape]):
            return True
        self._zero_before_samples(out, node)
        return False

    def _add_to_sum(self, target: str, value: str, first: bool) -> str:
        """The line adding ``value`` to the batch sum entry ``target`` (see _start_sum)."""
        if first:
            return f"{target} = ({target} if i else {self.scalar._num(0)}) + {value}"
        return f"{target} += {value}"

    def _zero_before_samples(self, out: _Lines, node: Node) -> None:
        """Zero a batch sum's buffer once before the sample loop that accumulates it."""
        if self._group is not None:
            self._group.append((self.name(node), node.shape))
        else:
            self._zero(out, [(self.name(node), node.shape)])

    def _zero(self, out: _Lines, buffers: list[tuple[str, tuple[int, int]]]) -> None:
        """Zero these (name, shape) buffers: printed loops when they are small, else
        one runtime call for all of them (each call costs ~10 ns at run time)."""
        if _small(shape for _, shape in buffers):
            zero = self.scalar._num(0)
            for name, shape in buffers:
                r, c, d = self._loops(out, shape)
                out(f"{name}[{r}, {c}] = {zero}")
                out.depth -= d
        elif len(buffers) > 1:
            out(f"fill_zero_each({_tuple(name for name, _ in buffers)})")
        elif buffers:
            out(f"fill_zero({buffers[0][0]})")

    @contextmanager
    def scope(self, out: _Lines, keep: tuple[str, ...] = ()):
        """Give the locals of one statement names of their own (``acc`` → ``acc_7``).

        Numba's SSA passes slow down sharply when one name is redefined in many
        loops: reusing ``i`` and ``acc`` in every statement made a 6-layer
        training kernel compile for tens of seconds.
        """
        inner = _Lines()
        inner.depth = out.depth
        yield inner
        if not inner.lines:
            return
        self._scopes += 1
        suffix = f"_{self._scopes}"

        def rename(m: re.Match) -> str:
            return m.group(0) if m.group(0) in keep else m.group(0) + suffix

        for line in inner.lines:
            code, hash_, comment = line.partition("#")
            out.lines.append(_LOCAL.sub(rename, code) + hash_ + comment)

    def _describe(self, node: Node) -> str:
        text = node.formula(self.cname)
        dims = f"{node.shape[0]}×{node.shape[1]}" + (", per sample" if node.batched else "")
        known = self.comment_names.get(node.id)
        return comment_text(f"{known} = {text}   ({dims})" if known else f"{text}   ({dims})")

    def _print_Map(self, out: _Lines, node: Map) -> None:
        if node.id in self.inlined:
            return  # computed inside its reader's loop
        with self._exp_for(node.size):
            self._print_map(out, node)

    def _print_entries(self, out: _Lines, node: Node, body: sp.Expr, reads) -> None:
        """node[i, r, c] = body for every entry (of every sample), loading the reads
        that ``body`` uses first."""
        temps, (reduced,) = sp.cse(body, symbols=sp.numbered_symbols("t"), optimizations="basic")
        used = body.free_symbols
        depth = self._open_samples(out, node)
        r, c, d = self._loops(out, node.shape)
        depth += d
        for sym, arg, scalar in reads:
            if sym not in used:
                continue
            if isinstance(arg, _Stored):
                elem = self.stored(arg.buffer, 0 if scalar else (r if node.shape[1] == 1 else c))
            else:
                elem = self.elem(arg, "i", 0, 0) if scalar else self.elem(arg, "i", r, c)
            out(f"{sym} = {elem}")
        for t, e in temps:
            out(f"{t} = {self.scalar.doprint_expr(e)}")
        out(f"{self.elem(node, 'i', r, c)} = {self.scalar.doprint_expr(reduced)}")
        out.depth -= depth

    @functools.cached_property
    def _large_batches(self) -> bool:
        """Whether the kernels have BLAS products, so run at large batches: then
        narrow layers take their exps over the whole batch (``_batch_exp``) and
        narrow statements use the large-batch forms (cpu_flat.py). A small
        network's one-sample pass (``one_sample_pass``) keeps every statement in
        its loop."""
        nodes = self.deriv.forward + self.deriv.backward
        return any(isinstance(n, MatMul) and _has_blas_branch(n) for n in nodes)

    def _print_SumAll(self, out: _Lines, node: SumAll) -> None:
        out(f"# {self._describe(node)}")
        (a,) = node.args
        opened = self._open_samples(out, node)
        out(f"acc = {self.scalar._num(0)}")
        r, c, d = self._loops(out, a.shape)
        out(f"acc += {self.elem(a, 'i', r, c)}")
        out.depth -= d
        out(f"{self.elem(node, 'i', 0, 0)} = acc")
        out.depth -= opened

    def _print_BatchSum(self, out: _Lines, node: BatchSum) -> None:
        out(f"# {self._describe(node)}")
        (a,) = node.args
        if self._group is None and self._blocked_sum(node):
            self._print_blocked_sum(out, node, a)
            return
        first = self._start_sum(out, node, a)
        opened = self._open_samples(out, a)
        r, c, d = self._loops(out, node.shape)
        out(self._add_to_sum(self.elem(node, "i", r, c), self.elem(a, "i", r, c), first))
        out.depth -= d + opened

    def _print_MatMul(self, out: _Lines, node: MatMul) -> None:
        out(f"# {self._describe(node)}")
        macs = _macs(node)
        blas = _has_blas_branch(node)
        per_batch = node.batched or node.contract
        if blas and self.always_blas:
            self._print_blas(out, node)  # (train_batched: see batched_min)
            return
        if per_batch and self.one_sample:  # (train_one: n is 1)
            if blas and not node.contract and macs >= BLAS_MIN_TOTAL:
                self._print_blas(out, node)
            else:
                self._loop_product(out, node)
            return
        if blas:
            cond = f"n * {macs} >= {BLAS_MIN_TOTAL}" if per_batch else "True"
            if node.contract:
                # a sum of a few outer products is a GEMM with a tiny inner dimension:
                # one sweep over the output, row by row, is several times faster
                cond += f" and n >= {BLAS_MIN_CONTRACT}"
            out(f"if {cond}:")
            with out.indent():
                self._print_blas(out, node)
            out("else:")
            out.depth += 1
        self._loop_product(out, node)
        if blas:
            out.depth -= 1

    def gemm_operand(self, node: Node) -> BlasOperand:
        """How BLAS reads ``node``: a batched one is its buffer's first n rows (one
        sample per row), an unbatched one its (rows, cols) array; C-contiguous
        both, so the leading dimension is a literal."""
        if isinstance(node, Transpose):
            inner = node.args[0]
            # a batched vector and its transpose are stored alike: one row per sample
            return self.gemm_operand(inner) if inner.batched else self.gemm_operand(inner).t()
        if node.batched:
            return BlasOperand(self.name(node), False, node.size, "n", str(node.size))
        rows, cols = node.shape
        return BlasOperand(self.name(node), False, cols, str(rows), str(cols))

    def _gemm_operands(self, node: MatMul) -> tuple[BlasOperand, BlasOperand] | None:
        """(left, right) of ``node`` as one product over the batch, or None."""
        a, b = node.args
        if node.contract:  # Σₙ aₙ bₙ = A[:n]ᵀ · B[:n]
            return self.gemm_operand(a).t(), self.gemm_operand(b)
        if node.batched and not a.batched:  # rows: out[i] = A · b[i]  →  B[:n] · Aᵀ
            return self.gemm_operand(b), self.gemm_operand(a).t()
        if node.batched and b.batched:
            return None  # a product per sample of two per-sample factors
        return self.gemm_operand(a), self.gemm_operand(b)

    def _print_blas(self, out: _Lines, node: MatMul) -> None:
        """The product by one CBLAS call, its operands' layouts resolved here: ``gemv``
        for one row or one column, ``gemm`` otherwise (a small float64 W copied
        row-major first; blas.py measured both). Without CBLAS, or for the float32
        products blas.matmul takes its own way (a short, wide x·Wᵀ), ``matmul``."""
        pair = self._gemm_operands(node) if THIN else None
        if pair is None or (
            self.float32
            and pair[0].rows == "n"
            and not pair[0].trans
            and pair[1].trans
            and int(pair[1].cols) >= TRANSPOSED_MIN_COLS
        ):
            out(self._blas_call(node))
            return
        left, right = pair
        target = self.gemm_operand(node)
        if right.cols == "1":  # one column: y = op(left)·x
            out(gemv_call(left, right.vector(), target.vector()))
            return
        if left.rows == "1":  # one row: yᵀ = xᵀ·op(right), y = op(right)ᵀ·x
            out(gemv_call(right.t(), left.vector(), target.vector()))
            return
        branches = []
        if left.rows == "n":  # one sample
            one = gemv_call(right.t(), left.first_row().vector(), target.first_row().vector())
            if self.one_sample:  # (train_one: n is 1)
                out(one)
                return
            branches.append(("n == 1", [one]))
        m, k = right.cols, right.rows
        if (
            not self.float32
            and left.rows == "n"
            and not left.trans
            and right.trans
            and int(m) * int(k) < COPIED_MAX_ENTRIES
            and int(m) <= COPIED_MAX_OUT
        ):
            # OpenBLAS's x·Wᵀ is slow on a small W (blas.COPIED_*): W copied first
            copy = f"w_{target.array}"
            lines = [
                "# W copied row-major first: OpenBLAS's x·Wᵀ is slow on a small W",
                f"{copy} = local_matrix({k}, {m}, F)",
                f"for r in range({m}):",
                f"    for c in range({k}):",
                f"        {copy}[c, r] = {right.array}[r, c]",
                gemm_call(left, BlasOperand(copy, False, int(m), k, m), target),
            ]
            branches.append((f"n >= {COPIED_MIN_ROWS}", lines))
        last = gemm_call(left, right, target)
        if not branches:
            out(last)
            return
        for j, (cond, lines) in enumerate(branches):
            out(f"{'if' if j == 0 else 'elif'} {cond}:")
            with out.indent():
                for line in lines:
                    out(line)
        out("else:")
        with out.indent():
            out(last)

    def _blas_call(self, node: MatMul) -> str:
        a, b = node.args
        o = self.blas_operand(node)
        if node.contract:  # Σₙ aₙ bₙ = A[:n]ᵀ · B[:n]
            return f"matmul({self.blas_operand(a)}.T, {self.blas_operand(b)}, {o})"
        if node.batched and not a.batched:  # rows: out[i] = A · b[i]  →  B[:n] · Aᵀ
            return f"matmul({self.blas_operand(b)}, {_transposed(self.blas_operand(a))}, {o})"
        if node.batched and not b.batched:  # rows: out[i] = a[i] · B
            return f"matmul({self.blas_operand(a)}, {self.blas_operand(b)}, {o})"
        return f"matmul({self.blas_operand(a)}, {self.blas_operand(b)}, {o})"

    def _loop_product(self, out: _Lines, node: MatMul) -> None:
        a, b = node.args
        R, K, C = a.shape[0], a.shape[1], b.shape[1]
        zero = self.scalar._num(0)
        if node.contract:
            # outer products summed over the batch; the inner loop runs along a row
            first = self._start_sum(out, node, a)
            opened = self._open_samples(out, a)
            r, _, d1 = self._loops(out, (R, 1))
            out(f"av = {self.elem(a, 'i', r, 0)}")
            _, c, d2 = self._loops(out, (1, C))
            term = f"av * {self.elem(b, 'i', 0, c)}"
            out(self._add_to_sum(self.elem(node, "i", r, c), term, first))
            out.depth -= d1 + d2 + opened
            return
        opened = self._open_samples(out, node)
        r, c, d = self._loops(out, (R, C))
        if K < DOT_SPLIT_MIN:
            out(f"acc = {zero}")
            if K == 1:
                out(f"acc += {self.elem(a, 'i', r, 0)} * {self.elem(b, 'i', 0, c)}")
            else:
                out(f"for k in range({K}):")
                with out.indent():
                    out(f"acc += {self.elem(a, 'i', r, 'k')} * {self.elem(b, 'i', 'k', c)}")
            out(f"{self.elem(node, 'i', r, c)} = acc")
        else:
            self._split_dot(out, node, r, c)
        out.depth -= d + opened

    def _split_dot(self, out: _Lines, node: MatMul, r: str, c: str) -> None:
        """A dot product over K ≥ DOT_SPLIT_MIN terms with DOT_LANES partial sums.

        One accumulator chains every multiply-add on the previous one (a few
        cycles each, and LLVM may not reorder floating-point sums); independent
        partial sums overlap, and the SLP vectoriser packs them into SIMD lanes.
        """
        a, b = node.args
        K = a.shape[1]
        lanes = DOT_LANES
        zero = self.scalar._num(0)
        accs = [f"acc{q}" for q in range(lanes)]
        out(" = ".join(accs) + f" = {zero}")
        body = K - K % lanes
        out(f"for k in range(0, {body}, {lanes}):")
        with out.indent():
            for q, acc in enumerate(accs):
                k = "k" if q == 0 else f"k + {q}"
                out(f"{acc} += {self.elem(a, 'i', r, k)} * {self.elem(b, 'i', k, c)}")
        for q in range(K % lanes):  # the remainder, unrolled
            k = str(body + q)
            out(f"{accs[q]} += {self.elem(a, 'i', r, k)} * {self.elem(b, 'i', k, c)}")
        pairs = " + ".join(f"({accs[q]} + {accs[q + 1]})" for q in range(0, lanes, 2))
        out(f"{self.elem(node, 'i', r, c)} = {pairs}")

    def _print_EntrySum(self, out: _Lines, node: EntrySum) -> None:
        out(f"# {comment_text(node.label)}: one independent expression per entry (naive)")
        by_symbol = {a.symbol: a for a in node.args}
        zero = self.scalar._num(0)
        rows, cols = node.shape
        for r in range(rows):
            for c in range(cols):
                out(f"{self.elem(node, 'i', r, c)} = {zero}")
        if node.atoms:
            out("for i in range(n):")
            out.depth += 1
        for r in range(rows):
            for c in range(cols):
                expr = node.exprs[r][c]
                atoms = entry_atoms(expr, by_symbol)
                local = {}
                for k, a in enumerate(atoms):
                    sym = sp.Symbol(f"a{k}")
                    local[a] = sym
                    if isinstance(a, MatrixElement):
                        out(f"{sym} = {self.elem(by_symbol[a.parent], 'i', int(a.i), int(a.j))}")
                    else:
                        out(f"{sym} = {self.elem(by_symbol[a], 'i', 0, 0)}")
                temps, (reduced,) = sp.cse(
                    expr.xreplace(local), symbols=sp.numbered_symbols("t"), optimizations="basic"
                )
                for t, e in temps:
                    out(f"{t} = {self.scalar.doprint_expr(e)}")
                scale = "inv_n * " if node.atoms else ""
                out(f"{self.elem(node, 'i', r, c)} += {scale}({self.scalar.doprint_expr(reduced)})")
        if node.atoms:
            out.depth -= 1

    def _print_Transpose(self, out: _Lines, node: Transpose) -> None:
        pass  # a view: readers index the argument directly

    def _print_Leaf(self, out: _Lines, node: Leaf) -> None:
        pass

    # -- kernels -------------------------------------------------------------
    def data_names(self) -> list[str]:
        g = self.deriv.graph
        return [self.name(x) for x in g.inputs] + [self.name(y) for y in g.targets]

    def param_names(self) -> list[str]:
        return [f"p{k}" for k in range(len(self.deriv.graph.params))]

    def grad_names(self) -> list[str]:
        return [f"g{k}" for k in range(len(self.deriv.graph.params))]

    def value_names(self) -> list[str]:
        return [b.name for b in self.buffers if b.role == "value"]

    def delta_names(self) -> list[str]:
        return [b.name for b in self.buffers if b.role == "delta"]

    # -- bodies: shared by the stand-alone kernels and the fused training kernel --
    def forward_body(self, out: _Lines) -> None:
        """Forward statements; leaves the batch's mean loss in ``loss``."""
        loss = self.deriv.graph.loss
        if not loss.batched:
            self.print_nodes(out, self.deriv.forward)
            out(f"loss = {self.elem(loss, 'i', 0, 0)} * 1.0")
            return
        out("loss = 0.0")
        summed = f"loss += {self.elem(loss, 'i', 0, 0)}"
        if not self.print_nodes(out, self.deriv.forward, tail=(loss, summed)):
            with self.scope(out) as inner:
                inner("for i in range(n):")
                with inner.indent():
                    inner(summed)
        out("loss = loss * inv_n")

    def backward_body(self, out: _Lines, skip: frozenset[int] = frozenset()) -> None:
        self.print_nodes(out, [node for node in self.deriv.backward if node.id not in skip])
        self._gradient_copies(out)

    def one_sample_pass(self, skip: frozenset[int] = frozenset()) -> bool:
        """Whether forward and backward can run as one sample loop (no BLAS branch, no
        batch-wide value between them): a small network, whose sample then goes
        forward and back while its values are still in L1, as one writes it by hand."""
        nodes = self.deriv.forward + [n for n in self.deriv.backward if n.id not in skip]
        return self.deriv.graph.loss.batched and all(self._groupable(n) for n in nodes)

    def forward_backward_body(self, out: _Lines, skip: frozenset[int] = frozenset()) -> None:
        """Forward and backward statements in one sample loop; the batch's mean loss
        is left in ``loss`` (see :meth:`one_sample_pass`)."""
        loss = self.deriv.graph.loss
        out("loss = 0.0")
        nodes = self.deriv.forward + [n for n in self.deriv.backward if n.id not in skip]
        self.print_nodes(out, nodes, tail=(loss, f"loss += {self.elem(loss, 'i', 0, 0)}"))
        out("loss = loss * inv_n")
        self._gradient_copies(out)

    def _gradient_copies(self, out: _Lines) -> None:
        """g<k> for gradients that are not computed straight into their buffer."""
        zero = self.scalar._num(0)
        for k, gn in enumerate(self.deriv.grads):
            p = self.deriv.graph.params[k]
            if gn is not None and self.names.get(gn.id) == f"g{k}":
                continue
            out(
                f"# ∂L/∂{comment_text(p.label)}"
                + (" = 0: the loss does not depend on it" if gn is None else "")
            )
            r, c, d = self._loops(out, p.shape)
            value = zero if gn is None else self.elem(gn, "0", r, c)
            out(f"g{k}[{r}, {c}] = {value}")
            out.depth -= d

    def forward_kernel(self) -> tuple[str, list[str]]:
        args = ["n", "inv_n", *self.param_names(), *self.data_names(), *self.value_names()]
        out = _Lines()
        out(_DECORATOR)
        out(f"def forward({', '.join(args)}):")
        with out.indent():
            out('"""Forward pass over a batch of n samples; returns the mean loss."""')
            at = len(out.lines)
            self.forward_body(out)
            self._insert_flat_views(out, at)
            out("return loss")
        return out.text(), args

    def backward_kernel(self) -> tuple[str, list[str]]:
        args = ["n", "inv_n", *self.param_names(), *self.data_names(), *self.value_names()]
        args += [*self.delta_names(), *self.grad_names()]
        out = _Lines()
        out(_DECORATOR)
        out(f"def backward({', '.join(args)}):")
        with out.indent():
            if self.deriv.strategy == "naive":
                out(
                    '"""Backward pass (naive): each gradient entry derived and computed on its own."""'
                )
            else:
                out(
                    '"""Backward pass (shared δ): every δ computed once; gradients are batch means."""'
                )
            at = len(out.lines)
            self.backward_body(out)
            self._insert_flat_views(out, at)
            out("return 0")
        return out.text(), args

    def update_kernel(self, rule: UpdateRule) -> tuple[str, list[str]]:
        args = ["hp", "t", "scale"]
        for k in range(len(self.deriv.graph.params)):
            args += [f"p{k}", f"g{k}"] + [f"s{k}_{j}" for j in range(len(rule.state_names))]
        out = _Lines()
        out(_DECORATOR)
        out(f"def update({', '.join(args)}):")
        with out.indent():
            out('"""One optimizer step on every parameter; False if any result is not finite."""')
            self.update_body(out, rule)
            out("return bad == 0")
        return out.text(), args

    def module_doc(self, what: str, target: str, notes: tuple[str, ...] = ()) -> _Lines:
        """A generated module's docstring: what it holds, and which compiler-chosen
        name stands for which parameter, input and target of the spec."""
        header = _Lines()
        g = self.deriv.graph
        header(f'"""gradc generated kernels ({target}): {what}.')
        header("")
        header(
            f"strategy: {self.deriv.strategy}; dtype: {'float32' if self.float32 else 'float64'}"
        )
        for p in g.params:
            header(f"parameter {self.name(p)}: {comment_text(p.label)} {p.shape[0]}×{p.shape[1]}")
        for x in g.inputs + g.targets:
            header(
                f"{x.role} {self.name(x)}: {comment_text(x.label)} {x.shape[0]}×{x.shape[1]} per sample"
            )
        for line in notes:
            header(line)
        header('"""')
        return header

    def _header(self, what: str, imports: list[str]) -> _Lines:
        return self._imports(self.module_doc(what, "CPU, Numba"), imports)

    def _imports(self, header: _Lines, imports: list[str]) -> _Lines:
        """The import block and the float type ``F`` every kernel module starts with."""
        for line in ("import math", "", "import numba", "import numpy as np", "", *imports, ""):
            header(line)
        header(f"F = np.{'float32' if self.float32 else 'float64'}")
        return header

    def model(self) -> CpuKernels:
        fwd, fwd_args = self.forward_kernel()
        bwd, bwd_args = self.backward_kernel()
        header = self._header("forward and backward", [_RUNTIME_IMPORT])
        for name, value in self.consts:
            header(f"{name} = np.array({value.tolist()!r}, dtype=F)")
        header("")
        parts = {"forward": _decorated(fwd), "backward": _decorated(bwd)}
        text = header.text() + "\n" + "\n\n".join(parts.values())
        return CpuKernels(
            printer=self,
            module_source=text,
            source=parts,
            buffers=self.buffers,
            forward_args=fwd_args,
            backward_args=bwd_args,
            output_view=self.output_view(),
            float32=self.float32,
            input_grad_buffers=[
                None if d is None else self.name(d) for d in self.deriv.input_grads
            ],
        )

    def batched_min(self) -> int | None:
        """The batch size from which every product with a BLAS branch takes it (None:
        no such product). A training kernel for such batches needs no loop fallback:
        only an epoch's last, partial batch may be smaller, and BLAS takes any n.
        Those loops were about a quarter of the training kernel's compile (64-32-10:
        4.1 → 3.1 s in one process)."""
        needs = []
        for node in self.deriv.forward + self.deriv.backward:
            if not (isinstance(node, MatMul) and _has_blas_branch(node)):
                continue
            if not (node.batched or node.contract):
                continue
            need = -(-BLAS_MIN_TOTAL // _macs(node))
            needs.append(max(need, BLAS_MIN_CONTRACT) if node.contract else need)
        return max(needs) if needs else None

    def optimizer(self, rule: UpdateRule) -> OptimizerKernels:
        upd, upd_args = self.update_kernel(rule)
        trn, trn_args = self.train_kernel(rule)
        batched_min = self.batched_min()
        if batched_min is not None:
            self.always_blas = True
            try:
                trn_batched, _ = self.train_kernel(rule, kernel="train_batched")
            finally:
                self.always_blas = False
        # the rule's step kernels depend on the rule and the dtype only: a module of
        # their own, compiled once per machine and shared by every network
        steps = _decorated(self.step_kernels(rule))
        dtype = "float32" if self.float32 else "float64"
        step_header = _Lines()
        step_header('"""gradc generated kernels (CPU, Numba): one optimizer rule, entrywise.')
        step_header("")
        step_header(f"dtype: {dtype}; shared by every network trained with this rule.")
        step_header('"""')
        step_source = self._imports(step_header, []).text() + "\n\n" + steps
        header = self._header(
            "optimizer update and fused training epoch",
            [
                _RUNTIME_IMPORT,
                f"from {module_name(step_source)} import "
                "step_each, step_entries, step_outer, step_outer_dot",
            ],
        )
        for name, value in self.consts:
            header(f"{name} = np.array({value.tolist()!r}, dtype=F)")
        header("")
        parts = {"update": _decorated(upd), "train": _decorated(trn)}
        if batched_min is not None:
            parts["train_batched"] = _decorated(trn_batched)
        if self.deriv.graph.loss.batched:
            # batches of one: every branch on the batch size resolved when printed
            self.one_sample = True
            try:
                parts["train_one"] = _decorated(self.train_kernel(rule, kernel="train_one")[0])
            finally:
                self.one_sample = False
        # imported here: cpu_lanes builds on this module's printer
        from .cpu_lanes import LanesPrinter, lanes_eligible

        lanes_args, lanes_buffers = None, {}
        if lanes_eligible(self):
            lanes = LanesPrinter(self.deriv, dtype)
            parts["train_lanes"], lanes_args = lanes.train_kernel(rule)
            lanes_buffers = lanes.lanes_buffers()
        text = header.text() + "\n" + "\n\n".join(parts.values())
        return OptimizerKernels(
            text,
            {"step": steps, **parts},
            upd_args,
            trn_args,
            step_source,
            lanes_args,
            lanes_buffers,
            batched_min,
            "train_one" in parts,
        )

    def output_view(self) -> tuple[str, bool] | None:
        """(storage name, transposed) of the spec's output, for ``predict``."""
        node = self.deriv.graph.output
        if node is None:
            return None
        transposed = False
        while isinstance(node, Transpose):
            node, transposed = node.args[0], not transposed
        return self.elem_storage(node), transposed

    def elem_storage(self, node: Node) -> str:
        if is_seed(node):
            raise GradcError("the output cannot be the loss seed")
        return self.name(node)


# names of statement-local variables in generated code (renamed per statement)
_LOCAL = re.compile(
    r"\b(?:i|r|c|k|j|z|w|wa\d+|wb\d+|acc\d*|av|big|top|sq\d*|th|gr|row|a\d+|t\d+|t_\d+|st\d+|new_\w+)\b"
)


def _macs(node: MatMul) -> int:
    """Multiply-adds of one sample's product."""
    a, b = node.args
    return a.shape[0] * a.shape[1] * b.shape[1]


def _has_blas_branch(node: MatMul) -> bool:
    """Whether a product is printed with a BLAS branch (taken from a batch size on)."""
    return _macs(node) >= BLAS_MIN_MACS


def _transposed(operand: str) -> str:
    return operand[:-2] if operand.endswith(".T") else operand + ".T"


# the BLAS that matmul calls is part of the source: a kernel cached with one BLAS
# (an external function it calls by name) is never loaded with the other
_RUNTIME_IMPORT = (
    "from gradc.kernels.runtime import "
    "abs_bound, copy_into, fill_zero, fill_zero_each, gather_columns, gather_rows, gram_sq, local_row,"
    " gemm_rows, gemm_rows_nt, gemv_rows, local_matrix,"
    " matmul, matmul_acc, rows_finite, shuffle_epoch, step_failure, sum_squares, sum_squares_into,"
    " vexp"
    f"  # matmul: {BLAS}; helpers {RUNTIME_DIGEST}"
)
# A kernel that calls no BLAS allocates nothing and holds no reference beyond the
# call, so it is compiled without Numba's reference counting: a third less
# compile time (no incref/decref to lower around every array view). BLAS
# (runtime.matmul, i.e. np.dot) needs it: Numba compiles the callee with the
# caller's flags.
_DECORATOR_NO_NRT = '@numba.njit(cache=True, error_model="numpy", _nrt=False)'


def _decorated(kernel: str) -> str:
    """``kernel`` with the lighter decorator when it calls no BLAS."""
    if "matmul(" in kernel or "np.dot(" in kernel:
        return kernel
    return kernel.replace(_DECORATOR, _DECORATOR_NO_NRT)


def print_cpu(deriv: Derivation, dtype: str = "float64") -> CpuKernels:
    """Print the kernels of a derivation for the CPU target.

    >>> import sympy as sp, gradc as gc
    >>> from gradc.graph.lower import lower
    >>> from gradc.derivation.reverse import derive_shared
    >>> w = sp.Symbol("w")
    >>> k = print_cpu(derive_shared(lower(gc.Spec(w**2, params=[w]))))
    >>> sorted(k.source)
    ['backward', 'forward']
    """
    return CpuPrinter(deriv, dtype).model()
