"""kernels stage: the large-batch forms of narrow per-sample statements (CPU).

In a kernel with BLAS products the batch is large, and a statement of fewer
than ``FLAT_MAX_ENTRIES`` entries per sample printed one sample at a time
costs more in its loops than in its arithmetic (~10 ns per sample and loop:
a runtime row stride, a remainder loop). Two forms (``FlatForms``, a part of
``CpuPrinter``) avoid that:

- **flat**: ``node = body`` as one loop over every sample's entries,
  ``for k in range(n * 10)``, through 1-d views of the buffers made once per
  kernel call, when the body reads only per-sample vectors of its size and
  step constants (``_flat_ok``);
- **blocked sums**: Σₙ over the batch four samples per pass, which a sum one
  sample per pass waits on its own store to do.

Wider rows vectorise well one sample at a time, and their sample loop keeps a
row in L1 from its δ to its bias gradient: they keep the per-sample forms.
"""

from __future__ import annotations

import sympy as sp

from ..graph.nodes import BatchSum, Leaf, Map, Node, Transpose
from .common import Lines as _Lines
from .common import is_seed
from .cpu_exps import _Stored

__all__ = ["FLAT_MAX_ENTRIES", "FlatForms"]

# In kernels with BLAS products, per-sample statements of fewer entries than
# this run flat over the whole batch and their batch sums four samples per pass
# (``_print_flat``, ``_print_blocked_sum``): a loop per sample costs ~10 ns and a
# narrow sum waits on its own store. Wider rows vectorise well one sample at a
# time, and a sample loop keeps a row in L1 from its δ to its bias gradient
# (784-256-10, batch 256, same process: its 256-entry δ and Σₙ δ took ~78 µs
# flat, ~67 in one sample loop).
FLAT_MAX_ENTRIES = 64


class FlatForms:
    """The large-batch statement forms of ``CpuPrinter`` (which supplies
    ``inlined``, ``scalar``, ``name``, ``elem``, the loop helpers, the Map
    bodies and ``flat_views``, the 1-d views a kernel's flat statements read)."""

    # set by CpuPrinter: whether the kernels have BLAS products (large batches)
    _large_batches: bool
    flat_views: dict[str, str]

    def _flat_ok(self, node: Node, body: sp.Expr, reads) -> bool:
        """Whether ``node = body`` can run as one loop over the entries of every
        sample (``_print_flat``): in kernels with BLAS products, whose batches are
        large, for a per-sample vector whose reads are per-sample vectors of its
        size and step constants (no parameter read entry by entry, e.g. a bias)."""
        if not (self._large_batches and isinstance(node, Map) and node.batched):
            return False
        if node.size >= FLAT_MAX_ENTRIES:
            return False
        if node.id in self.inlined or 1 not in node.shape:
            return False
        used = body.free_symbols
        for sym, arg, scalar in reads:
            if sym not in used or is_seed(arg):
                continue
            if isinstance(arg, (_Stored, Leaf)):  # data: a new slice every step
                return False
            if arg.batched:
                if arg.size != node.size:  # e.g. a per-sample scalar, broadcast
                    return False
            elif not scalar:  # a parameter read entry by entry
                return False
        return True

    def _flat_map(self, node: Node) -> bool:
        return isinstance(node, Map) and self._flat_ok(node, *self._map_body(node))

    def _print_flat(self, out: _Lines, node: Node, body: sp.Expr, reads) -> None:
        """``node = body`` as one loop over the n × size entries of the batch (see
        ``_flat_ok``), through 1-d views of the buffers (``flat_views``). Row loops
        cost ~10 ns per sample each (a runtime row stride, a remainder loop): the
        same work flat was 2-3× faster at 32 entries per sample, and exps vectorise
        at 10."""
        temps, (reduced,) = sp.cse(body, symbols=sp.numbered_symbols("t"), optimizations="basic")
        used, size = body.free_symbols, node.size

        def view(arg: Node) -> str:
            while isinstance(arg, Transpose):
                arg = arg.args[0]
            name = self.name(arg)
            return self.flat_views.setdefault(name, f"{name}f")

        target = view(node)
        loads = [
            f"{sym} = {view(arg)}[k]"
            if arg.batched and not is_seed(arg)
            else f"{sym} = {self.elem(arg, 'i', 0, 0)}"
            for sym, arg, _ in reads
            if sym in used
        ]
        out(f"for k in range(n * {size}):  # every sample's entries in one loop")
        with out.indent():
            for line in loads:
                out(line)
            for t, e in temps:
                out(f"{t} = {self.scalar.doprint_expr(e)}")
            out(f"{target}[k] = {self.scalar.doprint_expr(reduced)}")

    def _insert_flat_views(self, out: _Lines, at: int) -> None:
        """Put the 1-d views that a kernel's flat statements read (``_print_flat``) at
        line ``at`` of its body, made once per call: ``reshape`` calls into C
        (~20 ns), too dear for every statement of a step at a batch of one."""
        out.lines[at:at] = [
            f"    {view} = {name}.reshape({name}.size)  # flat: sample after sample"
            for name, view in self.flat_views.items()
        ]
        self.flat_views.clear()

    def _blocked_sum(self, node: BatchSum) -> bool:
        """Whether Σₙ is its own statement, four samples per pass (narrow, large batches)."""
        return self._large_batches and node.size < FLAT_MAX_ENTRIES

    def _print_blocked_sum(self, out: _Lines, node: BatchSum, a: Node) -> None:
        """Σₙ over a large batch, four samples per pass: one sample per pass waited
        on the sum's store and reload every sample (Σ of 256 × 32 entries: 4.1 →
        1.5 µs float64, 3.9 → 0.8 float32)."""
        self._zero(out, [(self.name(node), node.shape)])
        for lo, hi, step in (("0", "n - n % 4", ", 4"), ("n - n % 4", "n", "")):
            out(f"for i in range({lo}, {hi}{step}):")
            with out.indent():
                r, c, d = self._loops(out, node.shape)
                if step:
                    rows = [self.elem(a, f"i + {q}" if q else "i", r, c) for q in range(4)]
                    term = f"({rows[0]} + {rows[1]}) + ({rows[2]} + {rows[3]})"
                else:
                    term = self.elem(a, "i", r, c)
                out(f"{self.elem(node, 'i', r, c)} += {term}")
                out.depth -= d
