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
    train(start, stop, …) -> (status, step)   a whole epoch, shuffle included

Identifiers are chosen here (``p0``, ``v3``, ``d7``, ``g1``); user symbol names
appear only in comments, sanitised.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixElement

from ..derivation.names import display_names
from ..derivation.program import Derivation
from ..errors import GradcError
from ..graph.nodes import BatchSum, EntrySum, Leaf, LogSumExp, Map, MatMul, Node, SumAll, Transpose
from ..spec.optimizers import UpdateRule
from .common import Lines as _Lines
from .common import UpdateForm, comment_text, entry_atoms, map_expression
from .scalar_printer import ScalarPrinter

__all__ = ["BLAS_MIN_MACS", "BLAS_MIN_TOTAL", "CpuKernels", "print_cpu"]

# A product goes to BLAS when one sample costs at least BLAS_MIN_MACS
# multiply-adds and the whole batch at least BLAS_MIN_TOTAL; below that the
# call overhead of BLAS (~1 µs) is more than literal-shape loops cost.
BLAS_MIN_MACS = 256
BLAS_MIN_TOTAL = 32768
BLAS_MIN_CONTRACT = 16  # batch size from which Σₙ δₙ·xₙᵀ goes to BLAS


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

    def optimizer(self, rule: UpdateRule) -> OptimizerKernels:
        """The update and training kernels for one optimizer rule."""
        return self.printer.optimizer(rule)


@dataclass
class OptimizerKernels:
    module_source: str
    source: dict[str, str]
    update_args: list[str]
    train_args: list[str]


class CpuPrinter:
    """Prints node statements; one ``_print_<Kind>`` method per node kind."""

    def __init__(self, deriv: Derivation, dtype: str):
        self.deriv = deriv
        self.float32 = dtype == "float32"
        self.scalar = ScalarPrinter(float32=self.float32)
        self.names: dict[int, str] = {}
        self.consts: list[tuple[str, np.ndarray]] = []
        self.buffers: list[Buffer] = []
        self.comment_names: dict[int, str] = {}
        self._scopes = 0
        self._name_everything()

    # -- naming --------------------------------------------------------------
    def _find_inlined(self) -> set[int]:
        """Anonymous Maps read once by another Map of the same kernel are computed
        inside their reader's loop instead of in a loop (and buffer) of their own."""
        deriv = self.deriv
        roots = {deriv.graph.loss.id, *(g.id for g in deriv.grads if g is not None)}
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
        if isinstance(node, Leaf) and node.role == "seed":
            return "inv_n" if node.batched else self.scalar._num(1)
        name = self.name(node)
        if node.batched:
            flat = r if node.shape[1] == 1 else c
            return f"{name}[{i}, {flat}]"
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
    def _loops(out: _Lines, shape, names=("r", "c")):
        """Open loops over a per-sample shape; returns index strings and depth added."""
        idx, depth = [], 0
        for extent, nm in zip(shape, names):
            if extent == 1:
                idx.append("0")
            else:
                out(f"for {nm} in range({extent}):")
                out.depth += 1
                depth += 1
                idx.append(nm)
        return idx[0], idx[1], depth

    # -- statements ----------------------------------------------------------
    def statement(self, out: _Lines, node: Node) -> None:
        method = getattr(self, f"_print_{type(node).__name__}", None)
        if method is None:
            raise GradcError(f"no CPU kernel form for node kind {type(node).__name__}")
        with self.scope(out) as inner:
            method(inner, node)

    @contextmanager
    def scope(self, out: _Lines):
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
        for line in inner.lines:
            code, hash_, comment = line.partition("#")
            out.lines.append(_LOCAL.sub(lambda m: m.group(0) + suffix, code) + hash_ + comment)

    def _describe(self, node: Node) -> str:
        text = node.formula(self.cname)
        dims = f"{node.shape[0]}×{node.shape[1]}" + (", per sample" if node.batched else "")
        known = self.comment_names.get(node.id)
        return comment_text(f"{known} = {text}   ({dims})" if known else f"{text}   ({dims})")

    def _print_Map(self, out: _Lines, node: Map) -> None:
        if node.id in self.inlined:
            return  # computed inside its reader's loop
        out(f"# {self._describe(node)}")
        body, reads = map_expression(node, self.inlined)
        temps, (reduced,) = sp.cse(body, symbols=sp.numbered_symbols("t"), optimizations="basic")
        depth = 0
        if node.batched:
            out("for i in range(n):")
            out.depth += 1
            depth += 1
        r, c, d = self._loops(out, node.shape)
        depth += d
        for sym, arg, scalar in reads:
            out(f"{sym} = {self.elem(arg, 'i', 0, 0) if scalar else self.elem(arg, 'i', r, c)}")
        for t, e in temps:
            out(f"{t} = {self.scalar.doprint_expr(e)}")
        out(f"{self.elem(node, 'i', r, c)} = {self.scalar.doprint_expr(reduced)}")
        out.depth -= depth

    def _print_SumAll(self, out: _Lines, node: SumAll) -> None:
        out(f"# {self._describe(node)}")
        (a,) = node.args
        if node.batched:
            out("for i in range(n):")
            out.depth += 1
        out(f"acc = {self.scalar._num(0)}")
        r, c, d = self._loops(out, a.shape)
        out(f"acc += {self.elem(a, 'i', r, c)}")
        out.depth -= d
        out(f"{self.elem(node, 'i', 0, 0)} = acc")
        if node.batched:
            out.depth -= 1

    def _print_LogSumExp(self, out: _Lines, node: LogSumExp) -> None:
        out(f"# {self._describe(node)}   (max subtracted first: no overflow)")
        (a,) = node.args
        if node.batched:
            out("for i in range(n):")
            out.depth += 1
        out(f"big = {self.elem(a, 'i', 0, 0)}")
        r, c, d = self._loops(out, a.shape)
        out(f"big = max(big, {self.elem(a, 'i', r, c)})")
        out.depth -= d
        out(f"acc = {self.scalar._num(0)}")
        r, c, d = self._loops(out, a.shape)
        out(f"acc += math.exp({self.elem(a, 'i', r, c)} - big)")
        out.depth -= d
        out(f"{self.elem(node, 'i', 0, 0)} = big + math.log(acc)")
        if node.batched:
            out.depth -= 1

    def _print_BatchSum(self, out: _Lines, node: BatchSum) -> None:
        out(f"# {self._describe(node)}")
        (a,) = node.args
        zero = self.scalar._num(0)
        r, c, d = self._loops(out, node.shape)
        out(f"{self.elem(node, 'i', r, c)} = {zero}")
        out.depth -= d
        out("for i in range(n):")
        with out.indent():
            r, c, d = self._loops(out, node.shape)
            out(f"{self.elem(node, 'i', r, c)} += {self.elem(a, 'i', r, c)}")
            out.depth -= d

    def _print_MatMul(self, out: _Lines, node: MatMul) -> None:
        out(f"# {self._describe(node)}")
        a, b = node.args
        R, K, C = a.shape[0], a.shape[1], b.shape[1]
        macs = R * K * C
        blas = macs >= BLAS_MIN_MACS
        per_batch = node.batched or node.contract
        if blas:
            cond = f"n * {macs} >= {BLAS_MIN_TOTAL}" if per_batch else "True"
            if node.contract:
                # a sum of a few outer products is a GEMM with a tiny inner dimension:
                # one sweep over the output, row by row, is several times faster
                cond += f" and n >= {BLAS_MIN_CONTRACT}"
            out(f"if {cond}:")
            with out.indent():
                out(self._blas_call(node))
            out("else:")
            out.depth += 1
        self._loop_product(out, node)
        if blas:
            out.depth -= 1

    def _blas_call(self, node: MatMul) -> str:
        a, b = node.args
        o = self.blas_operand(node)
        if node.contract:  # Σₙ aₙ bₙ = A[:n]ᵀ · B[:n]
            return f"np.dot({self.blas_operand(a)}.T, {self.blas_operand(b)}, {o})"
        if node.batched and not a.batched:  # rows: out[i] = A · b[i]  →  B[:n] · Aᵀ
            return f"np.dot({self.blas_operand(b)}, {_transposed(self.blas_operand(a))}, {o})"
        if node.batched and not b.batched:  # rows: out[i] = a[i] · B
            return f"np.dot({self.blas_operand(a)}, {self.blas_operand(b)}, {o})"
        return f"np.dot({self.blas_operand(a)}, {self.blas_operand(b)}, {o})"

    def _loop_product(self, out: _Lines, node: MatMul) -> None:
        a, b = node.args
        R, K, C = a.shape[0], a.shape[1], b.shape[1]
        zero = self.scalar._num(0)
        if node.contract:
            # outer products summed over the batch; the inner loop runs along a row
            r, c, d = self._loops(out, (R, C))
            out(f"{self.elem(node, 'i', r, c)} = {zero}")
            out.depth -= d
            out("for i in range(n):")
            with out.indent():
                r, _, d1 = self._loops(out, (R, 1))
                out(f"av = {self.elem(a, 'i', r, 0)}")
                _, c, d2 = self._loops(out, (1, C))
                out(f"{self.elem(node, 'i', r, c)} += av * {self.elem(b, 'i', 0, c)}")
                out.depth -= d1 + d2
            return
        if node.batched:
            out("for i in range(n):")
            out.depth += 1
        r, c, d = self._loops(out, (R, C))
        out(f"acc = {zero}")
        if K == 1:
            out(f"acc += {self.elem(a, 'i', r, 0)} * {self.elem(b, 'i', 0, c)}")
        else:
            out(f"for k in range({K}):")
            with out.indent():
                out(f"acc += {self.elem(a, 'i', r, 'k')} * {self.elem(b, 'i', 'k', c)}")
        out(f"{self.elem(node, 'i', r, c)} = acc")
        out.depth -= d
        if node.batched:
            out.depth -= 1

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
        for node in self.deriv.forward:
            self.statement(out, node)
        loss = self.deriv.graph.loss
        if loss.batched:
            out("loss = 0.0")
            with self.scope(out) as inner:
                inner("for i in range(n):")
                with inner.indent():
                    inner(f"loss += {self.elem(loss, 'i', 0, 0)}")
            out("loss = loss * inv_n")
        else:
            out(f"loss = {self.elem(loss, 'i', 0, 0)} * 1.0")

    def backward_body(self, out: _Lines) -> None:
        for node in self.deriv.backward:
            self.statement(out, node)
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

    def update_body(self, out: _Lines, rule: UpdateRule) -> None:
        """One optimizer step on every entry; ``bad`` counts new values that are not finite."""
        params = self.deriv.graph.params
        form = UpdateForm.of(rule)
        theta, states, hypers, targets = form.theta, form.states, form.hypers, form.targets
        hoisted_exprs, temps, reduced = form.hoisted, form.temps, form.values
        for j, h in enumerate(hypers):
            out(f"{h} = hp[{j}]  # {comment_text(rule.hyper_names[j])}")
        for e, h in hoisted_exprs.items():
            out(f"{h} = {self.scalar.doprint_expr(e)}")
        out("bad = 0  # counts non-finite new values (an integer sum still vectorises)")
        for k, p in enumerate(params):
            out(f"# update {comment_text(p.label)}")
            with self.scope(out) as body:
                r, c, _ = self._loops(body, p.shape)
                body(f"th = p{k}[{r}, {c}]")
                body(f"gr = g{k}[{r}, {c}] * scale")
                for j in range(len(states)):
                    body(f"st{j} = s{k}_{j}[{r}, {c}]")
                for t_sym, e in temps:
                    body(f"{t_sym} = {self.scalar.doprint_expr(e)}")
                for tgt, e in zip(targets, reduced):
                    body(f"new_{tgt} = {self.scalar.doprint_expr(e)}")
                for tgt in targets:
                    if tgt == theta:
                        body(f"p{k}[{r}, {c}] = new_{tgt}")
                        body(
                            f"z = new_{tgt} - new_{tgt}  # NaN exactly when new_{tgt} is inf or NaN"
                        )
                        body("bad += z != z")
                    else:
                        body(f"s{k}_{states.index(tgt)}[{r}, {c}] = new_{tgt}")

    # -- kernels ------------------------------------------------------------------
    def forward_kernel(self) -> tuple[str, list[str]]:
        args = ["n", "inv_n", *self.param_names(), *self.data_names(), *self.value_names()]
        out = _Lines()
        out(_DECORATOR)
        out(f"def forward({', '.join(args)}):")
        with out.indent():
            out('"""Forward pass over a batch of n samples; returns the mean loss."""')
            self.forward_body(out)
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
            self.backward_body(out)
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

    def train_kernel(self, rule: UpdateRule) -> tuple[str, list[str]]:
        g = self.deriv.graph
        data = self.data_names()
        full = [n.upper() for n in data]
        gather = [f"{n}buf" for n in data]
        nstate = len(rule.state_names)
        states = [f"s{k}_{j}" for k in range(len(g.params)) for j in range(nstate)]
        args = ["start", "stop", "nrows", "bs", "shuffle", "seed", "perm", "hp", "opt_step", "clip"]
        args += full + self.param_names() + states + gather
        args += self.value_names() + self.delta_names() + self.grad_names() + ["losses", "gnorms"]
        out = _Lines()
        out(_DECORATOR)
        out(f"def train({', '.join(args)}):")
        with out.indent():
            out('"""Steps start..stop of one epoch of mini-batches, without returning to Python.')
            out("")
            out("Forward, backward and update are inlined so that LLVM sees one loop.")
            out("Returns (status, step): status 0 done; 1 loss, 2 gradient, 3 parameters")
            out('became non-finite at that step (no update was kept for 1 and 2)."""')
            out("if shuffle and start == 0:")
            with out.indent():
                out("shuffle_rows(perm, nrows, seed)")
            out("nbatches = (nrows + bs - 1) // bs")
            out("for step in range(start, stop):")
            with out.indent():
                out("lo = (step % nbatches) * bs")
                out("n = min(bs, nrows - lo)")
                out("inv_n = F(1.0) / F(n)")
                if data:
                    out("if shuffle:")
                    with out.indent(), self.scope(out) as inner:
                        inner("for i in range(n):")
                        with inner.indent():
                            inner("row = perm[lo + i]")
                            # explicit loops: slice assignment costs seconds of Numba compile time
                            for leaf, buf, big in zip(g.inputs + g.targets, gather, full):
                                inner(f"for j in range({leaf.size}):")
                                with inner.indent():
                                    inner(f"{buf}[i, j] = {big}[row, j]")
                    with out.indent():
                        for name, buf in zip(data, gather):
                            out(f"{name} = {buf}[:n]")
                    out("else:")
                    with out.indent():
                        for name, big in zip(data, full):
                            out(f"{name} = {big}[lo:lo + n]")
                out("# ---- forward")
                self.forward_body(out)
                out("losses[step - start] = loss")
                out("if not math.isfinite(loss):")
                with out.indent():
                    out("return 1, step")
                out("# ---- backward")
                self.backward_body(out)
                out("# ---- gradient norms (History, clip_norm, divergence check)")
                out("total = 0.0")
                for k, p in enumerate(g.params):
                    with self.scope(out) as inner:
                        inner("sq = 0.0")
                        r, c, d = self._loops(inner, p.shape)
                        inner(f"sq += g{k}[{r}, {c}] * g{k}[{r}, {c}]")
                        inner.depth -= d
                        inner(
                            f"gnorms[step - start, {k}] = sq  # squared: the root is taken outside"
                        )
                        inner("total += sq")
                out("if not math.isfinite(total):")
                with out.indent():
                    out("return 2, step")
                out("scale = F(1.0)")
                out("if clip > 0.0 and math.sqrt(total) > clip:")
                with out.indent():
                    out("scale = F(clip / math.sqrt(total))")
                out("t = F(opt_step + step - start + 1)")
                out("# ---- update")
                self.update_body(out, rule)
                out("if bad:")
                with out.indent():
                    out("return 3, step")
            out("return 0, stop")
        return out.text(), args

    def _header(self, what: str, imports: list[str]) -> _Lines:
        header = _Lines()
        g = self.deriv.graph
        header(f'"""gradc generated kernels (CPU, Numba): {what}.')
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
        header('"""')
        header("import math")
        header("")
        header("import numba")
        header("import numpy as np")
        header("")
        for line in imports:
            header(line)
        header("")
        header(f"F = np.{'float32' if self.float32 else 'float64'}")
        return header

    def model(self) -> CpuKernels:
        fwd, fwd_args = self.forward_kernel()
        bwd, bwd_args = self.backward_kernel()
        header = self._header("forward and backward", [])
        for name, value in self.consts:
            header(f"{name} = np.array({value.tolist()!r}, dtype=F)")
        header("")
        parts = {"forward": fwd, "backward": bwd}
        text = header.text() + "\n" + "\n\n".join(parts.values())
        g = self.deriv.graph
        output_view = None
        if g.output is not None:
            node, transposed = g.output, False
            while isinstance(node, Transpose):
                node, transposed = node.args[0], not transposed
            output_view = (self.elem_storage(node), transposed)
        return CpuKernels(
            printer=self,
            module_source=text,
            source=parts,
            buffers=self.buffers,
            forward_args=fwd_args,
            backward_args=bwd_args,
            output_view=output_view,
            float32=self.float32,
        )

    def optimizer(self, rule: UpdateRule) -> OptimizerKernels:
        upd, upd_args = self.update_kernel(rule)
        trn, trn_args = self.train_kernel(rule)
        header = self._header(
            "optimizer update and fused training epoch",
            ["from gradc.kernels.runtime import shuffle_rows"],
        )
        for name, value in self.consts:
            header(f"{name} = np.array({value.tolist()!r}, dtype=F)")
        header("")
        parts = {"update": upd, "train": trn}
        text = header.text() + "\n" + "\n\n".join(parts.values())
        return OptimizerKernels(text, parts, upd_args, trn_args)

    def elem_storage(self, node: Node) -> str:
        if isinstance(node, Leaf) and node.role == "seed":
            raise GradcError("the output cannot be the loss seed")
        return self.name(node)


# names of statement-local variables in generated code (renamed per statement)
_LOCAL = re.compile(r"\b(?:i|r|c|k|j|z|acc|av|big|sq|th|gr|row|a\d+|t\d+|t_\d+|st\d+|new_\w+)\b")


def _transposed(operand: str) -> str:
    return operand[:-2] if operand.endswith(".T") else operand + ".T"


_DECORATOR = '@numba.njit(cache=True, error_model="numpy")'


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
