"""program stage: gradient health — the seeds' vanishing and exploding gradients, in words.

``fit`` records every parameter's gradient norm at every step; this module reads
those norms and warns once when early layers learn orders of magnitude slower
than late ones (vanishing), or when the norms grow without bound (exploding).
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["GradientHealthWarning", "layer_norms", "diagnose", "warn_if_unhealthy"]

VANISHING_RATIO = 1e-3
EXPLODING_GROWTH = 1e3


class GradientHealthWarning(UserWarning):
    """Gradients that vanish or explode across layers or steps."""


# Medians are taken over at most ~2·SAMPLES evenly spaced steps: a health
# heuristic needs no more, and fit runs it after every call (the full medians
# of a 2,048-step history cost ~75 µs here).
SAMPLES = 128


def _spaced(values: np.ndarray) -> np.ndarray:
    """At most ~2·SAMPLES evenly spaced steps (rows) of ``values`` (a view)."""
    return values[:: max(1, len(values) // SAMPLES)]


def _middle(values: np.ndarray) -> float:
    """The median (upper middle for an even count) of evenly spaced entries: one
    partition of at most ~2·SAMPLES numbers."""
    values = _spaced(values)
    mid = values.size // 2
    return float(np.partition(values, mid)[mid])


def layer_norms(grad_norms: dict[str, np.ndarray], weights: list[str]) -> dict[str, float]:
    """Median gradient norm of each weight parameter, in layer order."""
    if not weights or not grad_norms[weights[0]].size:
        return {}
    return {w: _middle(grad_norms[w]) for w in weights}


def diagnose(norms: np.ndarray, names: list[str], weights: list[str]) -> list[str]:
    """Plain-language findings (empty when the gradients look healthy) from the
    (steps, parameters) gradient norms, one column per name.

    Cheap on purpose: ``fit`` runs it after every call, so it reads at most
    ~2·SAMPLES evenly spaced steps, in a handful of NumPy calls.

    >>> diagnose(np.array([[1e-6, 1.0], [2e-6, 1.0]]), ["W1", "W2"], ["W1", "W2"])[0][:21]
    'vanishing gradients: '
    """
    found = []
    steps = len(norms)
    if not steps:
        return found
    spaced = _spaced(norms)
    if len(weights) >= 2:
        first, last = weights[0], weights[-1]
        pair = spaced[:, [names.index(first), names.index(last)]]
        mid = len(pair) // 2
        top, bottom = np.partition(pair, mid, axis=0)[mid]
        if bottom > 0 and top / bottom < VANISHING_RATIO:
            ratio = top / bottom
            found.append(
                f"vanishing gradients: the first layer's weights ({first}) get gradients "
                f"{1 / max(ratio, 1e-300):.0e} times smaller than the last layer's ({last}), "
                "so early layers barely learn. Each layer multiplies the gradient by "
                "derivatives below 1 (a sigmoid's is at most 0.25). Remedies: ReLU "
                "activations, He initialisation, batch normalisation, residual connections."
            )
    if steps >= 4:
        # the total gradient norm over the first and the last tenth of the steps
        k = max(1, steps // 10)
        ends = np.stack([_spaced(norms[:k]), _spaced(norms[steps - k :])])  # (2, ≤k, params)
        total = np.sqrt(np.einsum("wsp,wsp->ws", ends, ends))
        mid = total.shape[1] // 2
        early, late = np.partition(total, mid, axis=1)[:, mid]
        if early > 0 and late / early > EXPLODING_GROWTH:
            found.append(
                f"exploding gradients: the gradient norm grew from {early:.3g} to {late:.3g} "
                "during training. Each layer multiplies it by derivatives or weights above 1. "
                "Remedies: gradient clipping (fit(..., clip_norm=1.0)), weight "
                "regularisation, a smaller learning rate."
            )
    return found


def warn_if_unhealthy(norms: np.ndarray, names: list[str], weights: list[str]) -> list[str]:
    """Warn (GradientHealthWarning) with each finding of :func:`diagnose`."""
    found = diagnose(norms, names, weights)
    for text in found:
        warnings.warn(text, GradientHealthWarning, stacklevel=3)
    return found
