"""kernels stage: print a :class:`~gradc.derivation.program.Derivation` as a
Python module of numba-cuda kernels.

Everything before printing is the CPU printer's: :class:`CudaPrinter`
subclasses :class:`~gradc.kernels.cpu.CpuPrinter` for its naming (``p0``,
``v3``, ``d7``, ``g1``), buffers, Map inlining and ``elem()`` accessor, and
overrides only the ``_print_<Kind>`` methods and the kernel assembly. Each node
statement becomes one ``@cuda.jit`` kernel; plain host functions ``forward``
and ``backward`` launch them in order on the default stream, so no value leaves
the device between kernels::

    Map            one thread per entry; the inlined SymPy body runs in registers
    MatMul         tiled shared-memory product out[m, f] = Σ_k L[m, k]·R[k, f]:
                   the batch is m for layer products (z = W·x) and k for the
                   weight gradients summed over the batch (Σₙ δ·xᵀ)
    SumAll,        one block per sample, tree reduction in shared memory
    LogSumExp      (max first, then Σ exp(v − max): stable)
    BatchSum       threads along x own entries, threads along y share the samples
    EntrySum       (naive strategy) one thread per gradient entry, each its own expression
    mean loss      one block, tree sum over the batch → losses[slot]

The optimizer module holds ``k_sqnorms`` (Σ g² of each gradient, one block per
parameter) and ``k_update``, compiled from the optimizer's SymPy rule and
launched once per parameter with the hyperparameters as run-time arguments.
Block sizes follow the literal shapes, so tiny models launch tiny blocks (which
is also what keeps the CUDA simulator usable for tests).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import sympy as sp

from ..derivation.program import Derivation
from ..errors import GradcError
from ..graph.nodes import BatchSum, EntrySum, Leaf, LogSumExp, Map, MatMul, Node, SumAll, Transpose
from ..spec.optimizers import UpdateRule
from .common import Lines, UpdateForm, comment_text, entry_atoms, map_expression
from .cpu import Buffer, CpuPrinter

__all__ = ["CudaKernels", "CudaOptimizerKernels", "CudaPrinter", "print_cuda"]

# largest tile edge of the matrix-product kernel: 16×16 = 256 threads per block
MAX_TILE = 16
# threads per block of the reductions over the entries of one sample
REDUCE_THREADS = 128
# threads per block of the sums over the batch (entries × lanes)
BATCH_THREADS = 256


def _pow2_at_least(value: int) -> int:
    width = 1
    while width < value:
        width *= 2
    return width


def _pow2_at_most(value: int) -> int:
    width = 1
    while width * 2 <= value:
        width *= 2
    return width


def _ceil_div(extent, tile: int) -> str:
    """Blocks needed to cover ``extent`` (a literal or a name) with tiles of ``tile``."""
    if isinstance(extent, int):
        return str(-(-extent // tile))
    return f"({extent} + {tile - 1}) // {tile}" if tile > 1 else extent


@dataclass
class _Product:
    """A matrix product laid out for the tiled kernel: out[m, f] = Σ_k L[m, k]·R[k, f]."""

    m: int | str  # extent of m (a literal, or "n" for the batch)
    f: int
    k: int | str
    left: Callable[[str, str], str]  # (m, k) -> element of L
    right: Callable[[str, str], str]  # (k, f) -> element of R
    out: Callable[[str, str], str]  # (m, f) -> element of the result
    what: str  # one line: which index is the batch


@dataclass
class CudaKernels:
    """The printed forward/backward module and what the CUDA Program needs to call it."""

    printer: CudaPrinter
    module_source: str
    source: dict[str, str]
    buffers: list[Buffer]
    forward_args: list[str]
    backward_args: list[str]
    output_view: tuple[str, bool] | None
    float32: bool

    def optimizer(self, rule: UpdateRule, *_unused) -> CudaOptimizerKernels:
        """The gradient-norm and update kernels for one optimizer rule."""
        return self.printer.optimizer(rule)


@dataclass
class CudaOptimizerKernels:
    module_source: str
    source: dict[str, str]
    update_args: list[str]
    step_source: str = ""  # the CPU's shared step module; CUDA prints its rule per program


class CudaPrinter(CpuPrinter):
    """Prints one ``@cuda.jit`` kernel per node statement, and the host code launching it."""

    EXP = "math.exp"  # CUDA's own exp (libdevice)
    # one thread per entry already: no batch-wide exp or flat loops, no kept softmax
    SHARE_SOFTMAX = False
    _large_batches = False

    def __init__(self, deriv: Derivation, dtype: str):
        super().__init__(deriv, dtype)
        self.defs: list[str] = []  # kernel definitions of the host function being printed
        self.uses: set[str] = set()  # arguments the kernel being printed reads or writes

    # -- element access: also records which arrays a kernel needs ----------------
    def elem(self, node: Node, i: str, r, c) -> str:
        if isinstance(node, Leaf) and node.role == "seed":
            if node.batched:
                self.uses.add("inv_n")
        elif not isinstance(node, Transpose):
            self.uses.add(self.name(node))
        return super().elem(node, i, r, c)

    def _arg_order(self) -> list[str]:
        return [
            "n",
            "inv_n",
            *self.param_names(),
            *self.data_names(),
            *self.value_names(),
            *self.delta_names(),
            *self.grad_names(),
        ]

    def _body(self) -> Lines:
        """A fresh kernel body (one indent deep); forgets the previous kernel's arguments."""
        self.uses = set()
        body = Lines()
        body.depth = 1
        return body

    def _kernel(self, name: str, comment: str, doc: str, body: Lines, extra=()) -> list[str]:
        """Store ``@cuda.jit def name(args)`` with ``body``; returns its arguments."""
        args = [a for a in self._arg_order() if a in self.uses] + list(extra)
        out = Lines()
        out(f"# {comment}")
        out("@cuda.jit")
        out(f"def {name}({', '.join(args)}):")
        with out.indent():
            out(f'"""{doc}"""')
        out.lines.extend(body.lines)
        self.defs.append(out.text())
        return args

    @staticmethod
    def _launch(out: Lines, name: str, config: str, args: list[str]) -> None:
        out(f"{name}[{config}]({', '.join(args)})")

    def _kname(self, node: Node) -> str:
        return f"k_{self.name(node)}"

    # -- indices -----------------------------------------------------------------
    def _entry_index(self, body: Lines, node_shape, batched: bool) -> tuple[str, str, str, str]:
        """``e = cuda.grid(1)`` and a bounds guard; returns (i, r, c, total) as source text.

        Opens the guarded block (the caller's statements go one level deeper).
        """
        rows, cols = node_shape
        size = rows * cols
        body("e = cuda.grid(1)")
        if batched:
            self.uses.add("n")
            total = f"n * {size}" if size > 1 else "n"
            body(f"if e < {total}:")
            body.depth += 1
            if size == 1:
                return "e", "0", "0", total
            body(f"i = e // {size}")
            body(f"f = e % {size}")
            return ("i", "f", "0", total) if cols == 1 else ("i", "0", "f", total)
        total = str(size)
        body(f"if e < {total}:")
        body.depth += 1
        if rows == 1:
            return "0", "0", ("e" if cols > 1 else "0"), total
        if cols == 1:
            return "0", "e", "0", total
        body(f"r = e // {cols}")
        body(f"c = e % {cols}")
        return "0", "r", "c", total

    @staticmethod
    def _flat(shape, f: str) -> tuple[str, str]:
        """(row, col) source text of flat entry ``f`` of a per-sample shape."""
        rows, cols = shape
        if cols == 1:
            return f, "0"
        if rows == 1:
            return "0", f
        return f"{f} // {cols}", f"{f} % {cols}"

    # -- statements --------------------------------------------------------------
    def statement(self, out: Lines, node: Node) -> None:
        method = getattr(self, f"_print_{type(node).__name__}", None)
        if method is None:
            raise GradcError(f"no CUDA kernel form for node kind {type(node).__name__}")
        method(out, node)

    def _print_Map(self, out: Lines, node: Map) -> None:
        if node.id in self.inlined:
            return  # computed inside its reader's kernel
        expr, reads = map_expression(node, self.inlined)
        temps, (reduced,) = sp.cse(expr, symbols=sp.numbered_symbols("t"), optimizations="basic")
        body = self._body()
        i, r, c, total = self._entry_index(body, node.shape, node.batched)
        for sym, arg, scalar in reads:
            body(f"{sym} = {self.elem(arg, i, 0, 0) if scalar else self.elem(arg, i, r, c)}")
        for t, e in temps:
            body(f"{t} = {self.scalar.doprint_expr(e)}")
        body(f"{self.elem(node, i, r, c)} = {self.scalar.doprint_expr(reduced)}")
        name = self._kname(node)
        args = self._kernel(name, self._describe(node), "One thread per entry.", body)
        out(f"# {self._describe(node)}: one thread per entry")
        self._launch(out, name, f"launch_1d({total})", args)

    def _product(self, node: MatMul) -> _Product | None:
        """The tiled layout of a product, or None when it is not a matrix product
        of one batched and one unbatched factor (a per-sample dot product)."""
        a, b = node.args
        rows, inner, cols = a.shape[0], a.shape[1], b.shape[1]
        if node.contract:
            if inner != 1:
                raise GradcError("a batch contraction needs per-sample vectors (inner size 1)")
            self.uses.add("n")
            return _Product(
                m=rows,
                f=cols,
                k="n",
                left=lambda m, k: self.elem(a, k, m, 0),
                right=lambda k, f: self.elem(b, k, 0, f),
                out=lambda m, f: self.elem(node, "0", m, f),
                what="k runs over the samples of the batch",
            )
        if not node.batched:
            return _Product(
                m=rows,
                f=cols,
                k=inner,
                left=lambda m, k: self.elem(a, "0", m, k),
                right=lambda k, f: self.elem(b, "0", k, f),
                out=lambda m, f: self.elem(node, "0", m, f),
                what="no batch",
            )
        self.uses.add("n")
        if b.batched and not a.batched:  # out[i, r] = Σ_k A[r, k]·b[i, k]: L is the data side
            return _Product(
                m="n",
                f=rows,
                k=inner,
                left=lambda m, k: self.elem(b, m, k, 0),
                right=lambda k, f: self.elem(a, "0", f, k),
                out=lambda m, f: self.elem(node, m, f, 0),
                what="m runs over the samples",
            )
        if a.batched and not b.batched:  # out[i, c] = Σ_k a[i, k]·B[k, c]
            return _Product(
                m="n",
                f=cols,
                k=inner,
                left=lambda m, k: self.elem(a, m, 0, k),
                right=lambda k, f: self.elem(b, "0", k, f),
                out=lambda m, f: self.elem(node, m, 0, f),
                what="m runs over the samples",
            )
        return None

    def _print_MatMul(self, out: Lines, node: MatMul) -> None:
        body = self._body()
        plan = self._product(node)
        if plan is None:
            self._print_dot(out, node, body)
            return
        literal = [x for x in (plan.m, plan.f, plan.k) if isinstance(x, int)]
        tile = min(MAX_TILE, _pow2_at_least(max(literal)))
        zero = self.scalar._num(0)
        # consecutive threads (along x) should read consecutive addresses: find
        # which logical index is the last (contiguous) one of each factor
        left_k_fast = plan.left("mm", "kk").endswith("kk]")
        right_f_fast = plan.right("kk", "ff").endswith("ff]")
        body(f"sl = cuda.shared.array(({tile}, {tile + 1}), F)  # tile of L, [m, k]")
        body(f"sr = cuda.shared.array(({tile}, {tile + 1}), F)  # tile of R, [k, f]")
        body("# (one column of padding: transposed stores hit distinct memory banks)")
        body("tx = cuda.threadIdx.x")
        body("ty = cuda.threadIdx.y")
        body(f"m0 = cuda.blockIdx.x * {tile}")
        body(f"f0 = cuda.blockIdx.y * {tile}")
        body(f"acc = {zero}")
        body(f"for k0 in range(0, {plan.k}, {tile}):")
        with body.indent():
            # the tile of L, stored [m, k]
            if left_k_fast:
                body("m = m0 + ty")
                body("k = k0 + tx  # threads along x read along k, the contiguous index")
                store_l = "sl[ty, tx]"
            else:
                body("m = m0 + tx  # threads along x read along m, the contiguous index")
                body("k = k0 + ty")
                store_l = "sl[tx, ty]"
            body(f"if m < {plan.m} and k < {plan.k}:")
            with body.indent():
                body(f"{store_l} = {plan.left('m', 'k')}")
            body("else:")
            with body.indent():
                body(f"{store_l} = {zero}  # past the edge: contributes nothing")
            # the tile of R, stored [k, f]
            if right_f_fast:
                body("k = k0 + ty")
                body("f = f0 + tx  # threads along x read along f, the contiguous index")
                store_r = "sr[ty, tx]"
            else:
                body("k = k0 + tx  # threads along x read along k, the contiguous index")
                body("f = f0 + ty")
                store_r = "sr[tx, ty]"
            body(f"if k < {plan.k} and f < {plan.f}:")
            with body.indent():
                body(f"{store_r} = {plan.right('k', 'f')}")
            body("else:")
            with body.indent():
                body(f"{store_r} = {zero}")
            body("cuda.syncthreads()  # wait until both tiles are loaded")
            body(f"for kk in range({tile}):")
            with body.indent():
                body("acc += sl[ty, kk] * sr[kk, tx]")
            body("cuda.syncthreads()  # wait until all threads used the tiles before reloading")
        body("m = m0 + ty")
        body("f = f0 + tx")
        body(f"if m < {plan.m} and f < {plan.f}:")
        with body.indent():
            body(f"{plan.out('m', 'f')} = acc")
        name = self._kname(node)
        doc = (
            f"Tiled product out[m, f] = Σ_k L[m, k]·R[k, f] ({plan.what}); "
            f"{tile}×{tile} threads per block, one output each."
        )
        args = self._kernel(name, self._describe(node), doc, body)
        grid = f"({_ceil_div(plan.m, tile)}, {_ceil_div(plan.f, tile)})"
        out(f"# {self._describe(node)}: {tile}×{tile} tiles")
        self._launch(out, name, f"{grid}, ({tile}, {tile})", args)

    def _print_dot(self, out: Lines, node: MatMul, body: Lines) -> None:
        """A product of two per-sample factors: one thread per entry, a loop over k."""
        a, b = node.args
        inner = a.shape[1]
        i, r, c, total = self._entry_index(body, node.shape, node.batched)
        body(f"acc = {self.scalar._num(0)}")
        body(f"for k in range({inner}):")
        with body.indent():
            body(f"acc += {self.elem(a, i, r, 'k')} * {self.elem(b, i, 'k', c)}")
        body(f"{self.elem(node, i, r, c)} = acc")
        name = self._kname(node)
        args = self._kernel(name, self._describe(node), "One thread per entry.", body)
        out(f"# {self._describe(node)}: one thread per entry")
        self._launch(out, name, f"launch_1d({total})", args)

    def _reduce_entries(self, out: Lines, node: Node, stable_max: bool) -> None:
        """SumAll (Σ of one sample's entries) or LogSumExp: one block per sample."""
        (a,) = node.args
        body = self._body()
        size = a.size
        width = _pow2_at_most(min(size, REDUCE_THREADS))
        zero = self.scalar._num(0)
        i = "cuda.blockIdx.x" if node.batched else "0"
        body(f"buf = cuda.shared.array({width}, F)  # one partial result per thread")
        body("tid = cuda.threadIdx.x")
        if node.batched:
            self.uses.add("n")
            body("i = cuda.blockIdx.x  # this block's sample")
            i = "i"
        r, c = self._flat(a.shape, "f")
        if stable_max:
            body(f"big = {self.elem(a, i, 0, 0)}")
            body(f"for f in range(tid, {size}, {width}):")
            with body.indent():
                body(f"big = max(big, {self.elem(a, i, r, c)})")
            body("buf[tid] = big")
            body("cuda.syncthreads()  # all partial maxima written")
            body(f"tree_max(buf, tid, {width})")
            body("big = buf[0]")
            body("cuda.syncthreads()  # everyone has read the maximum before buf is reused")
        body(f"acc = {zero}")
        body(f"for f in range(tid, {size}, {width}):")
        with body.indent():
            if stable_max:
                body(f"acc += math.exp({self.elem(a, i, r, c)} - big)")
            else:
                body(f"acc += {self.elem(a, i, r, c)}")
        body("buf[tid] = acc")
        body("cuda.syncthreads()  # all partial sums written")
        body(f"tree_sum(buf, tid, {width})")
        body("if tid == 0:")
        with body.indent():
            value = "big + math.log(buf[0])" if stable_max else "buf[0]"
            body(f"{self.elem(node, i, 0, 0)} = {value}")
        name = self._kname(node)
        what = "max subtracted first: no overflow; " if stable_max else ""
        threads = f"{width} thread{'s' if width > 1 else ''}"
        doc = f"One block per sample; {threads} share its {size} entries ({what}tree reduction)."
        if not node.batched:
            doc = f"One block; {threads} share the {size} entries ({what}tree reduction)."
        args = self._kernel(name, self._describe(node), doc, body)
        blocks = "n" if node.batched else "1"
        out(f"# {self._describe(node)}: {'one block per sample' if node.batched else 'one block'}")
        self._launch(out, name, f"{blocks}, {width}", args)

    def _print_SumAll(self, out: Lines, node: SumAll) -> None:
        self._reduce_entries(out, node, stable_max=False)

    def _print_LogSumExp(self, out: Lines, node: LogSumExp) -> None:
        self._reduce_entries(out, node, stable_max=True)

    def _print_BatchSum(self, out: Lines, node: BatchSum) -> None:
        (a,) = node.args
        body = self._body()
        size = node.size
        across = min(32, _pow2_at_least(size))  # threads along x: entries
        lanes = BATCH_THREADS // across  # most threads along y: samples
        zero = self.scalar._num(0)
        r, c = self._flat(node.shape, "f")
        self.uses.add("n")
        body(f"buf = cuda.shared.array(({lanes}, {across}), F)  # partial sums [lane, entry]")
        body("tx = cuda.threadIdx.x")
        body("ty = cuda.threadIdx.y")
        body("lanes = cuda.blockDim.y")
        body(f"f = cuda.blockIdx.x * {across} + tx  # this thread's entry")
        body(f"acc = {zero}")
        body(f"if f < {size}:")
        with body.indent():
            body("for i in range(ty, n, lanes):")
            with body.indent():
                body(f"acc += {self.elem(a, 'i', r, c)}")
        body("buf[ty, tx] = acc")
        body("cuda.syncthreads()  # all partial sums written")
        body("half = lanes // 2")
        body("while half > 0:  # tree over the lanes")
        with body.indent():
            body("if ty < half:")
            with body.indent():
                body("buf[ty, tx] += buf[ty + half, tx]")
            body("cuda.syncthreads()  # this level is complete before the next one reads it")
            body("half //= 2")
        body(f"if ty == 0 and f < {size}:")
        with body.indent():
            body(f"{self.elem(node, '0', r, c)} = buf[0, tx]")
        name = self._kname(node)
        doc = (
            f"{across} threads along x own entries; up to {lanes} along y "
            "stride over the samples, then a tree sum over y."
        )
        args = self._kernel(name, self._describe(node), doc, body)
        out(f"# {self._describe(node)}: entries × lanes over the batch")
        blocks = _ceil_div(size, across)
        self._launch(out, name, f"{blocks}, ({across}, pow2_at_most(n, {lanes}))", args)

    def _print_EntrySum(self, out: Lines, node: EntrySum) -> None:
        body = self._body()
        by_symbol = {a.symbol: a for a in node.args}
        rows, cols = node.shape
        zero = self.scalar._num(0)
        body("e = cuda.grid(1)")
        body(f"acc = {zero}")
        if node.atoms:
            self.uses.add("n")
        for entry in range(rows * cols):
            r, c = divmod(entry, cols)
            expr = node.exprs[r][c]
            body(f"{'if' if entry == 0 else 'elif'} e == {entry}:  # entry [{r}, {c}]")
            with body.indent():
                if node.atoms:
                    body("for i in range(n):")
                    body.depth += 1
                local = {}
                for k, atom in enumerate(entry_atoms(expr, by_symbol)):
                    sym = sp.Symbol(f"a{k}")
                    local[atom] = sym
                    if isinstance(atom, sp.Symbol):
                        body(f"{sym} = {self.elem(by_symbol[atom], 'i', 0, 0)}")
                    else:
                        leaf = by_symbol[atom.parent]
                        body(f"{sym} = {self.elem(leaf, 'i', int(atom.i), int(atom.j))}")
                temps, (reduced,) = sp.cse(
                    expr.xreplace(local), symbols=sp.numbered_symbols("t"), optimizations="basic"
                )
                for t, e in temps:
                    body(f"{t} = {self.scalar.doprint_expr(e)}")
                if node.atoms:
                    self.uses.add("inv_n")
                    body(f"acc += inv_n * ({self.scalar.doprint_expr(reduced)})")
                    body.depth -= 1
                else:
                    body(f"acc = {self.scalar.doprint_expr(reduced)}")
                body(f"{self.elem(node, '0', r, c)} = acc")
        name = self._kname(node)
        doc = "Naive strategy: one thread per gradient entry, each with its own expression."
        comment = f"{comment_text(node.label)}: one independent expression per entry (naive)"
        args = self._kernel(name, comment, doc, body)
        out(f"# {comment}: one thread per entry")
        self._launch(out, name, f"launch_1d({rows * cols})", args)

    def _print_Transpose(self, out: Lines, node: Transpose) -> None:
        pass  # a view: readers index the argument directly

    def _print_Leaf(self, out: Lines, node: Leaf) -> None:
        pass

    # -- the mean loss and the gradient copies -----------------------------------
    def _print_loss(self, out: Lines) -> list[str]:
        loss = self.deriv.graph.loss
        body = self._body()
        if loss.batched:
            self.uses.add("n")
            body("buf = cuda.shared.array(BLOCK, np.float64)  # one partial sum per thread")
            body("tid = cuda.threadIdx.x")
            body("width = cuda.blockDim.x")
            body("acc = 0.0  # float64, as on the CPU")
            body("for i in range(tid, n, width):")
            with body.indent():
                body(f"acc += {self.elem(loss, 'i', 0, 0)}")
            body("buf[tid] = acc")
            body("cuda.syncthreads()  # all partial sums written")
            body("tree_sum(buf, tid, width)")
            body("if tid == 0:")
            with body.indent():
                self.uses.add("inv_n")
                body("losses[slot] = buf[0] * inv_n")
            doc = "One block: tree sum of the per-sample losses, times 1/n, into losses[slot]."
            config = "1, pow2_at_most(n, BLOCK)"
        else:
            body(f"losses[slot] = {self.elem(loss, '0', 0, 0)} * 1.0")
            doc = "The objective's value into losses[slot] (one thread)."
            config = "1, 1"
        args = self._kernel("k_loss", "mean loss over the batch", doc, body, ["losses", "slot"])
        out("# the batch's mean loss, left on the device in losses[slot]")
        self._launch(out, "k_loss", config, args)
        return args

    def _print_grad_copies(self, out: Lines) -> None:
        zero = self.scalar._num(0)
        for k, gn in enumerate(self.deriv.grads):
            p = self.deriv.graph.params[k]
            if gn is not None and self.names.get(gn.id) == f"g{k}":
                continue  # the gradient's own kernel wrote it
            body = self._body()
            _, r, c, total = self._entry_index(body, p.shape, False)
            self.uses.add(f"g{k}")
            value = zero if gn is None else self.elem(gn, "0", r, c)
            body(f"g{k}[{r}, {c}] = {value}")
            label = comment_text(p.label)
            comment = f"∂L/∂{label}" + (
                " = 0: the loss does not depend on it" if gn is None else ""
            )
            args = self._kernel(f"k_g{k}", comment, "One thread per entry.", body)
            out(f"# {comment}")
            self._launch(out, f"k_g{k}", f"launch_1d({total})", args)

    # -- host functions ------------------------------------------------------------
    def _host(self, name: str, args: list[str], doc: str, fill) -> tuple[str, list[str]]:
        """Kernels (printed by ``fill``) followed by the host function launching them."""
        self.defs = []
        host = Lines()
        host(f"def {name}({', '.join(args)}):")
        with host.indent():
            host(f'"""{doc}"""')
            fill(host)
        text = "\n\n".join([*self.defs, host.text()])
        return text, args

    def forward_kernel(self) -> tuple[str, list[str]]:
        args = ["n", "inv_n", *self.param_names(), *self.data_names(), *self.value_names()]
        args += ["losses", "slot"]

        def fill(host: Lines) -> None:
            for node in self.deriv.forward:
                self.statement(host, node)
            self._print_loss(host)

        doc = "Forward pass over a batch of n samples; the mean loss goes to losses[slot]."
        return self._host("forward", args, doc, fill)

    def backward_kernel(self) -> tuple[str, list[str]]:
        args = ["n", "inv_n", *self.param_names(), *self.data_names(), *self.value_names()]
        args += [*self.delta_names(), *self.grad_names()]

        def fill(host: Lines) -> None:
            for node in self.deriv.backward:
                self.statement(host, node)
            self._print_grad_copies(host)

        if self.deriv.strategy == "naive":
            doc = "Backward pass (naive): each gradient entry derived and computed on its own."
        else:
            doc = "Backward pass (shared δ): every δ computed once; gradients are batch means."
        return self._host("backward", args, doc, fill)

    # -- optimizer -----------------------------------------------------------------
    def sqnorms_kernel(self) -> str:
        """Σ g² of every gradient into sq[slot, k]: block k sums parameter k."""
        params = self.deriv.graph.params
        width = _pow2_at_most(min(max(p.size for p in params), REDUCE_THREADS))
        body = Lines()
        body.depth = 1
        body(f"buf = cuda.shared.array({width}, np.float64)  # one partial sum per thread")
        body("k = cuda.blockIdx.x  # this block's parameter")
        body("tid = cuda.threadIdx.x")
        body("acc = 0.0  # float64, as on the CPU")
        for k, p in enumerate(params):
            body(f"{'if' if k == 0 else 'elif'} k == {k}:")
            with body.indent():
                r, c = self._flat(p.shape, "f")
                body(f"for f in range(tid, {p.size}, {width}):")
                with body.indent():
                    body(f"v = g{k}[{r}, {c}]")
                    body("acc += v * v")
        body("buf[tid] = acc")
        body("cuda.syncthreads()  # all partial sums written")
        body(f"tree_sum(buf, tid, {width})")
        body("if tid == 0:")
        with body.indent():
            body("sq[slot, k] = buf[0]")
        out = Lines()
        out("# Σ g² of each gradient: History's grad norms, clip_norm and the divergence check")
        out("@cuda.jit")
        out(f"def k_sqnorms(slot, sq, {', '.join(self.grad_names())}):")
        with out.indent():
            out(f'"""One block of {width} threads per parameter; tree sum into sq[slot, k]."""')
        out.lines.extend(body.lines)
        self._sqnorm_width = width
        return out.text()

    def update_entry_kernel(self, rule: UpdateRule) -> str:
        form = UpdateForm.of(rule)
        states = [f"s{j}" for j in range(len(form.states))]
        args = ["hp", "t", "slot", "step", "clip", "losses", "sq", "status", "p", "g", *states]
        num = self.scalar._num
        out = Lines()
        out("# θ and the optimizer state of one parameter, from the SymPy update rule")
        out("@cuda.jit")
        out(f"def k_update({', '.join(args)}):")
        with out.indent():
            out('"""One optimizer step on every entry of one parameter (one thread per entry).')
            out("")
            out("Nothing changes once status[0] is set. The step is skipped, and status set to")
            out("1 (loss) or 2 (gradient), if the batch's loss or gradient is not finite;")
            out('status 3 means a new value is not finite (the host restores a backup)."""')
            out("e = cuda.grid(1)")
            out("cols = p.shape[1]")
            out("if e >= p.shape[0] * cols or status[0] != 0:")
            with out.indent():
                out("return  # past the end, or an earlier step of this run failed")
            out("loss = losses[slot]")
            out("total = 0.0")
            out("for k in range(sq.shape[1]):")
            with out.indent():
                out("total += sq[slot, k]")
            out("if not (math.isfinite(loss) and math.isfinite(total)):")
            with out.indent():
                out("if e == 0:")
                with out.indent():
                    out("status[0] = 1 if not math.isfinite(loss) else 2")
                    out("status[1] = step")
                out("return")
            out(f"scale = {num(1)}")
            out("if clip > 0.0 and math.sqrt(total) > clip:")
            with out.indent():
                out("scale = F(clip / math.sqrt(total))  # rescale to the global norm clip")
            for j, h in enumerate(form.hypers):
                out(f"{h} = hp[{j}]  # {comment_text(rule.hyper_names[j])}")
            for e, h in form.hoisted.items():
                out(f"{h} = {self.scalar.doprint_expr(e)}")
            out("r = e // cols")
            out("c = e % cols")
            out("th = p[r, c]")
            out("gr = g[r, c] * scale")
            for j, st in enumerate(form.states):
                out(f"{st} = s{j}[r, c]  # {comment_text(rule.state_names[j])}")
            for line in form.new_values(self.scalar.doprint_expr):
                out(line)
            for tgt in form.targets:
                if tgt == form.theta:
                    out(f"p[r, c] = new_{tgt}")
                else:
                    out(f"s{form.states.index(tgt)}[r, c] = new_{tgt}")
            out(f"if not math.isfinite(new_{form.theta}):")
            with out.indent():
                out("status[0] = 3")
                out("status[1] = step")
        return out.text()

    def update_kernel(self, rule: UpdateRule) -> tuple[str, list[str]]:
        params = self.deriv.graph.params
        nstate = len(rule.state_names)
        args = ["hp", "t", "slot", "step", "clip", "losses", "sq", "status"]
        for k in range(len(params)):
            args += [f"p{k}", f"g{k}"] + [f"s{k}_{j}" for j in range(nstate)]
        parts = [self.sqnorms_kernel(), self.update_entry_kernel(rule)]
        host = Lines()
        host(f"def update({', '.join(args)}):")
        with host.indent():
            host('"""Gradient norms into sq[slot], then one optimizer step per parameter."""')
            host("# one block per parameter")
            grads = ", ".join(self.grad_names())
            host(f"k_sqnorms[{len(params)}, {self._sqnorm_width}](slot, sq, {grads})")
            fixed = "hp, t, slot, step, clip, losses, sq, status"
            for k, p in enumerate(params):
                host(f"# {comment_text(p.label)} ({p.shape[0]}×{p.shape[1]}): one thread per entry")
                arrays = ", ".join([f"p{k}", f"g{k}"] + [f"s{k}_{j}" for j in range(nstate)])
                host(f"k_update[launch_1d({p.size})]({fixed}, {arrays})")
        parts.append(host.text())
        return "\n\n".join(parts), args

    # -- modules -------------------------------------------------------------------
    def _cuda_header(self, what: str, body: str) -> Lines:
        note = "Each @cuda.jit kernel computes one node; the host functions launch them in order."
        header = self.module_doc(what, "CUDA, numba-cuda", (note,))
        header("import math")
        header("")
        header("import numpy as np")
        header("from numba import cuda")
        helpers = [
            h
            for h in ("BLOCK", "launch_1d", "pow2_at_most", "tree_max", "tree_sum")
            if re.search(rf"\b{h}\b", body)
        ]
        if helpers:
            header("")
            header(f"from gradc.kernels.cuda_runtime import {', '.join(helpers)}")
        header("")
        header(f"F = np.{'float32' if self.float32 else 'float64'}")
        return header

    def model(self) -> CudaKernels:
        fwd, fwd_args = self.forward_kernel()
        bwd, bwd_args = self.backward_kernel()
        parts = {"forward": fwd, "backward": bwd}
        joined = "\n\n".join(parts.values())
        header = self._cuda_header("forward and backward", joined)
        for name, value in self.consts:
            header(f"{name} = np.array({value.tolist()!r}, dtype=F)  # a constant of the spec")
        header("")
        text = header.text() + "\n" + joined
        return CudaKernels(
            printer=self,
            module_source=text,
            source=parts,
            buffers=self.buffers,
            forward_args=fwd_args,
            backward_args=bwd_args,
            output_view=self.output_view(),
            float32=self.float32,
        )

    def optimizer(self, rule: UpdateRule) -> CudaOptimizerKernels:
        upd, upd_args = self.update_kernel(rule)
        header = self._cuda_header("gradient norms and optimizer update", upd)
        header("")
        text = header.text() + "\n" + upd
        return CudaOptimizerKernels(text, {"update": upd}, upd_args)


def print_cuda(deriv: Derivation, dtype: str = "float64") -> CudaKernels:
    """Print the kernels of a derivation for the CUDA target (no GPU needed to print).

    >>> import sympy as sp, gradc as gc
    >>> from gradc.graph.lower import lower
    >>> from gradc.derivation.reverse import derive_shared
    >>> w = sp.Symbol("w")
    >>> k = print_cuda(derive_shared(lower(gc.Spec(w**2, params=[w]))))
    >>> sorted(k.source), "@cuda.jit" in k.source["forward"]
    (['backward', 'forward'], True)
    """
    return CudaPrinter(deriv, dtype).model()
