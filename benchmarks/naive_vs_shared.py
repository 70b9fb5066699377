"""Naive per-parameter derivatives against shared δ (backpropagation), measured.

Thin wrapper around :mod:`gradc.bench` (the same code as ``gradc bench``)::

    python benchmarks/naive_vs_shared.py            # full run, ~5-10 min
    python benchmarks/naive_vs_shared.py --quick    # under a minute, *_quick.* files

Writes ``naive_vs_shared.md``, ``naive_vs_shared.json`` and PNG plots to
``--out`` (default ``benchmarks/results`` next to this script).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# one BLAS thread, set before NumPy loads any BLAS
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))  # a source checkout without installing gradc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a small sweep, under a minute")
    p.add_argument("--out", default=str(HERE / "results"), help="results folder")
    args = p.parse_args(argv)
    from gradc import bench

    return bench.main(quick=args.quick, out_dir=args.out)


if __name__ == "__main__":
    sys.exit(main())
