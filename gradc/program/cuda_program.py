"""program stage: the Program of the CUDA target.

``CudaProgram`` is a :class:`~gradc.program.program.Program` whose kernels run
on the GPU (or on numba's CUDA simulator under ``NUMBA_ENABLE_CUDASIM=1``).
Parameter checks, data conversion, ``init``, optimizer state bookkeeping and
``History`` are the CPU Program's; only the kernel calls differ.

During ``fit`` everything stays on the device: the whole data set is copied
once, each epoch's shuffled row order is copied as an index vector, batches
are gathered on the device, and the losses and squared gradient norms of each
chunk of steps (at most ``CHUNK`` of them) are read back as two small arrays
after the chunk. A non-finite loss or gradient stops all later updates on the
device itself (a status flag the update kernel reads), so the host needs no
round trip per step.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Mapping

import numpy as np

from ..errors import GradcError
from ..kernels.runtime import seed_base, shuffle_epoch
from .history import History
from .program import _STATUS, FitPlan, FitRun, Program, _progress

__all__ = ["CHUNK", "CudaProgram", "require_cuda"]

# most update steps run between two reads of the device's status flag
CHUNK = 256

_NO_GPU = (
    "target='cuda' needs an NVIDIA GPU with a working driver, and none was found ({why}). "
    "To run the CUDA kernels on numba's CUDA simulator instead (slow; for tests), set "
    "NUMBA_ENABLE_CUDASIM=1 in the environment before numba is first imported."
)


def require_cuda():
    """``numba.cuda`` if a GPU (or the simulator) can run kernels, else ``GradcError``."""
    try:
        import numba_cuda  # noqa: F401  (the package behind numba.cuda)
    except ImportError:
        raise GradcError(
            "target='cuda' needs the numba-cuda package: pip install 'gradc[cuda]' "
            "(or pip install numba-cuda)"
        ) from None
    try:
        from numba import cuda
    except Exception as exc:  # CudaSupportError is an ImportError; a broken install anything
        raise GradcError(_NO_GPU.format(why=f"importing numba.cuda failed: {exc}")) from None
    try:
        available = bool(cuda.is_available())
    except Exception as exc:
        raise GradcError(_NO_GPU.format(why=str(exc).strip() or type(exc).__name__)) from None
    if not available:
        why = "numba.cuda.is_available() is False"
        if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
            why += "; NUMBA_ENABLE_CUDASIM was set after numba had been imported"
        raise GradcError(_NO_GPU.format(why=why))
    return cuda


@contextlib.contextmanager
def _on_device():
    """Around kernel launches: a device lost after compile time still fails with a
    GradcError, and numba's low-occupancy warning (every launch of a small
    kernel, e.g. a bias gradient, has fewer than 128 blocks) stays quiet."""
    from numba.core.errors import NumbaPerformanceWarning

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Grid size", NumbaPerformanceWarning)
            yield
    except ImportError as exc:  # numba.cuda's CudaSupportError
        raise GradcError(_NO_GPU.format(why=str(exc).strip())) from None


class CudaProgram(Program):
    """A compiled spec whose kernels run on a CUDA device; the API is :class:`Program`'s.

    Made by ``gc.compile(..., target="cuda")``.
    """

    def __init__(self, *args, **kwargs):
        self._cuda = require_cuda()
        from ..kernels import cuda_runtime  # imports numba.cuda: only once it is known to work

        self._runtime = cuda_runtime
        super().__init__(*args, **kwargs)

    # -- device arrays -------------------------------------------------------------
    def _workspace(self, capacity: int) -> dict:
        ws = self._workspaces.get(capacity)
        if ws is None:
            if len(self._workspaces) > 4:
                self._workspaces.clear()
            ws = {}
            for b in self.kernels.buffers:
                shape = (capacity, b.shape[0] * b.shape[1]) if b.batched else b.shape
                ws[b.name] = self._cuda.device_array(shape, dtype=self.dtype)
            self._workspaces[capacity] = ws
        return ws

    def _to_device(self, arrays) -> list:
        return [self._cuda.to_device(np.ascontiguousarray(a)) for a in arrays]

    def _device_namespace(self, n: int, params, data) -> dict:
        """Names of the kernels' arguments → device arrays (or scalars) for one call."""
        ns = self._namespace(n, self._to_device(params), self._to_device(data), self._workspace(n))
        ns.update(losses=self._cuda.device_array(1, dtype=np.float64), slot=0)
        return ns

    def _call(self, name: str, fn, names, ns) -> None:
        self._timed_call(name, fn, [ns[a] for a in names])

    # -- evaluation ---------------------------------------------------------------
    def loss(self, params: Mapping, X=None, Y=None) -> float:
        """Mean per-sample loss over the data (or the objective's value without data)."""
        p = self._params(params)
        data, n = self._data(X, Y)
        with _on_device():
            ns = self._device_namespace(n, p, data)
            self._call("forward", self.module.forward, self.kernels.forward_args, ns)
            return self._check_result(float(ns["losses"].copy_to_host()[0]))

    def predict(self, params: Mapping, X=None) -> np.ndarray:
        """The output for each sample, shape (n, k): one row per sample."""
        if self.kernels.output_view is None:
            raise GradcError(
                "this program has no output: pass output= (or a Sequential) to compile"
            )
        p = self._params(params)
        data, n = self._data(X, None, need_targets=False)
        with _on_device():
            ns = self._device_namespace(n, p, data)
            self._call("forward", self.module.forward, self.kernels.forward_args, ns)
            name, _ = self.kernels.output_view
            value = ns[name].copy_to_host()
        out = self.graph.output
        if out.batched:
            return value[:n].copy()
        return np.repeat(value.reshape(1, -1), n, axis=0)

    def value_and_grad(self, params: Mapping, X=None, Y=None):
        """Mean loss and its gradient (a dict shaped like ``params``)."""
        p = self._params(params)
        data, n = self._data(X, Y)
        with _on_device():
            ns = self._device_namespace(n, p, data)
            grads = [self._cuda.device_array(leaf.shape, self.dtype) for leaf in self.graph.params]
            ns.update({f"g{k}": g for k, g in enumerate(grads)})
            self._call("forward", self.module.forward, self.kernels.forward_args, ns)
            self._call("backward", self.module.backward, self.kernels.backward_args, ns)
            loss = float(ns["losses"].copy_to_host()[0])
            host = [g.copy_to_host() for g in grads]
        self._check_result(loss, host)
        return loss, self._as_user_dict(host, params)

    # -- training ---------------------------------------------------------------
    def _prepare_fit(self, opt, p, plan: FitPlan, record_path) -> FitRun:
        """Nothing is prepared on the host: every call moves its arrays to the device
        (a run without a kernel call is never found again)."""
        return FitRun(opt, p, plan, None, [], False, opt.update_rule.stateless)

    def _run_fit(self, run: FitRun, data, params, progress, record_path, refuse_data) -> History:
        """``fit`` on the device: parameters, optimizer state and batches stay there
        until the end (or, with ``record_path``, are copied back after every step).
        The data is checked for NaN and inf here, before any step."""
        opt, p, plan = run.opt, run.p, run.plan
        self._check_before_steps(p, data, plan, refuse_data)
        with _on_device():
            return self._fit_on_device(opt, params, p, data, plan, progress, record_path)

    def _fit_on_device(self, opt, params, p, data, plan: FitPlan, progress, record_path) -> History:
        nrows, bs, nbatches, total_steps = plan.nrows, plan.bs, plan.nbatches, plan.total_steps
        has_data, shuffle, seed, clip = plan.has_data, plan.shuffle, plan.seed, plan.clip
        cuda = self._cuda
        okern, omod = self._optimizer_module(opt)
        module = self.module
        F = self.dtype.type
        states = self._optimizer_state(opt, p)
        nparams = len(p)

        # -- everything the steps touch, on the device once --------------------------
        dev_p = self._to_device(p)
        dev_s = [self._to_device(st) for st in states]
        # backups at the start of each chunk: a step that makes a parameter
        # non-finite is undone by restoring them and replaying the chunk's good steps
        backup = [cuda.device_array_like(a) for a in dev_p + [s for st in dev_s for s in st]]
        live = dev_p + [s for st in dev_s for s in st]
        full = self._to_device(data)
        names = self._data_args
        gather = [cuda.device_array((bs, d.shape[1]), dtype=self.dtype) for d in data]
        perm_host = np.arange(nrows, dtype=np.int64)
        perm = cuda.to_device(perm_host)
        chunk_cap = 1 if record_path else max(1, min(CHUNK, nbatches if has_data else total_steps))
        losses = cuda.device_array(chunk_cap, dtype=np.float64)
        sq = cuda.device_array((chunk_cap, nparams), dtype=np.float64)
        status = cuda.to_device(np.zeros(2, dtype=np.int64))
        hp = cuda.to_device(
            np.array([opt.values[k] for k in opt.update_rule.hyper_names], dtype=self.dtype)
        )

        ns = {"inv_n": F(1.0), "losses": losses, "sq": sq, "status": status, "hp": hp}
        ns["clip"] = clip
        ns.update(self._workspace(bs))
        ns.update({f"p{k}": a for k, a in enumerate(dev_p)})
        ns.update({f"g{k}": cuda.device_array(a.shape, self.dtype) for k, a in enumerate(p)})
        for k, st in enumerate(dev_s):
            ns.update({f"s{k}_{j}": s for j, s in enumerate(st)})
        fwd_args, bwd_args = self.kernels.forward_args, self.kernels.backward_args
        upd_args = okern.update_args

        def run_steps(epoch_step: int, count: int, t0: int) -> None:
            """``count`` steps from step ``epoch_step`` of the epoch, all launched without waiting."""
            for slot in range(count):
                lo = ((epoch_step + slot) % nbatches) * bs
                n = min(bs, nrows - lo)
                ns["n"], ns["inv_n"], ns["slot"] = n, F(1.0) / F(n), slot
                ns["step"], ns["t"] = epoch_step + slot, F(t0 + slot + 1)
                for name, src, buf in zip(names, full, gather):
                    if shuffle:  # rows perm[lo:lo + n], gathered on the device
                        config = self._runtime.launch_1d(n * buf.shape[1])
                        self._runtime.gather_rows[config](n, lo, perm, src, buf)
                        ns[name] = buf
                    else:
                        ns[name] = src[lo : lo + n]
                self._timed_call("forward", module.forward, [ns[a] for a in fwd_args])
                self._timed_call("backward", module.backward, [ns[a] for a in bwd_args])
                self._timed_call("update", omod.update, [ns[a] for a in upd_args])

        history = History()
        loss_parts, norm_parts, path = [], [], []
        if record_path:
            path.append(self._snapshot(p, params))
        bar = _progress(progress, total_steps, bs if has_data else 0, nbatches)
        done, epoch = 0, 0
        start_time = time.perf_counter()
        try:
            while done < total_steps:
                in_epoch = min(nbatches, total_steps - done) if has_data else total_steps
                if shuffle:  # the CPU target's permutation, so both targets see the same batches
                    shuffle_epoch(perm_host, nrows, seed_base(seed), epoch)
                    perm.copy_to_device(perm_host)
                for start in range(0, in_epoch, chunk_cap):
                    count = min(chunk_cap, in_epoch - start)
                    for dst, src in zip(backup, live):
                        dst.copy_to_device(src)
                    t0 = self._opt_steps(opt)
                    run_steps(start, count, t0)
                    code, at = (int(v) for v in status.copy_to_host())
                    l_out = losses.copy_to_host()[:count]
                    n_out = sq.copy_to_host()[:count]  # squared: roots on first use
                    ran = (at - start) if code else count
                    if code == 3:  # undo the failed step: replay the good ones from the backup
                        for dst, src in zip(live, backup):
                            dst.copy_to_device(src)
                        status.copy_to_device(np.zeros(2, dtype=np.int64))
                        run_steps(start, ran, t0)
                    self._advance_opt(opt, ran)
                    loss_parts.append(l_out[:ran])
                    norm_parts.append(n_out[:ran])
                    if code:
                        self._copy_back(dev_p, dev_s, p, states)
                        self._write_back(p, params)
                        step = done + at
                        raise GradcError(  # the CPU Program's words, so both targets read alike
                            f"fit stopped at update step {step + 1} (epoch {epoch + 1}): "
                            f"{_STATUS[code]} (loss {l_out[at - start]:.6g}); the {step} "
                            "updates before it were kept and the parameters are their last "
                            "finite values. Try a smaller learning rate or clip_norm."
                        )
                    if record_path:
                        self._copy_back(dev_p, dev_s, p, states)
                        path.append(self._snapshot(p, params))
                    if bar is not None:
                        bar(count, float(l_out[-1]))
                done += in_epoch
                epoch += 1
        finally:
            history.seconds = time.perf_counter() - start_time
            if bar is not None:
                bar.close()
            history.loss = np.concatenate(loss_parts) if loss_parts else np.zeros(0)
            norms = np.concatenate(norm_parts) if norm_parts else np.zeros((0, nparams))
            history.set_squared_norms(norms, self._param_names)
            if has_data:
                history.batches = (plan.nrows, plan.bs, plan.nbatches)
            history.path = path
            history.weights = list(self._weight_names)
        self._copy_back(dev_p, dev_s, p, states)
        self._write_back(p, params)
        return history

    @staticmethod
    def _copy_back(dev_p, dev_s, p, states) -> None:
        """Parameters and optimizer state from the device into their host arrays."""
        for dev, host in zip(dev_p, p):
            dev.copy_to_host(host)
        for dev_st, st in zip(dev_s, states):
            for dev, host in zip(dev_st, st):
                dev.copy_to_host(host)
