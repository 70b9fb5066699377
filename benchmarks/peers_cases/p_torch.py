"""PyTorch on the CPU: eager, and ``torch.compile`` of the whole step.

- ``torch_eager``: the idiomatic loop, ``F.linear`` layers, ``loss.backward()``,
  ``torch.optim.SGD(...).step()``; the batches are views of one tensor made
  before timing.
- ``torch_compile``: ``torch.compile(fullgraph=True)`` of one functional step
  (``torch.func.grad_and_value`` of the loss, then ``p - lr·g``): forward,
  backward and update in one compiled graph, called per batch (the analogue
  of ``jax.jit`` of one step).

``torch.set_num_threads(1)`` and ``set_num_interop_threads(1)`` before any work.
"""

from __future__ import annotations

from . import Case


def check_available(peer: str) -> None:
    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)


def versions(peer: str) -> dict[str, str]:
    import torch

    return {"torch": torch.__version__, "torch threads": str(torch.get_num_threads())}


def _loss_fn(case: Case):
    import torch
    import torch.nn.functional as F

    L = case.layers
    sig = case.kind == "sigmoid_mse"

    def loss_fn(params, x, y):
        a = x
        for i in range(L):
            a = F.linear(a, params[2 * i], params[2 * i + 1])
            if sig:
                a = torch.sigmoid(a)
            elif i < L - 1:
                a = torch.relu(a)
        if sig:
            return 0.5 * torch.sum((a - y) ** 2) / x.shape[0]
        return F.cross_entropy(a, y)  # y: class probabilities (one-hot), mean over the batch

    return loss_fn


class _Base:
    def __init__(self, case: Case, P0, X, Y):
        import torch

        self.torch = torch
        self.case = case
        self.order = case.param_names()
        self.tensors = []
        for w, b in self.order:
            self.tensors.append(torch.tensor(P0[w]))
            self.tensors.append(torch.tensor(P0[b][:, 0]))
        Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y)
        B = case.batch
        self.batches = [
            (Xt[s * B : (s + 1) * B], Yt[s * B : (s + 1) * B]) for s in range(case.steps)
        ]
        self.loss_fn = _loss_fn(case)
        self.info = {}

    def load(self, P):
        with self.torch.no_grad():
            for k, (w, b) in enumerate(self.order):
                self.tensors[2 * k].copy_(self.torch.from_numpy(P[w]))
                self.tensors[2 * k + 1].copy_(self.torch.from_numpy(P[b][:, 0]))

    def params(self):
        out = {}
        for k, (w, b) in enumerate(self.order):
            out[w] = self.tensors[2 * k].detach().numpy().copy()
            out[b] = self.tensors[2 * k + 1].detach().numpy().copy()[:, None]
        return out


class Eager(_Base):
    def __init__(self, case, P0, X, Y):
        super().__init__(case, P0, X, Y)
        for t in self.tensors:
            t.requires_grad_(True)
        self.opt = self.torch.optim.SGD(self.tensors, lr=case.lr)

    def epoch(self):
        opt, loss_fn, params = self.opt, self.loss_fn, self.tensors
        for x, y in self.batches:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(params, x, y)
            loss.backward()
            opt.step()


class Compiled(_Base):
    def __init__(self, case, P0, X, Y):
        super().__init__(case, P0, X, Y)
        torch = self.torch
        gv = torch.func.grad_and_value(self.loss_fn)
        lr = case.lr

        @torch.compile(fullgraph=True, dynamic=False)
        def step(params, x, y):
            g, loss = gv(params, x, y)
            return [p - lr * gp for p, gp in zip(params, g)], loss

        self.step = step

    def epoch(self):
        params, step = self.tensors, self.step
        for x, y in self.batches:
            params, _ = step(params, x, y)
        self.tensors = params

    def load(self, P):
        self.tensors = [t.clone() for t in self.tensors]  # the step returns new tensors
        super().load(P)


def make(peer: str, case: Case, P0, X, Y, ctx):
    if peer == "torch_eager":
        return Eager(case, P0, X, Y)
    if peer == "torch_compile":
        return Compiled(case, P0, X, Y)
    raise KeyError(peer)
