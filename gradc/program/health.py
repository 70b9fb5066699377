"""program stage: gradient health — the seeds' vanishing and exploding gradients, in words.

``fit`` records every parameter's gradient norm at every step; this module reads
those norms and warns once when early layers learn orders of magnitude slower
than late ones (vanishing), or when the norms grow without bound (exploding).
"""

from __future__ import annotations

import warnings

import numba
import numpy as np

__all__ = ["GradientHealthWarning", "layer_norms", "diagnose", "warn_if_unhealthy"]

VANISHING_RATIO = 1e-3
EXPLODING_GROWTH = 1e3


class GradientHealthWarning(UserWarning):
    """Gradients that vanish or explode across layers or steps."""


# Medians are taken over at most ~2·SAMPLES evenly spaced steps: a heuristic
# that looks for factors of 1,000 needs no more, and fit runs it after every
# call (the full medians of a 2,048-step history cost ~75 µs here; 128 samples
# ~10 µs, 32 ~3).
SAMPLES = 32


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


def diagnose(
    norms: np.ndarray, names: list[str], weights: list[str], *, squared: bool = False
) -> list[str]:
    """Plain-language findings (empty when the gradients look healthy) from the
    (steps, parameters) gradient norms, one column per name (their squares when
    ``squared``).

    Cheap on purpose: ``fit`` runs it after every call, so it reads at most
    ~2·SAMPLES evenly spaced steps, in one compiled call.

    >>> diagnose(np.array([[1e-6, 1.0], [2e-6, 1.0]]), ["W1", "W2"], ["W1", "W2"])[0][:21]
    'vanishing gradients: '
    """
    found = []
    steps = len(norms)
    if not steps:
        return found
    pair = len(weights) >= 2
    first, last = (weights[0], weights[-1]) if pair else (names[0], names[0])
    if norms.dtype != np.float64 or not norms.flags.c_contiguous:
        norms = np.ascontiguousarray(norms, dtype=np.float64)
    top, bottom, early, late = _statistics(
        norms, names.index(first), names.index(last), steps // 10, SAMPLES, squared
    )
    if pair:
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
        if early > 0 and late / early > EXPLODING_GROWTH:
            found.append(
                f"exploding gradients: the gradient norm grew from {early:.3g} to {late:.3g} "
                "during training. Each layer multiplies it by derivatives or weights above 1. "
                "Remedies: gradient clipping (fit(..., clip_norm=1.0)), weight "
                "regularisation, a smaller learning rate."
            )
    return found


@numba.njit(cache=True, error_model="numpy")
def _statistics(norms, first, last, tenth, samples, squared):
    """What ``diagnose`` judges, from the (steps, parameters) norms (or their
    squares) in one compiled call (its NumPy form cost ~60 µs per fit here): the
    medians of columns ``first`` and ``last``, and the median total norm (over
    all columns) of the first and of the last max(1, tenth) steps, each over at
    most ~2·samples evenly spaced steps. Medians are upper middles (a root
    keeps their order)."""
    steps, params = norms.shape
    stride = max(1, steps // samples)
    count = (steps + stride - 1) // stride
    picked = np.empty(count)
    for j in range(count):
        picked[j] = norms[j * stride, first]
    top = _upper_middle(picked)
    for j in range(count):
        picked[j] = norms[j * stride, last]
    bottom = _upper_middle(picked)
    k = max(1, tenth)
    stride = max(1, k // samples)
    ends = np.empty((2, (k + stride - 1) // stride))
    for w in range(2):
        lo = 0 if w == 0 else steps - k
        for j in range(ends.shape[1]):
            sq = 0.0
            for p in range(params):
                v = norms[lo + j * stride, p]
                sq += v if squared else v * v
            ends[w, j] = np.sqrt(sq)
    if squared:
        top, bottom = np.sqrt(top), np.sqrt(bottom)
    return top, bottom, _upper_middle(ends[0]), _upper_middle(ends[1])


@numba.njit(cache=True, error_model="numpy")
def _upper_middle(values):
    """The upper middle of ``values`` (reordered in place) by quickselect: at most
    ~2·SAMPLES numbers, in ~3n comparisons (an insertion sort of 64 took ~0.4 µs
    of every fit call; np.sort or np.partition cost ~1.5 s of Numba compile the
    first time gradc runs on a machine)."""
    want = len(values) // 2
    lo, hi = 0, len(values) - 1
    while lo < hi:
        pivot = values[(lo + hi) // 2]
        i, j = lo, hi
        while i <= j:
            while values[i] < pivot:
                i += 1
            while values[j] > pivot:
                j -= 1
            if i <= j:
                values[i], values[j] = values[j], values[i]
                i += 1
                j -= 1
        # values[lo..j] ≤ pivot ≤ values[i..hi], and lo..hi still holds ``want``
        if want <= j:
            hi = j
        elif want >= i:
            lo = i
        else:
            break
    return values[want]


def warn_if_unhealthy(found: list[str]) -> None:
    """Warn (GradientHealthWarning) with each finding of :func:`diagnose`, at the
    caller of the function that calls this (``fit``)."""
    for text in found:
        warnings.warn(text, GradientHealthWarning, stacklevel=3)
