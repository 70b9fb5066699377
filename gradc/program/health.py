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


# Medians are taken over at most ~this many evenly spaced steps: a health
# heuristic needs no more, and fit runs it after every call (full medians of a
# 2,048-step history cost ~75 µs here, more than the whole 3-4-2 epoch's kernel
# overhead).
SAMPLES = 128


def _spaced(values: np.ndarray) -> np.ndarray:
    """At most ~2·SAMPLES evenly spaced entries of ``values`` (a view)."""
    return values[:: max(1, values.size // SAMPLES)]


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


def diagnose(grad_norms: dict[str, np.ndarray], weights: list[str]) -> list[str]:
    """Plain-language findings (empty when the gradients look healthy).

    Cheap on purpose (a handful of NumPy calls): ``fit`` runs it after every
    call, and a fit of a few thousand tiny steps takes well under a millisecond.
    """
    found = []
    if len(weights) >= 2 and grad_norms[weights[0]].size:
        first, last = weights[0], weights[-1]
        top, bottom = _middle(grad_norms[first]), _middle(grad_norms[last])
        if bottom > 0 and top / bottom < VANISHING_RATIO:
            ratio = top / bottom
            found.append(
                f"vanishing gradients: the first layer's weights ({first}) get gradients "
                f"{1 / max(ratio, 1e-300):.0e} times smaller than the last layer's ({last}), "
                "so early layers barely learn. Each layer multiplies the gradient by "
                "derivatives below 1 (a sigmoid's is at most 0.25). Remedies: ReLU "
                "activations, He initialisation, batch normalisation, residual connections."
            )
    steps = len(next(iter(grad_norms.values()), ()))
    if steps >= 4:
        k = max(1, steps // 10)
        norms = list(grad_norms.values())
        # the total gradient norm at evenly spaced steps of the first and last tenth
        windows = [_spaced(g[:k]) for g in norms] + [_spaced(g[-k:]) for g in norms]
        both = np.stack(windows).reshape(2, len(norms), -1)
        total = np.sqrt(np.einsum("wps,wps->ws", both, both))
        early, late = _middle(total[0]), _middle(total[1])
        if early > 0 and late / early > EXPLODING_GROWTH:
            found.append(
                f"exploding gradients: the gradient norm grew from {early:.3g} to {late:.3g} "
                "during training. Each layer multiplies it by derivatives or weights above 1. "
                "Remedies: gradient clipping (fit(..., clip_norm=1.0)), weight "
                "regularisation, a smaller learning rate."
            )
    return found


def warn_if_unhealthy(grad_norms: dict[str, np.ndarray], weights: list[str]) -> list[str]:
    found = diagnose(grad_norms, weights)
    for text in found:
        warnings.warn(text, GradientHealthWarning, stacklevel=3)
    return found
