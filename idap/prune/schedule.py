"""The non-linear pruning schedule of stage 1 (spec §2): later steps remove a larger fraction."""

from __future__ import annotations

import math


def prune_fraction(t: int, steps: int, p0: float, alpha: float) -> float:
    """p_t = p0 · (1 + t/T)^α, capped below 1."""
    if not 0 <= t < steps:
        raise ValueError(f"step t must be in [0, {steps}), got {t}")
    return min(0.95, p0 * (1 + t / steps) ** alpha)


def channels_to_remove(t: int, steps: int, p0: float, alpha: float, prunable: int) -> int:
    """k_t = floor(p_t · N_t), N_t the current number of prunable channels."""
    return math.floor(prune_fraction(t, steps, p0, alpha) * prunable)
