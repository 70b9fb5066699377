"""program stage: checking and converting user data and parameter dicts.

Kernels see every parameter as a C-contiguous (rows, cols) array of the
program's dtype and every data leaf as an (n, entries) array; this module turns
what users pass (0-d scalars, (n,) columns, tuples of inputs, keys given as
symbols or names) into that, or raises ``GradcError`` naming the culprit.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from ..errors import GradcError
from ..graph.nodes import Leaf
from ..kernels.runtime import entries_finite

__all__ = ["all_finite", "data_arrays", "first_nonfinite", "key_name", "param_array"]


def key_name(key) -> str:
    """The parameter name for a dict key given as a str, Symbol or MatrixSymbol."""
    if isinstance(key, str):
        return key
    if isinstance(key, (sp.Symbol, sp.MatrixSymbol)):
        return key.name
    raise GradcError(f"parameter keys must be names or symbols, got {key!r}")


def param_array(leaf: Leaf, value, dtype) -> np.ndarray:
    """``value`` as a (rows, cols) array for the kernels; a view where possible."""
    if (
        type(value) is np.ndarray
        and value.shape == leaf.shape
        and value.dtype == dtype
        and value.flags.c_contiguous
    ):
        return value  # already what the kernels take (the common case: prog.init's arrays)
    name = leaf.label
    try:
        arr = np.asarray(value)
    except Exception:
        raise GradcError(
            f"parameter {name!r}: cannot convert {type(value).__name__} to an array"
        ) from None
    if arr.dtype.kind not in "fiu":
        raise GradcError(f"parameter {name!r}: expected real numbers, got dtype {arr.dtype}")
    rows, cols = leaf.shape
    if arr.size != rows * cols or (arr.ndim == 2 and arr.shape != (rows, cols)) or arr.ndim > 2:
        want = "a scalar" if (rows, cols) == (1, 1) else f"shape ({rows}, {cols})"
        raise GradcError(f"parameter {name!r} must have {want}, got shape {arr.shape}")
    if arr.ndim == 1 and arr.size > 1 and 1 not in (rows, cols):
        raise GradcError(f"parameter {name!r} must have shape ({rows}, {cols}), got {arr.shape}")
    out = arr.reshape(rows, cols)
    if out.dtype != dtype or not out.flags.c_contiguous:
        out = np.ascontiguousarray(out, dtype=dtype)
    return out


def _split(kind: str, value, leaves: list[Leaf]) -> list:
    if not leaves:
        if value is not None:
            raise GradcError(f"this spec has no {kind}s, but {kind} data was given")
        return []
    if value is None:
        raise GradcError(f"missing {kind} data for {', '.join(repr(x.label) for x in leaves)}")
    if len(leaves) == 1:
        return [value]
    if not isinstance(value, (tuple, list)) or len(value) != len(leaves):
        raise GradcError(
            f"this spec has {len(leaves)} {kind}s ({', '.join(x.label for x in leaves)}): "
            f"pass a tuple of {len(leaves)} arrays in that order"
        )
    return list(value)


def first_nonfinite(arrays) -> int:
    """Index of the first array with a NaN or inf entry, or -1 if all are finite.

    One compiled pass per float32 or float64 array, no temporaries and no
    ``errstate`` (entering one costs ~2 µs, as much as checking 6,000 entries):
    see :func:`gradc.kernels.runtime.rows_finite` (784×256 float32: ~15 µs, NumPy's
    ``isfinite(a).all()`` ~25). Other arrays take ``np.isfinite``.

    >>> first_nonfinite([np.ones(3), np.array([1.0, np.nan])])
    1
    """
    for k, arr in enumerate(arrays):
        if not _finite(arr):
            return k
    return -1


_F64, _F32 = np.dtype(np.float64), np.dtype(np.float32)


def _finite(arr: np.ndarray) -> bool:
    dtype = arr.dtype
    if dtype is _F64 or dtype is _F32:  # the common case: a program's own dtype
        if arr.flags.c_contiguous:
            return entries_finite(arr)
    elif dtype.kind != "f":  # integers and booleans are finite
        return True
    elif dtype.itemsize in (4, 8) and arr.flags.c_contiguous:
        return entries_finite(arr)
    return bool(np.isfinite(arr).all())


def all_finite(arr: np.ndarray) -> bool:
    """Whether every entry of ``arr`` is finite (see :func:`first_nonfinite`).

    >>> all_finite(np.array([1.0, 2.0])), all_finite(np.array([1.0, np.nan]))
    (True, False)
    """
    return first_nonfinite((arr,)) < 0


def _first_bad_row(arr: np.ndarray) -> int:
    return int(np.argwhere(~np.isfinite(arr))[0][0])


def _one(leaf: Leaf, value) -> np.ndarray:
    """``value`` as a float (n, entries) array (not yet checked for NaN or inf)."""
    arr = None
    try:
        arr = np.asarray(value)
        if arr.dtype.kind == "c":
            raise TypeError
        if arr.dtype.kind != "f":  # float data stays as it is until the conversion to dtype
            arr = np.asarray(arr, dtype=float)
    except (TypeError, ValueError):
        got = type(value).__name__ if arr is None else arr.dtype
        raise GradcError(
            f"{leaf.role} {leaf.label!r}: data is not an array of real numbers (got {got})"
        ) from None
    size = leaf.size
    if arr.ndim == 1 and size == 1:
        arr = arr.reshape(-1, 1)
    elif arr.ndim == 3 and arr.shape[1:] in ((leaf.shape[0], leaf.shape[1]),):
        arr = arr.reshape(arr.shape[0], size)
    if arr.ndim != 2 or arr.shape[1] != size:
        want = "(n,) or (n, 1)" if size == 1 else f"(n, {size})"
        raise GradcError(
            f"{leaf.role} {leaf.label!r} has {leaf.shape[0]}×{leaf.shape[1]} entries per sample: "
            f"data must have shape {want} (one sample per row), got {np.shape(value)}"
        )
    if arr.shape[0] == 0:
        raise GradcError(f"{leaf.role} {leaf.label!r}: the data set is empty")
    return arr


def _checked(
    leaves: list[Leaf], arrays: list[np.ndarray], dtype, check: bool = True
) -> list[np.ndarray]:
    """The arrays in ``dtype``, C-contiguous; GradcError naming the leaf and row of
    the first NaN or inf, before or after the conversion (float32 overflow),
    unless not ``check`` (the caller checks later: ``fit``'s kernel)."""
    bad = first_nonfinite(arrays) if check else -1
    if bad >= 0:
        leaf = leaves[bad]
        raise GradcError(
            f"{leaf.role} {leaf.label!r} contains NaN or inf "
            f"(first in row {_first_bad_row(arrays[bad])})"
        )
    if all(arr.dtype == dtype and arr.flags.c_contiguous for arr in arrays):
        return arrays  # nothing to convert (and no errstate to enter: ~2 µs)
    with np.errstate(over="ignore"):
        out = [np.ascontiguousarray(arr, dtype=dtype) for arr in arrays]
    changed = [k for k, (a, b) in enumerate(zip(arrays, out)) if a.dtype != b.dtype]
    bad = first_nonfinite([out[k] for k in changed]) if changed and check else -1
    if bad >= 0:
        leaf, arr = leaves[changed[bad]], out[changed[bad]]
        raise GradcError(
            f"{leaf.role} {leaf.label!r} overflows {np.dtype(dtype).name} "
            f"(first in row {_first_bad_row(arr)})"
        )
    return out


def _ready_pair(inputs: list[Leaf], targets: list[Leaf], X, Y, dtype) -> int:
    """n when one input and one target come as C-contiguous (n, entries) arrays of
    ``dtype`` already (what the general path would return unchanged), else 0:
    ``fit`` checks its data at every call, and the general path costs ~5 µs, as
    much as 50 steps of a tiny network."""
    if len(inputs) != 1 or len(targets) != 1 or type(X) is not np.ndarray:
        return 0
    if type(Y) is not np.ndarray:
        return 0
    n = len(X)
    if (
        n == 0
        or X.shape != (n, inputs[0].size)
        or Y.shape != (n, targets[0].size)
        or not (X.dtype is dtype or X.dtype == dtype)
        or not (Y.dtype is dtype or Y.dtype == dtype)
        or not (X.flags.c_contiguous and Y.flags.c_contiguous)
    ):
        return 0
    return n


def data_arrays(
    inputs: list[Leaf], targets: list[Leaf], X, Y, dtype, *, need_targets=True, check=True
):
    """Per-leaf (n, entries) arrays, in the order inputs then targets, and n;
    ``check``: GradcError for NaN or inf (else the caller's to find)."""
    if (ready := _ready_pair(inputs, targets, X, Y, dtype)) and not (
        check and first_nonfinite((X, Y)) >= 0
    ):
        return [X, Y], ready
    xs = _split("input", X, inputs)
    if need_targets or Y is not None:
        ys = _split("target", Y, targets)
    else:
        ys = [np.zeros((1, t.size)) for t in targets]
    leaves = list(inputs)
    arrays = [_one(leaf, v) for leaf, v in zip(inputs, xs)]
    if need_targets or Y is not None:
        leaves += targets
        arrays += [_one(leaf, v) for leaf, v in zip(targets, ys)]
    rows = {a.shape[0] for a in arrays}
    if len(rows) > 1:
        sizes = ", ".join(f"{leaf.label}: {a.shape[0]}" for leaf, a in zip(leaves, arrays))
        raise GradcError(f"inputs and targets have different numbers of samples ({sizes})")
    arrays = _checked(leaves, arrays, dtype, check)
    n = rows.pop() if rows else 1
    if not (need_targets or Y is not None):
        arrays += [np.zeros((n, t.size), dtype=dtype) for t in targets]
    return arrays, n
