"""program stage: what ``fit`` returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .health import diagnose, layer_norms

__all__ = ["History", "epoch_means"]


@dataclass
class History:
    """The record of one ``fit``.

    Attributes
    ----------
    loss : ndarray
        One entry per update step: the loss of the batch the step used, before the step.
    epoch_loss : ndarray
        One entry per epoch (mean per-sample loss over the epoch's batches); empty without data.
    path : list of dict
        Parameter values, the starting point first, when ``record_path=True``.
    grad_norms : dict[str, ndarray]
        Per parameter, the L2 norm of its gradient at each step (before clipping).
    norm_matrix : ndarray
        The same norms as one (steps, parameters) array, columns in ``grad_norms``
        order (``grad_norms``' arrays are its columns).
    seconds : float
        Wall time of the training loop.
    samples : int
        Samples processed (for speed reports).
    batches : tuple or None
        (rows, batch size, batches per epoch) of the run's data; None without data.
    """

    loss: np.ndarray = field(default_factory=lambda: np.zeros(0))
    path: list = field(default_factory=list)
    seconds: float = 0.0
    weights: list = field(default_factory=list)
    # (nrows, batch size, batches per epoch) of the run: epoch_loss and samples
    # are taken from ``loss`` on first use (~2 µs a fit call otherwise)
    batches: tuple[int, int, int] | None = field(default=None, repr=False)
    _epochs: tuple[np.ndarray, int] | None = field(default=None, repr=False)
    # the norms as recorded: squared (the CPU kernels), or as they are; the
    # roots of 2,048 steps × 4 parameters cost ~35 µs, taken on first use
    _norms: np.ndarray | None = field(default=None, repr=False)
    _squared: np.ndarray | None = field(default=None, repr=False)
    _names: list = field(default_factory=list, repr=False)

    def set_norms(self, norms: np.ndarray, names: list[str]) -> None:
        """Record the (steps, parameters) gradient norms, one column per name."""
        self._norms, self._squared, self._names = norms, None, list(names)

    def set_squared_norms(self, squared: np.ndarray, names: list[str]) -> None:
        """Record the squared (steps, parameters) gradient norms, one column per name."""
        self._norms, self._squared, self._names = None, squared, list(names)

    @property
    def epoch_loss(self) -> np.ndarray:
        """One entry per epoch: the mean per-sample loss over its batches."""
        return self._epoch_stats()[0]

    @property
    def samples(self) -> int:
        """Samples the steps used (for speed reports)."""
        return self._epoch_stats()[1]

    def _epoch_stats(self) -> tuple[np.ndarray, int]:
        if self._epochs is None:
            if self.batches is None:
                return np.zeros(0), 0
            self._epochs = epoch_means(self.loss, *self.batches)
        return self._epochs

    @property
    def norm_matrix(self) -> np.ndarray:
        """The gradient norms, (steps, parameters), columns in ``grad_norms`` order."""
        if self._norms is None:
            self._norms = np.sqrt(self._squared) if self._squared is not None else np.zeros((0, 0))
        return self._norms

    @property
    def grad_norms(self) -> dict[str, np.ndarray]:
        """Per parameter, the L2 norm of its gradient at each step (before clipping)."""
        matrix = self.norm_matrix
        return {name: matrix[:, k] for k, name in enumerate(self._names)}

    def layer_norms(self) -> dict[str, float]:
        """Median gradient norm of each layer's weights, first layer first."""
        return layer_norms(self.grad_norms, self.weights)

    def health(self) -> list[str]:
        """Findings about vanishing or exploding gradients, in plain words."""
        if self._norms is None and self._squared is not None:  # no roots needed
            return diagnose(self._squared, self._names, self.weights, squared=True)
        return diagnose(self.norm_matrix, self._names, self.weights)

    @property
    def steps(self) -> int:
        return int(self.loss.size)

    def __repr__(self) -> str:
        last = f", last loss {self.loss[-1]:.6g}" if self.loss.size else ""
        return f"History({self.steps} steps, {self.epoch_loss.size} epochs{last})"


def epoch_means(losses: np.ndarray, nrows: int, bs: int, nbatches: int) -> tuple[np.ndarray, int]:
    """Each epoch's mean per-sample loss from the per-step batch means (an epoch's
    last batch may be short), and the number of samples the steps used.

    >>> epoch_means(np.array([1.0, 2.0, 4.0, 3.0]), nrows=5, bs=2, nbatches=3)
    (array([2., 3.]), 7)
    """
    steps = len(losses)
    last = nrows - (nbatches - 1) * bs  # the size of an epoch's last batch
    if steps == nbatches:  # one epoch (the common call): plain arithmetic, no temporaries
        total = float(losses.sum()) * bs + float(losses[-1]) * (last - bs)
        return np.array([total / nrows]), nrows
    full = steps // nbatches
    per_epoch = losses[: full * nbatches].reshape(full, nbatches)
    rest = losses[full * nbatches :]  # a last epoch cut short by steps=: full batches only
    with np.errstate(over="ignore", invalid="ignore"):  # a diverging run's means are inf
        means = (per_epoch[:, :-1].sum(axis=1) * bs + per_epoch[:, -1] * last) / nrows
        if rest.size:
            means = np.append(means, rest.mean())
    return means, full * nrows + rest.size * bs
