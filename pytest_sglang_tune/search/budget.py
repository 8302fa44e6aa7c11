"""``--sglang-budget``: a number of trials (``10``), GPU time (``2.5gpu-h``), or a share of the predicted cost of
measuring the whole grid (``25%``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_GPU_H = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*gpu-?h\s*$", re.IGNORECASE)
_SHARE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
_TRIALS = re.compile(r"^\s*(\d+)\s*$")


class BudgetError(ValueError):
    """A budget that is not one of the three forms."""


@dataclass(frozen=True)
class Budget:
    """At most ``trials`` trials, or ``gpu_s`` GPU seconds, or ``share`` of the predicted grid cost."""

    text: str
    trials: int | None = None
    gpu_s: float | None = None
    share: float | None = None

    def gpu_limit(self, grid_gpu_s: float | None) -> float | None:
        """The GPU-seconds limit this budget sets (None: it counts trials, or nothing)."""
        if self.gpu_s is not None:
            return self.gpu_s
        if self.share is not None:
            if grid_gpu_s is None:
                raise BudgetError(f"--sglang-budget={self.text}: a share of the grid needs its predicted cost, which "
                                  "only the sim's predictor gives (use N trials or Xgpu-h)")
            return self.share * grid_gpu_s
        return None

    def describe(self, grid_gpu_s: float | None = None) -> str:
        if self.trials is not None:
            return f"{self.trials} trials"
        limit = self.gpu_limit(grid_gpu_s)
        assert limit is not None
        share = f" ({self.share:.0%} of the predicted grid)" if self.share is not None else ""
        return f"{limit / 3600:.3g} GPU-h{share}"


UNLIMITED = Budget("unlimited")


def parse_budget(text: str | None) -> Budget:
    """``N`` (trials), ``Xgpu-h`` (GPU-hours) or ``P%`` (of the predicted grid cost); None: unlimited."""
    if text is None or str(text).strip() == "":
        return UNLIMITED
    s = str(text)
    if m := _TRIALS.match(s):
        if int(m[1]) < 1:
            raise BudgetError(f"--sglang-budget={s!r}: give at least 1 trial")
        return Budget(s, trials=int(m[1]))
    if m := _GPU_H.match(s):
        if float(m[1]) <= 0:
            raise BudgetError(f"--sglang-budget={s!r}: give GPU-hours > 0")
        return Budget(s, gpu_s=float(m[1]) * 3600.0)
    if m := _SHARE.match(s):
        share = float(m[1]) / 100.0
        if not 0 < share <= 1:
            raise BudgetError(f"--sglang-budget={s!r}: give a share between 0 and 100%")
        return Budget(s, share=share)
    raise BudgetError(f"--sglang-budget={s!r} is not valid: give N (trials, e.g. 10), Xgpu-h (GPU-hours, e.g. "
                      "2.5gpu-h) or P% (of the predicted cost of the whole grid, e.g. 25%)")
