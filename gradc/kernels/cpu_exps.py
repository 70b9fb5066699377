"""kernels stage: how the CPU printer takes exponentials.

Three forms, chosen per statement (``ExpForms``, a part of ``CpuPrinter``):

- **per entry**, in the statement's own loop: ``runtime.vexp`` (inlined,
  vectorisable) when the loop has at least ``VEXP_MIN_ENTRIES`` entries per
  sample, libm's ``math.exp`` in shorter ones;
- **over the whole batch**: a narrow layer's exps (a sigmoid head of 10, a
  softmax head's log-sum-exp) as one flat loop over every sample's entries,
  which vectorises where 10 entries per sample cannot; the rest of a Map's
  body shares that loop when it reads only per-sample vectors
  (``CpuPrinter._print_flat``);
- **not at all**: softmax cross-entropy's δŷ reads exp(ŷ − logsumexp(ŷ)) as
  the exps its log-sum-exp statement kept, times 1 / their sum.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import sympy as sp

from ..graph.nodes import LogSumExp, Map, Node
from .common import Lines as _Lines
from .common import map_expression

__all__ = ["VEXP_MIN_ENTRIES", "ExpForms"]

# Elementwise loops of at least this many entries per sample use runtime.vexp.
# Measured (a sigmoid over 256 samples of W entries, ns per entry, vexp vs libm):
# W = 10: 9.7 vs 5.5 (float64), 8.6 vs 5.6 (float32); W = 16: 3.5 vs 7.7, 1.2 vs
# 3.3. Below 16 the vector part is too short for the scalar remainder's cost.
VEXP_MIN_ENTRIES = 16
# Narrow layers (fewer than VEXP_MIN_ENTRIES entries) take their exps over the
# whole batch in one flat loop from two samples on (``ExpForms._batch_exp``); a
# single sample's 10 entries were 5–10 % slower that way than through libm.
_BATCH_EXP_NOTE = "# the exps of all samples in one flat loop"
_SOFTMAX_NOTE = "(its softmax: the exps the log-sum-exp kept, times 1 / their sum)"


@dataclass(frozen=True)
class _Stored:
    """A read of a per-sample buffer that is no node's value (a log-sum-exp's
    exps, or its 1 / Σ), where reads name a node."""

    buffer: str


class ExpForms:
    """The exp-taking statements of ``CpuPrinter`` (which supplies ``deriv``,
    ``inlined``, ``scalar``, the buffers, the loop helpers and the flat form,
    ``_flat_ok`` / ``_print_flat``)."""

    # set by CpuPrinter: whether the kernels run at large batches (batch-wide exps
    # apply at all), and the buffers a log-sum-exp fills for its softmax
    _large_batches: bool
    exp_buffers: dict[int, str]
    inverse_buffers: dict[int, str]
    _map_bodies: dict[int, tuple[sp.Expr, list]]
    SHARE_SOFTMAX: bool
    local_rows: frozenset[str]

    def stored(self, buffer: str, entry) -> str:
        """Sample ``i``'s ``entry`` of a buffer that holds no node (``_Stored``);
        the batch-innermost printer stores them (entries, batch)."""
        return f"{buffer}[{entry}]" if buffer in self.local_rows else f"{buffer}[i, {entry}]"

    @contextmanager
    def _exp_for(self, entries: int):
        """vexp in loops long enough to vectorise; libm's exp in shorter ones, where
        vexp's straight-line polynomial runs scalar and costs more than the call."""
        saved = self.scalar.exp
        if entries < VEXP_MIN_ENTRIES:
            self.scalar.exp = "math.exp"
        try:
            yield self.scalar.exp
        finally:
            self.scalar.exp = saved

    @contextmanager
    def _vector_exp(self):
        """vexp whatever the entries per sample: for loops over the whole batch."""
        saved = self.scalar.exp
        self.scalar.exp = "vexp"
        try:
            yield
        finally:
            self.scalar.exp = saved

    def _print_map(self, out: _Lines, node: Map) -> None:
        out(f"# {self._describe(node)}")
        body, reads = self._map_body(node)
        if any(isinstance(arg, _Stored) for _, arg, _ in reads):
            out(f"#   {_SOFTMAX_NOTE}")
        power = self._batch_exp(node)
        flat = self._flat_ok(node, body, reads)
        if power is None:
            if flat:
                with self._vector_exp():
                    self._print_flat(out, node, body, reads)
            else:
                self._print_entries(out, node, body, reads)
            return
        # exp(u) of a narrow layer for the whole batch in one flat loop: u into
        # the node's buffer (per sample: u reads a parameter, e.g. a bias), then
        # exp in place and the rest of the body reading it, flat where it can
        if self.one_sample:  # (train_one: n is 1)
            self._print_entries(out, node, body, reads)
            return
        own = sp.Symbol(f"a{len(reads)}")
        out(f"if n > 1:  {_BATCH_EXP_NOTE}")
        with out.indent(), self._vector_exp():
            if flat:
                self._print_flat(out, node, body, reads)
            else:
                self._print_entries(out, node, power.args[0], reads)
                rest = body.xreplace({power: own})
                rest_reads = [*reads, (own, node, False)]
                if self._flat_ok(node, rest, rest_reads):
                    self._print_flat(out, node, rest.xreplace({own: sp.exp(own)}), rest_reads)
                else:
                    self._exp_in_place(out, self.name(node), node.size)
                    self._print_entries(out, node, rest, rest_reads)
        out("else:")
        with out.indent():
            self._print_entries(out, node, body, reads)

    @staticmethod
    def _exp_in_place(out: _Lines, buffer: str, size: int) -> None:
        """exp of the (n, size) entries of a batched buffer, as one flat loop."""
        out(f"z = {buffer}[:n].reshape(n * {size})  # sample after sample")
        out(f"for k in range(n * {size}):  # vectorised: {size} entries per sample are too few")
        out("    z[k] = vexp(z[k])")

    def _narrow(self, node: Node, entries: int) -> bool:
        return (
            self._large_batches
            and node.batched
            and node.id not in self.inlined
            and entries < VEXP_MIN_ENTRIES
        )

    def _batch_logsumexp(self, node: Node) -> bool:
        """Whether a log-sum-exp takes its exps over the whole batch (a narrow
        column: a softmax head's)."""
        return isinstance(node, LogSumExp) and self._narrow(node, node.args[0].size)

    def _batch_exp(self, node: Node) -> sp.Expr | None:
        """The exp(u) that a per-sample Map of fewer than VEXP_MIN_ENTRIES entries
        takes over the whole batch in one flat loop, if it has exactly one. In the
        sample's own loop 10 entries run scalar through libm (~8 ns each); flat,
        ~2.5 ns."""
        if not (isinstance(node, Map) and self._narrow(node, node.size)):
            return None
        powers = self._map_body(node)[0].atoms(sp.exp)
        return next(iter(powers)) if len(powers) == 1 else None

    def _softmax_matches(self, body: sp.Expr, reads) -> list[tuple[sp.Expr, Node]]:
        """(exp(v − t), t) for each exp in ``body`` of an entry of v minus t =
        logsumexp(v): the softmax of v, which t's statement can leave behind as
        its exps (of v − max) and 1 / Σ (a softmax head's δŷ has one)."""
        entries = {arg.id: sym for sym, arg, scalar in reads if not scalar and arg.batched}
        found = []
        for sym, arg, scalar in reads:
            if not (scalar and isinstance(arg, LogSumExp) and arg.batched):
                continue
            v = arg.args[0]
            if v.id not in entries:
                continue
            for power in body.atoms(sp.exp):
                if sp.expand(power.args[0] - (entries[v.id] - sym)) == 0:
                    found.append((power, arg))
        return found

    def _softmax_sources(self) -> set[int]:
        """The LogSumExp nodes whose softmax a printed Map reads (``_softmax_matches``)."""
        if not self.SHARE_SOFTMAX:
            return set()
        found = set()
        for node in self.deriv.forward + self.deriv.backward:
            if isinstance(node, Map) and node.batched and node.id not in self.inlined:
                body, reads = map_expression(node, self.inlined)
                found.update(t.id for _, t in self._softmax_matches(body, reads))
        return found

    def _map_body(self, node: Map) -> tuple[sp.Expr, list]:
        """``map_expression`` with each softmax exp(v − t) read as e · (1/Σ) from
        the buffers t's statement filled: no exp left to compute. Kept per node
        (grouping, the batch-exp choice and the statement all read it); the
        memo exists from the end of naming, which decides those buffers."""
        found = self._map_bodies.get(node.id)
        if found is None:
            found = self._map_bodies[node.id] = self._softmax_read(node)
        return found

    def _softmax_read(self, node: Map) -> tuple[sp.Expr, list]:
        body, reads = map_expression(node, self.inlined)
        if not self.inverse_buffers:
            return body, reads
        reads = list(reads)
        for power, lse in self._softmax_matches(body, reads):
            if lse.id not in self.inverse_buffers:
                continue
            e, q = sp.Symbol(f"a{len(reads)}"), sp.Symbol(f"a{len(reads) + 1}")
            reads += [
                (e, _Stored(self.exp_buffers[lse.id]), False),
                (q, _Stored(self.inverse_buffers[lse.id]), True),
            ]
            body = body.xreplace({power: e * q})
        return body, reads

    def _print_LogSumExp(self, out: _Lines, node: LogSumExp) -> None:
        out(f"# {self._describe(node)}   (max subtracted first: no overflow)")
        if self._batch_logsumexp(node) and not self.one_sample:
            out(f"if n > 1:  {_BATCH_EXP_NOTE}")
            with out.indent():
                self._print_batch_logsumexp(out, node)
            out("else:")
            with out.indent():
                self._print_sample_logsumexp(out, node)
            return
        self._print_sample_logsumexp(out, node)

    def _print_sample_logsumexp(self, out: _Lines, node: LogSumExp) -> None:
        (a,) = node.args
        opened = self._open_samples(out, node)
        # with libm's exp (a call per entry) and a vector, the largest entry's exp,
        # exp(0) = 1 exactly, is not called for: same values, one call fewer
        # (2-class softmax cross-entropy at batch 1: 0.102 → 0.096 µs per step)
        with self._exp_for(a.size) as exp:
            skip_top = exp == "math.exp" and 1 in a.shape
        out(f"big = {self.elem(a, 'i', 0, 0)}")
        if skip_top:
            out("top = 0  # the largest entry's index")
        r, c, d = self._loops(out, a.shape)
        if skip_top:
            index = r if a.shape[1] == 1 else c
            out(f"if {self.elem(a, 'i', r, c)} > big:")
            out(f"    big = {self.elem(a, 'i', r, c)}")
            out(f"    top = {index}")
        else:
            out(f"big = max(big, {self.elem(a, 'i', r, c)})")
        out.depth -= d
        out(f"acc = {self.scalar._num(0)}")
        r, c, d = self._loops(out, a.shape)
        with self._exp_for(a.size) as exp:
            one = self.scalar._num(1)
            if skip_top:
                index = r if a.shape[1] == 1 else c
                call = f"{one} if {index} == top else {exp}({self.elem(a, 'i', r, c)} - big)"
            else:
                call = f"{exp}({self.elem(a, 'i', r, c)} - big)"
            if node.id in self.inverse_buffers:  # kept for the softmax δ reads
                out(f"z = {call}")
                out(f"{self.stored(self.exp_buffers[node.id], r if a.shape[1] == 1 else c)} = z")
                out("acc += z")
            else:
                out(f"acc += {call}")
        out.depth -= d
        out(f"{self.elem(node, 'i', 0, 0)} = big + math.log(acc)")
        self._store_inverse(out, node, "acc")
        out.depth -= opened

    def _store_inverse(self, out: _Lines, node: LogSumExp, total: str) -> None:
        if node.id in self.inverse_buffers:
            one = self.scalar._num(1)
            out(f"{self.stored(self.inverse_buffers[node.id], 0)} = {one} / {total}")

    def _print_batch_logsumexp(self, out: _Lines, node: LogSumExp) -> None:
        """log Σ exp of a narrow column with its exps taken over the whole batch in
        one flat loop (see ``_batch_exp``) in its ``exp_buffers`` buffer: max and
        differences per sample, exp in place, then the sums."""
        (a,) = node.args
        scratch, size = self.exp_buffers[node.id], a.size
        to = self.elem(node, "i", 0, 0)
        out("for i in range(n):")
        with out.indent():
            out(f"big = {self.elem(a, 'i', 0, 0)}")
            r, c, d = self._loops(out, a.shape)
            out(f"big = max(big, {self.elem(a, 'i', r, c)})")
            out.depth -= d
            r, c, d = self._loops(out, a.shape)
            out(f"{scratch}[i, {r if a.shape[1] == 1 else c}] = {self.elem(a, 'i', r, c)} - big")
            out.depth -= d
            out(f"{to} = big")
        self._exp_in_place(out, scratch, size)
        out("for i in range(n):")
        with out.indent():
            out(f"acc = {self.scalar._num(0)}")
            out(f"for k in range({size}):")
            out(f"    acc += {scratch}[i, k]")
            out(f"{to} = {to} + math.log(acc)")
            self._store_inverse(out, node, "acc")
