"""kernels stage: a matrix product printed as one CBLAS call (``blas.gemm_rows``,
``gemm_rows_nt``, ``gemv_rows``), its operands' layouts resolved at print time.

The kernels' arrays are C-contiguous (a batch is a buffer's first n rows, one
sample per row; a parameter its (rows, cols) array), so each operand is an array
name, a transpose flag and a literal leading dimension.
"""

from __future__ import annotations

from dataclasses import dataclass

from .blas import _NO_TRANS, _TRANS

__all__ = ["BlasOperand", "gemm_call", "gemv_call"]


@dataclass(frozen=True)
class BlasOperand:
    """A BLAS operand: ``array`` read row-major with leading dimension ``ld``, as a
    ``rows`` × ``cols`` matrix (``trans``: the transpose of what is stored)."""

    array: str
    trans: bool
    ld: int
    rows: str  # a literal, or "n" (the batch)
    cols: str

    def t(self) -> BlasOperand:
        return BlasOperand(self.array, not self.trans, self.ld, self.cols, self.rows)

    @property
    def flag(self) -> int:
        return _TRANS if self.trans else _NO_TRANS

    @property
    def stored(self) -> tuple[str, str]:
        return (self.cols, self.rows) if self.trans else (self.rows, self.cols)

    def first_row(self) -> BlasOperand:
        return BlasOperand(self.array, self.trans, self.ld, "1", self.cols)

    def vector(self) -> tuple[str, int]:
        """(array, increment) of a one-row or one-column operand."""
        one_row = self.rows == "1"
        along_a_row = one_row != self.trans  # its entries are adjacent in memory
        return self.array, 1 if along_a_row else self.ld


def gemm_call(
    left: BlasOperand, right: BlasOperand, out: BlasOperand, alpha: str = "1.0", beta: str = "0.0"
) -> str:
    """out ← alpha·left·right + beta·out by one CBLAS gemm (a·bᵀ by its own
    function: blas.py)."""
    fn = "gemm_rows_nt" if not left.trans and right.trans else "gemm_rows"
    return (
        f"{fn}({left.flag}, {right.flag}, {left.rows}, {right.cols}, {left.cols}, {alpha}, "
        f"{left.array}, {left.ld}, {right.array}, {right.ld}, {beta}, {out.array}, {out.ld})"
    )


def gemv_call(matrix: BlasOperand, x: tuple[str, int], y: tuple[str, int]) -> str:
    """y = matrix · x by one CBLAS gemv (x and y: (array, increment))."""
    rows, cols = matrix.stored
    return (
        f"gemv_rows({matrix.flag}, {rows}, {cols}, 1.0, {matrix.array}, {matrix.ld}, "
        f"{x[0]}, {x[1]}, 0.0, {y[0]}, {y[1]})"
    )
