"""Learning-rate schedule: linear warmup to the peak, then cosine, linear or constant.

Steps are optimizer steps, counted from 0. Warmup reaches the peak on its last step
(step `warmup - 1`), so no step runs at LR 0; the decay then heads for 0 at
`total_steps`, which is never reached, so the last step is not wasted either.
"""

import math

from edgetune.options import SCHEDULES


def warmup_steps(warmup: float, total_steps: int) -> int:
    """Warmup length in steps: `warmup` < 1 is a fraction of `total_steps`, else a step count."""
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if warmup < 1:
        return round(warmup * total_steps)
    if warmup != int(warmup):
        raise ValueError(f"warmup >= 1 is a number of steps and must be whole, got {warmup}")
    return min(int(warmup), total_steps)


def learning_rate(step: int, total_steps: int, peak_lr: float, warmup: int, schedule: str) -> float:
    """The learning rate of optimizer step `step` (0-based); `warmup` is in steps."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule '{schedule}' (choose: {', '.join(SCHEDULES)})")
    if step < warmup:
        return peak_lr * (step + 1) / warmup
    if schedule == "constant":
        return peak_lr
    progress = (step - warmup) / max(1, total_steps - warmup)  # in [0, 1)
    if schedule == "linear":
        return peak_lr * (1.0 - progress)
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
