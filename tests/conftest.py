import os

# Must happen before anything imports numba (see DESIGN.md: switching the CUDA
# simulator on later half-works; multithreaded BLAS on few cores is slow).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import sys

# Make ``import reference`` work whatever pytest's import mode is.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
