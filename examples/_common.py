"""Small helpers shared by the example scripts (not an example itself).

- ``SMALL``: true when ``GRADC_EXAMPLE_SMALL=1``; the examples then run at a
  reduced size (the test suite uses this).
- ``pyplot()``: matplotlib's pyplot on the Agg backend, or ``None`` when
  matplotlib is not installed (the examples still run and say so).
- ``save(fig, name)``: write ``examples/out/<name>.png`` (or under
  ``GRADC_EXAMPLE_OUT`` when set) and print where it went.
"""

import os
from pathlib import Path

SMALL = os.environ.get("GRADC_EXAMPLE_SMALL", "") not in ("", "0")
OUT_DIR = Path(os.environ.get("GRADC_EXAMPLE_OUT", Path(__file__).resolve().parent / "out"))


def pyplot():
    """Return ``matplotlib.pyplot`` (Agg backend) or ``None`` if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, never a window
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: plot skipped")
        return None
    return plt


def save(fig, name):
    """Save ``fig`` as ``<OUT_DIR>/<name>.png``, close it and print the path."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{name}.png"
    if not any(ax.name == "3d" for ax in fig.axes):
        fig.tight_layout()  # keeps side-by-side panels' labels apart
    fig.savefig(path, dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    print(f"figure written to {path}")
    return path
