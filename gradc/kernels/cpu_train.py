"""kernels stage (CPU): the fused training epoch and the optimizer's step, as printed code.

:class:`TrainPrinter` is a part of :class:`~gradc.kernels.cpu.CpuPrinter` (which
prints the statements: ``name``, ``elem``, ``statement``, the forward and
backward bodies); it assembles them into the training kernels:

- ``train`` (and, via ``cpu_lanes.py``, ``train_lanes``): a loop over update
  steps that never returns to Python: each epoch's shuffle, the mini-batch,
  forward, loss, backward, the gradient norms (History, clip_norm, the
  divergence check) and the update;
- the optimizer's entrywise rule, printed into the kernel for tiny networks, or
  once per rule and dtype as the step module (``step_entries``, ``step_outer``,
  ``step_outer_dot``, ``step_each``) that every network's kernel calls;
- at a batch of one, a weight's gradient δ·xᵀ formed inside its update sweep,
  and the first layer's sweep forming the next sample's W·x;
- for plain gradient descent at small batches, a weight's update folded into
  its gradient product (the product adds −η·Σₙ δₙxₙᵀ into W, its norm taken
  from Gram matrices): the gradient is never stored nor read again.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from ..graph.nodes import Leaf, MatMul, Node, Transpose
from ..spec.optimizers import UpdateRule
from .blas import FOLDS, THIN
from .common import Lines as _Lines
from .common import UpdateForm, comment_text
from .cpu_blas import BlasOperand, gemm_call

__all__ = [
    "DATA_CHECK_MIN_WIDTH",
    "FOLD_GRAM_RATIO",
    "FOLD_MIN_BATCH",
    "FOLD_MIN_ENTRIES",
    "FUSED_MIN_ENTRIES",
    "INLINE_MAX_ENTRIES",
    "STACK_MAX_ENTRIES",
    "Ahead",
    "TrainPrinter",
]

# From this many entries a weight's batch-of-one step forms and applies its
# gradient in one sweep (smaller ones stay in cache: a second pass is free).
FUSED_MIN_ENTRIES = 1024
# Parameters (and batch sums) of at most this many entries in all are zeroed,
# normed and updated by loops printed in the training kernel with literal shapes,
# not by runtime calls over a tuple: each call costs ~10–30 ns, as much as the
# whole update of a tiny network (measured, 3-4-2 at batch 1: 0.24 → 0.14 µs/step).
# 256 → 1024 (with reassoc, so the norm sums formed in the update vectorise):
# 64-32-10 at batch 1 (b1, W2, b2 inline), fit, ns per step, one process: ReLU-CE
# float32 862 → 760, sigmoid float64 1,221 → 1,062; at batch 32 even or better;
# its cold compile +0.4 s (4.2 → 4.7 s).
INLINE_MAX_ENTRIES = 1024
# A training kernel whose forward and backward are one sample loop keeps that
# sample's values and δ (at most this many entries in all) as rows on its stack.
STACK_MAX_ENTRIES = 2048
# Plain gradient descent folded into a weight's gradient product (CBLAS gemm
# with β = 1 adds −η·scale·Σₙ δₙxₙᵀ into W): no gradient written, no pass for its
# norm, no update pass. The norm comes from the rows' dot products instead
# (runtime.gram_sq), n²·(rows + cols)/2 multiply-adds, so the fold pays for
# small batches only: from FOLD_MIN_BATCH (where the product goes to BLAS) while
# n²·(1/rows + 1/cols) ≤ FOLD_GRAM_RATIO. Measured first with full Gram matrices
# by gemm (ratio 12 then) on a 784×256 weight (gemm + norm + update against Gram
# + folded gemm, µs): float32 n = 8: 192 → 56, 32: 293 → 188, 64: 431 → 396,
# 128: 760 → 996; float64 n = 32: 436 → 369, 64: 733 → 803. Small weights sit
# in cache, where the passes cost little and three gemm calls more than one:
# whole training steps, folded against not (median µs, one process): 64-32-10
# (32×64 weight) float64 batch 16: 16.5 against 14.7; 128-64-10 (8,192 entries)
# 28.8 against 29.7; 128-128-10 27.5 against 33.1; 784-256-10 float32 batch 32
# 408 against 474; 512-512-512-10 float64 batch 32 3,104 against 3,686. syrk
# halved the Gram matrices' cost (784-256-10 float32 batch 32, best step: 417 →
# 393 µs) and the ratio doubled to 24: at batch 64 (784×256, ratio 21) float32
# 746 against 777 unfolded, float64 1,509 against 1,505; 512-512-512-10 float64
# 5,277 against 5,331; at batch 96 (ratio 47) even in float32, float64 2,190
# against 2,131. Gram matrices by gradc's own blocked loops instead of syrk (2–2.5×
# faster at n = 32…64) moved no crossing: 784-256-10 float32, fit, µs per step,
# ratio 24 against 100 (folding up to n = 139) in one process: batch 96 1,130
# against 1,114, batch 128 1,595 against 1,587 (even).
FOLD_MIN_BATCH = 8
FOLD_GRAM_RATIO = 24.0
FOLD_MIN_ENTRIES = 8192
# The row kernel checks fit's data for NaN and inf batch by batch (``check_upto``)
# only where a sample's data has this many entries: narrower data is checked by
# fit in one pass before the call (cheap: few entries per step), and a check
# printed into the step loop costs a batch-of-one step even when it never runs
# (3-4-2 sigmoid at batch 1, fit, one process: 85.4 → 80.3 ns per step without it).
DATA_CHECK_MIN_WIDTH = 64


@dataclass
class Ahead:
    """A product ``param · input`` that a batch-of-one update sweep forms one step ahead."""

    param: int  # index of the parameter
    product: Node  # the forward MatMul W·x
    input: Leaf  # the data input x


class TrainPrinter:
    """The training kernels and the optimizer's step (a part of CpuPrinter)."""

    _ahead: Ahead | None = None  # while printing ``train``: a product formed a step ahead
    # while printing ``train``: parameter → largest batch whose update is folded
    _folded: dict[int, int] = {}  # noqa: RUF012 (replaced, never mutated)

    def update_body(
        self,
        out: _Lines,
        rule: UpdateRule,
        fused: dict[int, tuple[Node, Node]] | None = None,
        norms: bool = False,
    ) -> bool:
        """One optimizer step on every parameter; ``bad`` counts new values that are
        not finite. Returns whether anything adds to ``bad``.

        The parameters go through one call of ``step_each`` (printed once per rule
        and dtype by :meth:`step_kernels`): every parameter array has the same Numba
        type, so Numba compiles the rule once, not once per parameter. ``fused``
        (training kernel only) maps parameters whose gradient is an outer product
        Σₙ δₙ·xₙᵀ to (δ, xᵀ): for a batch of one they go through ``step_outer``,
        which forms δ₀[r]·x₀[c] inside the update sweep and never stores it.
        ``norms`` (training kernel only): the parameters updated by printed loops
        also add their gradient's squared norm to ``gnorms`` and ``total``, and
        leave their check to the caller (``nan_sum``, not added to ``bad``).
        """
        params = self.deriv.graph.params
        form = UpdateForm.of(rule)
        for j, h in enumerate(form.hypers):
            out(f"{h} = hp[{j}]  # {comment_text(rule.hyper_names[j])}")
        for e, h in form.hoisted.items():
            out(f"{h} = {self.scalar.doprint_expr(e)}")
        knobs = ", ".join(["scale", "t", *map(str, form.hypers), *map(str, form.hoisted.values())])
        out("bad = 0  # new values that are not finite")
        fused = fused or {}
        nstates = len(form.states)
        if self._folded:
            rate = self._descent_rate(form)
        for k, p in enumerate(params):
            if k not in fused:
                continue
            states = "".join(f", s{k}_{j}" for j in range(nstates))
            a, b = fused[k]
            note = f"{comment_text(p.label)}: gradient δ₀[r]·x₀[c], formed in the sweep"
            if self.one_sample:  # (train_one: n is 1)
                out(f"# {note}")
            else:
                out(f"if n == 1:  # {note}")
            with out.indent() if not self.one_sample else contextlib.nullcontext():
                outer = f"p{k}, {self._row(a)}, {self._row(b)}"
                sweep = f"bad += step_outer({outer}{states}, {knobs})"
                ahead = self._ahead
                if ahead is None or ahead.param != k:
                    out(sweep)
                else:
                    # (not across an epoch's end when shuffled: that order is not drawn yet)
                    out(
                        "if bs == 1 and step + 1 < stop and (not shuffle or (step + 1) % nbatches):"
                    )
                    with out.indent():
                        out("nxt = ((step + 1) % nbatches) * bs")
                        out("row = perm[nxt] if shuffle else nxt")
                        data = f"{self.name(ahead.input).upper()}[row]"
                        dot = f"{data}, {self.name(ahead.product)}[0]"
                        out(f"bad += step_outer_dot({outer}, {dot}{states}, {knobs})")
                        out("ahead = True")
                    out("else:")
                    with out.indent():
                        out(sweep)
            if self.one_sample:  # (train_one: n is 1)
                continue
            if k in self._folded:
                label = comment_text(p.label)
                out(f"elif {self._fold_test(k)}:")
                with out.indent():
                    out(f"# {label} ← {label} − η·scale·Σₙ δₙxₙᵀ: the product adds into it")
                    out(self._fold_call(k, a, b, f"-{rate} * scale"))
            out("else:")
            with out.indent():
                out(f"bad += step_entries(p{k}, g{k}{states}, {knobs})")
            if k in self._folded:
                self._bound_check(out, k, rate)
        rest, inline = self._rest(fused)
        bounded = norms and self.inline_bounded(rule, fused)
        if inline:
            # one float sum of (new − new) checks every entry: 0, or NaN once one is
            # inf or NaN (a compare and an integer add per entry cost more: 3-4-2
            # ReLU-CE at batch 1, 82 → 78 ns per step); no nnan flag folds it away.
            # Plain gradient descent in the training kernel needs none: p_bound.
            if not bounded:
                out("nan_sum = F(0.0)  # Σ (new − new) over the entries updated below")
            for k in rest:
                out(f"# {comment_text(params[k].label)}")
                states = [f"s{k}_{j}" for j in range(nstates)]
                if norms:
                    out("sq = 0.0")
                r, c, d = self._loops(out, params[k].shape)
                grad = f"g{k}[{r}, {c}] * scale"
                if norms:
                    out(f"gv = g{k}[{r}, {c}]")
                    out("sq += gv * gv")
                    grad = "gv * scale"
                count = "" if bounded else "nan_sum += z"
                self._update_entry(out, form, r, c, grad, f"p{k}", states, count=count)
                out.depth -= d
                if norms:
                    out(f"gnorms[step - start, {k}] = sq  # squared: the root is taken outside")
                    out("total += sq")
            if not norms:
                out("bad += nan_sum != 0.0")
        elif rest:
            labels = ", ".join(comment_text(params[k].label) for k in rest)
            tuples = [_tuple(f"p{k}" for k in rest), _tuple(f"g{k}" for k in rest)]
            tuples += [_tuple(f"s{k}_{j}" for k in rest) for j in range(nstates)]
            out(f"# {labels}")
            out(f"bad += step_each({', '.join(tuples)}, {knobs})")
        return bool(fused) or (bool(rest) and not inline) or not norms

    def inline_bounded(self, rule: UpdateRule, fused) -> bool:
        """Whether the training kernel shows the new values of the parameters that
        printed loops update finite by a running bound (``p_bound``, see
        norms_and_update) instead of a check per entry: for plain gradient descent."""
        return self._rest(fused)[1] and UpdateForm.of(rule).descent_rate is not None

    def _rest(self, fused) -> tuple[list[int], bool]:
        """The parameters outside ``fused``, and whether printed loops update them
        (INLINE_MAX_ENTRIES; else one ``step_each`` call over their tuple)."""
        params = self.deriv.graph.params
        rest = [k for k in range(len(params)) if k not in fused]
        return rest, bool(rest) and _small(params[k].shape for k in rest)

    def _bound_check(self, out: _Lines, k: int, rate: str) -> None:
        """A folded update reads no new value back: instead a running bound on
        max |W| (``bound<k>``; each step moves W by at most η·scale·‖g‖) shows every
        entry finite. W is looked at (one pass, ``abs_bound``) only at a folded step
        where the bound has grown past a quarter of the largest float: first at
        the call's first folded step (the bound starts at inf), never in a call
        that folds no step (other steps check their new values themselves)."""
        out(f"bound{k} += {rate} * scale * math.sqrt(gnorms[step - start, {k}])")
        limit = self._bound_limit()
        out(f"if {self._fold_test(k)} and bound{k} > {limit}:  # no longer shows W finite: look")
        with out.indent():
            out(f"bound{k} = abs_bound(p{k})  # inf if an entry is inf or NaN")
            out(f"if bound{k} == math.inf:")
            with out.indent():
                out("bad += 1")

    def _descent_rate(self, form: UpdateForm) -> str:
        """η of plain gradient descent, printed (a running bound grows by η·scale·‖g‖)."""
        rate = self.scalar.doprint_expr(form.descent_rate)
        return rate if rate.isidentifier() else f"({rate})"

    def _bound_limit(self) -> str:
        """A quarter of the largest float, printed: a running bound on max |p| below
        it shows every new value finite."""
        return repr(float(np.finfo(np.float32 if self.float32 else np.float64).max) / 4)

    def _fold_test(self, k: int) -> str:
        """The printed test of a step whose batch folds parameter k's update."""
        return f"{FOLD_MIN_BATCH} <= n <= {self._folded[k]}"

    def _fold_call(self, k: int, a: Node, b: Node, alpha: str) -> str:
        """p{k} += alpha·Σₙ aₙbₙ (a: δ, b: xᵀ) by one gemm with β = 1."""
        if not THIN:
            return f"matmul_acc({self._rows(a)}.T, {self._rows(b)}, p{k}, {alpha})"
        rows, cols = self.deriv.graph.params[k].shape
        target = BlasOperand(f"p{k}", False, cols, str(rows), str(cols))
        left, right = self.gemm_operand(a).t(), self.gemm_operand(b)
        return gemm_call(left, right, target, alpha=alpha, beta="1.0")

    def _rows(self, node: Node) -> str:
        """The batch of a per-sample vector node, one sample per row (``d2[:n]``)."""
        while isinstance(node, Transpose):
            node = node.args[0]
        return f"{self.name(node)}[:n]"

    def _row(self, node: Node) -> str:
        """Sample 0 of a batched vector node, as a 1-d array (``d2[0]``)."""
        while isinstance(node, Transpose):
            node = node.args[0]
        return f"{self.name(node)}[0]"

    def step_kernels(self, rule: UpdateRule) -> str:
        """``step_entries`` and ``step_outer``: the rule on every entry of one
        parameter, given its gradient array or the two factors of a batch-of-one
        outer product; ``step_each``: ``step_entries`` over a tuple of parameters.
        Each returns how many new values are not finite (float32: whether any is)."""
        form = UpdateForm.of(rule)
        states = [f"s{j}" for j in range(len(form.states))]
        knobs = ["scale", "t", *map(str, form.hypers), *map(str, form.hoisted.values())]
        parts = []
        for name, grad_args, doc in (
            ("step_entries", ["g"], "the gradient in ``g``"),
            ("step_outer", ["a", "b"], "the gradient a[r]·b[c] (a batch of one)"),
            (
                "step_outer_dot",
                ["a", "b", "xn", "zn"],
                "the gradient a[r]·b[c] (a batch of one); also zn = p·xn with the new\n"
                "    values (the next sample's product, while p is in cache)",
            ),
        ):
            outer = name != "step_entries"
            dot = name == "step_outer_dot"
            out = _Lines()
            # the dot product along a row vectorises only if its sum may be reassociated
            out(_DECORATOR_REASSOC if dot else _DECORATOR)
            out(f"def {name}({', '.join(['p', *grad_args, *states, *knobs])}):")
            with out.indent():
                out(f'"""The optimizer rule on every entry of ``p``, {doc}."""')
                # the non-finite count: an int sum vectorises well next to float64 lanes;
                # next to 8 float32 lanes widening to int64 halves the speed, and a bool
                # OR does not (measured on a 256×784 sweep: 35 vs 51 µs; no check: 21)
                out("bad = False" if self.float32 else "bad = 0")
                if outer and not form.states:
                    # rows in pairs: one sweep over the columns reads b[c] (and xn[c])
                    # once for both. Plain SGD on 257×784, µs, old and new side by
                    # side in one process, four runs: with the dot float32 ~20 →
                    # 13–17.5, float64 34–39 → 27–33; without it 17–18 → 11–15,
                    # float64 even. Rules with state gain nothing (Adam float32
                    # 62.8 → 66.4; momentum float32 27.7–30.7 → 26.2–26.9, float64
                    # 55 → 54–59), so they keep single rows.
                    out("rows = p.shape[0]")
                    out("for r in range(0, rows - rows % 2, 2):")
                    with out.indent():
                        self._outer_rows(out, form, ["r", "r + 1"], dot)
                    out("if rows % 2:")
                    with out.indent():
                        out("r = rows - 1")
                        self._outer_rows(out, form, ["r"], dot)
                elif outer:
                    out("for r in range(p.shape[0]):")
                    with out.indent():
                        self._outer_rows(out, form, ["r"], dot)
                else:
                    out("for r in range(p.shape[0]):")
                    with out.indent():
                        out("for c in range(p.shape[1]):")
                        with out.indent():
                            self._update_entry(out, form, r="r", c="c", grad="g[r, c] * scale")
                out("return bad")
            parts.append(out.text())
        out = _Lines()
        out(_DECORATOR)
        tuples = ["ps", "gs", *[f"s{j}s" for j in range(len(states))]]
        out(f"def step_each({', '.join([*tuples, *knobs])}):")
        with out.indent():
            out('"""step_entries on every parameter of a tuple: one call per training step."""')
            out("bad = 0")
            out("for k in range(len(ps)):")
            with out.indent():
                args = ", ".join([f"{t}[k]" for t in tuples] + knobs)
                out(f"bad += step_entries({args})")
            out("return bad")
        parts.append(out.text())
        return "\n\n".join(parts)

    def _outer_rows(self, out: _Lines, form: UpdateForm, rows: list[str], dot: bool) -> None:
        """The rule on the rows ``rows`` (index expressions) of ``p``, whose gradient
        is a[r]·b[c]; with ``dot`` also zn[r] = p[r]·xn with the new values (the next
        sample's product, while p is in cache)."""
        tags = ["" if q == 0 else str(q) for q in range(len(rows))]
        for r, tag in zip(rows, tags):
            out(f"av{tag} = a[{r}] * scale")
            if dot:
                out(f"acc{tag} = {self.scalar._num(0)}")
        out("for c in range(p.shape[1]):")
        with out.indent():
            # read once for every row (a store into p may alias them for all LLVM knows)
            out("bc = b[c]")
            if dot:
                out("xc = xn[c]")
            for r, tag in zip(rows, tags):
                # the dot's sum is the non-finite check of its row, see below
                count = "" if dot else None
                self._update_entry(out, form, r=r, c="c", grad=f"av{tag} * bc", count=count)
                if dot:
                    out(f"acc{tag} += p[{r}, c] * xc")
        if not dot:
            return
        for r, tag in zip(rows, tags):
            out(f"zn[{r}] = acc{tag}")
            # with xn finite (checked data), a new value that is inf or NaN makes
            # the dot inf or NaN, so the row needs a look only then (or when a finite
            # sum overflows): the sweep does no per-entry check (measured, 256×784:
            # 63 → 57 µs in float64, 42 → 33 in float32)
            out(f"if not math.isfinite(acc{tag}):")
            with out.indent():
                out("for c in range(p.shape[1]):")
                with out.indent():
                    out(f"z = p[{r}, c] - p[{r}, c]  # NaN exactly when the entry is inf or NaN")
                    out("bad |= z != z" if self.float32 else "bad += z != z")

    def _update_entry(
        self,
        body: _Lines,
        form: UpdateForm,
        r: str,
        c: str,
        grad: str,
        p: str = "p",
        state_arrays: list[str] | None = None,
        count: str | None = None,
    ) -> None:
        """The optimizer rule on entry (r, c) of ``p``, whose gradient is ``grad``;
        ``state_arrays`` (default s0, s1, …) hold the optimizer state, ``count``
        adds a non-finite new value to ``bad`` ("": no check here)."""
        theta, states = form.theta, form.states
        s = state_arrays or [f"s{j}" for j in range(len(states))]
        body(f"th = {p}[{r}, {c}]")
        body(f"gr = {grad}")
        for j in range(len(states)):
            body(f"st{j} = {s[j]}[{r}, {c}]")
        for line in form.new_values(self.scalar.doprint_expr):
            body(line)
        for tgt in form.targets:
            if tgt == theta:
                body(f"{p}[{r}, {c}] = new_{tgt}")
                if count == "":  # the caller checks the new values its own way
                    continue
                body(f"z = new_{tgt} - new_{tgt}  # NaN exactly when new_{tgt} is inf or NaN")
                body(count or ("bad |= z != z" if self.float32 else "bad += z != z"))
            else:
                body(f"{s[states.index(tgt)]}[{r}, {c}] = new_{tgt}")

    def fused_gradients(self) -> dict[int, tuple[Node, Node]]:
        """Parameters (of at least FUSED_MIN_ENTRIES entries) whose gradient is an outer
        product summed over the batch, Σₙ δₙ·xₙᵀ, printed into their own buffer: the
        training kernel updates them in one sweep at batch size 1 (see update_body)."""
        fused = {}
        for k, (p, gn) in enumerate(zip(self.deriv.graph.params, self.deriv.grads)):
            if (
                isinstance(gn, MatMul)
                and gn.contract
                and p.size >= FUSED_MIN_ENTRIES
                and self.names.get(gn.id) == f"g{k}"
                and all(_batched_vector(arg) for arg in gn.args)
            ):
                fused[k] = tuple(gn.args)
        return fused

    def folded_gradients(
        self, rule: UpdateRule, fused: dict[int, tuple[Node, Node]]
    ) -> dict[int, int]:
        """Parameters of ``fused`` (of FOLD_MIN_ENTRIES entries at least) whose update
        is folded into their gradient product, mapped to the largest batch folded
        (see FOLD_GRAM_RATIO): only for plain gradient descent, and only when
        ``matmul_acc`` adds in place (CBLAS). A fused gradient always has its BLAS
        branch from FOLD_MIN_BATCH on."""
        if not FOLDS or UpdateForm.of(rule).descent_rate is None:
            return {}
        folded = {}
        for k in fused:
            rows, cols = self.deriv.graph.params[k].shape
            if rows * cols < FOLD_MIN_ENTRIES:
                continue
            nmax = int((FOLD_GRAM_RATIO / (1 / rows + 1 / cols)) ** 0.5)
            if nmax >= FOLD_MIN_BATCH:
                folded[k] = nmax
        return folded

    # -- kernels ------------------------------------------------------------------

    def train_kernel(self, rule: UpdateRule, kernel: str = "train") -> tuple[str, list[str]]:
        gather = [f"{n}buf" for n in self.data_names()]
        fused = self.fused_gradients()
        rows = self.stack_rows(fused)
        buffers = [b for b in self.value_names() + self.delta_names() if b not in rows]
        width = sum(x.shape[0] * x.shape[1] for x in self.deriv.graph.data)
        args = self.train_args(rule, gather + buffers, checks_data=width >= DATA_CHECK_MIN_WIDTH)
        # forming the next sample's product ahead needs batches of one, a folded
        # product batches of several (always_blas, one_sample: CpuPrinter's)
        self._ahead = None if self.always_blas else self.product_ahead(fused)
        self._folded = {} if self.one_sample else self.folded_gradients(rule, fused)
        before = []
        if self.inline_bounded(rule, fused):
            before.append("p_bound = math.inf  # see the step's end")
        if self._folded:
            before += [f"bound{k} = math.inf  # max |p{k}| at most this" for k in self._folded]
        if rows:
            before.append("# one sample's values and δ: rows on the stack, reused by every sample")
            before += [f"{name} = local_row({size}, F)" for name, size in rows.items()]
        if self._ahead:
            before.append("ahead = False  # W·x of this step's sample formed in the last update")
        out = _Lines()
        self.local_rows = frozenset(rows)
        try:
            self._train_body(out, kernel, args, rule, fused, before)
        finally:
            self._ahead = None
            self._folded = {}
            self.local_rows = frozenset()
        return out.text(), args

    def stack_rows(self, fused) -> dict[str, int]:
        """Per-sample buffers the training kernel keeps as one row on its stack
        (name → entries): all of them, when forward and backward run as one sample
        loop that nothing reads after (no gradient formed from the whole batch's δ
        later) and their rows are small (STACK_MAX_ENTRIES); else none."""
        if fused or not self.one_sample_pass():
            return {}
        if len(self.sample_runs(self.deriv.forward + self.deriv.backward)) != 1:
            return {}
        rows = {b.name: b.shape[0] * b.shape[1] for b in self.buffers if b.batched}
        return rows if sum(rows.values()) <= STACK_MAX_ENTRIES else {}

    def train_args(
        self, rule: UpdateRule, buffers: list[str], checks_data: bool = False
    ) -> list[str]:
        """A training kernel's arguments: loop and optimizer scalars, the whole data,
        parameters and optimizer state, then its own ``buffers``, gradients and
        outputs; ``checks_data``: with ``check_upto`` (see ``_train_body``). Each
        parameter and state array ``a`` has its backup ``keep_a`` (see train_loop)."""
        nstate = len(rule.state_names)
        nparams = len(self.deriv.graph.params)
        states = [f"s{k}_{j}" for k in range(nparams) for j in range(nstate)]
        args = ["start", "stop", "nrows", "bs", "shuffle", "seed", "perm", "hp", "opt_step", "clip"]
        args += ["check_upto"] if checks_data else []
        saved = self.param_names() + states
        args += [n.upper() for n in self.data_names()] + saved + [f"keep_{n}" for n in saved]
        return [*args, *buffers, *self.grad_names(), "losses", "gnorms"]

    def record_loss(self, out: _Lines) -> None:
        """Store the step's mean loss (checked at the step's end, see norms_and_update)."""
        out("losses[step - start] = loss")

    def _train_body(self, out: _Lines, kernel: str, args, rule: UpdateRule, fused, before) -> None:
        data = self.data_names()
        full = [n.upper() for n in data]
        gather = [f"{n}buf" for n in data]
        # no reference counting (the kernel allocates nothing): each data slice's
        # view would otherwise take an atomic increment and decrement per step
        # (3-4-2 ReLU-CE at batch 1: 77 → 71 ns)
        with self.train_loop(out, kernel, args, _DECORATOR_REASSOC, before) as loop_at:
            if data:
                out("if shuffle:")
                with out.indent():
                    for buf, big in zip(gather, full):
                        out(f"gather_rows({buf}, {big}, perm, lo, n)")
                    for name, buf in zip(data, gather):
                        out(f"{name} = {buf}[:n]")
                out("else:")
                with out.indent():
                    for name, big in zip(data, full):
                        out(f"{name} = {big}[lo:lo + n]")
            if "check_upto" in args:
                # fit's data check, batch by batch while a batch is about to be
                # read anyway (steps below check_upto: the call's first epoch);
                # status 4 makes fit undo the call's updates
                out("if step < check_upto:")
                with out.indent():
                    test = " and ".join(f"rows_finite({name})" for name in data)
                    out(f"if not ({test}):")
                    with out.indent():
                        out("return 4, step")
            grads = self.deriv.grads
            skip = frozenset(grads[k].id for k in fused)
            if self.one_sample_pass(skip):
                out("# ---- forward and backward, one sample at a time")
                self.forward_backward_body(out, skip)
                self.record_loss(out)
            else:
                out("# ---- forward")
                self.forward_body(out)
                self.record_loss(out)
                out("# ---- backward")
                self.backward_body(out, skip)
            self.norms_and_update(out, rule, fused)
        self._insert_flat_views(out, loop_at)  # before the step loop: once per call

    def product_ahead(self, fused: dict[int, tuple[Node, Node]]) -> Ahead | None:
        """A first-layer product W·x whose W is updated in a batch-of-one sweep
        (``fused``): that sweep can form the next sample's W·x with the new values
        while W is in cache, so a step reads W once instead of twice."""
        for k, (_, b) in fused.items():
            x = b.args[0] if isinstance(b, Transpose) else b
            if not (isinstance(x, Leaf) and x.role == "input"):
                continue
            p = self.deriv.graph.params[k]
            for node in self.deriv.forward:
                if (
                    isinstance(node, MatMul)
                    and not node.contract
                    and node.batched
                    and node.args[0].id == p.id
                    and node.args[1].id == x.id
                    and node.id in self.names
                    and 1 in node.shape
                ):
                    return Ahead(k, node, x)
        return None

    @contextlib.contextmanager
    def train_loop(self, out: _Lines, name: str, args: list[str], decorator: str, before=()):
        """A training kernel's signature and step loop; the body goes inside the loop
        (``lo``, ``n`` and ``inv_n`` are set for the step's mini-batch). Yields the
        index of the loop's first line, where per-call setup can still go."""
        out(decorator)
        out(f"def {name}({', '.join(args)}):")
        with out.indent():
            out('"""Update steps start..stop (counted from the first epoch), without returning')
            out("to Python; each epoch starts with its shuffle (seed: (seed + epoch) mod 2⁶³).")
            out("")
            out("Forward, backward and update are inlined so that LLVM sees one loop.")
            out("Returns (status, step): status 0 done; 1 loss, 2 gradient, 3 parameters")
            out("became non-finite at that step (fit replays the steps before it from its")
            out("backup); 4 the step's batch holds NaN or inf (data checked in the kernel,")
            out('before its use)."""')
            # here, not in Python: a copy call there costs ~0.4 µs an array (3-4-2 at
            # batch 1: 1.7 µs a fit call, as much as 20 steps)
            out("# the call's starting point: fit restores it to undo a failed step")
            for name in args:
                if name.startswith("keep_"):
                    out(f"copy_into({name}, {name[5:]})")
            out("nbatches = (nrows + bs - 1) // bs")
            out("inv_bs = F(1.0) / F(bs)")
            # counted, not step % nbatches: an integer division is ~15 ns, a
            # tenth of a 3-4-2 step at batch 1
            out("batch_no = start % nbatches - 1")
            for line in before:
                out(line)
            loop_at = len(out.lines)
            out("for step in range(start, stop):")
            with out.indent():
                out("batch_no += 1")
                out("if batch_no == nbatches:")
                with out.indent():
                    out("batch_no = 0")
                out("if shuffle and batch_no == 0:  # a new epoch")
                with out.indent():
                    out("shuffle_epoch(perm, nrows, seed, step // nbatches)")
                out("lo = batch_no * bs")
                out("n = min(bs, nrows - lo)")
                out("inv_n = inv_bs if n == bs else F(1.0) / F(n)")
                yield loop_at
            out("return 0, stop")

    def norms_and_update(
        self, out: _Lines, rule: UpdateRule, fused: dict[int, tuple[Node, Node]]
    ) -> None:
        """The end of a training step: gradient norms (History, clip_norm, the
        divergence check) and the update; the norms of parameters updated by
        printed loops are summed in that update sweep. One test after the update
        ends a failed step (status 1, 2 or 3, from ``step_failure``)."""
        grads = self.deriv.grads
        out("# ---- gradient norms (History, clip_norm, divergence check)")
        out("total = 0.0")
        if fused and self.one_sample:  # (train_one: n is 1)
            for k, (a, b) in fused.items():
                self._outer_norm(out, k, a, b)
        elif fused:
            out("if n == 1:  # ‖δ₀·x₀ᵀ‖² = ‖δ₀‖²·‖x₀‖²: no gradient buffer to read")
            with out.indent():
                for k, (a, b) in fused.items():
                    self._outer_norm(out, k, a, b)
            out("else:")
            with out.indent():
                for k in fused:
                    if k in self._folded:
                        self._folded_norm(out, k, *fused[k])
                    else:
                        self.statement(out, grads[k])
                        self._buffer_norm(out, k)
        # parameters updated by printed loops form their norms in those loops: one
        # pass over the gradient, not two (a non-finite one is then found after the
        # update; fit replays the steps before it, as for status 3)
        rest, inline = self._rest(fused)
        grads_rest = (_tuple(rest), _tuple(f"g{k}" for k in rest))
        if rest and not inline:  # squared: the roots are taken outside
            out(f"total += sum_squares_into(gnorms[step - start], {', '.join(grads_rest)})")
        out("scale = F(1.0)")
        if inline:
            out("if clip > 0.0:")
            with out.indent():
                out("# the scale needs every norm now: the inline ones are formed twice")
                out(
                    f"full = total + sum_squares_into(gnorms[step - start], {', '.join(grads_rest)})"
                )
                out("if math.sqrt(full) > clip:")
                with out.indent():
                    out("scale = F(clip / math.sqrt(full))")
        else:
            out("if clip > 0.0 and math.sqrt(total) > clip:")
            with out.indent():
                out("scale = F(clip / math.sqrt(total))")
        out("t = F(opt_step + step - start + 1)")
        out("# ---- update" + (" (and the norms of the gradients read in it)" if inline else ""))
        counts = self.update_body(out, rule, fused, norms=inline)
        check = ""
        if self.inline_bounded(rule, fused):
            self._inline_bound(out, rule, fused)
            check = " + p_bound"
        elif inline:
            check = " + nan_sum"
        # one test for the whole step, after its update (fit undoes the step and
        # replays the ones before it): a NaN or inf in the loss, a norm or a new
        # value makes the sum NaN or inf. Three early exits cost 3-4-2 at batch 1
        # ~4 of its 86 ns per step (sigmoid; ReLU-CE 59.0 → 56.1 with the data check's)
        test = f"not math.isfinite(loss + total{check})"
        out(f"if {'bad or ' if counts else ''}{test}:")
        with out.indent():
            out("return step_failure(loss, total), step")

    def _inline_bound(self, out: _Lines, rule: UpdateRule, fused) -> None:
        """Plain gradient descent moves an entry by at most η·scale·‖g‖ (‖g‖² is
        ``total``): a running bound on max |p| over the parameters updated by
        printed loops shows their new values finite while it stays below a quarter
        of the largest float. They are looked at (``abs_bound``: inf if an entry is
        inf or NaN) only past that: at the call's first step (the bound starts at
        inf), or after a growth that large. Measured against the check per entry,
        fit at batch 1, ns per step, one process: 3-4-2 sigmoid 75.3 → 72.8,
        ReLU-CE 53.1 against 53.3."""
        rate = self._descent_rate(UpdateForm.of(rule))
        rest, _ = self._rest(fused)
        looks = ", ".join(f"abs_bound(p{k})" for k in rest)
        looks = f"max({looks})" if len(rest) > 1 else looks
        out(f"p_bound += {rate} * scale * math.sqrt(total)  # max |p| of the loops above, at most")
        out(f"if p_bound > {self._bound_limit()}:  # no longer shows them finite: look")
        with out.indent():
            out(f"p_bound = {looks}  # inf if an entry is inf or NaN")

    def _buffer_norm(self, out: _Lines, k: int) -> None:
        out(f"sq = sum_squares(g{k})")
        out(f"gnorms[step - start, {k}] = sq  # squared: the root is taken outside")
        out("total += sq")

    def _folded_norm(self, out: _Lines, k: int, a: Node, b: Node) -> None:
        """The squared norm of a gradient Σₙ δₙxₙᵀ whose product waits for the update
        (folded into it) at the batch sizes that fold, from Gram matrices."""
        label = comment_text(self.deriv.graph.params[k].label)
        out(f"if {self._fold_test(k)}:")
        with out.indent():
            out(f"# ∂L/∂{label} is formed in its update: ‖Σₙ δₙxₙᵀ‖² = Σᵢⱼ (δᵢ·δⱼ)(xᵢ·xⱼ)")
            out(f"sq = gram_sq({self._rows(a)}, {self._rows(b)})")
        out("else:")
        with out.indent():
            self.statement(out, self.deriv.grads[k])
            out(f"sq = sum_squares(g{k})")
        out(f"gnorms[step - start, {k}] = sq  # squared: the root is taken outside")
        out("total += sq")

    def _outer_norm(self, out: _Lines, k: int, a: Node, b: Node) -> None:
        with self.scope(out) as inner:
            for acc, node, (rows, cols) in (
                ("sq0", a, (a.shape[0], 1)),
                ("sq1", b, (1, b.shape[1])),
            ):
                inner(f"{acc} = 0.0")
                r, c, d = self._loops(inner, (rows, cols))
                e = self.elem(node, "0", r, c)
                inner(f"{acc} += {e} * {e}")
                inner.depth -= d
            inner(f"gnorms[step - start, {k}] = sq0 * sq1  # squared: the root is taken outside")
            inner("total += sq0 * sq1")


def _batched_vector(node: Node) -> bool:
    """A per-sample column or row in a buffer (or data slice) whose row 0 is sample 0."""
    while isinstance(node, Transpose):
        node = node.args[0]
    return node.batched and 1 in node.shape


def _small(shapes) -> bool:
    """Whether arrays of these shapes are small enough for printed loops (INLINE_MAX_ENTRIES)."""
    return sum(r * c for r, c in shapes) <= INLINE_MAX_ENTRIES


def _tuple(items) -> str:
    """A tuple display in source: ``(a,)``, ``(a, b)``."""
    items = [str(x) for x in items]
    return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"


# fastmath stated (off): a function that leaves it unset inherits the first caller's
# (Numba's flag inheritance), so a shared step function's rounding would depend on
# which kernel compiled it first
_DECORATOR = '@numba.njit(cache=True, error_model="numpy", fastmath=False)'
# the row training kernel (and helpers that allocate nothing): FMA contraction
# (a·b + c rounded once) and reassoc (the norm and finiteness sums in the inline
# update sweep vectorise); no nnan/ninf, so every non-finite check stays exact;
# no reference counting
_DECORATOR_REASSOC = (
    '@numba.njit(cache=True, error_model="numpy", fastmath={"reassoc", "contract"}, _nrt=False)'
)
