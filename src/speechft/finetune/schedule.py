"""Learning-rate schedule and the head-only warm-up of stable fine-tuning.

Tri-stage schedule over ``T`` optimizer steps (the paper: 10 % / 40 % / 50 %)::

    multiplier
      1 |      ___________
        |     /           \\
        |    /             \\
      0 |___/               \\___
          0   W          W+H    T      step

Step ``s`` (0-based) uses ``(s + 1) / W`` during warm-up, 1 while holding and ``(T - s) / D``
while decaying, so the first step already learns and the lr would reach 0 just after the last
step (no step is wasted at lr 0).
"""
from __future__ import annotations

import torch


def stage_lengths(total: int, warmup_frac: float, hold_frac: float) -> tuple[int, int, int]:
    """``(W, H, D)`` steps of warm-up, hold and decay; they add up to ``total``."""
    w = int(round(warmup_frac * total))
    h = min(total - w, int(round(hold_frac * total)))
    return w, h, total - w - h


def tri_stage(step: int, total: int, warmup_frac: float = 0.1, hold_frac: float = 0.4) -> float:
    """LR multiplier in [0, 1] for 0-based optimizer step ``step`` of ``total``."""
    w, h, d = stage_lengths(total, warmup_frac, hold_frac)
    if step < w:
        return (step + 1) / w
    if step < w + h:
        return 1.0
    return max(0.0, (total - step) / max(d, 1))


def tri_stage_scheduler(optimizer, total: int, warmup_frac: float, hold_frac: float):
    """A ``LambdaLR`` stepping once per optimizer step (every param group scaled alike)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: tri_stage(s, total, warmup_frac, hold_frac))


def head_only_steps(total: int, beta: float) -> int:
    """Number of first optimizer steps where only the head learns: ``round(beta * T)``."""
    return int(round(beta * total))
