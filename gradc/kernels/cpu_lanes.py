"""kernels stage: the batch-innermost ("lanes") training kernel for narrow networks.

The CPU printer (``cpu.py``) runs a small network one sample at a time: a
layer of 3 or 4 units fills no SIMD register, so its loops run scalar, and
each sigmoid calls libm. Here every per-sample buffer is stored transposed,
(entries, batch), and every statement loops over the batch *innermost*::

    for r in range(d1T.shape[0]):          # δa1[r] for the whole batch at once
        wa0 = p2[0, r]                     #   (loop-invariant loads hoisted)
        wa1 = p2[1, r]
        for i in range(n):
            d1T[r, i] = wa0 * d0T[0, i] + wa1 * d0T[1, i]

so LLVM vectorises along the batch (4 doubles, or 8 floats, per instruction)
whatever the layer widths, ``vexp`` included, and batch sums become
vectorised reductions (the kernel allows floating-point reassociation; the
sums' rounding then differs from a sequential sum by a few ulp). Measured on
3-4-2, the two kernels side by side in one process: 2.2× faster at batch 32,
2.7× at batch 256 (benchmarks/results/peers.md has the whole fit against peers).

Only the training kernel has this form, and only networks whose every product
is below the BLAS threshold use it (``lanes_eligible``); the Program calls it
for batch sizes from ``LANES_MIN_BATCH``. Numba compiles it on first call, so
programs that never train at such a batch size never pay for it.
"""

from __future__ import annotations

import sympy as sp

from ..graph.nodes import BatchSum, EntrySum, Leaf, LogSumExp, Map, MatMul, Node, SumAll, Transpose
from ..spec.optimizers import UpdateRule
from .common import Lines as _Lines
from .cpu import CpuPrinter, _has_blas_branch
from .cpu_exps import _SOFTMAX_NOTE, _Stored
from .cpu_train import _DECORATOR_REASSOC

__all__ = ["LANES_MIN_BATCH", "LanesPrinter", "lanes_eligible"]

# From this batch size fit uses the lanes kernel (two SIMD vectors of doubles).
LANES_MIN_BATCH = 8
# Products over at most this many terms are one unrolled expression per batch loop.
UNROLL_MAX = 8


def lanes_eligible(printer: CpuPrinter) -> bool:
    """Whether a derivation gets a lanes training kernel: shared strategy, a
    per-sample loss over data, and no product large enough for BLAS (those
    layers are wide enough to vectorise one sample at a time)."""
    deriv = printer.deriv
    nodes = deriv.forward + deriv.backward
    return (
        deriv.graph.loss.batched
        and bool(printer.data_names())
        and not any(isinstance(n, EntrySum) for n in nodes)
        and not any(isinstance(n, MatMul) and _has_blas_branch(n) for n in nodes)
        and not printer.fused_gradients()
        and all(1 in n.shape for n in nodes if n.batched)
    )


def _per_sample(node: Node) -> bool:
    """Whether ``node``'s entries differ between samples (the seed 1/n does not)."""
    while isinstance(node, Transpose):
        node = node.args[0]
    return node.batched and not (isinstance(node, Leaf) and node.role == "seed")


class LanesPrinter(CpuPrinter):
    """CpuPrinter with per-sample buffers stored (entries, batch) as ``<name>T``
    and the batch loop innermost in every statement that dominates a step."""

    # -- element access: the sample index is the column ---------------------------
    def elem(self, node: Node, i: str, r, c) -> str:
        if isinstance(node, Transpose):
            return self.elem(node.args[0], i, c, r)
        if _per_sample(node):
            flat = r if node.shape[1] == 1 else c
            return f"{self.name(node)}T[{flat}, {i}]"
        return super().elem(node, i, r, c)

    def _groupable(self, node: Node) -> bool:
        return False  # every statement has its own batch loops

    def _node_loops(self, out: _Lines, node: Node, names=("r", "c")):
        """``_loops`` over a node's entries, bounded by its buffer's run-time shape.

        With a literal bound LLVM unrolls a loop over 2–4 rows and then vectorises
        every copy of the batch loop inside it (runtime alias checks and remainder
        loops included): the same speed, but 3-4-2's kernel took 4.2 s to compile
        instead of 2.7.
        """
        while isinstance(node, Transpose):
            node = node.args[0]
            names = names[::-1]
        if node.batched:  # (entries, batch): the one non-1 extent is dimension 0
            store = f"{self.name(node)}T"
            bounds = (f"{store}.shape[0]", f"{store}.shape[0]")
        else:
            store = self.name(node)
            bounds = (f"{store}.shape[0]", f"{store}.shape[1]")
        first, second, depth = self._loops(out, node.shape, names, bounds)
        if names != ("r", "c"):  # a transposed view: its (r, c) is the storage's (c, r)
            first, second = second, first
        return first, second, depth

    @staticmethod
    def stored(buffer: str, entry) -> str:
        return f"{buffer}T[{entry}, i]"

    def _batch_loop(self, out: _Lines) -> None:
        out("for i in range(n):")
        out.depth += 1

    # -- statements ----------------------------------------------------------
    def _print_Map(self, out: _Lines, node: Map) -> None:
        if node.id in self.inlined:
            return
        if not node.batched:
            return super()._print_Map(out, node)
        out(f"# {self._describe(node)}")
        body, reads = self._map_body(node)  # a softmax read from its log-sum-exp
        if any(isinstance(arg, _Stored) for _, arg, _ in reads):
            out(f"#   {_SOFTMAX_NOTE}")
        temps, (reduced,) = sp.cse(body, symbols=sp.numbered_symbols("t"), optimizations="basic")
        r, c, depth = self._node_loops(out, node)
        varying = []
        used = body.free_symbols
        for sym, arg, scalar in reads:
            rc = (0, 0) if scalar else (r, c)
            if sym not in used:
                continue
            if isinstance(arg, _Stored):
                flat = rc[0] if node.shape[1] == 1 else rc[1]
                varying.append((sym, self.stored(arg.buffer, flat)))
            elif _per_sample(arg):
                varying.append((sym, self.elem(arg, "i", *rc)))
            else:  # the same for every sample: loaded once, before the batch loop
                out(f"{sym} = {self.elem(arg, 'i', *rc)}")
        self._batch_loop(out)
        for sym, elem in varying:
            out(f"{sym} = {elem}")
        for t, e in temps:
            out(f"{t} = {self.scalar.doprint_expr(e)}")
        out(f"{self.elem(node, 'i', r, c)} = {self.scalar.doprint_expr(reduced)}")
        out.depth -= depth + 1

    def _print_SumAll(self, out: _Lines, node: SumAll) -> None:
        if not node.batched:
            return super()._print_SumAll(out, node)
        out(f"# {self._describe(node)}")
        (a,) = node.args
        total = self.elem(node, "i", 0, 0)
        self._batch_loop(out)
        out(f"{total} = {self.scalar._num(0)}")
        out.depth -= 1
        r, c, d = self._node_loops(out, a)
        self._batch_loop(out)
        out(f"{total} += {self.elem(a, 'i', r, c)}")
        out.depth -= d + 1

    def _print_LogSumExp(self, out: _Lines, node: LogSumExp) -> None:
        (a,) = node.args
        if not node.batched or a.size > UNROLL_MAX:
            return super()._print_LogSumExp(out, node)
        # two batch loops: the exps vectorise in the first; the log (a libm call,
        # which keeps its loop scalar) is alone in the second, the max recomputed
        out(f"# {self._describe(node)}   (max subtracted first: no overflow)")
        rows, cols = a.shape
        entries = [self.elem(a, "i", r, c) for r in range(rows) for c in range(cols)]
        biggest = entries[0] if len(entries) == 1 else f"max({', '.join(entries)})"
        total = self.elem(node, "i", 0, 0)
        kept = self.exp_buffers.get(node.id) if node.id in self.inverse_buffers else None
        for last in (False, True):
            self._batch_loop(out)
            out(f"big = {biggest}")
            if last:
                self._store_inverse(out, node, total)
                out(f"{total} = big + math.log({total})")
            elif kept:  # each exp kept for the softmax δ reads
                for k, e in enumerate(entries):
                    out(f"{self.stored(kept, k)} = {self.EXP}({e} - big)")
                out(f"{total} = " + " + ".join(self.stored(kept, k) for k in range(len(entries))))
            else:
                out(f"{total} = " + " + ".join(f"{self.EXP}({e} - big)" for e in entries))
            out.depth -= 1

    def _print_BatchSum(self, out: _Lines, node: BatchSum) -> None:
        out(f"# {self._describe(node)}")
        (a,) = node.args
        r, c, d = self._node_loops(out, node)
        out(f"acc = {self.scalar._num(0)}")
        self._batch_loop(out)
        out(f"acc += {self.elem(a, 'i', r, c)}")
        out.depth -= 1
        out(f"{self.elem(node, 'i', r, c)} = acc")
        out.depth -= d

    def _loop_product(self, out: _Lines, node: MatMul) -> None:
        a, b = node.args
        K = a.shape[1]
        if node.contract:
            # Σₙ aₙ·bₙ: each entry is a dot product along the batch
            r, c, d = self._node_loops(out, node)
            out(f"acc = {self.scalar._num(0)}")
            k, dk = ("0", 0) if K == 1 else ("k", 1)
            if dk:
                out(f"for k in range({K}):")
                out.depth += 1
            self._batch_loop(out)
            out(f"acc += {self.elem(a, 'i', r, k)} * {self.elem(b, 'i', k, c)}")
            out.depth -= 1 + dk
            out(f"{self.elem(node, 'i', r, c)} = acc")
            out.depth -= d
            return
        if not node.batched:
            return super()._loop_product(out, node)
        r, c, d = self._node_loops(out, node)
        target = self.elem(node, "i", r, c)
        if K <= UNROLL_MAX:
            # one expression per sample; the weights are loaded once per row
            terms = []
            for q in range(K):
                factors = []
                for side, operand, ref in (
                    ("wa", a, self.elem(a, "i", r, q)),
                    ("wb", b, self.elem(b, "i", q, c)),
                ):
                    if _per_sample(operand):
                        factors.append(ref)
                    else:
                        out(f"{side}{q} = {ref}")
                        factors.append(f"{side}{q}")
                terms.append(" * ".join(factors))
            self._batch_loop(out)
            out(f"{target} = " + " + ".join(terms))
            out.depth -= 1 + d
            return
        # longer: accumulate one term at a time into the output row
        self._batch_loop(out)
        out(f"{target} = {self.scalar._num(0)}")
        out.depth -= 1
        out(f"for k in range({K}):")
        out.depth += 1
        x, y = self.elem(a, "i", r, "k"), self.elem(b, "i", "k", c)
        if not _per_sample(a):
            out(f"w = {x}")
            x = "w"
        elif not _per_sample(b):
            out(f"w = {y}")
            y = "w"
        self._batch_loop(out)
        out(f"{target} += {x} * {y}")
        out.depth -= 2 + d

    # -- the kernel ------------------------------------------------------------
    def lanes_buffers(self) -> dict[str, int]:
        """The kernel's (entries, batch) buffers: name → entries per sample."""
        g = self.deriv.graph
        per_sample = [(self.name(x), x.size) for x in g.inputs + g.targets]
        per_sample += [(b.name, b.shape[0] * b.shape[1]) for b in self.buffers if b.batched]
        return {f"{name}T": size for name, size in per_sample}

    def train_kernel(self, rule: UpdateRule) -> tuple[str, list[str]]:
        """``train_lanes``: ``train``'s signature with the data gathered into
        ``<name>T`` (entries, batch) and every per-sample buffer stored that way."""
        data = self.data_names()
        shared = [b.name for b in self.buffers if not b.batched]  # e.g. ‖W‖² of a penalty
        args = self.train_args(rule, [*self.lanes_buffers(), *shared])
        loss = self.deriv.graph.loss
        out = _Lines()
        # reassociation lets the batch sums vectorise (a strict left-to-right sum cannot)
        before = (
            ["p_bound = math.inf  # see the step's end"] if self.inline_bounded(rule, {}) else []
        )
        with self.train_loop(out, "train_lanes", args, _DECORATOR_REASSOC, before):
            for name in data:
                out(f"gather_columns({name}T, {name.upper()}, perm, lo, n, shuffle)")
            out("# ---- forward and backward, the batch innermost")
            self.print_nodes(out, self.deriv.forward + self.deriv.backward)
            self._gradient_copies(out)
            with self.scope(out) as inner:
                inner("loss = 0.0")
                self._batch_loop(inner)
                inner(f"loss += {self.elem(loss, 'i', 0, 0)}")
                inner.depth -= 1
            out("loss = loss * inv_n")
            self.record_loss(out)
            self.norms_and_update(out, rule, {})
        return out.text(), args
