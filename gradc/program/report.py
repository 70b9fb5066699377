"""program stage: ``Program.report()`` — derivation and kernel statistics, and for a
small model the naive derivation measured beside the shared one."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import sympy as sp

from ..derivation.counting import OpCount, count_derivation, count_expr, cse_count
from ..derivation.naive import naive_gradients
from ..derivation.names import consumers, display_names
from ..derivation.reverse import derive_shared
from ..errors import GradcError

__all__ = ["Report", "build_report", "naive_comparison"]

# the naive side is measured when (parameter entries × expanded-loss ops) stays below this
REPORT_NAIVE_LIMIT = 150_000

SENTENCE = (
    "CSE rediscovers the δ after the fact, at a cost that grows with the swell, "
    "while backpropagation never creates the swell."
)


@dataclass
class NaiveComparison:
    naive_ops: int
    naive_cse_ops: int
    shared_ops: int
    naive_seconds: float
    cse_seconds: float
    shared_seconds: float

    @property
    def ratio(self) -> float:
        return self.naive_ops / max(self.shared_ops, 1)


@dataclass
class Report:
    title: str
    counts: dict[str, OpCount]
    param_entries: int
    deltas: int
    shared_nodes: int
    timings: dict[str, float]
    naive: NaiveComparison | None = None
    naive_note: str = ""
    # backward operations per sample carried on to the data (∂L/∂x too, as the
    # seeds count a backward pass: two products per layer); None without inputs
    backward_to_data: int | None = None
    extra: dict = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [self.title, ""]
        lines.append(f"{'operations per sample':<24}{'mul':>10}{'add':>10}{'func':>8}{'total':>12}")
        for stage in ("forward", "backward", "update"):
            c = self.counts.get(stage)
            if c is None:
                continue
            note = "  (per step, all entries)" if stage == "update" else ""
            lines.append(f"{stage:<24}{c.mul:>10,}{c.add:>10,}{c.func:>8,}{c.total:>12,}{note}")
        f, b = self.counts["forward"].total, self.counts["backward"].total
        if f:
            lines.append(f"backward ÷ forward operations: {b / f:.2f}")
        if f and self.backward_to_data is not None:
            lines.append(
                f"carried on to the data as well (∂L/∂x, prog.input_grad): "
                f"{self.backward_to_data:,} operations, {self.backward_to_data / f:.2f} × forward"
            )
        lines.append("")
        lines.append(f"parameter entries: {self.param_entries:,}")
        lines.append(
            f"δ nodes (each computed once): {self.deltas}; backward values read more than once: {self.shared_nodes}"
        )
        t = self.timings
        parts = [f"derivation {t.get('derive', 0.0):.3f} s"]
        for k in t:
            if k in ("forward", "backward") or k.startswith("train"):
                parts.append(f"{k} kernel first call (compile or cache load) {t[k]:.2f} s")
        lines.append("; ".join(parts))
        lines.append("")
        if self.naive is not None:
            n = self.naive
            lines.append("Backward operations per sample, three ways:")
            lines.append(
                f"  {'naive: one sympy.diff per parameter entry':<46}{n.naive_ops:>12,}   (derived in {n.naive_seconds:.2f} s)"
            )
            lines.append(
                f"  {'naive + one joint sympy.cse over all gradients':<46}{n.naive_cse_ops:>12,}   (cse took {n.cse_seconds:.2f} s)"
            )
            lines.append(
                f"  {'shared δ (reverse mode)':<46}{n.shared_ops:>12,}   (derived in {n.shared_seconds:.3f} s)"
            )
            lines.append(f"  naive ÷ shared: {n.ratio:,.1f}×")
            lines.append(SENTENCE)
        elif self.naive_note:
            lines.append(self.naive_note)
        return "\n".join(lines)

    __repr__ = __str__


def naive_comparison(
    graph, shared_backward_ops: int, shared_seconds: float, limit=REPORT_NAIVE_LIMIT
):
    """Derive the naive gradients of ``graph`` and count them with and without a joint CSE."""
    start = time.perf_counter()
    grads, _ = naive_gradients(graph, limit=limit)
    naive_seconds = time.perf_counter() - start
    exprs = [e for rows in grads for row in rows for e in row]
    # each entry CSE'd on its own, as the naive kernel runs it: nothing shared between entries
    naive_ops = sum(cse_count(e).total for e in exprs)
    start = time.perf_counter()
    temps, reduced = sp.cse(exprs, optimizations="basic")
    cse_seconds = time.perf_counter() - start
    cse_ops = sum(count_expr(e).total for e in reduced) + sum(count_expr(e).total for _, e in temps)
    return NaiveComparison(
        naive_ops, cse_ops, shared_backward_ops, naive_seconds, cse_seconds, shared_seconds
    )


def build_report(prog, naive_limit: int = REPORT_NAIVE_LIMIT) -> Report:
    deriv = prog.derivation
    counts = count_derivation(deriv, prog.optimizer.update_rule)
    names = display_names(deriv)
    deltas = sum(1 for n in deriv.backward if (names.get(n.id) or "").startswith("δ"))
    uses = consumers(deriv.backward)
    shared = sum(1 for n in deriv.backward if uses.get(n.id, 0) > 1)
    entries = sum(p.size for p in deriv.graph.params)
    report = Report(
        title=f"gradc report: {prog!r}",
        counts=counts,
        param_entries=entries,
        deltas=deltas,
        shared_nodes=shared,
        timings=dict(prog.timings),
    )
    if deriv.graph.inputs and deriv.graph.loss.batched:
        to_data = derive_shared(deriv.graph, inputs=True)
        report.backward_to_data = count_derivation(to_data)["backward"].total
    if deriv.strategy == "shared":
        shared_ops, shared_s = counts["backward"].total, deriv.seconds
    else:
        start = time.perf_counter()
        other = derive_shared(deriv.graph)
        shared_s = time.perf_counter() - start
        shared_ops = count_derivation(other)["backward"].total
    try:
        report.naive = naive_comparison(deriv.graph, shared_ops, shared_s, naive_limit)
    except GradcError as exc:
        report.naive_note = f"naive strategy not measured here: {exc}"
    return report
