"""program stage: what ``fit`` returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["History"]


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
    """

    loss: np.ndarray = field(default_factory=lambda: np.zeros(0))
    epoch_loss: np.ndarray = field(default_factory=lambda: np.zeros(0))
    path: list = field(default_factory=list)
    grad_norms: dict = field(default_factory=dict)
    norm_matrix: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    seconds: float = 0.0
    samples: int = 0
    weights: list = field(default_factory=list)

    def set_norms(self, norms: np.ndarray, names: list[str]) -> None:
        """Record the (steps, parameters) gradient norms, one column per name."""
        self.norm_matrix = norms
        self.grad_norms = {name: norms[:, k] for k, name in enumerate(names)}

    def layer_norms(self) -> dict[str, float]:
        """Median gradient norm of each layer's weights, first layer first."""
        from .health import layer_norms

        return layer_norms(self.grad_norms, self.weights)

    def health(self) -> list[str]:
        """Findings about vanishing or exploding gradients, in plain words."""
        from .health import diagnose

        return diagnose(self.norm_matrix, list(self.grad_norms), self.weights)

    @property
    def steps(self) -> int:
        return int(self.loss.size)

    def __repr__(self) -> str:
        last = f", last loss {self.loss[-1]:.6g}" if self.loss.size else ""
        return f"History({self.steps} steps, {self.epoch_loss.size} epochs{last})"
