"""program stage: the optional progress bar of ``fit(progress=True)``.

Uses ``tqdm`` when it is installed; otherwise prints one plain line that is
rewritten in place. Never a required dependency.
"""

from __future__ import annotations

import sys
import time

__all__ = ["ProgressBar"]


class ProgressBar:
    def __init__(self, total_steps: int, batch_size: int, steps_per_epoch: int):
        self.total = total_steps
        self.batch_size = max(batch_size, 1)
        self.per_epoch = max(steps_per_epoch, 1)
        self.done = 0
        self.start = time.perf_counter()
        try:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, unit="step")
        except ImportError:
            self._bar = None

    def __call__(self, steps: int, loss: float) -> None:
        self.done += steps
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        speed = self.done / elapsed
        samples = speed * self.batch_size
        epoch = (self.done - 1) // self.per_epoch + 1
        if self._bar is not None:
            self._bar.update(steps)
            self._bar.set_postfix(epoch=epoch, loss=f"{loss:.4g}", samples_per_s=f"{samples:.3g}")
        else:
            sys.stderr.write(
                f"\repoch {epoch}  step {self.done}/{self.total}  loss {loss:.6g}  "
                f"{speed:,.0f} steps/s  {samples:,.0f} samples/s"
            )
            sys.stderr.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        else:
            sys.stderr.write("\n")
